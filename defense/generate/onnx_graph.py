"""Caffe net -> ONNX graph, for running the baselines and FRU models outside Caffe.

Built with onnx's own helpers from a loaded ``caffe.Net`` (its layers, including the Split layers
Caffe inserts, its blob shapes and its parameters) plus the prototxt's layer parameters, then
checked with ``onnx.checker``. Caffe's semantics are kept exactly where ONNX differs:
- in-place layers (ReLU, Dropout, BatchNorm, Scale) get fresh output names: ONNX graphs are SSA;
- pooling output sizes are Caffe's (ceil mode, and no window may start in the end padding):
  explicit end pads reproduce them, and average pooling counts the declared zero padding but not
  the overhang, as Caffe does (an explicit Pad node, then pads excluded from the count);
- BatchNorm divides its stored statistics by the moving-average factor in blob 2;
- InnerProduct flattens from its axis (Flatten + Gemm with the weights transposed);
- Reshape takes Caffe's top shape with the batch dimension left dynamic; BatchMatMul (the
  project's layer, FD's non-local means) is MatMul after Transposes for its transpose flags.

The runtime that runs such a graph, ``attacks.runtime.OnnxClassifier``, lives beside the Caffe
classifier; ``defense.evaluate.runtime.classifier_for`` picks between the two.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from attacks.runtime import onnx_session

from ..core import ToolkitError, caffe, caffe_pb2, load_net, read_net_param, write_bytes

OPSET = 17
SUPPORTED = ("Input", "Convolution", "Deconvolution", "Crop", "ReLU", "Pooling", "LRN", "InnerProduct", "BatchNorm",
             "Scale", "Eltwise", "Concat", "Slice", "Split", "Flatten", "Dropout", "Softmax", "Reshape", "Power",
             "BatchMatMul")


def _onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        raise ToolkitError("ONNX export needs the onnx package: pip install '.[onnx]' (make setup installs it)") from None
    return onnx, helper, numpy_helper


class _Graph:
    """Nodes, initializers and the current ONNX value name of each Caffe blob."""

    def __init__(self):
        self.onnx, self.helper, self.numpy_helper = _onnx()
        self.nodes: list = []
        self.inits: list = []
        self.value: Dict[str, str] = {}
        self.used: set = set()

    def fresh(self, name: str) -> str:
        out, i = name, 1
        while out in self.used:
            out, i = f"{name}__{i}", i + 1
        self.used.add(out)
        return out

    def const(self, name: str, array: np.ndarray) -> str:
        name = self.fresh(name)
        self.inits.append(self.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: Sequence[str], name: str, outputs: Optional[Sequence[str]] = None, **attrs) -> List[str]:
        outputs = [self.fresh(o) for o in (outputs or [name])]
        self.nodes.append(self.helper.make_node(op, list(inputs), outputs, name=self.fresh("node_" + name), **attrs))
        return outputs


def _pair(values, default: int, h_name: str = "", w_name: str = "", param=None) -> List[int]:
    """Caffe's (repeated value | value_h/value_w) convention as [h, w]."""
    if param is not None and h_name and (param.HasField(h_name) or param.HasField(w_name)):
        return [int(getattr(param, h_name)), int(getattr(param, w_name))]
    values = list(values) if not isinstance(values, int) else [values]
    if not values:
        return [default, default]
    return [int(values[0]), int(values[-1] if len(values) > 1 else values[0])]


def _pool_attrs(p, in_shape, out_shape):
    if p.global_pooling:
        return None
    k = [p.kernel_h, p.kernel_w] if p.HasField("kernel_h") else [p.kernel_size] * 2
    s = [p.stride_h, p.stride_w] if p.HasField("stride_h") else [p.stride] * 2
    pad = [p.pad_h, p.pad_w] if p.HasField("pad_h") else [p.pad] * 2
    # end pads that give Caffe's output size (ceil mode, last window starting inside the image)
    end = [(out_shape[2 + i] - 1) * s[i] + k[i] - in_shape[2 + i] - pad[i] for i in range(2)]
    return k, s, pad, end


