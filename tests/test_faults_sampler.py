"""The seeded permutation behind single-fault sampling without replacement (`dsetool.faults.sampler`)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsetool.faults.sampler import permuted


@settings(max_examples=40, deadline=None)
@given(total=st.integers(1, 5000), seed=st.integers(0, 2**31 - 1))
def test_permuted_is_a_bijection_of_any_range(total, seed):
    image = permuted(seed, total, np.arange(total, dtype=np.int64))
    assert np.array_equal(np.sort(image), np.arange(total))


def test_positions_drawn_alone_equal_drawn_together_and_seeds_differ():
    together = permuted(3, 10_000, np.arange(10_000, dtype=np.int64))
    parts = np.concatenate([permuted(3, 10_000, np.arange(a, a + 2500, dtype=np.int64))
                            for a in range(0, 10_000, 2500)])
    assert np.array_equal(together, parts)
    assert not np.array_equal(together, permuted(4, 10_000, np.arange(10_000, dtype=np.int64)))


def test_the_first_draws_look_uniform():
    """The first 20 % of a permutation of 0..99,999 spread evenly over ten bins (chi-square, 9 dof, p > 0.001)."""
    head = permuted(11, 100_000, np.arange(20_000, dtype=np.int64))
    counts = np.bincount(head // 10_000, minlength=10)
    chi2 = float(((counts - 2000) ** 2 / 2000).sum())
    assert chi2 < 27.9, counts


def test_positions_outside_the_range_are_refused():
    with pytest.raises(ValueError, match="0..9"):
        permuted(0, 10, np.array([10]))
