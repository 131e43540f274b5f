"""Intervals and sizing rules of `dsetool.faults.stats`: the paired difference and the stopping rule."""

from __future__ import annotations

import numpy as np
import pytest

from dsetool.faults.stats import margin_reached, paired_difference, wilson


def test_paired_difference_is_the_discordant_balance_with_an_interval_around_it():
    rate = paired_difference(discordant_a=9, discordant_b=2, concordant_right=12, total=44)
    assert rate.rate == pytest.approx(7 / 44) and rate.count == 7
    assert 0 < rate.low < rate.rate < rate.high < 1
    # Pairs that mostly agree give a far narrower interval than two independent accuracies would.
    agreeing = paired_difference(discordant_a=3, discordant_b=1, concordant_right=900, total=1000)
    independent = wilson(903, 1000).half_width + wilson(901, 1000).half_width
    assert agreeing.high - agreeing.low < 0.6 * independent
    assert agreeing.low < 0.002 < agreeing.high


def test_paired_difference_may_be_negative_and_stays_inside_minus_one_one():
    better = paired_difference(discordant_a=0, discordant_b=5, concordant_right=50, total=100)
    assert better.rate == pytest.approx(-0.05) and better.low < -0.05 < better.high < 0
    extreme = paired_difference(discordant_a=10, discordant_b=0, concordant_right=0, total=10)
    assert extreme.rate == 1.0 and -1.0 <= extreme.low < 1.0 and extreme.high == 1.0


def test_paired_difference_covers_the_true_difference_about_95_percent_of_the_time():
    """Monte Carlo, seeded: pairs with P(first only) = 0.04, P(second only) = 0.01, P(both) = 0.9."""
    rng = np.random.default_rng(0)
    cells = rng.multinomial(400, [0.04, 0.01, 0.9, 0.05], size=2000)
    covered = [(r := paired_difference(int(a), int(b), int(c), 400)).low <= 0.03 <= r.high for a, b, c, _ in cells]
    assert 0.93 <= np.mean(covered) <= 0.98


@pytest.mark.parametrize("relative", [False, True])
def test_the_stopping_rule_compares_the_wilson_half_width_with_the_margin(relative):
    margin = 0.1 if relative else 0.01
    reached = [n for n in range(100, 40_000, 100) if margin_reached(n // 10, n, margin, relative)]
    first = reached[0]
    half = wilson(first // 10, first).half_width
    assert half <= (margin * (first // 10) / first if relative else margin)
    before = wilson((first - 100) // 10, first - 100).half_width
    assert before > (margin * 0.1 if relative else margin)
    assert not margin_reached(0, 10**6, 0.1, relative=True)   # no event: a relative width means nothing
    assert margin_reached(0, 10**6, 0.01, relative=False)
