"""Evaluate a baseline and its defended version side by side under universal perturbations.

The published protocol (Borkar, Heide, Karam, CVPR 2020, evaluation scripts): every test
image is perturbed by one perturbation drawn at random (seeded) from the attack's set, added
in pixel units before mean subtraction, not clipped by default. For every evaluated model
(baseline, FRU-defended, and optionally the baseline behind an image-domain peer defence) we
report clean and perturbed top-1, the fooling rate (top-1 label changes, ground truth
unused) and the restoration accuracy
``(clean top-1 + perturbed top-1) / (2 x clean top-1 of the undefended baseline)``;
all metrics come from ``attacks.metrics``, and ``metric_rows`` is the one place that turns
predictions into these per-model rows (also for the reproduction's cases and the paper's tables).
Reports (JSON, markdown, bar chart) are ``defense.evaluate.report``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from attacks.classifier import CaffeClassifier
from attacks.metrics import fooling_rate, fooling_report, restoration_accuracy

from ..data import DataSource
from .conditions import Condition, Predictions, draw_choices, predict_conditions
from .peers import Preprocessor


@dataclass(frozen=True)
class Model:
    """One row of the comparison: a classifier, optionally behind an image-domain preprocessor."""

    name: str
    classifier: CaffeClassifier
    preprocessor: Optional[Preprocessor] = None

    def logits(self, x: np.ndarray, batch_size: int) -> np.ndarray:
        """Logits (N, classes) of pixel-unit images, after the preprocessor if any."""
        if self.preprocessor is not None:
            x = self.preprocessor(x, self.classifier)
        return self.classifier.logits(x, batch_size)


# ---------------------------------------------------------------- metric rows
def metric_row(labels: np.ndarray, clean: Predictions, perturbed: Sequence[Predictions], seed: int = 0,
               top5: bool = False, fooling_ci: bool = True) -> Dict[str, object]:
    """The metrics of one model: clean and perturbed top-1 (and top-5), and the fooling rate.

    Several perturbed runs (a case averaged over its runs, such as S.Fool's conv3 and fc6 files)
    give the mean over the runs. With one run and ``fooling_ci`` the fooling rate comes with its
    bootstrap interval (``attacks.metrics.fooling_report``).
    """
    hits = [p.top1 == labels for p in perturbed]
    row: Dict[str, object] = {"clean_top1": float(np.mean(clean.top1 == labels))}
    if top5:
        row["clean_top5"] = float(clean.top5.mean())
    row["perturbed_top1"] = float(np.mean(hits, axis=0).mean())
    if top5:
        row["perturbed_top5"] = float(np.mean([p.top5.mean() for p in perturbed]))
    if len(perturbed) == 1 and fooling_ci:
        row.update(fooling_report(clean.top1, perturbed[0].top1, seed=seed))
    else:
        row["fooling_rate"] = float(np.mean([fooling_rate(clean.top1, p.top1) for p in perturbed]))
    return row


def metric_rows(labels: np.ndarray, preds: Mapping[str, Mapping[str, Predictions]], conditions: Sequence[str],
                models: Optional[Sequence[str]] = None, seed: int = 0, top5: bool = False,
                fooling_ci: bool = True, extra: Optional[Mapping[str, dict]] = None) -> Dict[str, Dict[str, object]]:
    """The one per-model comparison (``defense.evaluate``, the reproduction's cases, the paper's
    tables): ``metric_row`` of every model on ``conditions``, plus its ``extra`` fields.

    :param preds: ``{model: {condition: Predictions}}`` from ``predict_conditions``; ``clean`` included.
    """
    return {m: {**metric_row(labels, preds[m]["clean"], [preds[m][c] for c in conditions], seed, top5,
                                   fooling_ci),
                **((extra or {}).get(m) or {})}
            for m in (preds if models is None else models)}


def add_restoration(rows: Dict[str, Dict[str, object]], denominator: Optional[float],
                    key: str = "restoration_accuracy") -> None:
    """``(clean top-1 + perturbed top-1) / (2 x denominator)`` into every row (None without a denominator)."""
    for row in rows.values():
        row[key] = None if not denominator else restoration_accuracy(row["clean_top1"], row["perturbed_top1"],
                                                                     denominator)


def evaluate(models: Sequence[Model], source: DataSource, perturbations: Sequence[np.ndarray], seed: int = 0,
             baseline: Optional[str] = None, baseline_top1: Optional[float] = None, batch_size: int = 100,
             clip: bool = False, progress: bool = True) -> Dict[str, object]:
    """Metrics of every model on ``source``, clean and with one random perturbation per image.

    The perturbation of each image is drawn as the published scripts draw it
    (``defense.conditions.draw_choices``: numpy's legacy seed, one draw per image in order).

    :param baseline: name of the undefended model whose clean top-1 is the restoration
        denominator (default: the first model).
    :param baseline_top1: use this denominator instead (e.g. the published one).
    :param clip: clip perturbed images to [0, 255] (the published tables did not).
    """
    if not models:
        raise ValueError("evaluation needs at least one model")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be distinct, got {names}")
    baseline = baseline or names[0]
    if baseline not in names:
        raise ValueError(f"baseline '{baseline}' is not one of the models {names}")
    if not len(perturbations):
        raise ValueError("evaluation needs at least one perturbation")
    perts = np.stack([np.asarray(p, dtype=np.float32) for p in perturbations])
    if perts.shape[1:] != tuple(source.image_shape):
        raise ValueError(f"perturbations have shape {perts.shape[1:]}, the images {tuple(source.image_shape)}")
    which = draw_choices(len(source), len(perts), seed)
    conditions = [Condition("clean"), Condition("perturbed", perts, which)]
    labels, preds = predict_conditions({m.name: m for m in models}, source, conditions, batch_size, clip,
                                       progress=progress, desc="evaluate")
    rows = metric_rows(labels, preds, ("perturbed",), names, seed=seed,
                       extra={m.name: {"preprocessor": None if m.preprocessor is None else m.preprocessor.describe()}
                              for m in models})
    measured = float(rows[baseline]["clean_top1"])
    denominator = float(baseline_top1) if baseline_top1 is not None else measured
    add_restoration(rows, denominator)
    return {"images": len(source), "data": source.name, "perturbations": int(len(perts)), "seed": int(seed),
            "clip": bool(clip), "baseline": baseline, "baseline_clean_top1_measured": measured,
            "restoration_denominator": denominator,
            "perturbation_counts": np.bincount(which, minlength=len(perts)).tolist(), "models": rows}
