"""Interval estimates and campaign sizing for fault-injection rates."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist


def z_value(confidence: float) -> float:
    """Return the two-sided normal quantile, e.g. 1.96 for 95 %."""
    return NormalDist().inv_cdf(0.5 + confidence / 2)


@dataclass(frozen=True)
class Rate:
    """A proportion with its Wilson score interval."""

    count: int
    total: int
    rate: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        """Return half the interval's width (the achieved margin)."""
        return (self.high - self.low) / 2


def wilson(count: int, total: int, confidence: float = 0.95) -> Rate:
    """Return the Wilson score interval of count/total.

    Wilson, not the normal approximation: rare outcomes (critical faults are often below 1 %) make the
    normal interval dip below zero and under-cover.
    """
    if total <= 0:
        return Rate(count, total, float("nan"), 0.0, 1.0)
    z = z_value(confidence)
    p = count / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    spread = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return Rate(count, total, p, max(0.0, centre - spread), min(1.0, centre + spread))


def leveugle_samples(population: float, margin: float, confidence: float = 0.95, p: float = 0.5) -> int:
    """Return the number of faults to inject for a given margin (Leveugle et al., DATE 2009).

    n = N / (1 + e^2 (N - 1) / (t^2 p (1 - p))), with N the fault population (sites x bits x inputs),
    e the margin and t the normal quantile; p = 0.5 is the worst case.
    """
    t = z_value(confidence)
    n = population / (1 + margin * margin * (population - 1) / (t * t * p * (1 - p)))
    return max(1, math.ceil(n))


def paired_difference(discordant_a: int, discordant_b: int, concordant_right: int, total: int,
                      confidence: float = 0.95) -> Rate:
    """Return the difference of two paired proportions with Newcombe's hybrid score interval (method 10 of
    Newcombe, Stat. Med. 1998), e.g. the accuracy a fault costs: the golden and the faulty run of the same
    inference form a pair.

    Of `total` pairs, `discordant_a` are right in the first run only, `discordant_b` in the second only and
    `concordant_right` in both; the rest in neither. The difference is p1 - p2 = (a - b) / n. The interval
    combines the two Wilson intervals with the pairs' correlation: it stays inside [-1, 1] and is narrow
    when the two runs mostly agree, as a faulty inference and its golden run usually do, where treating
    the two accuracies as independent would give an interval several times too wide. `count` is a - b.
    """
    if total <= 0:
        return Rate(0, total, float("nan"), -1.0, 1.0)
    a, b, c = concordant_right, discordant_a, discordant_b
    d = total - a - b - c
    p1, p2 = (a + b) / total, (a + c) / total
    first, second = wilson(a + b, total, confidence), wilson(a + c, total, confidence)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / math.sqrt(margins) if margins > 0 else 0.0
    below = math.sqrt(max(0.0, (p1 - first.low) ** 2 - 2 * phi * (p1 - first.low) * (second.high - p2)
                          + (second.high - p2) ** 2))
    above = math.sqrt(max(0.0, (first.high - p1) ** 2 - 2 * phi * (first.high - p1) * (p2 - second.low)
                          + (p2 - second.low) ** 2))
    diff = p1 - p2
    return Rate(b - c, total, diff, max(-1.0, diff - below), min(1.0, diff + above))


def margin_reached(count: int, total: int, margin: float, relative: bool, confidence: float = 0.95) -> bool:
    """Tell whether the Wilson interval of count/total is as narrow as asked: its half-width at most `margin`
    (absolute), or at most `margin` times the measured rate (relative; never with no event seen, where a
    relative width means nothing)."""
    if total <= 0:
        return False
    rate = wilson(count, total, confidence)
    if relative:
        return count > 0 and rate.half_width <= margin * rate.rate
    return rate.half_width <= margin

