"""The toolkit's attack metrics, defined once. Every rate is a fraction in [0, 1].

- fooling rate: fraction of images whose top-1 label on x + v differs from the top-1 label
  on clean x (Moosavi-Dezfooli et al., CVPR 2017); ground truth is not used.
- top-1 / top-5 accuracy: fraction of images whose ground-truth label is the top-1 / among
  the top-5 scores.
- restoration accuracy (Borkar, Heide, Karam, CVPR 2020):
  (clean top-1 + perturbed top-1 of the evaluated net) / (2 x clean top-1 of the baseline).
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import numpy as np


def fooling_rate(clean_labels: np.ndarray, adv_labels: np.ndarray) -> float:
    clean_labels, adv_labels = np.asarray(clean_labels), np.asarray(adv_labels)
    if clean_labels.shape != adv_labels.shape or clean_labels.ndim != 1:
        raise ValueError(f"label arrays must be 1-D and alike, got {clean_labels.shape} and {adv_labels.shape}")
    if clean_labels.size == 0:
        raise ValueError("fooling rate of zero images is undefined")
    return float(np.mean(clean_labels != adv_labels))


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction of rows of ``scores`` (N, classes) whose ``labels`` entry is among the top k."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.ndim != 2 or labels.shape != (len(scores),):
        raise ValueError(f"scores must be (N, classes) and labels (N,), got {scores.shape} and {labels.shape}")
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"k must be in [1, {scores.shape[1]}], got {k}")
    return float(np.mean(topk_hits(scores, labels, k)))


def topk_hits(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per-image booleans: label among the top-k scores (ties broken by index)."""
    top = np.argsort(-np.asarray(scores), axis=1, kind="stable")[:, :k]
    return (top == np.asarray(labels)[:, None]).any(axis=1)


def restoration_accuracy(clean_top1, perturbed_top1, baseline_clean_top1: float):
    """The paper's formula, in one place: top-1 rates give a float; per-image hits (arrays of 0/1)
    give per-image values whose mean is the restoration accuracy (what a bootstrap resamples)."""
    if not baseline_clean_top1 > 0:
        raise ValueError(f"baseline clean top-1 must be positive, got {baseline_clean_top1}")
    value = (np.asarray(clean_top1, dtype=np.float64) + perturbed_top1) / (2.0 * baseline_clean_top1)
    return float(value) if value.ndim == 0 else value


def bootstrap_ci(values: np.ndarray, statistic: Callable[[np.ndarray], float] = np.mean,
                 n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> Tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over per-image ``values`` (resampled rows)."""
    values = np.asarray(values)
    if len(values) == 0:
        raise ValueError("bootstrap needs at least one value")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    stats = np.array([statistic(values[rng.integers(0, len(values), size=len(values))])
                      for _ in range(int(n_boot))], dtype=np.float64)
    a = (1 - confidence) / 2
    return float(np.quantile(stats, a)), float(np.quantile(stats, 1 - a))


def fooling_report(clean_labels: np.ndarray, adv_labels: np.ndarray, seed: int = 0) -> Dict[str, object]:
    """Fooling rate with its 95% bootstrap interval, as reported in JSON."""
    fooled = (np.asarray(clean_labels) != np.asarray(adv_labels)).astype(np.float64)
    lo, hi = bootstrap_ci(fooled, seed=seed)
    return {"fooling_rate": fooling_rate(clean_labels, adv_labels), "ci95": [lo, hi], "n_images": int(len(fooled))}
