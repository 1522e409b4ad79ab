"""VGG-F (Chatfield et al., "Return of the Devil in the Details") and the published
channel-pruned VGG-16, as in the published baselines.

VGG-F's published file is in Caffe's old V1 ``layers`` format; this builder writes the
same net in the current format (Caffe's upgrade of the V1 file gives the same layers).
"""
from __future__ import annotations

from typing import Sequence, Tuple

from ..core import caffe_pb2
from .netspec_helpers import (NetSpec, conv_relu, fc, fc_relu_dropout, input_layer, lrn,
                               max_pool, net_param, softmax)
from ..presets import NetPreset

VGG_F_NAME = "VGG_CNN_F"
VGG16_NAME = "VGG_ILSVRC_16_layers"

VGG16_PRUNED_WIDTHS: Tuple[Tuple[int, ...], ...] = (
    (24, 22), (41, 51), (108, 89, 111), (184, 276, 228), (512, 512, 512))
"""Output channels of each conv, per stage, of the published pruned VGG-16 (13 convs)."""


def _classifier(n: NetSpec, x, preset: NetPreset) -> None:
    x = fc_relu_dropout(n, "fc6", "relu6", "drop6", x, 4096)
    x = fc_relu_dropout(n, "fc7", "relu7", "drop7", x, 4096)
    x = fc(n, "fc8", x, preset.num_classes)
    softmax(n, preset.output_blob, x)


def build_vgg_f(preset: NetPreset, batch: int = 1) -> "caffe_pb2.NetParameter":
    """Deploy VGG-F: like CaffeNet but LRN (k=2) before pooling and no grouped convs."""
    n = NetSpec()
    x = input_layer(n, "data", (batch, preset.channels, preset.input_size, preset.input_size))
    x = conv_relu(n, "conv1", "relu1", x, 64, 11, stride=4, raw_top=True)
    x = lrn(n, "norm1", x, 5, 5e-4, 0.75, k=2)
    x = max_pool(n, "pool1", x, 3, 2)
    x = conv_relu(n, "conv2", "relu2", x, 256, 5, pad=2, raw_top=True)
    x = lrn(n, "norm2", x, 5, 5e-4, 0.75, k=2)
    x = max_pool(n, "pool2", x, 3, 2)
    for k in (3, 4, 5):
        x = conv_relu(n, f"conv{k}", f"relu{k}", x, 256, 3, pad=1, raw_top=True)
    x = max_pool(n, "pool5", x, 3, 2)
    _classifier(n, x, preset)
    return net_param(n, VGG_F_NAME)


def build_vgg16(preset: NetPreset, batch: int = 1,
                widths: Sequence[Sequence[int]] = VGG16_PRUNED_WIDTHS) -> "caffe_pb2.NetParameter":
    """Deploy VGG-16 with ``widths[s][i]`` channels in conv``s+1``_``i+1`` (3x3, pad 1).

    Every conv writes ``convS_I_inp`` and its ReLU ``convS_I``; a 2x2 max pool ends each stage.
    """
    if len(widths) != 5:
        raise ValueError(f"VGG-16 widths must list 5 stages, got {len(widths)}")
    n = NetSpec()
    x = input_layer(n, "data", (batch, preset.channels, preset.input_size, preset.input_size))
    for s, stage in enumerate(widths, start=1):
        for i, width in enumerate(stage, start=1):
            x = conv_relu(n, f"conv{s}_{i}", f"relu{s}_{i}", x, width, 3, pad=1, raw_top=True)
        x = max_pool(n, f"pool{s}", x, 2, 2)
    _classifier(n, x, preset)
    return net_param(n, VGG16_NAME)
