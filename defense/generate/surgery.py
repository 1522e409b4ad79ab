"""Weight surgery for FRU nets: pure functions over ``{layer name: [blob arrays]}``.

The initial FRU model must compute exactly what the baseline computes (each FRU starts as
the identity: its last 1x1 conv is zero), so training starts from the baseline's accuracy.
In folded mode the ranking permutation is baked into the target conv, its channel-wise
followers and the input channels of its consumers. Caffemodel I/O happens in the callers.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..core import Blobs, ToolkitError, caffe_pb2
from ..presets import FruTarget, fru_names
from .fru import resolve_targets
from .graph import fold_plan, layer_by_name, layer_index
from .ranking import inverse_permutation, permutation_matrix, rank_channels

BN_EPS = 1e-5


def permute_out_channels(blobs: Sequence[np.ndarray], perm: np.ndarray) -> List[np.ndarray]:
    """Conv/InnerProduct blobs with output channel ``i`` taken from channel ``perm[i]`` (weights and bias)."""
    perm = np.asarray(perm)
    out = []
    for b in blobs:
        if b.shape[0] != perm.size:
            raise ValueError(f"blob of shape {b.shape} has no {perm.size} output channels to permute")
        out.append(np.ascontiguousarray(b[perm]))
    return out


def permute_in_channels(weights: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Conv ``(O, C, kh, kw)`` or InnerProduct ``(O, C*H*W)`` weights reading the permuted input."""
    perm = np.asarray(perm)
    w = np.asarray(weights)
    if w.ndim == 2:
        if w.shape[1] % perm.size:
            raise ValueError(f"InnerProduct input size {w.shape[1]} is not a multiple of {perm.size} channels")
        return np.ascontiguousarray(w.reshape(w.shape[0], perm.size, -1)[:, perm].reshape(w.shape))
    if w.shape[1] != perm.size:
        raise ValueError(f"weights of shape {w.shape} do not read {perm.size} input channels")
    return np.ascontiguousarray(w[:, perm])


def permute_channel_params(layer_type: str, blobs: Sequence[np.ndarray], perm: np.ndarray) -> List[np.ndarray]:
    """Per-channel parameters (BatchNorm mean/variance, Scale, Bias, PReLU) in permuted order."""
    perm = np.asarray(perm)
    out = []
    for i, b in enumerate(blobs):
        if layer_type == "BatchNorm" and i == 2:  # the moving-average factor is one number
            out.append(np.array(b, copy=True))
        elif layer_type == "PReLU" and b.size == 1:  # channel_shared slope
            out.append(np.array(b, copy=True))
        else:
            out.append(np.ascontiguousarray(np.asarray(b).reshape(perm.size, -1)[perm].reshape(b.shape)))
    return out


def bn_affine(bn: Sequence[np.ndarray], scale: Optional[Sequence[np.ndarray]] = None,
              eps: float = BN_EPS) -> Tuple[np.ndarray, np.ndarray]:
    """``(a, b)`` with ``Scale(BatchNorm(x)) = a * x + b`` per channel, for Caffe's stored blobs
    (mean and variance multiplied by the moving-average factor)."""
    factor = float(np.asarray(bn[2]).ravel()[0]) if len(bn) > 2 else 1.0
    k = 0.0 if factor == 0 else 1.0 / factor
    mean = np.asarray(bn[0], dtype=np.float64).ravel() * k
    var = np.asarray(bn[1], dtype=np.float64).ravel() * k
    a = 1.0 / np.sqrt(var + eps)
    b = -mean * a
    if scale is not None:
        gamma = np.asarray(scale[0], dtype=np.float64).ravel()
        beta = np.asarray(scale[1], dtype=np.float64).ravel() if len(scale) > 1 else 0.0
        a, b = a * gamma, b * gamma + beta
    return a, b


def fold_bn(conv: Sequence[np.ndarray], bn: Sequence[np.ndarray], scale: Optional[Sequence[np.ndarray]] = None,
            eps: float = BN_EPS) -> List[np.ndarray]:
    """Conv blobs ``[W, b]`` computing ``Scale(BatchNorm(conv(x)))`` in one conv (inference statistics)."""
    a, b = bn_affine(bn, scale, eps)
    w = np.asarray(conv[0], dtype=np.float64)
    bias = np.asarray(conv[1], dtype=np.float64).ravel() if len(conv) > 1 else np.zeros(w.shape[0])
    if a.size != w.shape[0]:
        raise ValueError(f"BatchNorm has {a.size} channels, the conv {w.shape[0]}")
    w_new = w * a.reshape((-1,) + (1,) * (w.ndim - 1))
    return [w_new.astype(np.float32), (bias * a + b).astype(np.float32)]


