"""The one factory of classifiers for a runtime (``attacks.runtime``): Caffe, or the same net
exported to ONNX (``defense.generate.onnx_graph``) and run in onnxruntime, checked against Caffe.

Forward-only work (evaluation, the reproduction's predictions and xi calibration, the tables)
may run in onnxruntime; whatever needs a gradient (training, attacks) runs in Caffe.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from attacks.classifier import CaffeClassifier
from attacks.runtime import OnnxClassifier, resolve_runtime

from ..core import read_net_param
from ..generate.onnx_graph import onnx_model


def onnx_classifier(reference: CaffeClassifier, prototxt: os.PathLike | str, threads: int = 0) -> OnnxClassifier:
    """``reference``'s net exported to ONNX (its logits as an output) and run in onnxruntime."""
    net = reference.net
    extra = [] if reference.logits_blob in net.outputs else [reference.logits_blob]
    model = onnx_model(net, read_net_param(prototxt), extra)
    logits_output = model.graph.output[(list(net.outputs) + extra).index(reference.logits_blob)].name
    return OnnxClassifier(reference, model, logits_output, threads=threads, source=prototxt)


def classifier_for(prototxt: os.PathLike | str, weights: os.PathLike | str, mean, runtime: str = "caffe",
                   sample: Optional[np.ndarray] = None, threads: int = 0, **kw) -> CaffeClassifier:
    """A classifier of a deploy prototxt and its caffemodel in ``runtime`` (``auto``, ``caffe``, ``onnx``).

    :param sample: images on which an onnxruntime classifier's top-1 must equal Caffe's
        (``OnnxClassifier.verify``, whose record the classifier keeps as ``runtime_check``).
    :param threads: onnxruntime's intra-op threads (0: its default).
    """
    clf = CaffeClassifier.from_files(prototxt, weights, mean, **kw)
    if resolve_runtime(runtime) == "caffe":
        return clf
    fast = onnx_classifier(clf, prototxt, threads)
    if sample is not None:
        fast.verify(sample)
    return fast
