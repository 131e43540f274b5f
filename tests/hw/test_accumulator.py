"""The K accumulator with `restart` (the double-buffered machine's): tiles of M = 1 and M = 2 rows back
to back, the next K tile's row m P = 2 cycles after the last one's (the shortest spacing the machine
has, `hw.cycles.machine_tile_period` >= R >= 2), read after its write without forwarding; P = 1 would
read the old sum."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.accumulator import KAccumulator


def _accumulate(m: int, period: int, k_tiles: int = 3, n_slices: int = 2, cols: int = 2) -> tuple[list, list]:
    """Drive `n_slices` N slices of `k_tiles` K tiles of m rows, a tile every `period` cycles; return the
    sums given and numpy's."""
    rng = np.random.default_rng(m * 10 + period)
    parts = rng.integers(-50, 50, (n_slices, k_tiles, m, cols))
    bias = rng.integers(-9, 9, (n_slices, cols))
    dut = KAccumulator(16, cols, max(m, 4), with_bias=True, restart=True)
    plan: dict[int, tuple[int, int, int]] = {}
    for n in range(n_slices):
        for k in range(k_tiles):
            for row in range(m):
                plan[(n * k_tiles + k) * period + row] = (n, k, row)
    out: list[list[int]] = []

    async def bench(ctx: Any) -> None:
        for cycle in range(max(plan) + 4):
            n, k, row = plan.get(cycle, (0, 0, -1))
            ctx.set(dut.valid, row >= 0)
            ctx.set(dut.restart, row == 0)
            ctx.set(dut.first, k == 0)
            ctx.set(dut.last, k == k_tiles - 1)
            for c in range(cols):
                ctx.set(dut.acc[c], int(parts[n, k, max(row, 0), c]))
            await ctx.tick()
            # the bias is sampled one edge after the row arrives: hold the N slice's until its first tile is in
            for c in range(cols):
                ctx.set(dut.bias[c], int(bias[n, c]))
            if ctx.get(dut.out_valid):
                out.append([ctx.get(dut.out[c]) for c in range(cols)])

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    want = (parts.sum(axis=1) + bias[:, None, :]).reshape(-1, cols)
    return out, want.tolist()


@pytest.mark.parametrize(("m", "period"), [(1, 2), (2, 2), (2, 3), (3, 3)])
def test_back_to_back_k_tiles_read_their_own_sums(m: int, period: int) -> None:
    got, want = _accumulate(m, period)
    assert got == want


def test_tiles_one_cycle_apart_would_read_before_the_write() -> None:
    got, want = _accumulate(1, 1)
    assert len(got) == len(want) and got != want