def msra(shape: Tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Caffe's MSRA filler (variance 2 / fan-in)."""
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def identity_fru_blobs(target: FruTarget, rng: np.random.Generator) -> Blobs:
    """Blobs of one FRU that starts as the identity: last 1x1 conv zero, others MSRA,
    BatchNorm (mean 0, variance 1, factor 1), Scale (gamma 1, beta 0)."""
    names = fru_names(target)
    n, d = target.n, target.d
    shapes = [(d, n, 1, 1), (d, d, 3, 3), (d, d, 3, 3)]
    out: Blobs = {name: [msra(shape, rng)] for name, shape in zip(names.convs, shapes)}
    out[names.convs[3]] = [np.zeros((n, d, 1, 1), np.float32)]
    for bn, sc in zip(names.bns, names.scales):
        out[bn] = [np.zeros(d, np.float32), np.ones(d, np.float32), np.ones(1, np.float32)]
        out[sc] = [np.ones(d, np.float32), np.zeros(d, np.float32)]
    return out


def fold_permutation(base: "caffe_pb2.NetParameter", blobs: Blobs, target: str, perm: np.ndarray,
                     source: str = "<net>") -> Blobs:
    """A copy of ``blobs`` with ``target``'s output channels reordered by ``perm`` and every layer
    downstream adjusted (``graph.fold_plan``), so the net computes the same function."""
    i = layer_index(base, target, source)
    plan = fold_plan(base, i, base.layer[i].top[0], target, source)
    out = dict(blobs)
    out[target] = permute_out_channels(blobs[target], perm)
    for name in plan.channel_layers:
        if name in blobs:
            out[name] = permute_channel_params(layer_by_name(base, name).type, blobs[name], perm)
    for name in plan.in_layers:
        out[name] = [permute_in_channels(blobs[name][0], perm)] + [np.array(b) for b in blobs[name][1:]]
    return out


def init_fru_blobs(base: "caffe_pb2.NetParameter", base_blobs: Blobs, targets: Sequence[FruTarget],
                   mode: str = "explicit", seed: int = 0, norm: str = "l1",
                   source: str = "<net>") -> Tuple[Blobs, Dict[str, np.ndarray]]:
    """Initial weights of the FRU net built by ``insert_frus(base, targets, mode)``.

    Returns the blobs and the ranking permutation of each target (computed from ``base_blobs``).
    """
    resolved = resolve_targets(base, targets, mode, source)
    rng = np.random.default_rng(seed)
    out: Blobs = {k: [np.array(b) for b in v] for k, v in base_blobs.items()}
    perms: Dict[str, np.ndarray] = {}
    for layer, (target, channels) in resolved.items():
        if layer not in base_blobs:
            raise ToolkitError(f"{source}: the weights hold nothing for target layer '{layer}'")
        w = base_blobs[layer][0]
        if w.shape[0] != channels:
            raise ToolkitError(f"{source}: weights of '{layer}' have {w.shape[0]} output channels, "
                               f"the prototxt {channels}")
        perm = rank_channels(w, norm)
        perms[layer] = perm
        names = fru_names(target)
        if mode == "explicit":
            out[names.imap] = [permutation_matrix(perm)]
            out[names.remap] = [permutation_matrix(inverse_permutation(perm))]
        else:
            out = fold_permutation(base, out, layer, perm, source)
        out.update(identity_fru_blobs(target, rng))
    return out, perms


def random_blobs(shapes: Dict[str, List[Tuple[int, ...]]], types: Dict[str, str],
                 rng: np.random.Generator) -> Blobs:
    """Well-scaled random weights for tests and benchmarks (He-normal filters, small biases,
    BatchNorm statistics with a non-trivial moving-average factor)."""
    out: Blobs = {}
    for name, blob_shapes in shapes.items():
        kind = types.get(name, "")
        if kind == "BatchNorm":
            c = blob_shapes[0]
            factor = 2.0
            out[name] = [(rng.standard_normal(c) * 0.1 * factor).astype(np.float32),
                         (rng.uniform(0.5, 1.5, c) * factor).astype(np.float32),
                         np.full(blob_shapes[2], factor, np.float32)]
        elif kind == "Scale":
            out[name] = [(1.0 + 0.1 * rng.standard_normal(s)).astype(np.float32) if i == 0 else
                         (0.1 * rng.standard_normal(s)).astype(np.float32) for i, s in enumerate(blob_shapes)]
        else:
            out[name] = [msra(s, rng) if len(s) > 1 else (0.1 * rng.standard_normal(s)).astype(np.float32)
                         for s in blob_shapes]
    return out
