"""Feature regeneration units inserted into a baseline net (Borkar, Heide, Karam, CVPR 2020).

``insert_frus`` is the one place that lays out an FRU block (fru_presets.md): after target
conv T, the top-N ranked channels go through 1x1 N->D, 3x3 D->D, 3x3 D->D (each with
BatchNorm, Scale, ReLU) and 1x1 D->N, are added back to themselves (Eltwise SUM) and
concatenated with the untouched bottom-ranked channels. The ranking permutation is either
explicit (1x1 ``imap``/``remap`` convs around the block) or folded into the weights
(no extra layers; see ``graph.fold_plan``). One description gives the deploy net, the
train net (frozen baseline, trainable FRUs) and the solver.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from ..core import L, P, ToolkitError, caffe, caffe_pb2, solver_param
from ..presets import FruNames, FruTarget, fru_names
from .graph import fold_plan, insert_blocks, layer_index, num_param_blobs, output_blobs

log = logging.getLogger(__name__)

MODES = ("explicit", "folded")
_PLACEHOLDER = "__fru_input__"


@dataclass(frozen=True)
class FruBuild:
    """Deploy and train nets produced from one description."""

    deploy: "caffe_pb2.NetParameter"
    train: "caffe_pb2.NetParameter"
    targets: Tuple[FruTarget, ...]
    mode: str


def conv_channels(layer: "caffe_pb2.LayerParameter") -> int:
    return int(layer.convolution_param.num_output)


def resolve_targets(param: "caffe_pb2.NetParameter", targets: Sequence[FruTarget], mode: str,
                    source: str = "<net>") -> Dict[str, Tuple[FruTarget, int]]:
    """Check every target against the net; returns ``{layer name: (target, channels C)}``.

    Raises ToolkitError naming the problem: unknown or non-conv layer, N > C, a permutation
    that cannot be folded in ``folded`` mode.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got '{mode}'")
    if not targets:
        raise ValueError("at least one FRU target layer is needed")
    out: Dict[str, Tuple[FruTarget, int]] = {}
    for t in targets:
        if t.layer in out:
            raise ToolkitError(f"{source}: layer '{t.layer}' is listed twice as an FRU target")
        i = layer_index(param, t.layer, source)
        layer = param.layer[i]
        if layer.type != "Convolution":
            raise ToolkitError(f"{source}: FRU target '{t.layer}' is a {layer.type} layer, not a Convolution")
        if len(layer.top) != 1:
            raise ToolkitError(f"{source}: FRU target '{t.layer}' has {len(layer.top)} tops; expected one")
        c = conv_channels(layer)
        if t.n > c:
            raise ToolkitError(f"{source}: N={t.n} is larger than the {c} channels of '{t.layer}'")
        if t.n < 1 or t.d < 1:
            raise ToolkitError(f"{source}: FRU on '{t.layer}' needs N >= 1 and D >= 1, got N={t.n}, D={t.d}")
        if mode == "folded":
            if layer.convolution_param.group != 1:
                raise ToolkitError(f"{source}: cannot fold the channel permutation of '{t.layer}': it is a "
                                   f"grouped convolution (group {layer.convolution_param.group}); use --mode explicit")
            fold_plan(param, i, layer.top[0], t.layer, source)
        out[t.layer] = (t, c)
    return out


