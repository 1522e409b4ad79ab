"""NetSpec building blocks shared by every network builder (``defense/networks``).

Released caffemodels load by layer name, and the FRU generator finds its targets by layer
and blob name, so every helper takes the layer name (and, where it differs, the top blob
name) explicitly; nothing is auto-named. Each helper adds its layers to the ``NetSpec``
``n`` and returns the top that the next layer should read. Only the fields that change a
deploy net's function are written (no fillers, no ``lr_mult``): training nets add those.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

from ..core import L, P, caffe_pb2
from caffe.net_spec import NetSpec, Top  # noqa: E402  (after core's quiet caffe import)

RAW_TOP_SUFFIX = "_inp"
"""A conv whose ReLU is not in place writes ``<conv>_inp``; the ReLU writes ``<conv>``.

This is the published baselines' convention for the convs that carry FRUs (same suffix as
``presets.FruNames.raw_blob``), so that the FRU is spliced in between without renaming.
"""


def _nonzero(**fields) -> dict:
    """Keep only the fields that differ from Caffe's defaults, so the prototxt stays short."""
    defaults = {"stride": 1, "pad": 0, "group": 1, "bias_term": True}
    return {k: v for k, v in fields.items() if k not in defaults or v != defaults[k]}


def net_param(n: NetSpec, name: str) -> "caffe_pb2.NetParameter":
    """Serialise ``n`` and give the net its name."""
    net = n.to_proto()
    net.name = name
    return net


def input_layer(n: NetSpec, name: str, shape: Sequence[int]) -> Top:
    """An ``Input`` layer whose top blob has the layer's name."""
    if len(shape) != 4 or any(int(d) < 1 for d in shape):
        raise ValueError(f"input shape must be 4 positive dims (N, C, H, W), got {tuple(shape)}")
    n[name] = L.Input(name=name, input_param=dict(shape=dict(dim=[int(d) for d in shape])))
    return n[name]


def conv(n: NetSpec, name: str, bottom: Top, num_output: int, kernel_size: int, *,
         stride: int = 1, pad: int = 0, group: int = 1, bias_term: bool = True,
         top: Optional[str] = None) -> Top:
    """A ``Convolution`` layer named ``name`` writing blob ``top`` (default: ``name``)."""
    key = top or name
    n[key] = L.Convolution(bottom, name=name, num_output=num_output, kernel_size=kernel_size,
                           **_nonzero(stride=stride, pad=pad, group=group, bias_term=bias_term))
    return n[key]


def relu(n: NetSpec, name: str, bottom: Top, top: Optional[str] = None) -> Top:
    """A ``ReLU``: in place when ``top`` is None, else writing a new blob ``top``."""
    if top is None:
        n[name] = L.ReLU(bottom, name=name, in_place=True)
        return n[name]
    n[top] = L.ReLU(bottom, name=name)
    return n[top]


def conv_relu(n: NetSpec, name: str, relu_name: str, bottom: Top, num_output: int,
              kernel_size: int, *, stride: int = 1, pad: int = 0, group: int = 1,
              raw_top: bool = False) -> Top:
    """Convolution + ReLU, the ReLU's output named ``name``.

    :param raw_top: the conv writes ``<name>_inp`` and the ReLU ``<name>`` (not in place),
        as the published baselines do for the convs that carry FRUs; otherwise the ReLU
        works in place on blob ``name``.
    """
    if raw_top:
        out = conv(n, name, bottom, num_output, kernel_size, stride=stride, pad=pad, group=group,
                   top=name + RAW_TOP_SUFFIX)
        return relu(n, relu_name, out, top=name)
    out = conv(n, name, bottom, num_output, kernel_size, stride=stride, pad=pad, group=group)
    return relu(n, relu_name, out)


def fc(n: NetSpec, name: str, bottom: Top, num_output: int) -> Top:
    """An ``InnerProduct`` layer writing blob ``name``."""
    n[name] = L.InnerProduct(bottom, name=name, num_output=num_output)
    return n[name]


def fc_relu_dropout(n: NetSpec, name: str, relu_name: str, drop_name: str, bottom: Top,
                    num_output: int, dropout_ratio: float = 0.5) -> Top:
    """The classifier's hidden layer: InnerProduct, then ReLU and Dropout in place."""
    out = fc(n, name, bottom, num_output)
    out = relu(n, relu_name, out)
    return dropout(n, drop_name, out, dropout_ratio)


def dropout(n: NetSpec, name: str, bottom: Top, ratio: float) -> Top:
    """``Dropout`` in place (the identity in a deploy net, kept for the published layer order)."""
    n[name] = L.Dropout(bottom, name=name, dropout_ratio=ratio, in_place=True)
    return n[name]


def max_pool(n: NetSpec, name: str, bottom: Top, kernel_size: int, stride: int,
             pad: int = 0) -> Top:
    n[name] = L.Pooling(bottom, name=name, pool=P.Pooling.MAX, kernel_size=kernel_size,
                        **_nonzero(stride=stride, pad=pad))
    return n[name]


def ave_pool(n: NetSpec, name: str, bottom: Top, kernel_size: int, stride: int) -> Top:
    n[name] = L.Pooling(bottom, name=name, pool=P.Pooling.AVE, kernel_size=kernel_size,
                        **_nonzero(stride=stride))
    return n[name]


def global_ave_pool(n: NetSpec, name: str, bottom: Top) -> Top:
    n[name] = L.Pooling(bottom, name=name, pool=P.Pooling.AVE, global_pooling=True)
    return n[name]


