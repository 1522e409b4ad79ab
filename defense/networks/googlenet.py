"""GoogLeNet (BVLC, Szegedy et al. 2015) deploy net without the auxiliary classifiers,
as in the published baseline.

The stem convs write ``<conv>_inp`` and their ReLUs ``<conv>``; inside the Inception
modules the ReLUs work in place, as published.
"""
from __future__ import annotations

from typing import Dict, Tuple

from ..core import caffe_pb2
from .netspec_helpers import (NetSpec, ave_pool, conv_relu, dropout, fc, inception,
                               input_layer, lrn, max_pool, net_param, softmax)
from ..presets import NetPreset

NET_NAME = "GoogleNet"

INCEPTION_WIDTHS: Dict[str, Tuple[int, int, int, int, int, int]] = {
    # (1x1, 3x3_reduce, 3x3, 5x5_reduce, 5x5, pool_proj)
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}
POOL_AFTER = {"3b": "pool3/3x3_s2", "4e": "pool4/3x3_s2"}
"""A 3x3/2 max pool follows these modules."""


def build(preset: NetPreset, batch: int = 1) -> "caffe_pb2.NetParameter":
    """Deploy GoogLeNet: ``data`` (batch, 3, S, S) -> ``preset.output_blob``."""
    n = NetSpec()
    x = input_layer(n, "data", (batch, preset.channels, preset.input_size, preset.input_size))
    x = conv_relu(n, "conv1/7x7_s2", "conv1/relu_7x7", x, 64, 7, stride=2, pad=3, raw_top=True)
    x = max_pool(n, "pool1/3x3_s2", x, 3, 2)
    x = lrn(n, "pool1/norm1", x, 5, 1e-4, 0.75)
    x = conv_relu(n, "conv2/3x3_reduce", "conv2/relu_3x3_reduce", x, 64, 1, raw_top=True)
    x = conv_relu(n, "conv2/3x3", "conv2/relu_3x3", x, 192, 3, pad=1, raw_top=True)
    x = lrn(n, "conv2/norm2", x, 5, 1e-4, 0.75)
    x = max_pool(n, "pool2/3x3_s2", x, 3, 2)
    for stage, widths in INCEPTION_WIDTHS.items():
        x = inception(n, f"inception_{stage}", x, widths)
        if stage in POOL_AFTER:
            x = max_pool(n, POOL_AFTER[stage], x, 3, 2)
    x = ave_pool(n, "pool5/7x7_s1", x, 7, 1)
    x = dropout(n, "pool5/drop_7x7_s1", x, 0.4)
    x = fc(n, "loss3/classifier", x, preset.num_classes)
    softmax(n, preset.output_blob, x)
    return net_param(n, NET_NAME)
