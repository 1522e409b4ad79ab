"""PRN's perturbation detector (Akhtar, Liu, Mian, CVPR 2018, Sec. 4.2).

A binary linear SVM (scikit-learn's ``LinearSVC``) on the log-magnitude 2-D DCT of what the PRN
changed, ``input - PRN(input)``, one orthonormal DCT-II per channel (``scipy.fft.dctn``). It is
fitted on training images, half clean and half perturbed with the training perturbations, after
the PRN is trained. The fitted model is kept as numbers (feature standardisation, weights,
intercept) in an ``.npz`` file read without pickle; at test time the rectified image is
classified only where the detector fires, the original image elsewhere.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np

from ..core import ToolkitError, atomic_path
from ..data import DataSource
from ..generate.competitors import PRN_OUTPUT

DCT_EPS = 1e-6
"""Added to |DCT| before the logarithm (a PRN that changed nothing gives log(eps), not -inf)."""
DETECTOR_FORMAT = "prn-detector-v1"


def dct_features(diff: np.ndarray) -> np.ndarray:
    """``log(|DCT-II(diff)| + eps)`` of each image's channels (orthonormal 2-D DCT), flattened.

    :param diff: (N, C, H, W) differences between the PRN's input and output.
    """
    from scipy.fft import dctn

    diff = np.asarray(diff, dtype=np.float64)
    if diff.ndim != 4:
        raise ValueError(f"DCT features need (N, C, H, W) differences, got shape {diff.shape}")
    coeffs = dctn(diff, type=2, norm="ortho", axes=(2, 3))
    return np.log(np.abs(coeffs) + DCT_EPS).reshape(len(diff), -1).astype(np.float32)


@dataclass(frozen=True)
class Detector:
    """A fitted linear detector: fires where ``((f - mean) / scale) . coef + intercept > 0``."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    def decision(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != self.coef.size:
            raise ValueError(f"the detector reads {self.coef.size} features per image, got shape {features.shape}")
        return ((features - self.mean) / self.scale) @ self.coef + self.intercept

    def fires(self, features: np.ndarray) -> np.ndarray:
        return self.decision(features) > 0

    def save(self, path: os.PathLike | str) -> Path:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, format=np.array(DETECTOR_FORMAT), mean=self.mean, scale=self.scale, coef=self.coef,
                     intercept=np.array(self.intercept), dct_eps=np.array(DCT_EPS))
        return Path(path)

    @classmethod
    def load(cls, path: os.PathLike | str) -> "Detector":
        """Read a detector file (no pickle); a missing, corrupt or inconsistent one is one ToolkitError."""
        path = Path(path)
        if not path.is_file():
            raise ToolkitError(f"{path}: detector file not found; train it with python -m defense.train --detector")
        try:
            data = np.load(path, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("an .npy array, not an .npz archive")
            with data:
                fields = {k: np.array(data[k]) for k in ("format", "mean", "scale", "coef", "intercept")}
        except (OSError, KeyError, ValueError, EOFError) as exc:
            raise ToolkitError(f"{path}: not a PRN detector file ({str(exc).splitlines()[0] if str(exc) else exc}); "
                               "retrain it with python -m defense.train --detector") from None
        if str(fields["format"]) != DETECTOR_FORMAT:
            raise ToolkitError(f"{path}: detector format '{fields['format']}', expected '{DETECTOR_FORMAT}'")
        mean, scale, coef = (fields[k].astype(np.float64).ravel() for k in ("mean", "scale", "coef"))
        if not (mean.size == scale.size == coef.size) or fields["intercept"].size != 1:
            raise ToolkitError(f"{path}: detector arrays disagree in size (mean {mean.size}, scale {scale.size}, "
                               f"coef {coef.size}); retrain it")
        if not all(np.isfinite(a).all() for a in (mean, scale, coef, fields["intercept"])) or (scale <= 0).any():
            raise ToolkitError(f"{path}: detector holds NaN, infinite or non-positive scale values; retrain it")
        return cls(mean, scale, coef, float(fields["intercept"]))


def fit_detector(clean: np.ndarray, perturbed: np.ndarray, c: float = 1.0, seed: int = 0) -> Detector:
    """A linear SVM separating perturbed (positive) from clean features, standardised first."""
    from sklearn.svm import LinearSVC

    if not len(clean) or not len(perturbed):
        raise ValueError("the detector needs clean and perturbed examples")
    x = np.concatenate([clean, perturbed]).astype(np.float64)
    y = np.r_[np.zeros(len(clean)), np.ones(len(perturbed))]
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-8] = 1.0
    svm = LinearSVC(C=c, dual=False, max_iter=5000, random_state=seed).fit((x - mean) / scale, y)
    return Detector(mean, scale, svm.coef_.ravel().astype(np.float64), float(svm.intercept_[0]))


