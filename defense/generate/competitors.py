"""The paper's competitor defences as generated nets (issue 19): PRN and HGD (here), FD (its
blocks in ``fd.py``), and the registry
through which every competitor (PRN, HGD, PD, FD) goes through the toolkit's life cycle.

The interface (one entry of ``COMPETITORS`` per defence, keyed by its lower-case name):

- ``kind`` says where the defence sits and what trains:

  * ``prepend``: a net prepended to the frozen classifier (PRN, HGD). ``build(base, batch,
    source)`` returns a ``CompetitorBuild``: the deploy net (the defence's output feeds every
    layer that read the image), the train net (only ``roles`` learn) and the trainable layers;
  * ``internal``: layers inside the classifier, the whole net trains (FD: denoising blocks after
    the FRU target layers). Same ``build`` contract plus ``layers`` (the target layers: the
    generator's ``--layers`` or the preset's FRU targets); its ``roles`` name every layer with
    learned parameters (the baseline's BatchNorm layers keep their stored statistics, as FD's
    paper fine-tunes: a small batch would only add noise to them);
  * ``preprocess``: an image-domain transform, nothing trains (PD). ``build`` is None; the
    evaluation wraps the baseline in ``defense.evaluate.peers.make_peer(name)``.

- the generator (``python -m defense.generate --defense NAME``) writes ``DIR/deploy_<NAME>.prototxt``,
  ``train.prototxt``, ``solver.prototxt`` (the FRUs' schedule: same iterations, same batch) and,
  with ``--weights``, ``init.caffemodel``: the baseline's blobs plus the defence's, initialised so
  that the defended net starts as the baseline (the defence's last layer is zero);
- ``python -m defense.train --dir DIR`` trains it on the FRUs' half-clean, half-perturbed batches;
  a train net with an Input ``clean`` (HGD's LGD loss) is fed the unperturbed batch beside it;
- evaluation loads ``deploy_<NAME>.prototxt`` with the trained weights like any classifier.

Net sizes come from one description (``prepend_layout``): 28x28 nets (FashionNet) get width 16
at full resolution, ImageNet nets (224/227) width 64 after a stride-2 stem (PRN) or four
downsamplings (HGD); every choice the papers leave open is listed in docs/competitors.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..core import L, P, ToolkitError, caffe, caffe_pb2
from .fd import fd_deploy, fd_names
from .fru import _final_softmax, train_net_for_roles

KINDS = ("prepend", "internal", "preprocess")
CLEAN_BLOB = "clean"
"""Input of a train net that needs the unperturbed batch beside the mixed one (HGD's LGD loss)."""


@dataclass(frozen=True)
class CompetitorBuild:
    """Deploy and train nets of a generated competitor, and its trainable layers (name -> role)."""

    name: str
    deploy: "caffe_pb2.NetParameter"
    train: "caffe_pb2.NetParameter"
    roles: Dict[str, str]
    output_blob: str


@dataclass(frozen=True)
class Competitor:
    """One competitor defence: its paper, its kind and (for trained kinds) its net builder."""

    name: str
    title: str
    paper: str
    kind: str
    build: Optional[Callable[..., CompetitorBuild]] = None
    solver: Tuple[Tuple[str, object], ...] = ()
    """Solver fields that differ from the FRUs' (iterations and batch never do)."""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got '{self.kind}'")
        if (self.build is None) != (self.kind == "preprocess"):
            raise ValueError(f"competitor '{self.name}': a {self.kind} defence needs a net builder iff it trains")

    @property
    def file_name(self) -> str:
        """The deploy file the generator writes: ``deploy_<NAME>.prototxt``."""
        return f"deploy_{self.name.upper()}.prototxt"


# ---------------------------------------------------------------- sizing: one description
@dataclass(frozen=True)
class PrependLayout:
    """Size of a prepended net for an input of ``channels`` x ``height`` x ``width``.

    :param width: channels at full resolution (16 for 28x28 inputs, 64 from 64x64 on).
    :param prn_stride: PRN's stem stride (2 on ImageNet-size inputs, as published; 1 on 28x28).
    :param hgd_levels: HGD's downsamplings (4 on 224/227 as DUNET has; 2 on 28x28: 28 -> 14 -> 7).
    """

    channels: int
    height: int
    width: int
    features: int
    prn_stride: int
    hgd_levels: int

    def hgd_width(self, level: int) -> int:
        """DUNET's widths 64, 128, 256, 256, 256: doubling per level, capped at 4x."""
        return self.features * min(2 ** level, 4)


PRN_BLOCKS = 5
"""Residual blocks of the PRN (Akhtar et al.: five ResNet blocks between convolutional layers)."""
HGD_MIN_SIDE = 7
HGD_MAX_LEVELS = 4


def prepend_layout(shape: Tuple[int, int, int]) -> PrependLayout:
    """The sizes of PRN and HGD for a (C, H, W) input, from one rule."""
    c, h, w = (int(v) for v in shape)
    small = min(h, w) < 64
    levels, side = 0, min(h, w)
    while levels < HGD_MAX_LEVELS and (side + 1) // 2 >= HGD_MIN_SIDE:
        side, levels = (side + 1) // 2, levels + 1
    return PrependLayout(c, h, w, features=16 if small else 64, prn_stride=1 if small else 2, hgd_levels=levels)


# ---------------------------------------------------------------- NetSpec blocks
def _conv(n, name: str, bottom, num_output: int, kernel: int, stride: int = 1, zero: bool = False):
    filler = dict(type="constant", value=0) if zero else dict(type="msra")
    pad = kernel // 2
    n[name] = L.Convolution(bottom, name=name, num_output=num_output, kernel_size=kernel, pad=pad,
                            **({"stride": stride} if stride != 1 else {}), bias_term=False, weight_filler=filler)
    return n[name]


def _bn_relu(n, name: str, bottom, relu: bool = True):
    """BatchNorm + Scale (+ ReLU) in place, as the FRU blocks have them."""
    n[f"{name}_bn"] = L.BatchNorm(bottom, name=f"{name}_bn", in_place=True,
                                  batch_norm_param=dict(use_global_stats=True))
    n[f"{name}_scale"] = L.Scale(n[f"{name}_bn"], name=f"{name}_scale", in_place=True,
                                 scale_param=dict(bias_term=True))
    if not relu:
        return n[f"{name}_scale"]
    n[f"{name}_relu"] = L.ReLU(n[f"{name}_scale"], name=f"{name}_relu", in_place=True)
    return n[f"{name}_relu"]


def _conv_bn(n, name: str, bottom, num_output: int, kernel: int = 3, stride: int = 1, relu: bool = True):
    return _bn_relu(n, name, _conv(n, name, bottom, num_output, kernel, stride), relu)


def _upsample(n, name: str, bottom, num_output: int, like):
    """x2 learned upsampling (Deconvolution 4x4, stride 2), cropped to ``like``'s size (odd sides)."""
    n[f"{name}_deconv"] = L.Deconvolution(bottom, name=f"{name}_deconv", convolution_param=dict(
        num_output=num_output, kernel_size=4, stride=2, pad=1, bias_term=False, weight_filler=dict(type="msra")))
    n[f"{name}_crop"] = L.Crop(n[f"{name}_deconv"], like, name=f"{name}_crop", crop_param=dict(axis=2, offset=[0]))
    return _bn_relu(n, f"{name}_deconv", n[f"{name}_crop"])


PRN_OUTPUT = "prn/out"  # the PRN's rectified image, the classifier's input and the detector's


def _prn_layers(n, data, layout: PrependLayout):
    """PRN: stem conv, five residual blocks, (upsampling), a zero-initialised conv to the image's
    channels; the output is the input plus that correction (the identity before training)."""
    w = layout.features
    x = _conv_bn(n, "prn/conv_in", data, w, 3, layout.prn_stride)
    for k in range(1, PRN_BLOCKS + 1):
        h = _conv_bn(n, f"prn/res{k}_a", x, w)
        h = _conv_bn(n, f"prn/res{k}_b", h, w, relu=False)
        n[f"prn/res{k}"] = L.Eltwise(x, h, name=f"prn/res{k}", eltwise_param=dict(operation=P.Eltwise.SUM))
        n[f"prn/res{k}_relu"] = L.ReLU(n[f"prn/res{k}"], name=f"prn/res{k}_relu", in_place=True)
        x = n[f"prn/res{k}_relu"]
    if layout.prn_stride != 1:
        x = _upsample(n, "prn/up", x, w, data)
    residual = _conv(n, "prn/conv_out", x, layout.channels, 3, zero=True)
    n[PRN_OUTPUT] = L.Eltwise(data, residual, name=PRN_OUTPUT, eltwise_param=dict(operation=P.Eltwise.SUM))
    return PRN_OUTPUT


def _hgd_layers(n, data, layout: PrependLayout):
    """HGD's denoising U-Net (DUNET): a forward path of two-conv blocks, each after the first
    starting with a stride-2 conv; a backward path of upsampling, concatenation with the lateral
    block and two convs; a zero-initialised 1x1 conv predicts the noise, subtracted from the input."""
    skips = []
    x = data
    for level in range(layout.hgd_levels + 1):
        stride = 1 if level == 0 else 2
        x = _conv_bn(n, f"hgd/down{level}_a", x, layout.hgd_width(level), 3, stride)
        x = _conv_bn(n, f"hgd/down{level}_b", x, layout.hgd_width(level))
        skips.append(x)
    for level in range(layout.hgd_levels - 1, -1, -1):
        width = layout.hgd_width(level)
        up = _upsample(n, f"hgd/up{level}", x, width, skips[level])
        n[f"hgd/up{level}_concat"] = L.Concat(up, skips[level], name=f"hgd/up{level}_concat", concat_param=dict(axis=1))
        x = _conv_bn(n, f"hgd/up{level}_a", n[f"hgd/up{level}_concat"], width)
        x = _conv_bn(n, f"hgd/up{level}_b", x, width)
    noise = _conv(n, "hgd/noise", x, layout.channels, 1, zero=True)
    n["hgd/out"] = L.Eltwise(data, noise, name="hgd/out",
                             eltwise_param=dict(operation=P.Eltwise.SUM, coeff=[1.0, -1.0]))
    return "hgd/out"


# ---------------------------------------------------------------- prepending
def _image_input(base: "caffe_pb2.NetParameter", source: str) -> "caffe_pb2.LayerParameter":
    inputs = [layer for layer in base.layer if layer.type == "Input"]
    if not inputs or not inputs[0].input_param.shape or len(inputs[0].input_param.shape[0].dim) != 4:
        raise ToolkitError(f"{source}: the net has no 4-D Input layer for the images; a competitor is prepended to it")
    return inputs[0]


PARAMETER_ROLES = {"Convolution": "conv", "Deconvolution": "conv", "InnerProduct": "conv", "Scale": "scale",
                   "BatchNorm": "bn"}
"""The ``train_net_for_roles`` role of each layer type that holds parameters."""


def defence_roles(param: "caffe_pb2.NetParameter", prefix: str) -> Dict[str, str]:
    """``{layer: role}`` of the layers named ``<prefix>...`` that hold parameters."""
    return {layer.name: PARAMETER_ROLES[layer.type] for layer in param.layer
            if layer.name.startswith(prefix) and layer.type in PARAMETER_ROLES}


def prepend(base: "caffe_pb2.NetParameter", prefix: str, layers: Callable, name: str,
            source: str = "<net>") -> Tuple["caffe_pb2.NetParameter", str]:
    """A copy of the deploy net ``base`` whose image first goes through ``layers`` (NetSpec
    blocks named ``<prefix>...``); every layer that read the image reads their output."""
    data = _image_input(base, source)
    blob = data.top[0]
    if any(layer.name.startswith(prefix) for layer in base.layer):
        raise ToolkitError(f"{source}: the net already has layers named '{prefix}...'; give it the baseline net")
    shape = tuple(int(d) for d in data.input_param.shape[0].dim[1:])
    n = caffe.NetSpec()
    n[blob] = L.Input(name="__placeholder__")
    out = layers(n, n[blob], prepend_layout(shape))
    new_layers = [layer for layer in n.to_proto().layer if layer.name != "__placeholder__"]
    deploy = caffe_pb2.NetParameter()
    deploy.CopyFrom(base)
    deploy.name = f"{base.name or source}_{name}"
    del deploy.layer[:]
    for layer in base.layer:
        new = deploy.layer.add()
        new.CopyFrom(layer)
        if layer is data:
            deploy.layer.extend(new_layers)
            continue
        for i, bottom in enumerate(new.bottom):
            if bottom == blob:
                new.bottom[i] = out
    return deploy, out


def lgd_train_net(train: "caffe_pb2.NetParameter", prefix: str, out_blob: str, data_blob: str,
                  batch_size: int, source: str = "<net>") -> "caffe_pb2.NetParameter":
    """HGD's train net: the LGD loss ``mean_i || f(D(x_i)) - f(x_i^clean) ||_1`` on the logits.

    The clean logits come from a second copy of the frozen classifier (layers ``lgd_clean/...``)
    that reads the Input ``clean`` and shares every parameter blob with the first by name, so the
    solver loop stays one forward/backward pass and the weights exist once. Dropout is dropped from
    both copies: the target of the loss must not be random."""
    classifier = [layer for layer in train.layer if not layer.name.startswith(prefix)
                  and layer.type not in ("Input", "SoftmaxWithLoss", "Accuracy", "Dropout")]
    loss = next((layer for layer in train.layer if layer.type == "SoftmaxWithLoss"), None)
    if loss is None:
        raise ToolkitError(f"{source}: the train net has no SoftmaxWithLoss on the logits")
    logits = loss.bottom[0]
    net = caffe_pb2.NetParameter()
    net.CopyFrom(train)
    del net.layer[:]
    for layer in train.layer:
        if layer.type in ("SoftmaxWithLoss", "Dropout"):
            continue
        new = net.layer.add()
        new.CopyFrom(layer)
        if layer in classifier:
            for j, spec in enumerate(new.param):
                spec.name = f"{layer.name}#{j}"
        if layer.type == "Input" and layer.top[0] == data_blob:
            clean = net.layer.add(name=CLEAN_BLOB, type="Input")
            clean.top.append(CLEAN_BLOB)
            clean.input_param.shape.add().CopyFrom(layer.input_param.shape[0])
    rename = {out_blob: CLEAN_BLOB}
    for layer in classifier:
        new = net.layer.add()
        new.CopyFrom(layer)
        new.name = f"lgd_clean/{layer.name}"
        for seq in (new.bottom, new.top):
            for i, blob in enumerate(seq):
                seq[i] = rename.setdefault(blob, f"lgd_clean/{blob}")
        for j, spec in enumerate(new.param):
            spec.name = f"{layer.name}#{j}"
    n = caffe.NetSpec()
    n[logits] = L.Input(name="__placeholder__")
    n[rename[logits]] = L.Input(name="__placeholder_clean__")
    n["lgd/diff"] = L.Eltwise(n[logits], n[rename[logits]], name="lgd/diff",
                              eltwise_param=dict(operation=P.Eltwise.SUM, coeff=[1.0, -1.0]))
    n["loss"] = L.Reduction(n["lgd/diff"], name="loss", loss_weight=1.0,
                            reduction_param=dict(operation=P.Reduction.ASUM, axis=0, coeff=1.0 / batch_size))
    net.layer.extend(x for x in n.to_proto().layer if not x.name.startswith("__placeholder"))
    return net


def build_prepended(base: "caffe_pb2.NetParameter", name: str, batch_size: int = 32,
                    source: str = "<net>") -> CompetitorBuild:
    """Deploy and train nets of the prepended competitor ``name`` (``prn`` or ``hgd``)."""
    prefix = f"{name}/"
    layers = {"prn": _prn_layers, "hgd": _hgd_layers}[name]
    deploy, out = prepend(base, prefix, layers, name.upper(), source)
    _final_softmax(deploy, source)
    roles = defence_roles(deploy, prefix)
    train = train_net_for_roles(deploy, roles, batch_size, source)
    if name == "hgd":
        train = lgd_train_net(train, prefix, out, _image_input(base, source).top[0], batch_size, source)
    return CompetitorBuild(name, deploy, train, roles, out)


def _prepended(name: str) -> Callable[..., CompetitorBuild]:
    def build(base: "caffe_pb2.NetParameter", batch_size: int = 32, source: str = "<net>") -> CompetitorBuild:
        return build_prepended(base, name, batch_size, source)
    return build


def build_fd(base: "caffe_pb2.NetParameter", batch_size: int = 32, source: str = "<net>",
             layers: Optional[Sequence[str]] = None, affinity: str = "auto") -> CompetitorBuild:
    """FD's deploy and train nets: denoising blocks (``fd.py``) after ``layers``; every layer with
    learned parameters trains, the BatchNorm layers keep the baseline's statistics."""
    if not layers:
        raise ToolkitError(f"{source}: FD needs its target layers (--layers, or a preset's FRU targets)")
    deploy, plan = fd_deploy(base, layers, affinity, source)
    roles = {layer: role for layer, role in defence_roles(deploy, "").items() if role != "bn"}
    train = train_net_for_roles(deploy, roles, batch_size, source)
    merges = {fd_names(target.layer).merge for target in plan}
    last_block = [layer for layer in deploy.layer if layer.name in merges][-1]
    return CompetitorBuild("fd", deploy, train, roles, last_block.top[0])


COMPETITORS: Dict[str, Competitor] = {
    "prn": Competitor("prn", "PRN", "Akhtar, Liu, Mian, Defense against Universal Adversarial Perturbations, "
                      "CVPR 2018", "prepend", _prepended("prn")),
    "hgd": Competitor("hgd", "HGD", "Liao et al., Defense against Adversarial Attacks Using High-Level "
                      "Representation Guided Denoiser, CVPR 2018", "prepend", _prepended("hgd"),
                      solver=(("solver_type", "Adam"), ("base_lr", 0.001))),
    "fd": Competitor("fd", "FD", "Xie, Wu, van der Maaten, Yuille, He, Feature Denoising for Improving Adversarial "
                     "Robustness, CVPR 2019", "internal", build_fd,
                     solver=(("solver_type", "Adam"), ("base_lr", 1e-4))),
}
"""Every competitor defence by name; PD joins with one entry. FD fine-tunes the whole net as
adversarial fine-tuning does (Adam, 1e-4)."""
DEFENCES = ("fru",) + tuple(COMPETITORS)
TITLES = frozenset(c.title for c in COMPETITORS.values())
"""The names under which reports show the competitors' rows."""


def get_competitor(name: str) -> Competitor:
    key = name.lower()
    if key not in COMPETITORS:
        raise ToolkitError(f"unknown defence '{name}'; valid: {', '.join(DEFENCES)}")
    return COMPETITORS[key]


def trainable_parameters(build: CompetitorBuild, blob_shapes: Dict[str, List[Tuple[int, ...]]]) -> int:
    """Learned parameter count of the defence (convs and Scales; BatchNorm statistics excluded)."""
    return int(sum(int(np.prod(s)) for layer, role in build.roles.items() if role != "bn"
                   for s in blob_shapes.get(layer, [])))
