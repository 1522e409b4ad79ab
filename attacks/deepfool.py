"""DeepFool (Moosavi-Dezfooli, Fawzi, Frossard, CVPR 2016), run on a batch of images at once.

The per-image rule is the reference implementation's (LTS4/universal): linearise the
logits of the image's current top-k classes, step to the nearest linearised boundary
(plus 1e-4), repeat until the top-1 label changes or ``max_iter`` steps; the returned
step is ``(1 + overshoot) * r_total``. Batching only changes how many images share one
forward pass and the k-1 backward passes of an iteration; converged images leave the
batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class DeepFoolResult:
    """:param step: (N,C,H,W) = (1+overshoot) * accumulated step.
    :param converged: the top-1 label changed within ``max_iter`` steps.
    """

    step: np.ndarray
    converged: np.ndarray
    n_iter: np.ndarray


def deepfool(classifier, x: np.ndarray, num_classes: int = 10, overshoot: float = 0.02,
             max_iter: int = 50, batch_size: int | None = None) -> DeepFoolResult:
    """Minimal l_2 steps that change each image's top-1 label (see module docstring)."""
    x = np.asarray(x, dtype=np.float32)
    b = int(batch_size or classifier.batch_size)
    parts = [_deepfool_batch(classifier, x[s:s + b], num_classes, overshoot, max_iter)
             for s in range(0, len(x), b)]
    return DeepFoolResult(np.concatenate([p.step for p in parts]),
                          np.concatenate([p.converged for p in parts]),
                          np.concatenate([p.n_iter for p in parts]))


def _deepfool_batch(clf, x: np.ndarray, num_classes: int, overshoot: float, max_iter: int) -> DeepFoolResult:
    n = len(x)
    k = min(int(num_classes), clf.num_classes)
    lb = clf.logits_blob
    r_tot = np.zeros_like(x)
    converged = np.zeros(n, dtype=bool)
    n_iter = np.zeros(n, dtype=np.int64)
    logits = clf.forward_batch(x)[lb].reshape(n, -1)
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    label0 = top[:, 0]
    active = np.arange(n)
    xa = x.copy()
    fresh = True  # the net holds the forward pass of exactly xa
    for _ in range(max_iter):
        if k < 2:
            break
        if not fresh:
            logits = clf.forward_batch(xa)[lb].reshape(len(active), -1)
        shape = clf.net.blobs[lb].data.shape
        rows = np.arange(len(active))
        lab = label0[active]
        best_p = np.full(len(active), np.inf)
        best_w = np.zeros_like(xa)
        best_wn = np.ones(len(active))
        for j in range(1, k):
            cls = top[active, j]
            diff = np.zeros((len(active), clf.num_classes), dtype=np.float32)
            diff[rows, cls] = 1.0
            diff[rows, lab] -= 1.0
            w = clf.backward_batch({lb: diff.reshape(shape)})
            wn = np.sqrt((w.reshape(len(active), -1).astype(np.float64) ** 2).sum(axis=1))
            f = logits[rows, cls].astype(np.float64) - logits[rows, lab]
            with np.errstate(divide="ignore", invalid="ignore"):
                p = np.where(wn > 0, np.abs(f) / wn, np.inf)
            better = p < best_p
            best_p[better], best_wn[better] = p[better], wn[better]
            best_w[better] = w[better]
        finite = np.isfinite(best_p)
        scale = np.where(finite, (best_p + 1e-4) / best_wn, 0.0).astype(np.float32)
        r_tot[active] += scale[:, None, None, None] * best_w
        n_iter[active] += 1
        xa = x[active] + (1.0 + overshoot) * r_tot[active]
        logits = clf.forward_batch(xa)[lb].reshape(len(active), -1)
        still = logits.argmax(axis=1) == label0[active]
        converged[active[~still]] = True
        if still.all():
            fresh = True
            continue
        active, xa = active[still], xa[still]
        fresh = False
        if len(active) == 0:
            break
    return DeepFoolResult((1.0 + overshoot) * r_tot, converged, n_iter)