def _fru_layers(target: FruTarget, names: FruNames, channels: int, raw: str, final: str,
                mode: str) -> List["caffe_pb2.LayerParameter"]:
    """The layers of one FRU block, from the raw conv output ``raw`` to ``final``."""
    n = caffe.NetSpec()
    n[raw] = L.Input(name=_PLACEHOLDER)
    x = n[raw]
    if mode == "explicit":
        n[names.permuted_blob] = L.Convolution(x, name=names.imap, num_output=channels, kernel_size=1,
                                               bias_term=False)
        x = n[names.permuted_blob]
    whole = target.n == channels
    if whole:
        top = x
    else:
        n[names.top_blob], n[names.bottom_blob] = L.Slice(
            x, name=names.slice, ntop=2, slice_param=dict(axis=1, slice_point=[target.n]))
        top = n[names.top_blob]
    h = top
    shapes = [(target.d, 1, 0), (target.d, 3, 1), (target.d, 3, 1), (target.n, 1, 0)]
    for k, (num_out, ksize, pad) in enumerate(shapes):
        filler = dict(type="msra") if k < 3 else dict(type="constant", value=0)
        n[names.convs[k]] = L.Convolution(h, name=names.convs[k], num_output=num_out, kernel_size=ksize,
                                          pad=pad, bias_term=False, weight_filler=filler)
        h = n[names.convs[k]]
        if k < 3:
            n[names.bns[k]] = L.BatchNorm(h, name=names.bns[k], in_place=True,
                                          batch_norm_param=dict(use_global_stats=True))
            n[names.scales[k]] = L.Scale(n[names.bns[k]], name=names.scales[k], in_place=True,
                                         scale_param=dict(bias_term=True))
            n[names.relus[k]] = L.ReLU(n[names.scales[k]], name=names.relus[k], in_place=True)
            h = n[names.relus[k]]
    last_folded = mode == "folded" and whole
    merged = final if last_folded else names.merged_blob
    n[merged] = L.Eltwise(top, h, name=names.merge, eltwise_param=dict(operation=P.Eltwise.SUM))
    x = n[merged]
    if not whole:
        concat = final if mode == "folded" else names.concat_blob
        n[concat] = L.Concat(x, n[names.bottom_blob], name=names.concat, concat_param=dict(axis=1))
        x = n[concat]
    if mode == "explicit":
        n[final] = L.Convolution(x, name=names.remap, num_output=channels, kernel_size=1, bias_term=False)
    return [layer for layer in n.to_proto().layer if layer.name != _PLACEHOLDER]


def insert_frus(param: "caffe_pb2.NetParameter", targets: Sequence[FruTarget], mode: str = "explicit",
                source: str = "<net>") -> "caffe_pb2.NetParameter":
    """A copy of the deploy net ``param`` with an FRU block after each target conv.

    The target's top is renamed to ``<T>_inp`` and the block ends in the blob the target used
    to make, so every consumer is untouched (when the target already writes ``<T>_inp``, the
    block's output gets a new name and the later layers are rewired to it).
    """
    resolved = resolve_targets(param, targets, mode, source)
    blocks = {}
    for layer, (target, channels) in resolved.items():
        names = fru_names(target)
        fallback = names.remap if mode == "explicit" else names.concat_blob
        if target.n == channels and mode == "folded":
            fallback = names.merged_blob
        blocks[layer] = (names.raw_blob, fallback,
                         functools.partial(_fru_layers, target, names, channels, mode=mode))
        log.debug("FRU on %s: N=%d D=%d C=%d (%s)", layer, target.n, target.d, channels, mode)
    return insert_blocks(param, blocks)


# ---------------------------------------------------------------- train net and solver
def fru_layer_roles(targets: Sequence[FruTarget]) -> Dict[str, str]:
    """``{layer name: role}`` with roles conv, bn, scale, perm for the FRU layers."""
    roles: Dict[str, str] = {}
    for t in targets:
        names = fru_names(t)
        roles.update({c: "conv" for c in names.convs})
        roles.update({b: "bn" for b in names.bns})
        roles.update({s: "scale" for s in names.scales})
        roles.update({names.imap: "perm", names.remap: "perm"})
    return roles


def _set_params(layer: "caffe_pb2.LayerParameter", lr: float, decay: float) -> None:
    del layer.param[:]
    for _ in range(num_param_blobs(layer)):
        layer.param.add(lr_mult=lr, decay_mult=decay)


def train_net(deploy: "caffe_pb2.NetParameter", targets: Sequence[FruTarget], batch_size: int,
              source: str = "<net>") -> "caffe_pb2.NetParameter":
    """The FRU training net: baseline and permutation layers frozen (lr_mult 0, BatchNorm on
    global statistics), FRU convs and Scales learning, FRU BatchNorm learning its statistics;
    Input blobs ``data`` (batch-sized) and ``label``, SoftmaxWithLoss + Accuracy on the logits."""
    return train_net_for_roles(deploy, fru_layer_roles(targets), batch_size, source)


