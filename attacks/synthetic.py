"""Synthetic perturbations from a small set of UAPs (the defence paper's training
augmentation, as far as it is known; Borkar, Heide, Karam, CVPR 2020).

The paper's exact algorithm is not available (see paper_facts.md, Sec. 5); this module
implements the configurable rule: start from v = 0 and repeatedly mix in a randomly chosen
member v_new with a random weight alpha ~ U[0, 1] until ||v||_2 reaches ``threshold``
(default: the smallest l_2 norm in the set). Rules: ``convex`` (v <- alpha v_new +
(1 - alpha) v) and ``additive`` (v <- v + alpha v_new). A convex mixture can fail to reach
the threshold (e.g. members of equal norm); after ``max_steps`` it is rescaled onto the
threshold and the count of such rescalings is reported.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Dict, Union

import numpy as np

log = logging.getLogger(__name__)

Rule = Callable[[np.ndarray, np.ndarray, float], np.ndarray]

RULES: Dict[str, Rule] = {
    "convex": lambda v, new, a: a * new + (1.0 - a) * v,
    "additive": lambda v, new, a: v + a * new,
}


@dataclass
class SyntheticResult:
    perturbations: np.ndarray  # (count, C, H, W) float32
    steps: np.ndarray          # mixing steps per perturbation
    rescaled: int              # perturbations rescaled after max_steps
    threshold: float


def l2_norms(stack: np.ndarray) -> np.ndarray:
    return np.sqrt((stack.reshape(len(stack), -1).astype(np.float64) ** 2).sum(axis=1))


def synthesize(perturbations: np.ndarray, count: int, rng: np.random.Generator,
               threshold: Union[float, str, None] = None, rule: str = "convex",
               max_steps: int = 1000) -> SyntheticResult:
    """``count`` synthetic perturbations from ``perturbations`` (K, C, H, W)."""
    base = np.asarray(perturbations, dtype=np.float32)
    if base.ndim != 4 or len(base) < 1:
        raise ValueError(f"perturbations must be a (K, C, H, W) stack with K >= 1, got shape {base.shape}")
    if isinstance(count, bool) or int(count) != count or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    if int(max_steps) < 1:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps}")
    norms = l2_norms(base)
    if threshold is None or threshold == "min":
        thr = float(norms.min())
    elif threshold == "max":
        thr = float(norms.max())
    else:
        thr = float(threshold)
    if not thr > 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    mix = RULES[rule]
    out = np.empty((int(count),) + base.shape[1:], dtype=np.float32)
    steps = np.zeros(int(count), dtype=np.int64)
    rescaled = 0
    for i in range(int(count)):
        v = np.zeros(base.shape[1:], dtype=np.float64)
        n = 0.0
        while n < thr and steps[i] < max_steps:
            j = int(rng.integers(len(base)))
            alpha = float(rng.uniform(0.0, 1.0))
            v = mix(v, base[j].astype(np.float64), alpha)
            n = float(np.sqrt((v ** 2).sum()))
            steps[i] += 1
        if n < thr:
            if n == 0:
                raise ValueError("synthetic mixing produced a zero perturbation; the set holds only zeros")
            v *= thr / n
            rescaled += 1
        out[i] = v
    if rescaled:
        log.warning("%d of %d synthetic perturbations did not reach l2 %.1f in %d steps and were rescaled",
                    rescaled, count, thr, max_steps)
    return SyntheticResult(out, steps, rescaled, thr)