def _lrn_as_ops(g: _Graph, lname: str, x: str, top: str, channels: int, r) -> List[str]:
    """Caffe's cross-channel LRN, ``x / (k + alpha / n * sum of x^2 over n channels)^beta``, as
    plain ops: the window sums as a 1x1 Conv with a banded weight matrix (zero beyond the first
    and last channel, as Caffe pads), the power as Exp(-beta Log(.)). The same function as ONNX's
    LRN op to float rounding, but onnxruntime's CPU LRN kernel takes a power per element and
    runs FashionNet at half the speed (57% of its forward pass)."""
    size, half = int(r.local_size), (int(r.local_size) - 1) // 2
    band = np.zeros((channels, channels, 1, 1), np.float32)
    for c in range(channels):
        band[c, max(0, c - half):c + half + 1] = r.alpha / size
    squares = g.node("Mul", [x, x], f"{lname}_squares")[0]
    k = g.const(f"{lname}_k", np.full(channels, r.k, np.float32))
    base = g.node("Conv", [squares, g.const(f"{lname}_band", band), k], f"{lname}_base", kernel_shape=[1, 1])[0]
    log = g.node("Log", [base], f"{lname}_log")[0]
    minus_beta = g.const(f"{lname}_minus_beta", np.array(-r.beta, np.float32))
    exponent = g.node("Mul", [log, minus_beta], f"{lname}_exponent")[0]
    return g.node("Mul", [x, g.node("Exp", [exponent], f"{lname}_factor")[0]], top)