def train_net_for_roles(deploy: "caffe_pb2.NetParameter", roles: Dict[str, str], batch_size: int,
                        source: str = "<net>") -> "caffe_pb2.NetParameter":
    """A training net where only the layers in ``roles`` learn (``conv``: weights with decay,
    ``scale``: no decay, ``bn``: statistics from the batch); every other parameter layer is frozen.
    Shared by the FRUs and the trained competitor defences (``generate.competitors``)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    net = caffe_pb2.NetParameter()
    net.CopyFrom(deploy)
    del net.layer[:]
    softmax = _final_softmax(deploy, source)
    data_inputs = [layer for layer in deploy.layer if layer.type == "Input"]
    if not data_inputs:
        raise ToolkitError(f"{source}: the net has no Input layer for the images")
    for layer in deploy.layer:
        if layer.name == softmax.name:
            logits = layer.bottom[0]
            spec = caffe.NetSpec()
            spec[logits] = L.Input(name=_PLACEHOLDER)
            spec.label = L.Input(name=_PLACEHOLDER + "label")
            spec.loss = L.SoftmaxWithLoss(spec[logits], spec.label, name="loss")
            spec.accuracy = L.Accuracy(spec[logits], spec.label, name="accuracy")
            net.layer.extend(x for x in spec.to_proto().layer if not x.name.startswith(_PLACEHOLDER))
            continue
        new = net.layer.add()
        new.CopyFrom(layer)
        role = roles.get(layer.name)
        if layer.type == "Input":
            new.input_param.shape[0].dim[0] = batch_size
            if layer is data_inputs[0]:
                label = net.layer.add(name="label", type="Input")
                label.top.append("label")
                label.input_param.shape.add().dim.append(batch_size)
        elif role == "conv":
            _set_params(new, 1.0, 1.0)
        elif role == "scale":
            _set_params(new, 1.0, 0.0)
        elif role == "bn":
            _set_params(new, 0.0, 0.0)
            new.batch_norm_param.use_global_stats = False
        elif num_param_blobs(layer):
            _set_params(new, 0.0, 0.0)
            if layer.type == "BatchNorm":
                new.batch_norm_param.use_global_stats = True
    return net


def _final_softmax(param: "caffe_pb2.NetParameter", source: str) -> "caffe_pb2.LayerParameter":
    outs = set(output_blobs(param))
    for layer in param.layer:
        if layer.type == "Softmax" and layer.top and layer.top[0] in outs:
            return layer
    raise ToolkitError(f"{source}: no final Softmax layer; the train net needs the logits that feed it")


FRU_SOLVER = dict(base_lr=0.01, momentum=0.9, weight_decay=5e-4, lr_policy="step", gamma=0.1, stepsize=10000,
                  max_iter=30000, snapshot=2000, snapshot_prefix="snapshots/fru", display=50, random_seed=0,
                  solver_mode="CPU")
"""FRU training's SGD schedule (the paper's is not published; these are defaults)."""


def fru_solver_param(net: str = "train.prototxt", **overrides) -> "caffe_pb2.SolverParameter":
    """The FRU solver: ``FRU_SOLVER`` with ``overrides``, built by ``core.solver_param``."""
    return solver_param(net, **{**FRU_SOLVER, **overrides})


def build_fru(base: "caffe_pb2.NetParameter", targets: Sequence[FruTarget], mode: str = "explicit",
              batch_size: int = 32, source: str = "<net>") -> FruBuild:
    """Deploy and train nets for these targets (the solver comes from ``fru_solver_param``)."""
    deploy = insert_frus(base, targets, mode, source)
    return FruBuild(deploy=deploy, train=train_net(deploy, targets, batch_size, source),
                    targets=tuple(targets), mode=mode)
