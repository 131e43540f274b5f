"""Paired comparison of two campaigns over the same faults (`dsetool.faults.compare`)."""

from __future__ import annotations

import pandas as pd
import pytest

from dsetool.faults.compare import paired_outcome_difference


def rows(critical: list[bool], outcome: list[str], bit_shift: int = 0) -> pd.DataFrame:
    n = len(critical)
    return pd.DataFrame({"trial": range(n), "input": [i % 7 for i in range(n)], "n_faults": [1] * n,
                         "site": ["pe.psum"] * n, "layer": ["fc1"] * n, "element": range(n),
                         "bit": [(i + bit_shift) % 8 for i in range(n)], "critical": critical, "outcome": outcome})


def test_counts_only_the_faults_whose_outcome_changed():
    none = rows([True] * 30 + [False] * 970, ["sdc"] * 40 + ["masked"] * 960)
    clip = rows([True] * 5 + [False] * 995, ["sdc"] * 8 + ["masked"] * 992)
    critical = paired_outcome_difference(none, clip)
    assert critical.rate == pytest.approx(0.025) and critical.count == 25 and 0 < critical.low < 0.025
    sdc = paired_outcome_difference(none, clip, "sdc")
    assert sdc.rate == pytest.approx(0.032) and sdc.low > 0
    # Two separate Wilson intervals of 3.0 % and 0.5 % on 1,000 faults would barely separate; paired, the
    # lower bound is far from zero.
    assert critical.low > 0.015


def test_other_faults_are_refused():
    with pytest.raises(ValueError, match="same faults"):
        paired_outcome_difference(rows([True, False], ["sdc", "masked"]),
                                  rows([True, False], ["sdc", "masked"], bit_shift=1))
    with pytest.raises(ValueError, match="same faults"):
        paired_outcome_difference(rows([True], ["sdc"]), rows([True, False], ["sdc", "masked"]))


def test_campaigns_whose_fault_lists_differ_are_refused_even_with_equal_summary_columns():
    first, second = rows([True, False], ["sdc", "masked"]), rows([True, False], ["sdc", "masked"])
    first["faults"] = [[{"bit": 3}], [{"bit": 4}]]
    second["faults"] = [[{"bit": 3}], [{"bit": 5}]]
    with pytest.raises(ValueError, match="same faults"):
        paired_outcome_difference(first, second)
