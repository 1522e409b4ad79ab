"""A deliberately wrong ONNX export, for the tests of the runtime check against Caffe."""
from __future__ import annotations

from typing import Callable


def negated_logits(export: Callable) -> Callable:
    """``export`` (``defense.generate.onnx_graph.onnx_model``) with the last Gemm's weights and bias
    negated: the logits change sign, so onnxruntime's top-1 is Caffe's bottom-1."""
    from onnx import numpy_helper

    def wrong(net, param, extra_outputs=(), **options):
        model = export(net, param, extra_outputs, **options)
        gemm = [node for node in model.graph.node if node.op_type == "Gemm"][-1]
        for init in model.graph.initializer:
            if init.name in gemm.input[1:]:
                init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), init.name))
        return model
    return wrong