def lrn(n: NetSpec, name: str, bottom: Top, local_size: int, alpha: float, beta: float,
        k: Optional[float] = None) -> Top:
    """Across-channel ``LRN``; ``k`` is written only when it differs from Caffe's default 1."""
    extra = {} if k is None or k == 1 else {"k": k}
    n[name] = L.LRN(bottom, name=name, local_size=local_size, alpha=alpha, beta=beta, **extra)
    return n[name]


def concat(n: NetSpec, name: str, bottoms: Sequence[Top]) -> Top:
    n[name] = L.Concat(*bottoms, name=name)
    return n[name]


def eltwise_sum(n: NetSpec, name: str, bottoms: Sequence[Top]) -> Top:
    n[name] = L.Eltwise(*bottoms, name=name, operation=P.Eltwise.SUM)
    return n[name]


def softmax(n: NetSpec, name: str, bottom: Top) -> Top:
    n[name] = L.Softmax(bottom, name=name)
    return n[name]


# ------------------------------------------------------------------ BatchNorm networks
def bn_scale(n: NetSpec, bn_name: str, scale_name: str, bottom: Top, *,
             bn_top: Optional[str] = None, scale_top: Optional[str] = None) -> Top:
    """Inference BatchNorm (global statistics) + learned Scale with bias.

    Each layer works in place unless given its own top blob name.
    """
    if bn_top is None:
        n[bn_name] = L.BatchNorm(bottom, name=bn_name, use_global_stats=True, in_place=True)
        out = n[bn_name]
    else:
        n[bn_top] = L.BatchNorm(bottom, name=bn_name, use_global_stats=True)
        out = n[bn_top]
    if scale_top is None:
        n[scale_name] = L.Scale(out, name=scale_name, bias_term=True, in_place=True)
        return n[scale_name]
    n[scale_top] = L.Scale(out, name=scale_name, bias_term=True)
    return n[scale_top]


def conv_bn(n: NetSpec, name: str, bottom: Top, num_output: int, kernel_size: int, *,
            stride: int = 1, pad: int = 0, relu_after: bool = True) -> Top:
    """ResNet's conv (no bias) + ``<name>_bn`` + ``<name>_scale`` (+ ``<name>_relu``), all in place."""
    out = conv(n, name, bottom, num_output, kernel_size, stride=stride, pad=pad, bias_term=False)
    out = bn_scale(n, f"{name}_bn", f"{name}_scale", out)
    return relu(n, f"{name}_relu", out) if relu_after else out


def preact_bottleneck(n: NetSpec, index: int, bottom: Top, width: int, stride: int = 1,
                      project: bool = False, preact: bool = True) -> Top:
    """One pre-activation bottleneck ``res<index>_*`` of the published ResNet-152.

    ``res<j>_bn/_scale/_relu`` pre-activate the block input (skipped for the first block,
    which reads the max-pooled stem); three conv-BN(-ReLU) layers of ``width``, ``width``
    (3x3, ``stride``) and ``4*width`` channels follow; ``res<j>_match_conv`` (1x1,
    ``stride``) projects the shortcut when ``project``, which then starts from the
    pre-activated input rather than the raw one. Returns ``res<j>_eletwise``.
    """
    r = f"res{index}"
    x = bottom
    if preact:
        x = bn_scale(n, f"{r}_bn", f"{r}_scale", bottom, bn_top=f"{r}_bn")
        x = relu(n, f"{r}_relu", x)
    out = conv_bn(n, f"{r}_conv1", x, width, 1)
    out = conv_bn(n, f"{r}_conv2", out, width, 3, stride=stride, pad=1)
    out = conv(n, f"{r}_conv3", out, 4 * width, 1, bias_term=False)
    shortcut = conv(n, f"{r}_match_conv", x, 4 * width, 1, stride=stride, bias_term=False) if project else bottom
    return eltwise_sum(n, f"{r}_eletwise", [shortcut, out])


# ------------------------------------------------------------------ Inception
def inception(n: NetSpec, prefix: str, bottom: Top,
              widths: Tuple[int, int, int, int, int, int]) -> Top:
    """A GoogLeNet Inception module ``<prefix>/...`` (ReLUs in place).

    :param widths: ``(1x1, 3x3_reduce, 3x3, 5x5_reduce, 5x5, pool_proj)`` output channels.
    """
    if len(widths) != 6:
        raise ValueError(f"inception widths must have 6 entries, got {widths}")
    w1, w3r, w3, w5r, w5, wp = widths
    b1 = conv_relu(n, f"{prefix}/1x1", f"{prefix}/relu_1x1", bottom, w1, 1)
    b3 = conv_relu(n, f"{prefix}/3x3_reduce", f"{prefix}/relu_3x3_reduce", bottom, w3r, 1)
    b3 = conv_relu(n, f"{prefix}/3x3", f"{prefix}/relu_3x3", b3, w3, 3, pad=1)
    b5 = conv_relu(n, f"{prefix}/5x5_reduce", f"{prefix}/relu_5x5_reduce", bottom, w5r, 1)
    b5 = conv_relu(n, f"{prefix}/5x5", f"{prefix}/relu_5x5", b5, w5, 5, pad=2)
    bp = max_pool(n, f"{prefix}/pool", bottom, 3, 1, pad=1)
    bp = conv_relu(n, f"{prefix}/pool_proj", f"{prefix}/relu_pool_proj", bp, wp, 1)
    return concat(n, f"{prefix}/output", [b1, b3, b5, bp])
