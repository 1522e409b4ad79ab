"""Channel ranking by filter norm: order, ties, l1 vs l2, exact permutations."""
import numpy as np
import pytest

from defense.generate.ranking import (filter_norms, inverse_permutation, permutation_from_matrix, permutation_matrix,
                             rank_channels)


def _filters(rows):
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), 1, 1, -1)


def test_largest_l1_first_ties_by_index():
    w = _filters([[1, -2], [0.5, 0.5], [3, 0], [-2, 1], [0, 0]])  # l1: 3, 1, 3, 3, 0
    assert rank_channels(w).tolist() == [0, 2, 3, 1, 4]


def test_l2_can_order_differently_from_l1():
    w = _filters([[1, 1, 1, 1], [2.5, 0, 0, 0]])  # l1: 4 vs 2.5; l2: 2 vs 2.5
    assert rank_channels(w, "l1").tolist() == [0, 1]
    assert rank_channels(w, "l2").tolist() == [1, 0]
    np.testing.assert_allclose(filter_norms(w, "l2"), [2.0, 2.5])


def test_unknown_norm_rejected():
    with pytest.raises(ValueError, match="norm must be one of l1, l2"):
        rank_channels(_filters([[1.0]]), "linf")


def test_permutation_and_inverse_are_exact():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((37, 4, 3, 3))
    perm = rank_channels(w)
    inv = inverse_permutation(perm)
    assert np.array_equal(perm[inv], np.arange(37)) and np.array_equal(inv[perm], np.arange(37))
    x = rng.standard_normal((37, 5))
    assert np.array_equal(x[perm][inv], x)
    norms = filter_norms(w)[perm]
    assert np.all(np.diff(norms) <= 0)


def test_permutation_matrix_matches_indexing_and_round_trips():
    perm = np.array([2, 0, 3, 1])
    m = permutation_matrix(perm)
    x = np.arange(4.0) * 10
    assert np.array_equal(m[:, :, 0, 0] @ x, x[perm])
    assert np.array_equal(permutation_from_matrix(m), perm)
    inv_m = permutation_matrix(inverse_permutation(perm))
    assert np.array_equal(inv_m[:, :, 0, 0] @ (m[:, :, 0, 0] @ x), x)


def test_not_a_permutation_rejected():
    with pytest.raises(ValueError, match="not a permutation"):
        inverse_permutation(np.array([0, 0, 1]))
    with pytest.raises(ValueError, match="not a 0/1 permutation matrix"):
        permutation_from_matrix(np.full((2, 2, 1, 1), 0.5, np.float32))
