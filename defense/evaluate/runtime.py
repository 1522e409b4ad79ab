"""The one factory of classifiers for a runtime (``attacks.runtime``): Caffe, or the same net
exported to ONNX (``defense.generate.onnx_graph``) and run in onnxruntime, checked against Caffe.

Forward-only work (evaluation, the reproduction's predictions and xi calibration, the tables)
may run in onnxruntime; whatever needs a gradient (training, attacks) runs in Caffe.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from attacks.classifier import CaffeClassifier
from attacks.runtime import OnnxClassifier, resolve_runtime

from ..core import read_net_param
from ..generate.onnx_graph import onnx_model


def onnx_classifier(reference: CaffeClassifier, prototxt: os.PathLike | str, threads: int = 0,
                    blobs: Sequence[str] = ()) -> OnnxClassifier:
    """``reference``'s net exported to ONNX and run in onnxruntime, with LRN as plain ops
    (``onnx_graph._lrn_as_ops``: twice as fast there). Its output: the logits, or ``blobs`` alone
    from a graph cut after them, so that only the layers they need run (PRN's rectifier without
    the classifier behind it)."""
    net = reference.net
    wanted = list(blobs) or [reference.logits_blob]
    exposed = list(net.outputs) + [b for b in wanted if b not in net.outputs]
    model = onnx_model(net, read_net_param(prototxt), exposed[len(net.outputs):], lrn_as_ops=True)
    outputs = {b: model.graph.output[exposed.index(b)].name for b in wanted}
    if blobs:
        from onnx.utils import Extractor
        model = Extractor(model).extract_model([i.name for i in model.graph.input], list(outputs.values()))
    return OnnxClassifier(reference, model, outputs, threads=threads, source=prototxt)


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
