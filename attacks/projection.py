"""Norms and exact projections onto l_inf / l_2 balls (pixel units, [0,255] scale).

UAP (Moosavi-Dezfooli et al., CVPR 2017) keeps the universal perturbation v inside
{||v||_p <= xi}; the defence paper's strengths are xi = 10 (l_inf) and xi = 2000 (l_2) for
224x224x3 inputs.
"""
from __future__ import annotations

import math
from typing import Tuple, Union

import numpy as np

NormLike = Union[str, float, int]

REFERENCE_SIZE = 224 * 224 * 3
DEFAULT_XI = {"inf": 10.0, "2": 2000.0}


def parse_norm(norm: NormLike) -> str:
    """'inf' or '2' from any common spelling (np.inf, 'linf', 'l_inf', 2, 'l2')."""
    key = str(norm).lower().replace("_", "").lstrip("l")
    if key in ("inf", "infinity", "infty"):
        return "inf"
    if key in ("2", "2.0"):
        return "2"
    raise ValueError(f"norm must be 'inf' or '2', got {norm!r}")


def lp_norm(v: np.ndarray, norm: NormLike) -> float:
    v = np.asarray(v, dtype=np.float64)
    return float(np.abs(v).max()) if parse_norm(norm) == "inf" else float(np.sqrt((v * v).sum()))


def project_lp(v: np.ndarray, xi: float, norm: NormLike) -> np.ndarray:
    """Euclidean projection of ``v`` onto {||v||_p <= xi} (a new float32 array)."""
    if not xi > 0:
        raise ValueError(f"xi must be positive, got {xi}")
    v = np.asarray(v, dtype=np.float32)
    if parse_norm(norm) == "inf":
        return np.clip(v, -xi, xi)
    n = lp_norm(v, "2")
    return v * np.float32(xi / n) if n > xi else v.copy()


def default_xi(norm: NormLike, shape: Tuple[int, ...]) -> float:
    """The defence paper's strength; l_2 scaled by sqrt(size / 224*224*3) for other sizes."""
    key = parse_norm(norm)
    if key == "inf":
        return DEFAULT_XI["inf"]
    return DEFAULT_XI["2"] * math.sqrt(float(np.prod(shape)) / REFERENCE_SIZE)


def scale_to_norm(v: np.ndarray, xi: float, norm: NormLike) -> Tuple[np.ndarray, np.ndarray]:
    """Each perturbation of the stack ``v`` (K, ...) scaled to norm exactly ``xi``.

    :returns: the scaled stack (float32) and the K factors ``xi / ||v_k||_p``.
    """
    if not xi > 0:
        raise ValueError(f"xi must be positive, got {xi}")
    flat = np.asarray(v, dtype=np.float64).reshape(len(v), -1)
    norms = np.abs(flat).max(axis=1) if parse_norm(norm) == "inf" else np.sqrt((flat * flat).sum(axis=1))
    factors = xi / np.maximum(norms, 1e-30)
    return (flat * factors[:, None]).reshape(np.shape(v)).astype(np.float32), factors
