"""ONNX export: every layer type the toolkit's nets use, exactly as Caffe computes it."""
from __future__ import annotations

import numpy as np
import pytest

from defense.core import L, P, ToolkitError, caffe, write_net_param

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from attacks.runtime import onnx_session  # noqa: E402
from defense.generate.onnx_graph import onnx_model  # noqa: E402

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


def _outputs_match(net, param, blobs, tmp_path, batch=2):
    model = onnx_model(net, param, extra_outputs=blobs)
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
    blobs = ["ave", "max", "norm", "sum", "prod", "emax", "cat", "logits", "prob"]
    _outputs_match(net, param, blobs, tmp_path, batch=3)  # another batch than the prototxt's


@pytest.mark.parametrize("channels,size,alpha,beta,k", [(32, 5, 1e-4, 0.75, 1.0), (3, 5, 1e-2, 0.75, 2.0),
                                                       (7, 3, 0.5, 1.3, 1.5), (4, 1, 1.0, 0.5, 1.0)])
def test_lrn_as_ops_is_caffes_lrn(tmp_path, channels, size, alpha, beta, k):
    """LRN as plain ops (the runtime's graph) equals Caffe's LRN, windows cut at the first and
    last channel (fewer channels than the window included), and leaves no LRN node."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, channels, 5, 6]))
    n.norm = L.LRN(n.data, local_size=size, alpha=alpha, beta=beta, k=k)
    param = n.to_proto()
    net = caffe.Net(str(write_net_param(tmp_path / "lrn.prototxt", param)), caffe.TEST)
    model = onnx_model(net, param, lrn_as_ops=True)
    assert "LRN" not in {node.op_type for node in model.graph.node}
    session = onnx_session(model)
    x = RNG.normal(0, 20, (3, channels, 5, 6)).astype(np.float32)
    net.blobs["data"].reshape(*x.shape)
    net.forward(data=x)
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    ref = net.blobs["norm"].data
    assert float(np.abs(got - ref).max() / np.abs(ref).max()) < 1e-5


def test_unsupported_layer_is_one_clear_error(tmp_path):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 2, 4, 4]))
    n.tanh = L.TanH(n.data)
    param = n.to_proto()
    net = caffe.Net(str(write_net_param(tmp_path / "n.prototxt", param)), caffe.TEST)
    with pytest.raises(ToolkitError, match="layer 'tanh' has type 'TanH', which the ONNX export does not handle"):
        onnx_model(net, param)


# ---------------------------------------------------------------- the six networks, every layout
def _layouts(name: str, seed: int = 0):
    """{layout: (NetParameter, blobs)}: baseline, explicit and (where the net allows it) folded FRUs
    (non-identity FRU convs, permutations as generated) and the fast layout, on random weights."""
    from defense.core import load_net, param_shapes
    from defense.generate.export import blob_channels, fast_layout, find_fru_blocks
    from defense.generate.fru import insert_frus
    from defense.generate.surgery import init_fru_blobs, random_blobs
    from defense.networks import build_baseline
    from defense.presets import get_preset

    preset = get_preset(name)
    base = build_baseline(name)
    net = load_net(base)
    base_blobs = random_blobs(param_shapes(net), {n: net.layer_dict[n].type for n in net.params},
                              np.random.default_rng(seed))
    out = {"baseline": (base, base_blobs)}
    rng = np.random.default_rng(seed + 1)
    for mode in ("explicit", "folded"):
        try:
            fru = insert_frus(base, preset.targets, mode, name)
        except ToolkitError:  # a permutation cannot be folded across LRN: no folded layout exists
            assert mode != preset.mode
            continue
        blobs, _ = init_fru_blobs(base, base_blobs, preset.targets, mode, seed, source=name)
        channels = blob_channels(load_net(fru))
        for block in find_fru_blocks(fru, blobs, channels):  # the identity start would hide the FRU convs
            for layer in block.chain:
                if layer in blobs and blobs[layer][0].ndim == 4:
                    blobs[layer] = [b + (0.05 * rng.standard_normal(b.shape)).astype(np.float32) for b in blobs[layer]]
        out[f"fru_{mode}"] = (fru, blobs)
        if mode == preset.mode:
            fast, fast_blobs, _ = fast_layout(fru, blobs, channels, name)
            out["fru_fast"] = (fast, fast_blobs)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["FashionNet", "CaffeNet", "VGG_F", "GoogLeNet", "VGG16", "ResNet152"])
def test_every_layout_of_the_six_networks_matches_caffe(name):
    from defense.core import load_net, set_net_blobs
    from defense.generate.onnx_graph import compare_with_caffe, logits_blobs

    layouts = _layouts(name)
    folded = {"fru_folded"} if name in ("VGG16", "ResNet152") else set()  # the others have LRN after a target
    assert set(layouts) == {"baseline", "fru_explicit", "fru_fast"} | folded
    for layout, (param, blobs) in layouts.items():
        net = load_net(param)
        set_net_blobs(net, blobs)
        err = compare_with_caffe(net, onnx_model(net, param, logits_blobs(net)), batch=2)
        assert err < 1e-4, f"{name} {layout}: ONNX differs from Caffe by {err:.2e}"


@pytest.mark.slow
def test_shipped_fashionnet_top1_is_identical_image_for_image():
    """The shipped FashionNet baseline and FRU nets on the 10,000 Fashion-MNIST test images:
    the same top-1 label from onnxruntime as from Caffe, image for image."""
    from defense.data import FashionMnist
    from defense.evaluate.runtime import classifier_for
    from defense.presets import get_preset

    preset = get_preset("FashionNet")
    x, truth = FashionMnist("test").take(np.arange(10000))
    for prototxt, weights in ((preset.deploy, preset.weights()), (preset.deploy_fru, preset.weights(defended=True))):
        labels = [classifier_for(prototxt, weights, preset.mean_bgr, runtime, batch_size=500).labels(x)
                  for runtime in ("caffe", "onnx")]
        assert labels[0].shape == (10000,) and (labels[0] == labels[1]).all(), prototxt.name
        assert 0.85 < float((labels[0] == truth).mean()) < 0.95


def test_export_command_writes_a_checked_onnx_file(tmp_path, root):
    from defense.export import main
    from defense.presets import get_preset

    preset = get_preset("FashionNet")
    out = tmp_path / "fru.onnx"
    assert main(["--format", "onnx", "--prototxt", str(preset.deploy_fru), "--weights",
                 str(preset.weights(defended=True)), "--out", str(out)]) == 0
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    assert [o.name for o in model.graph.output] == ["prob", "fc5"]
    assert main(["--format", "onnx", "--prototxt", str(preset.deploy_fru), "--weights",
                 str(tmp_path / "missing.caffemodel"), "--out", str(tmp_path / "x.onnx")]) == 2
    assert not (tmp_path / "x.onnx").exists()
