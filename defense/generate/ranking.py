"""Channel ranking by filter-weight norm (Borkar, Heide, Karam, CVPR 2020, Sec. 3).

A filter with a large l1 norm can move its output furthest under a bounded additive
perturbation (|w . r| <= ||w||_1 ||r||_inf), so its channel is ranked most susceptible.
Pure numpy: the permutation puts the top-ranked channels first; ``inverse_permutation``
undoes it.
"""
from __future__ import annotations

import numpy as np

NORMS = ("l1", "l2")


def filter_norms(weights: np.ndarray, norm: str = "l1") -> np.ndarray:
    """Norm of each output channel's filter.

    :param weights: conv weights ``(C_out, C_in, kh, kw)`` (any shape with channels first).
    :param norm: ``l1`` or ``l2``.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got '{norm}'")
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim < 1 or w.shape[0] == 0:
        raise ValueError(f"weights must have at least one output channel, got shape {w.shape}")
    flat = w.reshape(w.shape[0], -1)
    return np.abs(flat).sum(axis=1) if norm == "l1" else np.sqrt((flat * flat).sum(axis=1))


def rank_channels(weights: np.ndarray, norm: str = "l1") -> np.ndarray:
    """Channel indices, largest filter norm first; equal norms keep index order.

    ``perm[i]`` is the original channel placed at position ``i``.
    """
    norms = filter_norms(weights, norm)
    # lexsort sorts by the last key first: descending norm, then ascending index.
    return np.lexsort((np.arange(norms.size), -norms)).astype(np.int64)


def inverse_permutation(perm: np.ndarray) -> np.ndarray:
    """``inv`` with ``inv[perm[i]] = i``; raises if ``perm`` is not a permutation."""
    perm = np.asarray(perm, dtype=np.int64)
    if perm.ndim != 1 or not np.array_equal(np.sort(perm), np.arange(perm.size)):
        raise ValueError("perm is not a permutation of 0..C-1")
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.size)
    return inv


def permutation_matrix(perm: np.ndarray) -> np.ndarray:
    """1x1 conv weights ``(C, C, 1, 1)`` whose output channel ``i`` is input channel ``perm[i]``."""
    perm = np.asarray(perm, dtype=np.int64)
    inverse_permutation(perm)  # validates
    w = np.zeros((perm.size, perm.size, 1, 1), dtype=np.float32)
    w[np.arange(perm.size), perm, 0, 0] = 1.0
    return w


def permutation_from_matrix(weights: np.ndarray) -> np.ndarray:
    """Inverse of ``permutation_matrix``; raises ValueError unless the weights are an exact 0/1 permutation."""
    w = np.asarray(weights)
    if w.ndim != 4 or w.shape[0] != w.shape[1] or w.shape[2:] != (1, 1):
        raise ValueError(f"permutation weights must be (C, C, 1, 1), got {w.shape}")
    m = w[:, :, 0, 0]
    if not (np.isin(m, (0.0, 1.0)).all() and (m.sum(axis=1) == 1).all() and (m.sum(axis=0) == 1).all()):
        raise ValueError("weights are not a 0/1 permutation matrix")
    return m.argmax(axis=1).astype(np.int64)
