"""The pipelined output stage against the engine's integer requantization and the range check's spec, over
random rows at full rate, with the latency it declares."""

from __future__ import annotations

import gc
import re
from typing import Any

import numpy as np
import pytest
import torch
from amaranth.hdl import Shape, signed, unsigned
from amaranth.sim import Simulator

from dsetool.engine import ops
from hw.output_stage import LATENCY, OutputStage
from hw.protect import MODES
from hw.requant import PIPELINE_STAGES

ACC_BITS, COLS, MULTIPLIER_BITS = 14, 3, 8


def reference(acc: np.ndarray, shape: Shape, multiplier: int, shift: int, protection: str, lo: int,
              hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (codes, detected) as the engine requantizes and DESIGN §5 checks."""
    value = torch.tensor(acc, dtype=torch.int64)
    if shape.signed:
        qmin, qmax = -(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1
        codes = ops.shift_round_half_even(value * multiplier, shift).clamp(qmin, qmax).numpy()
    else:
        codes = ops.fixed_point_requantize_int(value, multiplier, shift, 0, (1 << shape.width) - 1).numpy()
    if protection == "none":
        return codes, np.zeros_like(codes, dtype=bool)
    outside = (codes < lo) | (codes > hi)
    fixed = np.clip(codes, lo, hi) if protection == "clip" else np.where(outside, 0, codes)
    return fixed, outside


def stream(dut: OutputStage, rows: np.ndarray, valid: np.ndarray, constants: dict[str, int]) -> list[tuple[Any, ...]]:
    """Present row i (with valid[i]) before clock edge i, one per cycle; return (out_valid, out, detected)
    read after every edge, LATENCY extra edges included."""
    seen: list[tuple[Any, ...]] = []

    async def bench(ctx: Any) -> None:
        for name, value in constants.items():
            ctx.set(getattr(dut, name), value)
        await ctx.tick()  # the constants take one edge to reach the layer registers
        for i in range(len(rows) + LATENCY):
            ctx.set(dut.valid, int(valid[i]) if i < len(rows) else 0)
            for c in range(COLS):
                ctx.set(dut.acc[c], int(rows[i, c]) if i < len(rows) else 0)
            await ctx.tick()
            seen.append((ctx.get(dut.out_valid), [ctx.get(dut.out[c]) for c in range(COLS)],
                         [ctx.get(dut.detected[c]) for c in range(COLS)]))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return seen


@pytest.mark.parametrize("protection", ["none", "clip", "zero"])
@pytest.mark.parametrize("shape", [unsigned(8), signed(6)], ids=["u8-relu", "s6"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_after_declared_latency(protection: str, shape: Shape, seed: int) -> None:
    rng = np.random.default_rng(seed * 10 + shape.width)
    dut = OutputStage(ACC_BITS, COLS, shape, MULTIPLIER_BITS, check=MODES.get(protection))
    low, high = (-(1 << (shape.width - 1)), 1 << (shape.width - 1)) if shape.signed else (0, 1 << shape.width)
    lo, hi = sorted(int(x) for x in rng.integers(low, high, size=2))
    constants = {"multiplier": int(rng.integers(1, 1 << MULTIPLIER_BITS)), "shift": int(rng.integers(-3, 20)),
                 "lo": lo, "hi": hi}
    rows = rng.integers(-(1 << (ACC_BITS - 1)), 1 << (ACC_BITS - 1), size=(40, COLS))
    rows[::7] = rng.integers(-64, 64, size=rows[::7].shape)  # small values land inside the code range
    valid = rng.random(40) < 0.8
    seen = stream(dut, rows, valid, constants)
    assert dut.latency == LATENCY == PIPELINE_STAGES + 1
    codes, flags = reference(rows, shape, constants["multiplier"], constants["shift"], protection, lo, hi)
    for i in range(len(rows)):
        out_valid, out, detected = seen[i + LATENCY - 1]
        assert out_valid == valid[i], i
        if valid[i]:
            assert (out, detected) == (codes[i].tolist(), flags[i].astype(int).tolist()), i
    assert not any(v for v, _, _ in seen[:LATENCY - 1])


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_range_check_only_with_a_mode() -> None:
    assert OutputStage(ACC_BITS, COLS, unsigned(8), 1).check is None
    stage = OutputStage(ACC_BITS, COLS, unsigned(8), 1, check=MODES["zero"])
    assert stage.check is not None and len(stage.requantizers) == COLS
    assert all(r.latency == PIPELINE_STAGES for r in stage.requantizers)
    gc.collect()


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_cols_error() -> None:
    with pytest.raises(ValueError, match=f"^{re.escape('Output stage cols must be a positive integer, not 0')}$"):
        OutputStage(ACC_BITS, 0, unsigned(8), 1)
    gc.collect()
