"""The datapaths: array + pipelined output stage + range check give exactly the integer engine's codes, with
the cycle count of `hw.cycles` plus the declared drain."""

from __future__ import annotations

import gc
import re
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
import torch
from amaranth.back import rtlil
from amaranth.sim import Simulator

from dsetool.engine import ops
from hw.accelerator import Datapath, OSDatapath, build_datapath, drain_cycles
from hw.arrayconfig import ArrayConfig
from hw.cycles import gemm_cycles
from hw.output_stage import LATENCY
from hw.tmr import TripleModular
from tests.hw.drivers import drive_os_rows, drive_ws, wrap

LO, HI, MULTIPLIER, SHIFT = 2, 9, 3, 3


def expected_codes(acc: np.ndarray, protection: str) -> tuple[np.ndarray, np.ndarray]:
    codes = ops.fixed_point_requantize_int(torch.tensor(acc), MULTIPLIER, SHIFT, 0, 15).numpy()
    out_of_range = (codes < LO) | (codes > HI)
    if protection == "clip":
        codes = np.clip(codes, LO, HI)
    elif protection == "zero":
        codes = np.where(out_of_range, 0, codes)
    return codes, out_of_range


Drive = Callable[..., Awaitable[tuple[np.ndarray, int]]]


def run(dut: Any, drive: Drive, a: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Load the layer constants, drive the GEMM; return (codes, detected flags in row order, cycles)."""
    detected: list[list[int]] = []
    result: list[tuple[np.ndarray, int]] = []
    cols = dut.config.cols

    async def bench(ctx: Any) -> None:
        for port, value in ((dut.multiplier, MULTIPLIER), (dut.shift, SHIFT), (dut.lo, LO), (dut.hi, HI)):
            ctx.set(port, value)
        def flags(ctx: Any) -> None:
            detected.append([ctx.get(dut.detected[c]) for c in range(cols)])

        result.append(await drive(ctx, dut, a, w, on_output=flags))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return result[0][0], np.array(detected, dtype=bool), result[0][1]


@pytest.mark.parametrize("protection", ["none", "clip", "zero"])
def test_datapath_codes_detection_and_cycles(protection: str) -> None:
    config = ArrayConfig(rows=3, cols=2, act_bits=4, weight_bits=4, acc_bits=12, protection=protection)
    dut = Datapath(config)
    rng = np.random.default_rng(3)
    a = rng.integers(0, 16, size=(6, 3))
    w = rng.integers(-7, 8, size=(3, 5))  # three n-tiles: each drains while the next one loads
    codes, detected, cycles = run(dut, drive_ws, a, w)
    want, flagged = expected_codes(a @ w, protection)
    assert np.array_equal(codes, want)
    assert (dut.latency, dut.drain) == (2 + LATENCY, 2 + LATENCY) == (6, 6)
    assert cycles == gemm_cycles(6, 3, 5, 3, 2, "ws", drain=dut.drain)
    # rows come out tile by tile, the last tile padded with a zero column (code 0, below LO)
    padded = expected_codes(a @ np.pad(w, ((0, 0), (0, 1))), protection)[1]
    tiles = np.concatenate([padded[:, 2 * t:2 * t + 2] for t in range(3)])
    assert np.array_equal(detected, tiles if protection != "none" else np.zeros_like(tiles))
    assert protection == "none" or flagged.any()


@pytest.mark.parametrize("rows, cols, m, k, n", [(2, 2, 5, 7, 3), (3, 2, 4, 9, 5), (2, 3, 1, 5, 4)])
def test_datapath_sums_k_tiles_in_its_accumulator(rows: int, cols: int, m: int, k: int, n: int) -> None:
    """K > R: each column's K tiles are summed in memory (depth = M exactly) before the output stage; with a
    narrow accumulator the sums wrap as the engine's do."""
    config = ArrayConfig(rows=rows, cols=cols, act_bits=4, weight_bits=4, acc_bits=8, protection="clip")
    dut = Datapath(config, depth=m)
    rng = np.random.default_rng(m * 100 + k)
    a = rng.integers(0, 16, size=(m, k))
    w = rng.integers(-8, 8, size=(k, n))
    codes, _, cycles = run(dut, drive_ws, a, w)
    acc = wrap(a @ w, 8)
    assert np.array_equal(codes, expected_codes(acc, "clip")[0])
    assert cycles == gemm_cycles(m, k, n, rows, cols, "ws", drain=dut.drain)
    assert not np.array_equal(acc, a @ w) or m == 1   # the 8-bit sums did wrap somewhere


@pytest.mark.parametrize("protection", ["none", "clip", "zero"])
def test_os_datapath_drains_tiles_row_by_row(protection: str) -> None:
    config = ArrayConfig(rows=2, cols=3, act_bits=4, weight_bits=4, acc_bits=12, dataflow="os",
                         protection=protection)
    dut = OSDatapath(config)
    rng = np.random.default_rng(5)
    a = rng.integers(0, 16, size=(5, 4))  # K = 4 > R: the OS array accumulates it in place
    w = rng.integers(-7, 8, size=(4, 4))
    codes, detected, cycles = run(dut, drive_os_rows, a, w)
    want, flagged = expected_codes(a @ w, protection)
    assert np.array_equal(codes, want)
    assert (dut.latency, dut.drain) == (1 + LATENCY, 2 + LATENCY)
    assert cycles == gemm_cycles(5, 4, 4, 2, 3, "os", drain=dut.drain)
    assert detected.shape == (3 * 2 * 2, 3) and (protection == "none") == (not detected.any())
    assert protection == "none" or flagged.any()


def test_os_datapath_with_the_shortest_tiles_keeps_up() -> None:
    """K = 1, C = 1: a tile takes R cycles, exactly as long as the bank needs to drain."""
    config = ArrayConfig(rows=3, cols=1, act_bits=4, weight_bits=4, acc_bits=12, dataflow="os")
    dut = OSDatapath(config)
    rng = np.random.default_rng(8)
    a, w = rng.integers(0, 16, size=(7, 1)), rng.integers(1, 8, size=(1, 2))
    codes, _, cycles = run(dut, drive_os_rows, a, w)
    assert np.array_equal(codes, expected_codes(a @ w, "none")[0])
    assert cycles == gemm_cycles(7, 1, 2, 3, 1, "os", drain=dut.drain)


@pytest.mark.parametrize("dataflow", ["ws", "os"])
@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_tmr_datapath_has_three_kept_replicas_and_their_drain(dataflow: str) -> None:
    config = ArrayConfig(rows=2, cols=2, act_bits=4, weight_bits=4, acc_bits=12, tmr=True, dataflow=dataflow)
    top = build_datapath(config)
    assert isinstance(top, TripleModular)
    text = rtlil.convert(top, name="top", emit_src=False)
    assert all(f"top.rep{i}" in text for i in range(3))
    assert drain_cycles(top) == drain_cycles(build_datapath(ArrayConfig(rows=2, cols=2, acc_bits=12,
                                                                        dataflow=dataflow)))
    gc.collect()


def test_lut_multiplier_reaches_the_output_stage() -> None:
    config = ArrayConfig(rows=2, cols=2, act_bits=4, weight_bits=4, acc_bits=12, multiplier="lut")
    assert "$mul" not in rtlil.convert(Datapath(config), name="top", emit_src=False)


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda: Datapath(ArrayConfig(acc_bits=12, tmr=True)), ValueError,
     "Datapath builds one replica; use build_datapath for TMR"),
    (lambda: OSDatapath(ArrayConfig(acc_bits=12, dataflow="os", tmr=True)), ValueError,
     "OSDatapath builds one replica; use build_datapath for TMR"),
    (lambda: build_datapath(ArrayConfig(acc_bits=12, dataflow="is")), NotImplementedError,
     "Datapath dataflow must be 'ws' or 'os', not 'is'"),
    (lambda: drain_cycles(object()), TypeError, "Drain needs a Datapath or OSDatapath, not "),
    (lambda: Datapath(ArrayConfig(acc_bits=12), depth=0), ValueError,
     "Accumulator depth must be a positive integer, not 0"),
])
@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_constructor_errors(call: Callable[[], object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=f"^{re.escape(message)}"):
        call()
    gc.collect()


IN_LO, IN_HI = 3, 12


def _input_checked(a: np.ndarray, protection: str) -> np.ndarray:
    if protection == "clip":
        return np.clip(a, IN_LO, IN_HI)
    return np.where((a < IN_LO) | (a > IN_HI), 0, a)


@pytest.mark.parametrize("dataflow", ["ws", "os"])
@pytest.mark.parametrize("protection", ["clip", "zero"])
def test_range_check_at_the_inputs_acts_on_the_activations_one_cycle_later(dataflow: str, protection: str) -> None:
    """`placement="input"`: the codes the array multiplies are the checked activations (every row's own
    bounds); the output stage has no check; the GEMM takes one cycle more (`drain`)."""
    config = ArrayConfig(rows=2, cols=3, act_bits=4, weight_bits=4, acc_bits=12, dataflow=dataflow,
                         protection=protection)
    dut = (Datapath if dataflow == "ws" else OSDatapath)(config, placement="input")
    output_only = (Datapath if dataflow == "ws" else OSDatapath)(config)
    assert dut.drain == output_only.drain + 1 and not hasattr(output_only, "in_lo")
    rng = np.random.default_rng(11)
    a = rng.integers(0, 16, size=(5, 4))
    w = rng.integers(-7, 8, size=(4, 4))
    assert ((a < IN_LO) | (a > IN_HI)).any()

    async def bounds(ctx: Any) -> None:
        for r in range(config.rows):
            ctx.set(dut.in_lo[r], IN_LO)
            ctx.set(dut.in_hi[r], IN_HI)

    drive = drive_ws if dataflow == "ws" else drive_os_rows

    async def driven(ctx: Any, dut_: Any, a_: np.ndarray, w_: np.ndarray, on_output: Any = None) -> Any:
        await bounds(ctx)
        return await drive(ctx, dut_, a_, w_, on_output=on_output)

    codes, detected, cycles = run(dut, driven, a, w)
    assert np.array_equal(codes, expected_codes(_input_checked(a, protection) @ w, "none")[0])
    assert not detected.any()   # the outputs are not checked
    assert cycles == gemm_cycles(5, 4, 4, 2, 3, dataflow, drain=dut.drain)