def prn_features(prn, x: np.ndarray, batch_size: int, out_blob: str = PRN_OUTPUT, blobs: Sequence[str] = ()
                 ) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """DCT features of ``input - PRN(input)`` and the values of ``blobs``, in one pass.

    Each batch's forward pass stops at the last of these blobs (``CaffeClassifier.forward_batch``
    runs the layers up to their producers), so without ``blobs`` only the PRN runs, not the
    classifier behind it.

    :param prn: a ``CaffeClassifier`` of ``deploy_PRN.prototxt``.
    """
    values = prn.blob_values(x, [prn.input_blob, out_blob, *blobs], batch_size)
    return dct_features(values[prn.input_blob] - values[out_blob]), {b: values[b] for b in blobs}


def prn_outputs(prn, x: np.ndarray, batch_size: int, out_blob: str = PRN_OUTPUT) -> Tuple[np.ndarray, np.ndarray]:
    """Logits of the PRN-defended classifier and DCT features of ``input - PRN(input)``, in one pass.

    :param prn: a ``CaffeClassifier`` of ``deploy_PRN.prototxt``.
    """
    feats, values = prn_features(prn, x, batch_size, out_blob, [prn.logits_blob])
    return values[prn.logits_blob].reshape(len(x), -1), feats


def train_detector(prn, source: DataSource, perturbations: np.ndarray, images: int = 2000, seed: int = 0,
                   batch_size: int = 100, c: float = 1.0) -> Tuple[Detector, Dict[str, float]]:
    """Fit the detector on ``images`` training images (seeded): the first half clean, the second
    perturbed by a random training perturbation each; returns it and its training accuracy."""
    rng = np.random.default_rng([seed, 19])
    n = min(int(images), len(source))
    x, _ = source.take(np.sort(rng.choice(len(source), size=n, replace=False)))
    x = np.array(x, dtype=np.float32)
    half = n // 2
    x[half:] += perturbations[rng.integers(len(perturbations), size=n - half)]
    feats, _ = prn_features(prn, x, batch_size)
    detector = fit_detector(feats[:half], feats[half:], c, seed)
    fired = detector.fires(feats)
    return detector, {"images": n, "train_detection_rate": float(fired[half:].mean()),
                      "train_false_alarm_rate": float(fired[:half].mean())}


def detector_flags(detector: Detector, prn, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Whether the detector fires on each image of ``x`` (PRN's DCT features, then the SVM; the
    forward pass stops at the PRN's output)."""
    return detector.fires(prn_features(prn, x, batch_size)[0])


def detection_rates(clean_flags: np.ndarray, perturbed_flags: Sequence[np.ndarray]) -> Dict[str, float]:
    """Detection rate (perturbed images flagged) and false-alarm rate (clean images flagged), from
    ``detector_flags``; taking flags lets callers with many perturbed sets flag the clean ones once."""
    return {"false_alarm_rate": float(np.mean(clean_flags)),
            "detection_rate": float(np.mean([np.mean(f) for f in perturbed_flags])) if len(perturbed_flags) else None}


def gate(fires: np.ndarray, rectified: np.ndarray, plain: np.ndarray) -> np.ndarray:
    """Akhtar et al.'s test-time rule, per image: the PRN's output where the detector ``fires``,
    the undefended baseline's elsewhere.

    :param rectified: the PRN's outputs, ``plain`` the baseline's, image axis first: logits
        (N, classes), or per-image results such as top-1 labels and top-5 hits (N,).
    """
    fires = np.asarray(fires, dtype=bool)
    rectified = np.asarray(rectified)
    if fires.shape != rectified.shape[:1] or np.shape(plain) != rectified.shape:
        raise ValueError(f"gate: {fires.shape} flags, PRN outputs {rectified.shape}, baseline outputs {np.shape(plain)}")
    return np.where(fires.reshape(fires.shape + (1,) * (rectified.ndim - 1)), rectified, plain)


class DetectorGated:
    """PRN with its detector, as a classifier: the PRN's logits where the detector fires, the
    undefended baseline's elsewhere (``gate``)."""

    def __init__(self, prn, baseline, detector: Detector):
        self.prn, self.baseline, self.detector = prn, baseline, detector

    def logits(self, x: np.ndarray, batch_size=None) -> np.ndarray:
        rectified, feats = prn_outputs(self.prn, x, batch_size)
        return gate(self.detector.fires(feats), rectified, self.baseline.logits(x, batch_size))
