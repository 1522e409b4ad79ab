"""ONNX export: every layer type the toolkit's nets use, exactly as Caffe computes it."""
from __future__ import annotations

import numpy as np
import pytest

from defense.core import L, P, ToolkitError, caffe, write_net_param

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from defense.generate.onnx_graph import net_to_onnx, onnx_session  # noqa: E402

RNG = np.random.default_rng(0)


def _every_layer_net():
    """Each layer type and the Caffe corner cases: grouped, dilated and strided convs, AVE pooling
    with padding and a ceil-mode overhang, MAX pooling whose last window would start in the
    padding, global pooling, LRN, in-place ReLU/BatchNorm/Scale/Dropout, Slice, Split (implicit),
    Eltwise SUM with coefficients, PROD and MAX, Concat, Flatten, InnerProduct, Softmax."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 4, 13, 14]))
    n.conv1 = L.Convolution(n.data, num_output=8, kernel_size=3, pad=1, group=2)
    n.bn1 = L.BatchNorm(n.conv1, in_place=True, use_global_stats=True)
    n.sc1 = L.Scale(n.bn1, in_place=True, bias_term=True)
    n.relu1 = L.ReLU(n.sc1, in_place=True, negative_slope=0.1)
    n.conv2 = L.Convolution(n.relu1, num_output=8, kernel_h=3, kernel_w=2, stride=2, pad_h=2, pad_w=1,
                            dilation=2)
    n.relu2 = L.ReLU(n.conv2, in_place=True)
    n.ave = L.Pooling(n.relu2, pool=P.Pooling.AVE, kernel_size=3, stride=2, pad=1)
    n.max = L.Pooling(n.relu2, pool=P.Pooling.MAX, kernel_size=2, stride=2, pad=1)
    n.norm = L.LRN(n.ave, local_size=5, alpha=1e-2, beta=0.75, k=2.0)
    n.top, n.bottom = L.Slice(n.norm, ntop=2, slice_param=dict(axis=1, slice_point=[3]))
    n.fru = L.Convolution(n.top, num_output=3, kernel_size=1, bias_term=False)
    n.sum = L.Eltwise(n.top, n.fru, operation=P.Eltwise.SUM, coeff=[1.0, -0.5])
    n.prod = L.Eltwise(n.top, n.fru, operation=P.Eltwise.PROD)
    n.emax = L.Eltwise(n.sum, n.prod, operation=P.Eltwise.MAX)
    n.cat = L.Concat(n.emax, n.bottom, axis=1)
    n.drop = L.Dropout(n.cat, in_place=True, dropout_ratio=0.5)
    n.gpool = L.Pooling(n.max, pool=P.Pooling.MAX, global_pooling=True)
    n.flat = L.Flatten(n.gpool)
    n.fc = L.InnerProduct(n.drop, num_output=6)
    n.fc2 = L.InnerProduct(n.flat, num_output=6)
    n.logits = L.Eltwise(n.fc, n.fc2)
    n.prob = L.Softmax(n.logits)
    return n.to_proto()


def _random(net):
    for name, blobs in net.params.items():
        for b in blobs:
            b.data[...] = RNG.normal(0, 0.5, b.data.shape)
        if net.layer_dict[name].type == "BatchNorm":
            blobs[1].data[...] = RNG.uniform(0.5, 2.0, blobs[1].data.shape)
            blobs[2].data[...] = 3.0  # the moving-average factor Caffe divides by


def _outputs_match(net, params, blobs, tmp_path, batch=2):
    model = net_to_onnx(net, params, extra_outputs=blobs)
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    session = onnx_session(path)
    x = RNG.normal(0, 20, (batch,) + net.blobs["data"].data.shape[1:]).astype(np.float32)
    net.blobs["data"].reshape(*x.shape)
    net.reshape()
    net.blobs["data"].data[...] = x
    net.forward()
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, {session.get_inputs()[0].name: x})))
    for blob in blobs:
        ref = net.blobs[blob].data
        onnx_name = [n for n in names if n == blob or n.startswith(blob + "__")][-1]
        assert got[onnx_name].shape == ref.shape, blob
        scale = max(float(np.abs(ref).max()), 1e-6)
        assert float(np.abs(got[onnx_name] - ref).max()) / scale < 1e-5, blob


def test_every_layer_type_matches_caffe(tmp_path):
    param = _every_layer_net()
    path = write_net_param(tmp_path / "net.prototxt", param)
    net = caffe.Net(str(path), caffe.TEST)
    _random(net)
    assert net.blobs["ave"].data.shape[2:] == (4, 4) and net.blobs["max"].data.shape[2:] == (4, 4)
    layers = {layer.name: layer for layer in param.layer}
    blobs = ["ave", "max", "norm", "sum", "prod", "emax", "cat", "logits", "prob"]
    _outputs_match(net, layers, blobs, tmp_path, batch=3)  # another batch than the prototxt's


def test_unsupported_layer_is_one_clear_error(tmp_path):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 2, 4, 4]))
    n.tanh = L.TanH(n.data)
    param = n.to_proto()
    net = caffe.Net(str(write_net_param(tmp_path / "n.prototxt", param)), caffe.TEST)
    with pytest.raises(ToolkitError, match="layer 'tanh' has type 'TanH', which the ONNX export does not handle"):
        net_to_onnx(net, {layer.name: layer for layer in param.layer})
