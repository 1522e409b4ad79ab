"""The runtimes a classifier's forward passes run in: Caffe, the reference (and the only one with
gradients), and onnxruntime, which runs the same net exported to ONNX several times faster on a
CPU (issue 21: a quarter of the time on FashionNet's 28x28 maps).

``OnnxClassifier`` is a ``CaffeClassifier`` whose forward passes to the logits run in an
onnxruntime session; the graph comes from ``defense.generate.onnx_graph`` (the export), and
``defense.evaluate.runtime.classifier_for`` is the one factory that builds either. Before an
onnxruntime classifier is trusted, ``OnnxClassifier.verify`` checks on a sample that its top-1
equals Caffe's.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from defense.core import ToolkitError

from .classifier import CaffeClassifier

RUNTIMES = ("caffe", "onnx")
RUNTIME_CHOICES = ("auto",) + RUNTIMES  # auto: onnx where onnxruntime is installed, else caffe
# A top-1 that differs where Caffe's two logits differ by at most this (relative to the largest
# |logit|) is a tie that float32 rounding may break either way, not a mismatch: the two runtimes
# sum in different orders, about 1e-6 relative apart on the shipped nets.
TIE_TOLERANCE = 1e-4
# An output other than the logits (a cut graph's, such as PRN's rectified image) may differ from
# Caffe's by at most this, relative to its largest |value|: float32 rounding gives about 1e-6.
BLOB_TOLERANCE = 1e-4
CHECK_IMAGES = 16  # images of the check against Caffe where a command has no cheaper sample of its own


def onnxruntime_available() -> bool:
    """Whether the ONNX export (onnx) and onnxruntime can both be imported."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def resolve_runtime(requested: str, gpu: Optional[int] = None) -> str:
    """``auto`` -> ``onnx`` where onnxruntime is installed and Caffe runs on the CPU (``gpu`` None),
    else ``caffe``; ``onnx`` without onnxruntime is an error."""
    if requested not in RUNTIME_CHOICES:
        raise ValueError(f"--runtime must be one of {', '.join(RUNTIME_CHOICES)}, got '{requested}'")
    if requested == "auto":
        return "onnx" if gpu is None and onnxruntime_available() else "caffe"
    if requested == "onnx" and not onnxruntime_available():
        raise ToolkitError("--runtime onnx needs the onnx and onnxruntime packages: pip install '.[onnx]' "
                           "(or use --runtime caffe)")
    return requested


