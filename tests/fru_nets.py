"""Tiny NetSpec nets and random-weight helpers shared by the FRU tests (CPU, batch 1)."""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from defense.core import Blobs, L, P, caffe, caffe_pb2, param_shapes, set_net_blobs
from defense.core import load_net
from defense.generate.surgery import random_blobs


def tiny_net(bn: bool = False, lrn: bool = False) -> "caffe_pb2.NetParameter":
    """data (1,3,12,12) -> conv1 8ch [BN, Scale] ReLU -> pool [LRN] -> conv2 6ch ReLU -> fc 5 -> prob."""
    n = caffe.NetSpec()
    n.data = L.Input(name="data", shape=dict(dim=[1, 3, 12, 12]))
    n.conv1 = L.Convolution(n.data, name="conv1", num_output=8, kernel_size=3, pad=1, bias_term=not bn)
    x = n.conv1
    if bn:
        n.conv1_bn = L.BatchNorm(x, name="conv1_bn", in_place=True, batch_norm_param=dict(use_global_stats=True))
        n.conv1_scale = L.Scale(n.conv1_bn, name="conv1_scale", in_place=True, scale_param=dict(bias_term=True))
        x = n.conv1_scale
    n.relu1 = L.ReLU(x, name="relu1", in_place=True)
    n.pool1 = L.Pooling(n.relu1, name="pool1", pool=P.Pooling.MAX, kernel_size=2, stride=2)
    x = n.pool1
    if lrn:
        n.norm1 = L.LRN(x, name="norm1", local_size=3)
        x = n.norm1
    n.conv2 = L.Convolution(x, name="conv2", num_output=6, kernel_size=3, pad=1)
    n.relu2 = L.ReLU(n.conv2, name="relu2", in_place=True)
    n.fc = L.InnerProduct(n.relu2, name="fc", num_output=5)
    n.prob = L.Softmax(n.fc, name="prob")
    net = n.to_proto()
    net.name = "Tiny"
    return net


def random_weights(param: "caffe_pb2.NetParameter", seed: int = 0) -> Blobs:
    net = load_net(param)
    types = {name: net.layer_dict[name].type for name in net.params}
    return random_blobs(param_shapes(net), types, np.random.default_rng(seed))


def logits_blob(param: "caffe_pb2.NetParameter") -> str:
    return [layer.bottom[0] for layer in param.layer if layer.type == "Softmax"][-1]


def forward(param: "caffe_pb2.NetParameter", blobs: Blobs, seed: int = 0, blob: str = "") -> np.ndarray:
    """One forward pass on a fixed random input; returns a copy of the logits (or ``blob``)."""
    net = load_net(param)
    set_net_blobs(net, blobs)
    rng = np.random.default_rng(seed)
    data = net.blobs["data"]
    data.data[...] = rng.standard_normal(data.data.shape).astype(np.float32) * 50
    net.forward()
    return net.blobs[blob or logits_blob(param)].data.copy()


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))


def perturb_frus(blobs: Blobs, base: Blobs, skip: Tuple[str, ...] = (), seed: int = 1) -> Blobs:
    """Non-identity FRU weights: every layer not in the baseline (and not in ``skip``) gets noise."""
    rng = np.random.default_rng(seed)
    out = dict(blobs)
    for name, arrays in blobs.items():
        if name in base or name in skip:
            continue
        out[name] = [a + (0.05 * rng.standard_normal(a.shape)).astype(np.float32) if a.size > 1 else a
                     for a in arrays]
    return out


def shapes_of(param: "caffe_pb2.NetParameter") -> Dict[str, list]:
    return param_shapes(load_net(param))
