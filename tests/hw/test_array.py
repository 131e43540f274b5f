"""The weight-stationary array in simulation: GEMMs against numpy, cycles against hw.cycles, registers
against the schedule of tests/fixtures/systolic_sim.py."""

from __future__ import annotations

import gc
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from amaranth.back import rtlil

from hw.array import OSArray, WSArray
from hw.arrayconfig import ArrayConfig
from hw.cycles import gemm_cycles
from hw.pe import LUTMultiplier, OSProcessingElement, WSProcessingElement
from tests.hw.drivers import operands, padded, run_gemm

ARRAYS = {"ws": WSArray, "os": OSArray}


@pytest.mark.parametrize("dataflow", ["ws", "os"])
@pytest.mark.parametrize(("rows", "cols", "act_bits", "weight_bits"), [
    (2, 2, 2, 2), (2, 2, 8, 5), (3, 2, 5, 3), (3, 2, 2, 8), (4, 4, 8, 8), (4, 4, 3, 6),
])
def test_gemm_matches_numpy_and_cycle_model(dataflow: str, rows: int, cols: int, act_bits: int,
                                            weight_bits: int) -> None:
    m, k, n = 5, 7, 5
    config = ArrayConfig(rows=rows, cols=cols, act_bits=act_bits, weight_bits=weight_bits, dataflow=dataflow)
    a, w = operands(np.random.default_rng(rows * 100 + act_bits * 10 + weight_bits), config, m, k, n)
    out, cycles = run_gemm(ARRAYS[dataflow](config, k=k), a, w)
    np.testing.assert_array_equal(out, a @ w)
    assert cycles == gemm_cycles(m, k, n, rows, cols, dataflow)


@pytest.mark.parametrize("dataflow", ["ws", "os"])
@pytest.mark.parametrize("overrides", [{"act_signed": True}, {"multiplier": "lut"}, {"multiplier": "lut",
                                                                                   "act_signed": True}])
def test_signed_activations_and_lut_multiplier(dataflow: str, overrides: dict[str, Any]) -> None:
    config = ArrayConfig(rows=3, cols=2, act_bits=4, weight_bits=3, dataflow=dataflow, **overrides)
    a, w = operands(np.random.default_rng(7), config, 4, 5, 3)
    out, cycles = run_gemm(ARRAYS[dataflow](config, k=5), a, w)
    np.testing.assert_array_equal(out, a @ w)
    assert cycles == gemm_cycles(4, 5, 3, 3, 2, dataflow)


def test_lut_multiplier_leaves_no_mul_cell() -> None:
    lut = rtlil.convert(WSArray(ArrayConfig(rows=2, cols=2, multiplier="lut"), k=4), name="top", emit_src=False)
    dsp = rtlil.convert(WSArray(ArrayConfig(rows=2, cols=2), k=4), name="top", emit_src=False)
    assert "$mul" not in lut
    assert "$mul" in dsp


@pytest.mark.parametrize("dataflow", ["ws", "os"])
def test_narrow_accumulator_wraps_like_systolic_sim(dataflow: str) -> None:
    from dsetool.engine.tiling import LayerTiling
    from tests.fixtures.systolic_sim import simulate

    config = ArrayConfig(rows=2, cols=2, act_bits=6, weight_bits=6, acc_bits=7, dataflow=dataflow)
    a, w = operands(np.random.default_rng(3), config, 3, 5, 3)
    out, _ = run_gemm(ARRAYS[dataflow](config), a, w)
    expected = simulate(LayerTiling(3, 5, 3, 2, 2, dataflow), a, w, 7, None)
    assert not np.array_equal(out, a @ w)  # the operands do overflow 7 bits
    np.testing.assert_array_equal(out, expected.astype(np.int64))


@pytest.mark.parametrize("dataflow", ["ws", "os"])
def test_registers_follow_systolic_sim_schedule(dataflow: str) -> None:
    """Every act, weight and psum register at every streaming cycle of every tile equals systolic_sim's value.

    systolic_sim exposes its registers only through the fault hook, so each site is read by a "fault"
    whose corruption records the value and returns it unchanged. Tiles run back to back, so this also
    checks that no register carries a value from one tile into the next.
    """
    from dsetool.engine.tiling import LayerTiling
    from tests.fixtures.systolic_sim import simulate

    rows, cols, m, k, n = 3, 2, 4, 5, 3  # 2 x 2 tiles either way, the last ones padded
    config = ArrayConfig(rows=rows, cols=cols, act_bits=4, weight_bits=4, dataflow=dataflow)
    a, w = operands(np.random.default_rng(11), config, m, k, n)
    array = ARRAYS[dataflow](config, k=k)
    tiling = LayerTiling(m, k, n, rows, cols, dataflow)
    seen: dict[tuple[str, int, int, int, int], int] = {}

    def observe(ctx: Any, ta: int, tn: int, u: int) -> None:
        for r in range(rows):
            for c in range(cols):
                pe = array.pes[r][c]
                for site, reg in (("pe.act", pe.act), ("pe.weight", pe.weight), ("pe.psum", pe.psum)):
                    seen[(site, ta * tiling.tile_grid[1] + tn, u, r, c)] = ctx.get(reg)

    run_gemm(array, a, w, observe, idle=5)  # lanes left busy while not valid must enter as bubbles
    assert len(seen) == 3 * tiling.tiles * tiling.window * rows * cols
    for (site, tile, u, r, c), got in seen.items():
        assert got == _probe(simulate, tiling, a, w, array.acc_bits, (site, tile, u, r, c)), (site, tile, u, r, c)
    if dataflow == "ws":  # the docstring's schedule, stated directly: m = u - r - c
        a_pad, w_pad = padded(a, w, rows, cols, ws=True)
        for (site, tile, u, r, c), got in seen.items():
            kt, nt = divmod(tile, tiling.tile_grid[1])
            mm, ks = u - r - c, slice(kt * rows, kt * rows + r + 1)
            if site == "pe.psum":
                assert got == (int(a_pad[mm, ks] @ w_pad[ks, nt * cols + c]) if 0 <= mm < m else 0)


