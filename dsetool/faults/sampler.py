"""Seeded fault lists: which input, which site, which bit, for every faulty inference of a shard.

Shard s of a campaign with seed S draws from `numpy.random.Generator(PCG64(SeedSequence([S, s])))`, so
any shard can be (re)generated alone, on any machine, and a resumed campaign draws exactly the faults
an uninterrupted one would have drawn.

Single-fault campaigns sample their finite population, the (input, register, bit) triples, *without*
replacement, as statistical fault injection assumes (Leveugle et al.'s sizing corrects for the finite
population only under that assumption): inference t of the campaign gets fault pi(t) of a seeded random
permutation pi of the population, so any range of inferences is drawn alone, no fault comes twice, and a
campaign as large as the population is exhaustive.
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


FEISTEL_ROUNDS = 6
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def permuted(seed: int, total: int, positions: np.ndarray) -> np.ndarray:
    """Return pi(positions) for a seeded random permutation pi of range(total).

    A balanced Feistel network on the smallest power of four >= total (its round function a splitmix64
    mix of the half and a round key from the seed), walked along its cycle until the value falls in range
    ("cycle walking"): a bijection of range(total) whatever `total` is, computed for any positions alone.
    """
    if total < 1 or len(positions) and (int(positions.min()) < 0 or int(positions.max()) >= total):
        raise ValueError(f"Positions must lie in 0..{total - 1}")
    half = max(1, (max(total - 1, 1).bit_length() + 1) // 2)
    keys = np.random.SeedSequence([seed, 0x5EED]).generate_state(FEISTEL_ROUNDS, dtype=np.uint64)
    out = _feistel(positions.astype(np.uint64), half, keys)
    outside = out >= total
    while outside.any():
        out[outside] = _feistel(out[outside], half, keys)
        outside = out >= total
    return out.astype(np.int64)


def _feistel(x: np.ndarray, half: int, keys: np.ndarray) -> np.ndarray:
    mask = np.uint64((1 << half) - 1)
    left, right = x >> np.uint64(half), x & mask
    for key in keys:
        left, right = right, left ^ (_mix(right ^ key) & mask)
    return (left << np.uint64(half)) | right


def _mix(v: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: every input bit moves every output bit (uint64 products wrap)."""
    v = (v + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
    v = ((v ^ (v >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
    v = ((v ^ (v >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
    return v ^ (v >> np.uint64(31))


def sample_single_faults(groups: Sequence[SiteGroup], bits: str | Sequence[int], n_inputs: int,
                         positions: np.ndarray, seed: int) -> FaultList:
    """Return one fault per inference for campaign positions `positions`: distinct (input, register, bit)
    triples, uniform over the population and without replacement across the whole campaign."""
    choices = [np.asarray(bit_choices(bits, g.width, g), dtype=np.int64) for g in groups]
    per_group = np.array([g.size * len(c) for g, c in zip(groups, choices, strict=True)], dtype=np.int64)
    per_input = int(per_group.sum())
    index = permuted(seed, per_input * n_inputs, positions)
    inputs, within = index // per_input, index % per_input
    ends = np.cumsum(per_group)
    group = np.searchsorted(ends, within, side="right")
    offset = within - (ends - per_group)[group]
    widths = np.array([len(c) for c in choices], dtype=np.int64)[group]
    padded = np.zeros((len(choices), max(len(c) for c in choices)), dtype=np.int64)
    for row, c in enumerate(choices):
        padded[row, :len(c)] = c
    trial = np.arange(len(positions), dtype=np.int64)
    return FaultList(inputs, trial, group.astype(np.int64), offset // widths, padded[group, offset % widths])


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
