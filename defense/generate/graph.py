"""Reading a Caffe net as a graph: layers by name, who consumes a blob, where a channel
permutation can travel.

Generation, surgery and export all need the same questions answered on a NetParameter
(which layer makes this blob, which layers read it, can a permutation be folded through
them); they live here once. Older (V1, ``layers { type: CONVOLUTION }``) files and the
``input:``/``input_dim:`` header are upgraded to the current form first, as Caffe itself does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Set, Tuple

from ..core import ToolkitError, caffe_pb2

# V1LayerParameter.LayerType name -> current type string (caffe/src/caffe/util/upgrade_proto.cpp).
_V1_TYPES = {
    "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col", "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct", "LRN": "LRN", "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN", "POOLING": "Pooling",
    "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

# Layers that act on each channel separately: a channel permutation passes through them.
CHANNELWISE = {"ReLU", "PReLU", "ELU", "Sigmoid", "TanH", "AbsVal", "BNLL", "Power", "Exp", "Log",
               "Dropout", "Pooling", "BatchNorm", "Scale", "Bias", "Split", "Threshold", "Clip", "Swish"}
# Layers whose weights have one row per channel (permuted along axis 0 of every blob but BatchNorm's factor).
CHANNEL_PARAM = {"BatchNorm", "Scale", "Bias", "PReLU"}
# Layers that read all channels through their input-channel axis: the permutation stops there.
CHANNEL_READERS = {"Convolution", "InnerProduct"}


def normalize(param: "caffe_pb2.NetParameter", source: str = "<net>") -> "caffe_pb2.NetParameter":
    """A copy in the current format: V1 ``layers`` upgraded, ``input`` fields turned into Input layers."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layers[:]
    del out.layer[:]
    del out.input[:]
    del out.input_shape[:]
    del out.input_dim[:]
    for i, name in enumerate(param.input):
        layer = out.layer.add(name=name, type="Input")
        layer.top.append(name)
        shape = layer.input_param.shape.add()
        if len(param.input_shape) > i:
            shape.CopyFrom(param.input_shape[i])
        elif len(param.input_dim) >= 4 * (i + 1):
            shape.dim.extend(param.input_dim[4 * i:4 * i + 4])
        else:
            raise ToolkitError(f"{source}: input '{name}' has no shape")
    for v1 in param.layers:
        out.layer.add().CopyFrom(_upgrade_v1_layer(v1, source))
    for layer in param.layer:
        out.layer.add().CopyFrom(layer)
    return out


def _upgrade_v1_layer(v1, source: str) -> "caffe_pb2.LayerParameter":
    type_name = caffe_pb2.V1LayerParameter.LayerType.Name(v1.type)
    if type_name not in _V1_TYPES:
        raise ToolkitError(f"{source}: V1 layer '{v1.name}' has type {type_name}, which this toolkit cannot upgrade")
    layer = caffe_pb2.LayerParameter(name=v1.name, type=_V1_TYPES[type_name])
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    layer.loss_weight.extend(v1.loss_weight)
    layer.include.extend(v1.include)
    layer.exclude.extend(v1.exclude)
    layer.blobs.extend(v1.blobs)
    for i in range(max(len(v1.blobs_lr), len(v1.weight_decay))):
        spec = layer.param.add()
        if i < len(v1.blobs_lr):
            spec.lr_mult = v1.blobs_lr[i]
        if i < len(v1.weight_decay):
            spec.decay_mult = v1.weight_decay[i]
    for field, value in v1.ListFields():
        if field.name.endswith("_param") and hasattr(layer, field.name):
            getattr(layer, field.name).CopyFrom(value)
    return layer


def layer_index(param: "caffe_pb2.NetParameter", name: str, source: str = "<net>") -> int:
    for i, layer in enumerate(param.layer):
        if layer.name == name:
            return i
    raise ToolkitError(f"{source}: no layer named '{name}'")


def layer_by_name(param: "caffe_pb2.NetParameter", name: str, source: str = "<net>") -> "caffe_pb2.LayerParameter":
    return param.layer[layer_index(param, name, source)]


def readers(param: "caffe_pb2.NetParameter", blob: str, start: int) -> List[int]:
    """Indices of the layers after ``start`` that read this version of ``blob`` (up to its next
    out-of-place redefinition; in-place layers both read it and keep it alive)."""
    out = []
    for j in range(start + 1, len(param.layer)):
        layer = param.layer[j]
        if blob in layer.bottom:
            out.append(j)
        if blob in layer.top and blob not in layer.bottom:
            break
    return out


def producer(param: "caffe_pb2.NetParameter", blob: str, before: int) -> Optional[int]:
    """Index of the last layer before ``before`` that writes ``blob`` (None for none)."""
    for j in range(before - 1, -1, -1):
        if blob in param.layer[j].top:
            return j
    return None