def _probe(simulate: Any, tiling: Any, a: np.ndarray, w: np.ndarray, acc_bits: int,
           where: tuple[str, int, int, int, int]) -> int:
    """Return systolic_sim's value of one register site, read through an identity "fault"."""
    seen: list[int] = []

    def record(value: int) -> int:
        seen.append(value)
        return value

    simulate(tiling, a, w, acc_bits, (*where, record))
    return seen[0]


@pytest.mark.parametrize("kind", [WSProcessingElement, OSProcessingElement])
def test_pe_exposes_named_registers(kind: type[WSProcessingElement] | type[OSProcessingElement]) -> None:
    pe = kind(4, 3, 9, act_signed=True, multiplier=LUTMultiplier())
    assert (pe.act.shape(), pe.weight.shape(), pe.psum.shape()) == (pe.act_shape, pe.w_out.shape(),
                                                                     pe.psum_out.shape())
    assert pe.acc_bits == 9 and pe.weight_bits == 3 and pe.act_shape.signed
    assert "$mul" not in rtlil.convert(pe, name="pe", emit_src=False)


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda: WSProcessingElement(1, 8, 16), ValueError, "PE act_bits must be an integer in 2..16, not 1"),
    (lambda: OSProcessingElement(8, 17, 16), ValueError, "PE weight_bits must be an integer in 2..16, not 17"),
    (lambda: WSProcessingElement(8, 8, "16"), ValueError,  # type: ignore[arg-type]
     "PE acc_bits must be an integer in 2..64, not '16'"),
    (lambda: WSProcessingElement(8, 8, 16, act_signed=1), TypeError,  # type: ignore[arg-type]
     "PE act_signed must be a bool, not 1"),
    (lambda: WSProcessingElement(8, 8, 16, multiplier="dsp"), TypeError,  # type: ignore[arg-type]
     "PE multiplier must be callable as multiplier(a, b), not 'dsp'"),
    (lambda: WSArray(ArrayConfig(rows=2, cols=2)), ValueError,
     "Array k must be a positive integer when acc_bits is 0, not None"),
    (lambda: WSArray(ArrayConfig(dataflow="os")), ValueError,
     "Array dataflow must be 'ws' for WSArray, not 'os'"),
    (lambda: OSArray(ArrayConfig(acc_bits=20)), ValueError,
     "Array dataflow must be 'os' for OSArray, not 'ws'"),
    (lambda: OSArray(ArrayConfig(dataflow="os", tmr=True), k=4), NotImplementedError,
     "Array protection and TMR are not built yet; use protection='none', tmr=False"),
    (lambda: WSArray((2, 2)), TypeError, "Array config must be an ArrayConfig, not (2, 2)"),  # type: ignore[arg-type]
    (lambda: ArrayConfig(rows=0), ValueError, "Array rows must be a positive integer, not 0"),
])
@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")  # a constructor that raises leaves one
def test_constructor_errors(call: Callable[[], object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        call()
    gc.collect()  # while the filter holds


def _double_buffered_tiles(rows: int, cols: int, m: int, period: int, tiles: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Stream `tiles` random tiles through a `WSDoubleBufferArray`, one every `period` cycles, each tile's
    weight row r written into its bank (tile j's: j % 2) one cycle before its first row of A reaches
    array row r; return the rows the array gives and the rows numpy gives."""
    from amaranth.sim import Simulator

    from hw.array import WSDoubleBufferArray

    config = ArrayConfig(rows=rows, cols=cols, act_bits=4, weight_bits=4, act_signed=True)
    rng = np.random.default_rng(rows * 100 + cols * 10 + m)
    a = rng.integers(-8, 8, (tiles, m, rows))
    w = rng.integers(-8, 8, (tiles, rows, cols))
    dut = WSDoubleBufferArray(config, k=rows)
    start, cycles = 2, 2 + tiles * period + m + rows + cols + 2
    plan: list[dict[str, Any]] = [{} for _ in range(cycles)]
    for j in range(tiles):
        first = start + j * period
        for u in range(m):
            plan[first + u]["a"] = (a[j, u], j % 2)
        for r in range(rows):
            plan[first - 1 + r]["w"] = (r, w[j, r], j % 2)
    out: list[list[int]] = []

    async def bench(ctx: Any) -> None:
        for step in plan:
            row, values, bank = step.get("w", (None, [0] * cols, 0))
            ctx.set(dut.w_rows, 0 if row is None else 1 << row)
            ctx.set(dut.w_bank, bank)
            for c in range(cols):
                ctx.set(dut.w[c], int(values[c]))
            codes, a_bank = step.get("a", (None, 0))
            ctx.set(dut.a_valid, codes is not None)
            ctx.set(dut.a_bank, a_bank)
            for r in range(rows):
                ctx.set(dut.a[r], 0 if codes is None else int(codes[r]))
            if ctx.get(dut.out_valid):
                out.append([ctx.get(dut.out[c]) for c in range(cols)])
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return np.array(out), np.concatenate([a[j] @ w[j] for j in range(tiles)])


@pytest.mark.parametrize(("rows", "cols", "m"), [(2, 2, 1), (2, 4, 2), (3, 2, 4), (4, 4, 1), (2, 8, 1), (2, 8, 3)])
def test_double_buffered_array_streams_tiles_back_to_back(rows: int, cols: int, m: int) -> None:
    """Tiles one `machine_tile_period` apart, each loading its bank while the previous tile streams and
    while its own first rows stream: numpy's products, row after row."""
    from hw.cycles import machine_tile_period

    got, want = _double_buffered_tiles(rows, cols, m, machine_tile_period(m, rows, cols))
    np.testing.assert_array_equal(got, want)


def test_double_buffered_array_needs_the_bank_free_before_loading() -> None:
    """One cycle closer than 2P + 1 >= M + C allows, a load overwrites weights the tile two before still
    multiplies with in the last columns."""
    got, want = _double_buffered_tiles(2, 8, 1, 3)
    assert got.shape == want.shape and not np.array_equal(got, want)


def _stream_tiles(rows: int, cols: int, k: int, reads: int, gap: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Drive `hw.array.OSStreamArray` with two tiles of K = k, the second's first k `gap` cycles after the
    first's last, rows skewed as the machine's feed skews them; return the shadow tile read as the
    machine's drain reads it (row r on cycle t_K + C - 1 + r, t_K the cycle after the first tile's last k;
    `reads` rows) and numpy's product for the first tile."""
    from amaranth.sim import Simulator

    from hw.array import OSStreamArray

    config = ArrayConfig(rows=rows, cols=cols, act_bits=4, weight_bits=4, act_signed=True, dataflow="os")
    rng = np.random.default_rng(rows * 100 + cols * 10 + k)
    a = rng.integers(-8, 8, (2, rows, k))
    w = rng.integers(-8, 8, (2, k, cols))
    dut = OSStreamArray(config, k=2 * k)
    starts = (1, 1 + k + gap)
    drain = starts[0] + k + cols - 1
    got: list[np.ndarray] = []

    async def bench(ctx: Any) -> None:
        for t in range(drain + rows + 1):
            for r in range(rows):
                value, first, last = 0, 0, 0
                for j, start in enumerate(starts):
                    u = t - start - r   # row r's k this cycle
                    if 0 <= u < k:
                        value, first, last = int(a[j, r, u]), int(u == 0), int(u == k - 1)
                ctx.set(dut.a[r], value)
                ctx.set(dut.first, (ctx.get(dut.first) & ~(1 << r)) | (first << r))
                ctx.set(dut.last, (ctx.get(dut.last) & ~(1 << r)) | (last << r))
            for c in range(cols):
                u = [t - start for start in starts if 0 <= t - start < k]
                j = [j for j, start in enumerate(starts) if 0 <= t - start < k]
                ctx.set(dut.w[c], int(w[j[0], u[0], c]) if u else 0)
            row = t - drain
            if 0 <= row < reads:
                got.append(np.array([ctx.get(dut.shadow[row][c]) for c in range(cols)]))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return got, a[0] @ w[0]


@pytest.mark.parametrize(("rows", "cols", "k"), [(2, 2, 2), (4, 4, 4), (2, 4, 4), (4, 2, 8)])
def test_stream_array_holds_a_finished_tile_while_the_next_accumulates(rows: int, cols: int, k: int) -> None:
    """Tiles back to back (K >= C): row r of the first tile's sums is in the shadows on t_K + C - 1 + r,
    while the second tile's products run through the PEs."""
    got, want = _stream_tiles(rows, cols, k, rows, gap=0)
    np.testing.assert_array_equal(np.array(got), want)


def test_stream_array_needs_c_cycles_between_two_tiles_last_products() -> None:
    """A second tile of K = 2 right after the first on 2 x 4 finishes before the drain reads the first's
    row 1 in column 0: the shadow holds the second's sum there (the machine's feed waits, `hw.machine_stream`)."""
    got, want = _stream_tiles(2, 4, 2, 2, gap=0)
    assert not np.array_equal(np.array(got), want)
    got, want = _stream_tiles(2, 4, 2, 2, gap=2)   # last products C = 4 cycles apart
    np.testing.assert_array_equal(np.array(got), want)
