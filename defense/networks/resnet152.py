"""The published pre-activation ResNet-152 (bottlenecks ``res1`` .. ``res50``, 3-8-36-3).

Every block but the first pre-activates its input (``res<j>_bn/_scale/_relu``); a block that
changes width or resolution projects its shortcut with ``res<j>_match_conv``. The stem's
BN/Scale/ReLU are not in place (``conv1_inp`` -> ``conv1_bn`` -> ``conv1_sc`` -> ``conv1``),
as published.
"""
from __future__ import annotations

from typing import Tuple

from ..core import caffe_pb2
from .netspec_helpers import (NetSpec, bn_scale, conv, fc, global_ave_pool, input_layer,
                               max_pool, net_param, preact_bottleneck, relu, softmax)
from ..presets import NetPreset

NET_NAME = "ResNet-152"

STAGES: Tuple[Tuple[int, int, int], ...] = ((3, 64, 1), (8, 128, 2), (36, 256, 2), (3, 512, 2))
"""(blocks, bottleneck width, stride of the stage's first block) per stage."""


def build(preset: NetPreset, batch: int = 1) -> "caffe_pb2.NetParameter":
    """Deploy ResNet-152: ``data`` (batch, 3, S, S) -> ``preset.output_blob``."""
    n = NetSpec()
    x = input_layer(n, "data", (batch, preset.channels, preset.input_size, preset.input_size))
    x = conv(n, "conv1", x, 64, 7, stride=2, pad=3, bias_term=False, top="conv1_inp")
    x = bn_scale(n, "conv1_bn", "conv1_scale", x, bn_top="conv1_bn", scale_top="conv1_sc")
    x = relu(n, "conv1_relu", x, top="conv1")
    x = max_pool(n, "pool1", x, 3, 2)
    index = 0
    for blocks, width, stride in STAGES:
        for b in range(blocks):
            index += 1
            x = preact_bottleneck(n, index, x, width, stride=stride if b == 0 else 1,
                                  project=b == 0, preact=index > 1)
    x = bn_scale(n, f"res{index}_eletwise_bn", f"res{index}_eletwise_scale", x,
                 bn_top=f"res{index}_eletwise_bn")
    x = relu(n, f"res{index}_eletwise_relu", x)
    x = global_ave_pool(n, "pool5", x)
    x = fc(n, "classifier", x, preset.num_classes)
    softmax(n, preset.output_blob, x)
    return net_param(n, NET_NAME)
