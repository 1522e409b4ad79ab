"""FashionNet: a small CaffeNet-style baseline for Fashion-MNIST (28x28, one grey channel).

It is the toolkit's offline, CPU-sized stand-in for the ImageNet nets: the same layer kinds
and naming as CaffeNet (conv writing ``convK_inp`` -> ReLU writing ``convK`` -> max pool ->
LRN; fc -> ReLU -> dropout; Softmax ``prob``), so the FRU generator, the attacks and the
evaluation run on it unchanged. Inputs are pixel units minus the preset's mean.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from ..core import Blobs, L, caffe_pb2
from .netspec_helpers import (NetSpec, Top, conv_relu, fc, fc_relu_dropout, input_layer, lrn,
                               max_pool, net_param, softmax)
from ..presets import NetPreset

NET_NAME = "FashionNet"
CONVS: Tuple[Tuple[str, int, int, int], ...] = (("conv1", 32, 5, 2), ("conv2", 64, 3, 1), ("conv3", 96, 3, 1))
"""(layer, output channels, kernel, pad); presets.FashionNet's FRU targets use these widths."""
FC_HIDDEN = 256
LOGITS = "fc5"


def _body(n: NetSpec, preset: NetPreset, batch: int) -> Top:
    x = input_layer(n, "data", (batch, preset.channels, preset.input_size, preset.input_size))
    for k, (name, channels, kernel, pad) in enumerate(CONVS, start=1):
        x = conv_relu(n, name, f"relu{k}", x, channels, kernel, pad=pad, raw_top=True)
        x = max_pool(n, f"pool{k}", x, 3, 2)
        if k < len(CONVS):
            x = lrn(n, f"norm{k}", x, 5, 1e-4, 0.75)
    x = fc_relu_dropout(n, "fc4", "relu4", "drop4", x, FC_HIDDEN)
    return fc(n, LOGITS, x, preset.num_classes)


def build(preset: NetPreset, batch: int = 1) -> "caffe_pb2.NetParameter":
    """Deploy FashionNet: ``data`` (batch, 1, 28, 28) -> ``preset.output_blob``."""
    n = NetSpec()
    softmax(n, preset.output_blob, _body(n, preset, batch))
    return net_param(n, NET_NAME)


def build_train(preset: NetPreset, batch: int) -> "caffe_pb2.NetParameter":
    """Training FashionNet: Inputs ``data`` and ``label`` fed from Python, SoftmaxWithLoss ``loss``.

    Same layer names as ``build``, so the trained weights load into the deploy net.
    Weights are initialised in Python (``init_blobs``), seeded, rather than by Caffe fillers.
    """
    n = NetSpec()
    logits = _body(n, preset, batch)
    n.label = L.Input(name="label", input_param=dict(shape=dict(dim=[batch])))
    n.loss = L.SoftmaxWithLoss(logits, n.label, name="loss")
    return net_param(n, NET_NAME)


def init_blobs(shapes: dict, rng: np.random.Generator, input_std: float) -> Blobs:
    """He-normal weights (the first conv scaled for inputs of std ``input_std``), zero biases.

    The logits layer starts small (std 0.01, as CaffeNet's fc8) so the first loss is ln(10).

    :param shapes: ``core.param_shapes(net)`` of a FashionNet.
    """
    out: Blobs = {}
    first = CONVS[0][0]
    for name, blob_shapes in shapes.items():
        w_shape = blob_shapes[0]
        fan_in = int(np.prod(w_shape[1:]))
        std = 0.01 if name == LOGITS else np.sqrt(2.0 / fan_in) / (input_std if name == first else 1.0)
        out[name] = [rng.normal(0.0, std, size=w_shape).astype(np.float32)] + [
            np.zeros(s, dtype=np.float32) for s in blob_shapes[1:]]
    return out


def conv_channels() -> Tuple[Tuple[str, int], ...]:
    """(conv layer, output channels): what the FRU rule needs to pick N and D."""
    return tuple((name, channels) for name, channels, _, _ in CONVS)