def onnx_model(net: "caffe.Net", param: "caffe_pb2.NetParameter", extra_outputs: Sequence[str] = (),
               lrn_as_ops: bool = False):
    """The ONNX model of a loaded net (batch dimension dynamic). ``param`` is the net's
    definition (its layer parameters); ``extra_outputs``: more blobs to expose as graph outputs
    after the net's own (their final values), e.g. the logits before a Softmax.

    :param lrn_as_ops: LRN as plain ops (``_lrn_as_ops``; faster in onnxruntime) instead of
        ONNX's LRN op (the export's default: the op other runtimes know).
    """
    params = {layer.name: layer for layer in param.layer}
    g = _Graph()
    helper = g.helper
    shapes = {b: tuple(net.blobs[b].data.shape) for b in net.blobs}
    inputs = []
    for blob in net.inputs:
        g.value[blob] = g.fresh(blob)
        dims = ["N"] + list(shapes[blob][1:])
        inputs.append(helper.make_tensor_value_info(g.value[blob], g.onnx.TensorProto.FLOAT, dims))
    for i, lname in enumerate(net._layer_names):
        kind = net.layers[i].type
        bottoms = [g.value[b] for b in net.bottom_names[lname]]
        tops = list(net.top_names[lname])
        blobs = [b.data for b in net.layers[i].blobs]
        lp = params.get(lname, caffe_pb2.LayerParameter())
        if kind == "Input":
            continue
        if kind not in SUPPORTED:
            raise ToolkitError(f"layer '{lname}' has type '{kind}', which the ONNX export does not handle "
                               f"(handled: {', '.join(SUPPORTED)})")
        if kind in ("Convolution", "Deconvolution"):  # same blob layouts as ONNX's Conv and ConvTranspose
            c = lp.convolution_param
            ins = bottoms + [g.const(f"{lname}_W", blobs[0])] + ([g.const(f"{lname}_b", blobs[1])] if len(blobs) > 1 else [])
            k = _pair(c.kernel_size, 1, "kernel_h", "kernel_w", c)
            pad = _pair(c.pad, 0, "pad_h", "pad_w", c)
            out = g.node("Conv" if kind == "Convolution" else "ConvTranspose", ins, tops[0], kernel_shape=k,
                         strides=_pair(c.stride, 1, "stride_h", "stride_w", c), pads=pad + pad,
                         dilations=_pair(c.dilation, 1), group=int(c.group or 1))
        elif kind == "Crop":  # bottom 0 cut to bottom 1's shape from axis on, at the offsets
            cp = lp.crop_param
            rank = len(shapes[tops[0]])
            axis = cp.axis % rank
            if axis == 0:
                raise ToolkitError(f"layer '{lname}': Crop along the batch axis is not handled by the ONNX export")
            axes = list(range(axis, rank))
            offsets = [int(cp.offset[0])] * len(axes) if len(cp.offset) == 1 else [int(o) for o in cp.offset] or [0] * len(axes)
            ends = [o + shapes[tops[0]][a] for o, a in zip(offsets, axes)]
            out = g.node("Slice", [bottoms[0], g.const(f"{lname}_starts", np.array(offsets, np.int64)),
                                   g.const(f"{lname}_ends", np.array(ends, np.int64)),
                                   g.const(f"{lname}_axes", np.array(axes, np.int64))], tops[0])
        elif kind == "ReLU":
            slope = lp.relu_param.negative_slope
            out = (g.node("LeakyRelu", bottoms, tops[0], alpha=float(slope)) if slope
                   else g.node("Relu", bottoms, tops[0]))
        elif kind == "Pooling":
            p = lp.pooling_param
            op = {caffe_pb2.PoolingParameter.MAX: "Max", caffe_pb2.PoolingParameter.AVE: "Average"}.get(p.pool)
            if op is None:
                raise ToolkitError(f"layer '{lname}': STOCHASTIC pooling has no ONNX equivalent")
            attrs = _pool_attrs(p, shapes[net.bottom_names[lname][0]], shapes[tops[0]])
            if attrs is None:
                out = g.node(f"Global{op}Pool", bottoms, tops[0])
            else:
                k, s, pad, end = attrs
                x = bottoms[0]
                if op == "Average" and any(pad):  # Caffe counts the declared zero padding, not the overhang
                    pads = g.const(f"{lname}_pads", np.array([0, 0, pad[0], pad[1], 0, 0, pad[0], pad[1]], np.int64))
                    x = g.node("Pad", [x, pads], f"{lname}_padded")[0]
                    end = [e - q for e, q in zip(end, pad)]
                    pad = [0, 0]
                extra = dict(count_include_pad=0) if op == "Average" else {}
                out = g.node(f"{op}Pool", [x], tops[0], kernel_shape=k, strides=s, pads=pad + end, **extra)
        elif kind == "LRN":
            r = lp.lrn_param
            if r.norm_region != caffe_pb2.LRNParameter.ACROSS_CHANNELS:
                raise ToolkitError(f"layer '{lname}': LRN WITHIN_CHANNEL has no ONNX equivalent")
            if lrn_as_ops:
                out = _lrn_as_ops(g, lname, bottoms[0], tops[0], shapes[net.bottom_names[lname][0]][1], r)
            else:
                out = g.node("LRN", bottoms, tops[0], size=int(r.local_size), alpha=float(r.alpha),
                             beta=float(r.beta), bias=float(r.k))
        elif kind == "InnerProduct":
            ip = lp.inner_product_param
            flat = g.node("Flatten", bottoms, f"{lname}_flat", axis=int(ip.axis))[0]
            w = blobs[0].T if ip.transpose else blobs[0]
            bias = blobs[1] if len(blobs) > 1 else np.zeros(w.shape[0], np.float32)
            out = g.node("Gemm", [flat, g.const(f"{lname}_W", w), g.const(f"{lname}_b", bias)], tops[0], transB=1)
        elif kind == "BatchNorm":
            factor = float(blobs[2].ravel()[0]) if len(blobs) > 2 else 1.0
            scale = 0.0 if factor == 0 else 1.0 / factor
            mean, var = blobs[0] * scale, blobs[1] * scale
            ch = mean.shape[0]
            out = g.node("BatchNormalization", bottoms + [g.const(f"{lname}_scale", np.ones(ch, np.float32)),
                                                          g.const(f"{lname}_bias", np.zeros(ch, np.float32)),
                                                          g.const(f"{lname}_mean", mean.astype(np.float32)),
                                                          g.const(f"{lname}_var", var.astype(np.float32))],
                         tops[0], epsilon=float(lp.batch_norm_param.eps))
        elif kind == "Scale":
            if len(bottoms) != 1:
                raise ToolkitError(f"layer '{lname}': Scale with a second bottom is not handled by the ONNX export")
            rank = len(shapes[net.bottom_names[lname][0]])
            axis = lp.scale_param.axis % rank
            shape = blobs[0].shape + (1,) * (rank - axis - blobs[0].ndim)
            x = g.node("Mul", [bottoms[0], g.const(f"{lname}_gamma", blobs[0].reshape(shape))],
                       tops[0] if len(blobs) == 1 else f"{lname}_mul")
            out = x if len(blobs) == 1 else g.node("Add", [x[0], g.const(f"{lname}_beta", blobs[1].reshape(shape))], tops[0])
        elif kind == "Eltwise":
            e = lp.eltwise_param
            if e.operation == caffe_pb2.EltwiseParameter.SUM:
                terms = bottoms
                if len(e.coeff) and any(c != 1 for c in e.coeff):
                    terms = [x if c == 1 else g.node("Mul", [x, g.const(f"{lname}_c{j}", np.array(c, np.float32))],
                                                     f"{lname}_term{j}")[0]
                             for j, (x, c) in enumerate(zip(bottoms, e.coeff))]
                out = g.node("Sum", terms, tops[0])
            else:
                op = {caffe_pb2.EltwiseParameter.PROD: "Mul", caffe_pb2.EltwiseParameter.MAX: "Max"}[e.operation]
                if op == "Mul" and len(bottoms) > 2:
                    raise ToolkitError(f"layer '{lname}': Eltwise PROD of more than two inputs is not handled")
                out = g.node(op, bottoms, tops[0])
        elif kind == "Concat":
            out = g.node("Concat", bottoms, tops[0], axis=int(lp.concat_param.axis))
        elif kind == "Slice":
            s = lp.slice_param
            axis = int(s.axis)
            size = shapes[net.bottom_names[lname][0]][axis]
            points = list(s.slice_point) or [size * (j + 1) // len(tops) for j in range(len(tops) - 1)]
            split = np.diff([0] + points + [size]).astype(np.int64)
            out = g.node("Split", bottoms + [g.const(f"{lname}_split", split)], lname, outputs=tops, axis=axis)
        elif kind == "Split":
            out = [g.node("Identity", bottoms, t)[0] for t in tops]
        elif kind == "Flatten":
            f = lp.flatten_param
            if f.end_axis not in (-1, len(shapes[net.bottom_names[lname][0]]) - 1):
                raise ToolkitError(f"layer '{lname}': Flatten with end_axis is not handled by the ONNX export")
            out = g.node("Flatten", bottoms, tops[0], axis=int(f.axis))
        elif kind == "Dropout":
            out = g.node("Identity", bottoms, tops[0])
        elif kind == "Reshape":  # Caffe's own top shape, the batch dimension left dynamic (0: copied)
            r = lp.reshape_param
            if r.axis == 0 and (not r.shape.dim or r.shape.dim[0] != 0):
                raise ToolkitError(f"layer '{lname}': a Reshape that does not keep the batch axis is not handled")
            target = g.const(f"{lname}_shape", np.array([0] + list(shapes[tops[0]][1:]), np.int64))
            out = g.node("Reshape", bottoms + [target], tops[0])
        elif kind == "Power":  # (shift + scale x) ^ power
            pw, x = lp.power_param, bottoms[0]
            if pw.scale != 1:
                x = g.node("Mul", [x, g.const(f"{lname}_scale", np.array(pw.scale, np.float32))], f"{lname}_scaled")[0]
            if pw.shift != 0:
                x = g.node("Add", [x, g.const(f"{lname}_shift", np.array(pw.shift, np.float32))], f"{lname}_shifted")[0]
            if pw.power != 1:
                x = g.node("Pow", [x, g.const(f"{lname}_power", np.array(pw.power, np.float32))], f"{lname}_pow")[0]
            out = g.node("Identity", [x], tops[0])
        elif kind == "BatchMatMul":  # op(A[n]) op(B[n]); ONNX MatMul batches over the leading axis
            m = lp.batch_mat_mul_param
            a, b = bottoms
            if m.transpose_a:
                a = g.node("Transpose", [a], f"{lname}_at", perm=[0, 2, 1])[0]
            if m.transpose_b:
                b = g.node("Transpose", [b], f"{lname}_bt", perm=[0, 2, 1])[0]
            out = g.node("MatMul", [a, b], tops[0])
        else:  # Softmax
            out = g.node("Softmax", bottoms, tops[0], axis=int(lp.softmax_param.axis))
        for blob, value in zip(tops, out):
            g.value[blob] = value
    outputs = [helper.make_tensor_value_info(g.value[b], g.onnx.TensorProto.FLOAT, ["N"] + list(shapes[b][1:]))
               for b in list(net.outputs) + [b for b in extra_outputs if b not in net.outputs]]
    graph = helper.make_graph(g.nodes, param.name or "caffe", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fru-toolkit")
    model.ir_version = 8  # what onnxruntime 1.14 and newer read
    g.onnx.checker.check_model(model)
    return model


def logits_blobs(net: "caffe.Net") -> List[str]:
    """The bottoms of the net's Softmax layers: compared too, since probabilities saturate."""
    return [net.bottom_names[name][0] for name, layer in zip(net._layer_names, net.layers) if layer.type == "Softmax"]


def compare_with_caffe(net: "caffe.Net", model, batch: int = 2, seed: int = 0) -> float:
    """Max |onnx - caffe| / max |caffe| over the outputs of ``model`` (built with the logits as extra
    outputs) for one random pixel-scale batch: the export's check, and what the tests assert.

    Probabilities are compared through their logits: random weights give logits near 1,000, where
    a 1e-6 relative logit difference becomes 1e-4 in a saturated softmax."""
    softmax_tops = {net.top_names[name][0] for name, layer in zip(net._layer_names, net.layers)
                    if layer.type == "Softmax"}
    names = list(net.outputs) + [b for b in logits_blobs(net) if b not in net.outputs]
    session = onnx_session(model)
    if len(session.get_outputs()) != len(names):
        raise ValueError("compare_with_caffe needs the model built with the logits as extra outputs")
    shape = (batch,) + tuple(net.blobs[net.inputs[0]].data.shape[1:])
    x = (np.random.default_rng(seed).standard_normal(shape) * 50).astype(np.float32)
    got = session.run(None, {session.get_inputs()[0].name: x})
    net.blobs[net.inputs[0]].reshape(*shape)
    net.reshape()
    net.blobs[net.inputs[0]].data[...] = x
    net.forward()
    worst = 0.0
    for blob, value in zip(names, got):
        if blob in softmax_tops:
            continue
        ref = net.blobs[blob].data
        worst = max(worst, float(np.abs(value - ref).max() / max(np.abs(ref).max(), 1e-12)))
    return worst


def export_onnx(prototxt: os.PathLike | str, weights: os.PathLike | str, out: os.PathLike | str,
                check: bool = True, seed: int = 0) -> Dict[str, object]:
    """Write ``out`` (.onnx) for a deploy prototxt and its caffemodel; returns a summary (with the
    largest relative difference to Caffe on a random batch when ``check``)."""
    net = load_net(prototxt, weights, require_all=True)  # a layer left at zero would export silently
    model = onnx_model(net, read_net_param(prototxt), logits_blobs(net))
    path = write_bytes(out, model.SerializeToString())
    summary: Dict[str, object] = {"onnx": str(path), "opset": OPSET, "nodes": len(model.graph.node)}
    if check:
        summary["max_rel_diff"] = compare_with_caffe(net, model, seed=seed)
    return summary
