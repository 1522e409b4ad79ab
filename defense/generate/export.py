"""Fast deploy export: the same function as an FRU model, without permutation, Slice or Concat.

In an explicit FRU block ``out = remap(concat(top + f(top), bottom))`` with
``[top, bottom] = slice(imap(x))``; since imap/remap are permutations, this is
``out = x + scatter(f(gather(x)))``: the gather goes into the FRU's first 1x1 conv (C->D,
zero weights on the bottom-ranked inputs), the scatter into its last (D->C, zero rows for the
bottom-ranked outputs), and one Eltwise SUM over the whole blob replaces Slice, Eltwise,
Concat and both C x C permutation convs. Inference-time BatchNorm + Scale are folded into
the preceding conv (or merged into one Scale layer where no conv precedes them).

The FRU blocks are found by graph structure (Slice -> conv chain -> Eltwise SUM -> Concat,
with an optional 1x1 permutation conv on each side), so the released files work too.

  python -m defense.export --prototxt deploy_FRU.prototxt --weights fru.caffemodel --out DIR
      (the command line: ``defense/export.py``)
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..core import Blobs, ToolkitError, caffe, caffe_pb2, load_net, read_net_param, set_net_blobs, write_net_param
from .build import load_base_blobs, save_net_weights
from .graph import normalize, output_blobs, producer, readers
from .ranking import inverse_permutation, permutation_from_matrix
from .surgery import bn_affine, fold_bn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FruBlock:
    """One FRU block found in a net (layer names; ``imap``/``remap`` empty in folded layouts)."""

    raw_blob: str
    out_blob: str
    imap: str
    slice: str
    chain: Tuple[str, ...]      # first conv ... last conv (BatchNorm/Scale/ReLU in between)
    merge: str
    concat: str
    remap: str
    n: int
    channels: int

    @property
    def layers(self) -> Tuple[str, ...]:
        return tuple(x for x in (self.imap, self.slice) + self.chain + (self.merge, self.concat, self.remap) if x)


def blob_channels(net: "caffe.Net") -> Dict[str, int]:
    """Channels (axis 1) of each blob of a built net: what ``find_fru_blocks`` and ``fast_layout``
    need to know of shapes."""
    return {name: int(b.data.shape[1]) for name, b in net.blobs.items() if b.data.ndim > 1}


def _only_reader(param, blob: str, start: int) -> Optional[int]:
    found = readers(param, blob, start)
    return found[0] if len(found) == 1 else None


def _is_perm_conv(layer, blobs: Blobs, channels: int) -> Optional[np.ndarray]:
    """The permutation a 1x1 C->C conv without bias applies, or None if it is not one."""
    if layer.type != "Convolution" or layer.convolution_param.bias_term or layer.name not in blobs:
        return None
    if layer.convolution_param.num_output != channels or len(blobs[layer.name]) != 1:
        return None
    try:
        return permutation_from_matrix(blobs[layer.name][0])
    except ValueError:
        return None


def find_fru_blocks(param: "caffe_pb2.NetParameter", blobs: Blobs,
                    channels_of: Dict[str, int]) -> List[FruBlock]:
    """Every FRU block of the net, found by structure (not by name).

    :param channels_of: channels of each blob (from a built net).
    """
    blocks = []
    for s_idx, sl in enumerate(param.layer):
        if sl.type != "Slice" or len(sl.top) != 2 or len(sl.bottom) != 1:
            continue
        if sl.slice_param.axis != 1 or len(sl.slice_param.slice_point) != 1:
            continue
        n = int(sl.slice_param.slice_point[0])
        top, bottom = sl.top
        # FRU chain: single-reader path from `top` to the merge, convs at both ends.
        chain: List[int] = []
        blob, pos = top, s_idx
        first = readers(param, top, s_idx)
        convs = [j for j in first if param.layer[j].type == "Convolution"]
        merges = [j for j in first if param.layer[j].type == "Eltwise"]
        if len(first) != 2 or len(convs) != 1 or len(merges) != 1:
            continue
        j = convs[0]
        while True:
            layer = param.layer[j]
            if len(layer.bottom) != 1 or len(layer.top) != 1 or layer.type not in (
                    "Convolution", "BatchNorm", "Scale", "ReLU"):
                break
            chain.append(j)
            blob, pos = layer.top[0], j
            nxt = readers(param, blob, pos)
            if not nxt:
                break
            j = nxt[0]
            in_place = param.layer[j].top[:1] == [blob]
            if len(nxt) > 1 and not in_place:  # the chain branches: not an FRU
                break
        if not chain or param.layer[j].type != "Eltwise" or j != merges[0]:
            continue
        merge = param.layer[j]
        if set(merge.bottom) != {top, blob} or len(merge.bottom) != 2 or merge.eltwise_param.coeff or \
                merge.eltwise_param.operation != caffe_pb2.EltwiseParameter.SUM:
            continue
        c_last = param.layer[chain[-1]]
        if c_last.type != "Convolution" or c_last.convolution_param.num_output != n:
            continue
        if any(param.layer[k].convolution_param.group != 1 for k in (chain[0], chain[-1])) or \
                any(list(param.layer[k].convolution_param.kernel_size) not in ([1], [])
                    for k in (chain[0], chain[-1])):
            continue
        cat_idx = _only_reader(param, merge.top[0], j)
        if cat_idx is None:
            continue
        cat = param.layer[cat_idx]
        if cat.type != "Concat" or list(cat.bottom) != [merge.top[0], bottom] or cat.concat_param.axis != 1 \
                or readers(param, bottom, s_idx) != [cat_idx]:
            continue
        # optional permutation convs around the block
        src = sl.bottom[0]
        p_idx = producer(param, src, s_idx)
        imap = remap = ""
        raw, out = src, cat.top[0]
        after = _only_reader(param, cat.top[0], cat_idx)
        if p_idx is not None and after is not None and readers(param, src, p_idx) == [s_idx]:
            p_layer, a_layer = param.layer[p_idx], param.layer[after]
            channels = int(channels_of[src])
            perm = _is_perm_conv(p_layer, blobs, channels)
            inv = _is_perm_conv(a_layer, blobs, channels)
            if perm is not None and inv is not None and np.array_equal(inv, inverse_permutation(perm)):
                imap, remap, raw, out = p_layer.name, a_layer.name, p_layer.bottom[0], a_layer.top[0]
        blocks.append(FruBlock(raw_blob=raw, out_blob=out, imap=imap, slice=sl.name,
                               chain=tuple(param.layer[k].name for k in chain), merge=merge.name,
                               concat=cat.name, remap=remap, n=n, channels=int(channels_of[raw])))
    return blocks


def _strip_params(layer: "caffe_pb2.LayerParameter") -> None:
    del layer.param[:]


def fast_layout(param: "caffe_pb2.NetParameter", blobs: Blobs, channels_of: Dict[str, int],
                source: str = "<net>") -> Tuple["caffe_pb2.NetParameter", Blobs, int]:
    """The fast layout of an FRU net and its weights; returns (net, blobs, number of FRU blocks)."""
    blocks = find_fru_blocks(param, blobs, channels_of)
    if not blocks:
        raise ToolkitError(f"{source}: no FRU block found (Slice -> conv chain -> Eltwise SUM -> Concat)")
    by_slice = {b.slice: b for b in blocks}
    skip = {name for b in blocks for name in b.layers}
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    new_blobs: Blobs = {k: v for k, v in blobs.items()}
    layers = {layer.name: layer for layer in param.layer}
    for layer in param.layer:
        if layer.name in by_slice:
            out.layer.extend(_fast_block(by_slice[layer.name], layers, blobs, new_blobs))
        elif layer.name not in skip:
            out.layer.add().CopyFrom(layer)
    for b in blocks:
        for name in (b.imap, b.remap):
            new_blobs.pop(name, None)
    out, new_blobs = fold_batchnorm(out, new_blobs)
    return out, new_blobs, len(blocks)


def _fast_block(block: FruBlock, layers, blobs: Blobs, new_blobs: Blobs) -> List["caffe_pb2.LayerParameter"]:
    """conv1' (C->D, gathers the top-ranked inputs), the middle of the chain, conv4' (D->C,
    scatters to the top-ranked outputs), Eltwise SUM with the raw blob."""
    c = block.channels
    perm = permutation_from_matrix(blobs[block.imap][0]) if block.imap else np.arange(c)
    top = perm[:block.n]
    result = []
    first, last = block.chain[0], block.chain[-1]
    for name in block.chain:
        layer = caffe_pb2.LayerParameter()
        layer.CopyFrom(layers[name])
        _strip_params(layer)
        if name == first:
            w = blobs[name][0]
            wide = np.zeros((w.shape[0], c) + w.shape[2:], np.float32)
            wide[:, top] = w
            layer.bottom[0] = block.raw_blob
            new_blobs[name] = [wide] + [np.array(b) for b in blobs[name][1:]]
        if name == last:
            w = blobs[name][0] if name != first else new_blobs[name][0]
            tall = np.zeros((c,) + w.shape[1:], np.float32)
            tall[top] = w
            rest = []
            if len(blobs[name]) > 1:
                bias = np.zeros(c, np.float32)
                bias[top] = blobs[name][1].ravel()
                rest = [bias.reshape((c,) + blobs[name][1].shape[1:])]
            layer.convolution_param.num_output = c
            new_blobs[name] = [tall] + rest
        result.append(layer)
    merge = caffe_pb2.LayerParameter()
    merge.CopyFrom(layers[block.merge])
    del merge.bottom[:]
    merge.bottom.extend([block.raw_blob, layers[last].top[0]])
    merge.top[0] = block.out_blob
    result.append(merge)
    return result


def fold_batchnorm(param: "caffe_pb2.NetParameter", blobs: Blobs) -> Tuple["caffe_pb2.NetParameter", Blobs]:
    """Inference BatchNorm (+ the Scale after it) folded into the conv that feeds only them;
    where no such conv exists, the pair becomes one Scale layer (one pass instead of two)."""
    blobs = dict(blobs)
    drop = set()
    replace: Dict[str, "caffe_pb2.LayerParameter"] = {}
    conv_updates: Dict[str, Tuple[bool, str]] = {}
    for i, bn in enumerate(param.layer):
        if bn.type != "BatchNorm" or (bn.batch_norm_param.HasField("use_global_stats")
                                      and not bn.batch_norm_param.use_global_stats):
            continue
        x = bn.bottom[0]
        after = readers(param, bn.top[0], i)
        scale_idx = after[0] if after else None
        scale = param.layer[scale_idx] if scale_idx is not None else None
        if scale is not None and not (scale.type == "Scale" and len(scale.bottom) == 1
                                      and scale.bottom[0] == bn.top[0] and scale.scale_param.axis == 1
                                      and scale.scale_param.num_axes == 1
                                      and (scale.top[0] == bn.top[0] or after == [scale_idx])):
            scale = None
        final_top = scale.top[0] if scale is not None else bn.top[0]
        eps = bn.batch_norm_param.eps
        scale_blobs = blobs.get(scale.name) if scale is not None else None
        p_idx = producer(param, x, i)
        conv = param.layer[p_idx] if p_idx is not None else None
        foldable = (conv is not None and conv.type == "Convolution" and len(conv.top) == 1
                    and conv.name not in conv_updates and readers(param, x, p_idx)[:1] == [i]
                    and (bn.top[0] == x or readers(param, x, p_idx) == [i]))
        if foldable:
            blobs[conv.name] = fold_bn(blobs[conv.name], blobs[bn.name], scale_blobs, eps)
            conv_updates[conv.name] = (True, final_top)
        else:
            a, b = bn_affine(blobs[bn.name], scale_blobs, eps)
            new = caffe_pb2.LayerParameter(name=scale.name if scale is not None else bn.name, type="Scale")
            new.bottom.append(x)
            new.top.append(final_top)
            new.scale_param.bias_term = True
            replace[bn.name] = new
            blobs[new.name] = [a.astype(np.float32), b.astype(np.float32)]
        drop.add(bn.name)
        blobs.pop(bn.name, None)
        if scale is not None:
            drop.add(scale.name)
            if foldable:
                blobs.pop(scale.name, None)
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    for layer in param.layer:
        if layer.name in replace:
            out.layer.add().CopyFrom(replace[layer.name])
            continue
        if layer.name in drop:
            continue
        new = out.layer.add()
        new.CopyFrom(layer)
        if layer.name in conv_updates:
            new.convolution_param.bias_term = True
            new.top[0] = conv_updates[layer.name][1]
            _strip_params(new)
    return out, blobs


# ---------------------------------------------------------------- export
def export_fast(prototxt: os.PathLike | str, weights: os.PathLike | str, out_dir: os.PathLike | str,
                check: bool = True, seed: int = 0) -> Dict[str, object]:
    """Write DIR/deploy_fast.prototxt and DIR/fast.caffemodel; returns a summary (max relative
    difference of the outputs on a random input when ``check``)."""
    param = normalize(read_net_param(prototxt), str(prototxt))
    blobs = load_base_blobs(param, weights, prototxt)
    net = load_net(param, source=prototxt)
    fast, fast_blobs, n_blocks = fast_layout(param, blobs, blob_channels(net), str(prototxt))
    if fast.name:
        fast.name = f"{fast.name}_fast"
    out = Path(out_dir)
    deploy = write_net_param(out / "deploy_fast.prototxt", fast,
                             f"Fast layout of {prototxt} (python -m defense.export)")
    model = save_net_weights(out / "fast.caffemodel", fast, fast_blobs)
    summary: Dict[str, object] = {"prototxt": str(deploy), "weights": str(model), "fru_blocks": n_blocks}
    if check:
        summary["max_rel_diff"] = compare_outputs(param, blobs, fast, fast_blobs, seed)
    return summary


def compare_outputs(a_param, a_blobs: Blobs, b_param, b_blobs: Blobs, seed: int = 0) -> float:
    """Max |a - b| / max |a| over every output blob (and the logits) for one random input."""
    nets = []
    for param, blobs in ((a_param, a_blobs), (b_param, b_blobs)):
        net = load_net(param)
        set_net_blobs(net, blobs)
        nets.append(net)
    rng = np.random.default_rng(seed)
    for name in nets[0].inputs:
        x = (rng.standard_normal(nets[0].blobs[name].data.shape) * 50).astype(np.float32)
        for net in nets:
            net.blobs[name].data[...] = x
    for net in nets:
        net.forward()
    names = [b for b in output_blobs(a_param) if b in nets[1].blobs]
    names += [layer.bottom[0] for layer in a_param.layer if layer.type == "Softmax" and layer.top[0] in names]
    worst = 0.0
    for name in names:
        ref, got = nets[0].blobs[name].data, nets[1].blobs[name].data
        worst = max(worst, float(np.abs(ref - got).max() / max(np.abs(ref).max(), 1e-12)))
    return worst