def num_param_blobs(layer: "caffe_pb2.LayerParameter") -> int:
    """How many learnable blobs Caffe gives this layer (0 for parameter-free layers)."""
    t = layer.type
    if t == "Convolution" or t == "Deconvolution":
        return 1 + int(layer.convolution_param.bias_term)
    if t == "InnerProduct":
        return 1 + int(layer.inner_product_param.bias_term)
    if t == "BatchNorm":
        return 3
    if t == "Scale":
        return (1 if len(layer.bottom) == 1 else 0) + int(layer.scale_param.bias_term)
    if t == "Bias":
        return 1 if len(layer.bottom) == 1 else 0
    if t == "PReLU":
        return 1
    if t == "Embed":
        return 1 + int(layer.embed_param.bias_term)
    return 0


BlockMaker = Callable[[str, str], List["caffe_pb2.LayerParameter"]]
"""``make(raw, final)``: the layers of a block reading blob ``raw`` and ending in blob ``final``."""


def insert_blocks(param: "caffe_pb2.NetParameter",
                  blocks: Dict[str, Tuple[str, str, BlockMaker]]) -> "caffe_pb2.NetParameter":
    """A copy of ``param`` with a block after each layer named in ``blocks`` (``{layer: (raw,
    fallback, make)}``); the one rewiring rule of every defence inserted after target layers.

    The layer's top is renamed ``raw`` and the block ends in the blob the layer used to make, so
    every consumer is untouched. When the layer already writes ``raw``, the block ends in
    ``fallback`` instead and the later layers are rewired to it.
    """
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    rename: Dict[str, str] = {}
    for layer in param.layer:
        new = out.layer.add()
        new.CopyFrom(layer)
        for seq in (new.bottom, new.top):
            for i, blob in enumerate(seq):
                if blob in rename:
                    seq[i] = rename[blob]
        if layer.name not in blocks:
            continue
        raw, fallback, make = blocks[layer.name]
        orig = new.top[0]
        if orig != raw:
            final = orig
            new.top[0] = raw
        else:
            final = fallback
            rename[orig] = final
        out.layer.extend(make(raw, final))
    return out


def output_blobs(param: "caffe_pb2.NetParameter") -> List[str]:
    """Blobs that no later layer reads (the net's outputs), in order."""
    read: Set[str] = set()
    outs: List[str] = []
    for layer in reversed(param.layer):
        for top in layer.top:
            if top not in read and top not in layer.bottom and top not in outs:
                outs.append(top)
        read.update(layer.bottom)
    return list(reversed(outs))


@dataclass(frozen=True)
class FoldPlan:
    """Where the output-channel permutation of one conv must be applied so the net is unchanged.

    :param channel_layers: channel-wise layers with per-channel weights (BatchNorm, Scale...).
    :param in_layers: layers whose input channels (axis 1 of the weights) are permuted.
    """

    target: str
    channel_layers: Tuple[str, ...]
    in_layers: Tuple[str, ...]


def fold_plan(param: "caffe_pb2.NetParameter", start: int, blob: str, target: str,
              source: str = "<net>") -> FoldPlan:
    """Follow the permuted ``blob`` (made by layer ``start``) through channel-wise layers
    until layers that read channels through their weights; refuse anything that mixes channels."""
    permuted: Set[str] = {blob}
    unread: Set[str] = {blob}
    channel_layers: List[str] = []
    in_layers: List[str] = []

    def refuse(why: str) -> ToolkitError:
        return ToolkitError(f"{source}: cannot fold the channel permutation of '{target}': {why}; "
                            "use --mode explicit")

    for j in range(start + 1, len(param.layer)):
        layer = param.layer[j]
        hits = [b for b in layer.bottom if b in permuted]
        if not hits:
            for top in layer.top:
                permuted.discard(top)
                unread.discard(top)
            continue
        unread.difference_update(hits)
        t = layer.type
        if t in CHANNEL_READERS:
            group = layer.convolution_param.group if t == "Convolution" else 1
            axis = layer.inner_product_param.axis if t == "InnerProduct" else 1
            if group != 1:
                raise refuse(f"layer '{layer.name}' is a grouped convolution (group {group})")
            if axis != 1 or len(layer.bottom) != 1:
                raise refuse(f"layer '{layer.name}' ({t}) does not read channels on axis 1")
            in_layers.append(layer.name)
            for top in layer.top:
                permuted.discard(top)
                unread.discard(top)
        elif t in CHANNELWISE:
            if t == "Scale" and (len(layer.bottom) != 1 or layer.scale_param.axis != 1
                                 or layer.scale_param.num_axes != 1):
                raise refuse(f"layer '{layer.name}' (Scale) is not a per-channel scale")
            if t == "Bias" and len(layer.bottom) != 1:
                raise refuse(f"layer '{layer.name}' (Bias) takes its bias from a blob")
            if t in CHANNEL_PARAM:
                channel_layers.append(layer.name)
            permuted.update(layer.top)
            unread.update(layer.top)
        else:
            raise refuse(f"layer '{layer.name}' ({t}) mixes or joins channels")
    if unread:
        raise refuse(f"blob '{sorted(unread)[0]}' is a network output")
    return FoldPlan(target, tuple(channel_layers), tuple(in_layers))
