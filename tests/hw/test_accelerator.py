"""The datapath: array + output stage + range check give exactly the integer engine's codes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from amaranth.back import rtlil
from amaranth.sim import Simulator

from dsetool.engine import ops
from hw.accelerator import Datapath, build_datapath
from hw.arrayconfig import ArrayConfig
from tests.hw.drivers import drive_ws

LO, HI, MULTIPLIER, SHIFT = 2, 9, 3, 3


def expected_codes(acc: np.ndarray, protection: str) -> tuple[np.ndarray, np.ndarray]:
    codes = ops.fixed_point_requantize_int(torch.tensor(acc), MULTIPLIER, SHIFT, 0, 15).numpy()
    out_of_range = (codes < LO) | (codes > HI)
    if protection == "clip":
        codes = np.clip(codes, LO, HI)
    elif protection == "zero":
        codes = np.where(out_of_range, 0, codes)
    return codes, out_of_range


@pytest.mark.parametrize("protection", ["none", "clip", "zero"])
def test_datapath_codes_and_detection(protection: str) -> None:
    config = ArrayConfig(rows=3, cols=2, act_bits=4, weight_bits=4, acc_bits=12, protection=protection)
    dut = Datapath(config)
    rng = np.random.default_rng(3)
    a = rng.integers(0, 16, size=(6, 3))
    w = rng.integers(-7, 8, size=(3, 2))
    detected: list[list[int]] = []

    async def bench(ctx) -> None:
        ctx.set(dut.multiplier, MULTIPLIER)
        ctx.set(dut.shift, SHIFT)
        ctx.set(dut.lo, LO)
        ctx.set(dut.hi, HI)

        def watch(ctx, kt, nt, u) -> None:
            if ctx.get(dut.out_valid):
                detected.append([ctx.get(dut.detected[c]) for c in range(2)])

        codes, _ = await drive_ws(ctx, dut, a, w, observe=watch)
        result.append(codes)

    result: list[np.ndarray] = []
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    codes, flagged = expected_codes(a @ w, protection)
    assert np.array_equal(result[0], codes)
    if protection != "none":
        assert np.array_equal(np.array(detected, dtype=bool), flagged) and flagged.any()


def test_tmr_datapath_has_three_kept_replicas() -> None:
    config = ArrayConfig(rows=2, cols=2, act_bits=4, weight_bits=4, acc_bits=12, tmr=True)
    text = rtlil.convert(build_datapath(config), name="top", emit_src=False)
    assert all(f"top.rep{i}" in text for i in range(3))