def onnx_session(model, threads: int = 0):
    """An onnxruntime CPU session for a model (ModelProto, serialized bytes or a path);
    ``threads`` 0: onnxruntime's default.

    Its thread pool does not spin between calls: the toolkit interleaves onnxruntime with Caffe
    in one process, and a spinning pool kept a core from Caffe's threads (FashionNet forward at
    batch 32 on 2 cores: 31 instead of 21 ms, docs/benchmarks.md), for about 7% of
    onnxruntime's own speed."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ToolkitError("running ONNX models needs onnxruntime: pip install '.[onnx]'") from None
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model.SerializeToString() if hasattr(model, "SerializeToString") else (
        model if isinstance(model, bytes) else str(model))
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class OnnxClassifier(CaffeClassifier):
    """A ``CaffeClassifier`` whose forward passes run in onnxruntime: same preprocessing, batching
    and metrics; forward only, no gradients, and only to the blobs the model outputs.

    :param reference: the Caffe classifier the model was exported from (kept for ``verify``).
    :param model: its ONNX model (ModelProto, bytes or path).
    :param outputs: Caffe blob -> the model's output of its values: the logits, or other blobs
        of a graph cut after them (``blob_values`` also serves the input blob, the preprocessed
        images).
    :param source: what the one-line errors name (the deploy prototxt).
    """

    def __init__(self, reference: CaffeClassifier, model, outputs: Mapping[str, str], threads: int = 0,
                 source: os.PathLike | str = "the network"):
        super().__init__(reference.net, reference.mean, reference.input_blob, reference.logits_blob,
                         clip=reference.clip, scale=reference.scale, batch_size=reference.batch_size)
        self.reference = reference
        self.source = str(source)
        self.session = onnx_session(model, threads)
        missing = sorted(set(outputs.values()) - {o.name for o in self.session.get_outputs()})
        if missing:
            raise ToolkitError(f"{self.source}: the ONNX model has no output '{missing[0]}'")
        self._onnx_input = self.session.get_inputs()[0].name
        self._onnx_outputs = dict(outputs)
        self.runtime_check: Optional[Dict[str, object]] = None  # what ``verify`` compared

    @property
    def caffe_classifier(self) -> CaffeClassifier:
        return self.reference

    def forward_batch(self, x: np.ndarray, blobs: Sequence[str] = ()) -> Dict[str, np.ndarray]:
        names = list(blobs) or [self.logits_blob]
        unknown = [b for b in names if b != self.input_blob and b not in self._onnx_outputs]
        if unknown:
            raise ToolkitError(f"the ONNX runtime computes only {', '.join(self._onnx_outputs)}, not '{unknown[0]}'; "
                               "use the Caffe runtime for other blobs")
        data = self.preprocess(self._check_x(x)).astype(np.float32)
        fetch = [b for b in names if b != self.input_blob]
        outputs = self.session.run([self._onnx_outputs[b] for b in fetch], {self._onnx_input: data}) if fetch else []
        values = dict(zip(fetch, outputs))
        values[self.input_blob] = data
        return {b: values[b] for b in names}

    def backward_batch(self, blob_diffs) -> np.ndarray:
        raise ToolkitError("gradients need the Caffe runtime (attacks run on Caffe)")

    def verify(self, sample: np.ndarray) -> Dict[str, object]:
        """Check on ``sample`` that onnxruntime's top-1 equals Caffe's (ties within ``TIE_TOLERANCE``
        excepted) where the model outputs the logits, and that every other output is Caffe's
        within ``BLOB_TOLERANCE``; a mismatch is a one-line ToolkitError. Returns (and keeps) what
        was compared."""
        sample = self._check_x(sample)
        blobs = list(self._onnx_outputs)
        expected = self.reference.blob_values(sample, blobs)
        got = self.blob_values(sample, blobs)
        check: Dict[str, object] = {"images": int(len(sample))}
        for blob in blobs:
            if blob == self.logits_blob:
                check.update(self._compare_top1(expected[blob].reshape(len(sample), -1),
                                                got[blob].reshape(len(sample), -1)))
                continue
            diff = float(np.abs(got[blob] - expected[blob]).max() / max(float(np.abs(expected[blob]).max()), 1e-12))
            if diff > BLOB_TOLERANCE:
                raise ToolkitError(f"{self.source}: onnxruntime's '{blob}' differs from Caffe's by {diff:.2g} relative "
                                   f"(more than {BLOB_TOLERANCE:g}); run with --runtime caffe")
            check.setdefault("max_rel_blob_diff", {})[blob] = diff
        self.runtime_check = check
        return check

    def _compare_top1(self, expected: np.ndarray, got: np.ndarray) -> Dict[str, object]:
        scale = np.maximum(np.abs(expected).max(axis=1), 1e-12)
        rows = np.arange(len(expected))
        want, have = expected.argmax(axis=1), got.argmax(axis=1)
        gap = (expected[rows, want] - expected[rows, have]) / scale
        bad = np.flatnonzero(gap > TIE_TOLERANCE)
        if bad.size:
            i = int(bad[0])
            raise ToolkitError(f"{self.source}: onnxruntime's top-1 differs from Caffe's on {bad.size} of "
                               f"{len(expected)} sample images (image {i}: Caffe {want[i]}, onnxruntime {have[i]}); "
                               "run with --runtime caffe")
        return {"top1_equal": int(np.sum(want == have)), "ties": int(np.sum(want != have)),
                "max_rel_logit_diff": float((np.abs(got - expected).max(axis=1) / scale).max())}
