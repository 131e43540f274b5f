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
