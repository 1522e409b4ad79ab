"""Means and 95% intervals over the reproduction's seeds, and verdicts decided from an interval.

One seed's number cannot tell a reproduced claim from a lucky draw (issue 20: a reseeding alone
moved two cells by 0.06 and flipped their verdicts), so every reported number is the mean of
independent replicas with its Student-t interval, and a threshold is judged against the whole
interval: on the right side of it, on the wrong side, or straddling it (inconclusive).
"""
from __future__ import annotations

import math
import operator
from typing import Dict, Optional, Sequence

import numpy as np
from scipy import stats

LEVEL = 0.95
# a comparison "value OP threshold" of a target or a claim
OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


def half_width(sd: float, n: int, level: float = LEVEL) -> float:
    """The Student-t half-width of the mean of ``n`` values with sample sd ``sd``:
    t_{(1+level)/2, n-1} sd / sqrt(n)."""
    return float(stats.t.ppf((1.0 + level) / 2.0, n - 1) * sd / math.sqrt(n))


def mean_interval(values: Sequence[float], level: float = LEVEL) -> Dict[str, object]:
    """Mean and two-sided Student-t interval of the mean: mean +- t_{(1+level)/2, n-1} s / sqrt(n).

    :param values: one number per seed (at least one).
    :returns: ``{"mean", "low", "high", "half_width", "n", "values"}``; with one value the
        interval is unknown (``None``), so no verdict can rest on it.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"mean_interval needs a non-empty list of numbers, got {values!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    mean = float(x.mean())
    half: Optional[float] = None
    if x.size > 1:
        half = half_width(x.std(ddof=1), x.size, level)
    return {"mean": mean, "low": None if half is None else mean - half, "high": None if half is None else mean + half,
            "half_width": half, "n": int(x.size), "values": [float(v) for v in x]}


def verdict(interval: Dict[str, object], op: str, threshold: float, words=("met", "missed", "inconclusive")) -> str:
    """``words[0]`` when the whole interval satisfies ``value OP threshold``, ``words[1]`` when
    no point of it does, ``words[2]`` when it straddles the threshold (or is unknown: one seed)."""
    if op not in OPS:
        raise ValueError(f"unknown comparison '{op}'; valid: {', '.join(OPS)}")
    low, high = interval["low"], interval["high"]
    if low is None or high is None:
        return words[2]
    holds = OPS[op]
    if holds(low, threshold) and holds(high, threshold):
        return words[0]
    if not holds(low, threshold) and not holds(high, threshold):
        return words[1]
    return words[2]


def format_interval(interval: Dict[str, object], digits: int = 3) -> str:
    """``0.961 +- 0.012`` (the 95% half-width), or ``0.961 (1 seed)`` when there is no interval."""
    if interval["half_width"] is None:
        return f"{interval['mean']:.{digits}f} (1 seed)"
    return f"{interval['mean']:.{digits}f} ± {interval['half_width']:.{digits}f}"
