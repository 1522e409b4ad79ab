"""CaffeNet (BVLC reference, AlexNet with pooling before LRN), as in the published baseline.

The five convs write ``convK_inp`` and their ReLUs ``convK``, the blob the FRU generator
later splices an FRU into.
"""
from __future__ import annotations

from ..core import caffe_pb2
from .netspec_helpers import (NetSpec, conv_relu, fc, fc_relu_dropout, input_layer, lrn,
                               max_pool, net_param, softmax)
from ..presets import NetPreset

NET_NAME = "CaffeNet"


def build(preset: NetPreset, batch: int = 1) -> "caffe_pb2.NetParameter":
    """Deploy CaffeNet: ``data`` (batch, 3, S, S) -> ``preset.output_blob``."""
    n = NetSpec()
    x = input_layer(n, "data", (batch, preset.channels, preset.input_size, preset.input_size))
    x = conv_relu(n, "conv1", "relu1", x, 96, 11, stride=4, raw_top=True)
    x = max_pool(n, "pool1", x, 3, 2)
    x = lrn(n, "norm1", x, 5, 1e-4, 0.75)
    x = conv_relu(n, "conv2", "relu2", x, 256, 5, pad=2, group=2, raw_top=True)
    x = max_pool(n, "pool2", x, 3, 2)
    x = lrn(n, "norm2", x, 5, 1e-4, 0.75)
    x = conv_relu(n, "conv3", "relu3", x, 384, 3, pad=1, raw_top=True)
    x = conv_relu(n, "conv4", "relu4", x, 384, 3, pad=1, group=2, raw_top=True)
    x = conv_relu(n, "conv5", "relu5", x, 256, 3, pad=1, group=2, raw_top=True)
    x = max_pool(n, "pool5", x, 3, 2)
    x = fc_relu_dropout(n, "fc6", "relu6", "drop6", x, 4096)
    x = fc_relu_dropout(n, "fc7", "relu7", "drop7", x, 4096)
    x = fc(n, "fc8", x, preset.num_classes)
    softmax(n, preset.output_blob, x)
    return net_param(n, NET_NAME)
