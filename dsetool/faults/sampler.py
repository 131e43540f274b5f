"""Seeded fault lists: which input, which site, which bit, for every faulty inference of a shard.

Shard s of a campaign with seed S draws from `numpy.random.Generator(PCG64(SeedSequence([S, s])))`, so
any shard can be (re)generated alone, on any machine, and a resumed campaign draws exactly the faults
an uninterrupted one would have drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dsetool.faults.sites import SiteGroup, bit_choices


@dataclass(frozen=True)
class FaultList:
    """Faults of one shard. Count mode: `k` faults per inference; BER mode: per-bit flips.

    Arrays are flat over all faults: fault j belongs to inference `trial[j]`, hits element `element[j]`
    (flat index) of group `group[j]` at bit `bit[j]`. `inputs[t]` is the campaign input of inference t.
    """

    inputs: np.ndarray    # (T,) int64
    trial: np.ndarray     # (F,) int64
    group: np.ndarray     # (F,) int64
    element: np.ndarray   # (F,) int64
    bit: np.ndarray       # (F,) int64

    @property
    def size(self) -> int:
        """Return the number of faulty inferences."""
        return len(self.inputs)


def shard_rng(seed: int, shard: int, *stream: int) -> np.random.Generator:
    """Return the generator of one shard (independent streams, reproducible per shard; `stream` numbers
    further independent streams of the same shard)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, shard, *stream])))


def population(groups: Sequence[SiteGroup], bits: str | Sequence[int]) -> int:
    """Return the number of (site, bit) pairs per input: the single-fault population."""
    return sum(g.size * len(bit_choices(bits, g.width, g)) for g in groups)


def sample_count_mode(groups: Sequence[SiteGroup], bits: str | Sequence[int], k: int, trials: int,
                      n_inputs: int, rng: np.random.Generator) -> FaultList:
    """Draw k faults per inference, uniform over all (site, bit) pairs of all groups."""
    choices = [np.asarray(bit_choices(bits, g.width, g), dtype=np.int64) for g in groups]
    weights = np.array([g.size * len(c) for g, c in zip(groups, choices, strict=True)], dtype=np.float64)
    inputs = rng.integers(0, n_inputs, size=trials, dtype=np.int64)
    count = trials * k
    group = rng.choice(len(groups), size=count, p=weights / weights.sum()).astype(np.int64)
    sizes = np.array([g.size for g in groups], dtype=np.int64)
    element = np.floor(rng.random(count) * sizes[group]).astype(np.int64)
    which = np.floor(rng.random(count) * np.array([len(c) for c in choices])[group]).astype(np.int64)
    padded = np.zeros((len(choices), max(len(c) for c in choices)), dtype=np.int64)
    for row, c in enumerate(choices):
        padded[row, :len(c)] = c
    trial = np.repeat(np.arange(trials, dtype=np.int64), k)
    return FaultList(inputs, trial, group, element, padded[group, which])


def sample_ber_mode(groups: Sequence[SiteGroup], bits: str | Sequence[int], ber: float, trials: int,
                    n_inputs: int, rng: np.random.Generator) -> FaultList:
    """Flip every eligible bit independently with probability `ber`, redrawn for every inference.

    The number of flips per inference and group is binomial; their positions are distinct bits, so two
    flips never cancel on the same bit.
    """
    inputs = rng.integers(0, n_inputs, size=trials, dtype=np.int64)
    parts: list[tuple[np.ndarray, ...]] = []
    for gi, g in enumerate(groups):
        choice = np.asarray(bit_choices(bits, g.width, g), dtype=np.int64)
        n_bits = g.size * len(choice)
        flips = rng.binomial(n_bits, ber, size=trials)
        for t in np.nonzero(flips)[0].tolist():
            positions = rng.choice(n_bits, size=int(flips[t]), replace=False)
            parts.append((np.full(len(positions), t), np.full(len(positions), gi),
                          positions // len(choice), choice[positions % len(choice)]))
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return FaultList(inputs, empty, empty, empty, empty)
    trial, group, element, bit = (np.concatenate([p[i] for p in parts]).astype(np.int64) for i in range(4))
    order = np.argsort(trial, kind="stable")
    return FaultList(inputs, trial[order], group[order], element[order], bit[order])
