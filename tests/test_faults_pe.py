"""PE-register faults: the fast accumulator correction equals a cycle-by-cycle array simulation."""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import pytest
import torch

from dsetool.engine.tiling import LayerTiling
from dsetool.faults.bits import apply_fault
from dsetool.faults.pe import apply_pe_faults
from hw.cycles import machine_stream_period, machine_tile_period
from tests.fixtures.systolic_sim import simulate, simulate_stream, simulate_timeline

ARRAYS = [(2, 2), (3, 2), (4, 4)]
WIDE = [(2, 4), (2, 8)]   # the double-buffered machine's period can be shorter than the array is wide
ACT_BITS, WEIGHT_BITS, ACC_BITS = 4, 4, 14


def corrupt(bit: int, width: int, signed: bool, model: str):
    def apply(value: int) -> int:
        return int(apply_fault(torch.tensor([value]), torch.tensor([bit]), model, width, signed)[0])
    return apply


def started_at(bias: np.ndarray, sums: np.ndarray) -> np.ndarray:
    """Return the accumulators of array sums (M, N) that start at the bias and wrap at `ACC_BITS`, as the
    accelerator's K accumulator does: a sum that overflows with its bias wraps, bias included."""
    half = 1 << (ACC_BITS - 1)
    return (sums.astype(np.int64) + bias + half) % (1 << ACC_BITS) - half


def shuffled_order(rng: np.random.Generator, k: int, rows: int) -> tuple[int, ...]:
    """Return a K order as the accelerator makes them: every K index once, in some order, with padding
    lanes (-1) among them, in whole slices of `rows`."""
    slots = (k + rows) // rows * rows + rows    # at least one padding lane, and a slice's worth more
    order = np.full(slots, -1)
    order[rng.choice(slots, size=k, replace=False)] = rng.permutation(k)
    return tuple(int(i) for i in order)


def trials_on_a_timeline(tiling: LayerTiling, site: str, rng: np.random.Generator, simulate_tiles, trials: int,
                         groups: int = 1):
    """Draw operands and `trials` faults (bit flips and stuck-ats) at random sites of `tiling`'s timeline
    (or its tiles' windows, for `simulate`); assert that the fast model gives each one's accumulators as
    `simulate_tiles` (a reference simulation of the machine's tiles, bias-started sums) does, and that
    some fault changes the result. With `groups`, the weights are a grouped conv's: zero between an
    output and the K indices of other groups, and the fast model is given only each output's own."""
    m, k, n = tiling.m, tiling.k, tiling.n
    a = rng.integers(0, 1 << ACT_BITS, size=(m, k))
    w = rng.integers(-(1 << (WEIGHT_BITS - 1)) + 1, 1 << (WEIGHT_BITS - 1), size=(k, n))
    own = np.arange(k)[:, None] // (k // groups) == np.arange(n)[None, :] // (n // groups)
    w = w * own
    bias = rng.integers(-50, 50, size=n)
    assert np.array_equal(simulate_tiles(tiling, a, w, ACC_BITS, None).astype(np.int64), a @ w)
    width, signed = {"pe.act": (ACT_BITS, False), "pe.weight": (WEIGHT_BITS, True), "pe.psum": (ACC_BITS, True),
                     "pe.shadow": (ACC_BITS, True)}[site]
    operands = torch.tensor(a.T[None], dtype=torch.float64)
    weights = torch.tensor(w.T[own.T].reshape(n, k // groups), dtype=torch.float64)   # (N, K per group)
    acc = torch.tensor((a @ w + bias).T[None], dtype=torch.float64)
    changed = 0
    shape = tiling.site_shape(site == "pe.weight" and tiling.dataflow == "ws", site == "pe.shadow")
    for trial in range(trials):
        element = int(rng.integers(0, int(np.prod(shape))))
        bit = int(rng.integers(0, width))
        model = ["bitflip", "stuck0", "stuck1"][trial % 3]
        where = tuple(int(x) for x in np.unravel_index(element, shape))   # (cycle, [bank,] r, c) or (tile, u, r, c)
        expected = simulate_tiles(tiling, a, w, ACC_BITS, (site, *where, corrupt(bit, width, signed, model)))
        got = apply_pe_faults(site, tiling, operands, weights, acc, np.array([0]), np.array([element]),
                              np.array([1 << bit]), model, width, signed, ACC_BITS, groups)
        assert np.array_equal(got[0].T.numpy().astype(np.int64), started_at(bias, expected)), (
            site, where, bit, model)
        changed += not np.array_equal(expected.astype(np.int64), a @ w)
    assert changed > 0


@pytest.mark.parametrize("rows, cols", ARRAYS)
@pytest.mark.parametrize("dataflow", ["ws", "os"])
@pytest.mark.parametrize("site", ["pe.act", "pe.weight", "pe.psum"])
@pytest.mark.parametrize("layout", ["im2col", "k-order", "k-order-lead"])
def test_fast_pe_faults_equal_cycle_simulation(rows, cols, dataflow, site, layout):
    """Every site, K in im2col order or in a shuffled one with padding lanes, with and without empty lead
    columns (a layer writing into a concat from inside a word)."""
    rng = np.random.default_rng(zlib.crc32(repr((rows, cols, dataflow, site, layout)).encode()))
    m, k, n = 5, 7, 5   # not multiples of the array
    tiling = LayerTiling(m, k, n, rows, cols, dataflow, shuffled_order(rng, k, rows) if layout != "im2col" else None,
                         cols - 1 if layout == "k-order-lead" else 0)
    a = rng.integers(0, 1 << ACT_BITS, size=(m, k))
    w = rng.integers(-(1 << (WEIGHT_BITS - 1)) + 1, 1 << (WEIGHT_BITS - 1), size=(k, n))
    bias = rng.integers(-50, 50, size=n)
    golden = simulate(tiling, a, w, ACC_BITS, None)
    assert np.array_equal(golden.astype(np.int64), a @ w)
    width, signed = {"pe.act": (ACT_BITS, False), "pe.weight": (WEIGHT_BITS, True), "pe.psum": (ACC_BITS, True)}[site]
    operands = torch.tensor(a.T[None], dtype=torch.float64)                      # (1, K, M)
    weights = torch.tensor(w.T, dtype=torch.float64)                             # (N, K)
    acc = torch.tensor((a @ w + bias).T[None], dtype=torch.float64)              # (1, N, M)
    sites = int(np.prod(tiling.shape))
    for trial in range(60):
        element = int(rng.integers(0, sites))
        bit = int(rng.integers(0, width))
        model = ["bitflip", "stuck0", "stuck1"][trial % 3]
        tile, u, r, c = np.unravel_index(element, tiling.shape)
        expected = simulate(tiling, a, w, ACC_BITS, (site, int(tile), int(u), int(r), int(c),
                                                    corrupt(bit, width, signed, model)))
        got = apply_pe_faults(site, tiling, operands, weights, acc, np.array([0]), np.array([element]),
                              np.array([1 << bit]), model, width, signed, ACC_BITS)
        assert np.array_equal(got[0].T.numpy().astype(np.int64), started_at(bias, expected)), (
            site, dataflow, (int(tile), int(u), int(r), int(c)), bit, model)


@pytest.mark.parametrize("rows, cols", ARRAYS + WIDE)
@pytest.mark.parametrize("site", ["pe.act", "pe.weight", "pe.psum"])
@pytest.mark.parametrize("layout", ["im2col", "k-order-lead"])
@pytest.mark.parametrize("m", [1, 3, 6])
def test_fast_pe_faults_on_the_tiles_timeline_equal_its_cycle_simulation(rows, cols, site, layout, m):
    """The double-buffered weight-stationary accelerator starts a tile every `machine_tile_period` cycles
    while the one before still streams: a site is one register at one cycle of that timeline (each
    counted once), and the fast model equals a cycle-by-cycle simulation of the overlapping tiles. Few
    rows per tile (M = 1, 3) make the period longer than M (idle cycles between tiles), M = 6 shorter than
    a tile's window (a PE's cycles after one tile's rows carry the next tile's)."""
    rng = np.random.default_rng(zlib.crc32(repr((rows, cols, site, layout, m)).encode()))
    k, n = 7, 5
    order = shuffled_order(rng, k, rows) if layout != "im2col" else None
    tiling = LayerTiling(m, k, n, rows, cols, "ws", order, cols - 1 if layout != "im2col" else 0,
                         machine_tile_period(m, rows, cols))
    assert tiling.shape == (tiling.span, rows, cols) and tiling.span < tiling.tiles * tiling.window
    trials_on_a_timeline(tiling, site, rng, simulate_timeline, 40)


@pytest.mark.parametrize("rows, cols", ARRAYS)
@pytest.mark.parametrize("site", ["pe.act", "pe.weight", "pe.psum", "pe.shadow"])
@pytest.mark.parametrize("layout", ["im2col", "k-order-lead"])
@pytest.mark.parametrize("m", [1, 3, 6])
def test_fast_pe_faults_on_the_streaming_tiles_equal_their_cycle_simulation(rows, cols, site, layout, m):
    """The output-stationary accelerator streams its tiles back to back, K' cycles apart, and latches each
    finished sum into a shadow register as the next tile's sums start, which the drain reads a row at a
    time: the fast model on that timeline equals a cycle-by-cycle simulation of it (a partial sum flipped
    just after a tile's last product is lost, one flipped earlier carries; a shadow flipped between its
    latch and its row's drain changes that output)."""
    rng = np.random.default_rng(zlib.crc32(repr(("stream", rows, cols, site, layout, m)).encode()))
    k, n = 7, 5
    order = shuffled_order(rng, k, rows) if layout != "im2col" else None
    plain = LayerTiling(m, k, n, rows, cols, "os", order, cols - 1 if layout != "im2col" else 0)
    period = machine_stream_period(plain.k_stream, cols)
    if not period:
        pytest.skip("K' < C: the machine's tiles wait before their last K slice (no uniform timeline)")
    tiling = dataclasses.replace(plain, period=period)
    assert tiling.shape == (tiling.span, rows, cols) and tiling.span < tiling.tiles * tiling.window
    trials_on_a_timeline(tiling, site, rng, simulate_stream, 40 if site != "pe.shadow" else 400)


@pytest.mark.parametrize("rows, cols", [(2, 2), (3, 2), (2, 4), (4, 4)])
@pytest.mark.parametrize("lead", [False, True])
def test_every_shadow_site_of_the_last_tiles_equals_the_stream_simulation(rows, cols, lead):
    """The drain reads the last tile's last row of shadows on cycle `span`, one past the timeline's last
    product: the shadow sites run to that cycle, and every one of the last two tiles' cycles (sign bit
    flipped) equals the cycle-by-cycle stream; the flips on that last cycle reach the outputs. With
    `lead`, two N slices, the first starting `cols` - 1 empty columns in (a concat's lead)."""
    rng = np.random.default_rng(zlib.crc32(repr(("drain", rows, cols, lead)).encode()))
    m, k, n = 2 * rows, 2 * cols + 1, cols + 1 if lead else cols
    tiling = LayerTiling(m, k, n, rows, cols, "os", lead=cols - 1 if lead else 0,
                         period=machine_stream_period(k, cols))
    assert tiling.tile_grid[1] == (2 if lead else 1)
    shape = tiling.site_shape(shadow=True)
    assert tiling.period and shape == (tiling.span + 1, rows, cols)
    a = rng.integers(1, 1 << ACT_BITS, size=(m, k))
    w = rng.integers(-(1 << (WEIGHT_BITS - 1)) + 1, 1 << (WEIGHT_BITS - 1), size=(k, n))
    operands = torch.tensor(a.T[None], dtype=torch.float64)
    weights = torch.tensor(w.T, dtype=torch.float64)
    acc = torch.tensor((a @ w).T[None], dtype=torch.float64)
    first = (tiling.tiles - 2) * tiling.period
    elements = np.arange(first * rows * cols, int(np.prod(shape)))
    got = apply_pe_faults("pe.shadow", tiling, operands.expand(len(elements), -1, -1), weights,
                          acc.expand(len(elements), -1, -1).clone(), np.arange(len(elements)), elements,
                          np.full(len(elements), 1 << (ACC_BITS - 1)), "bitflip", ACC_BITS, True, ACC_BITS)
    last_cycle_changes = 0
    for row, element in enumerate(elements.tolist()):
        cycle, r, c = (int(x) for x in np.unravel_index(element, shape))
        expected = simulate_stream(tiling, a, w, ACC_BITS, ("pe.shadow", cycle, r, c,
                                                            corrupt(ACC_BITS - 1, ACC_BITS, True, "bitflip")))
        assert np.array_equal(got[row].T.numpy().astype(np.int64), started_at(np.zeros(n, np.int64), expected)), (
            cycle, r, c)
        last_cycle_changes += cycle == tiling.span and not np.array_equal(expected.astype(np.int64), a @ w)
    assert last_cycle_changes == cols   # the last row of the last tile, every column


@pytest.mark.parametrize("rows, cols", WIDE)
def test_every_weight_site_of_a_wide_array_equals_the_timeline_simulation(rows, cols):
    """On an array wider than the double-buffered machine's period (here M = 1: period max(M, R, (M + C)
    // 2) <= C - 2), tile j's weights are written into the bank while tile j - 1 has not reached the last
    columns yet: every weight site (both banks of every PE at every cycle), sign bit flipped, against the
    simulation with the machine's two banks."""
    rng = np.random.default_rng(zlib.crc32(repr(("wide", rows, cols)).encode()))
    m, k, n = 1, 16, 2 * cols - 3
    tiling = LayerTiling(m, k, n, rows, cols, "ws", None, 0, machine_tile_period(m, rows, cols))
    assert tiling.period <= cols - 2 and tiling.tiles >= 3
    a = rng.integers(1, 1 << ACT_BITS, size=(m, k))
    w = rng.integers(-(1 << (WEIGHT_BITS - 1)) + 1, 1 << (WEIGHT_BITS - 1), size=(k, n))
    operands = torch.tensor(a.T[None], dtype=torch.float64)
    weights = torch.tensor(w.T, dtype=torch.float64)
    acc = torch.tensor((a @ w).T[None], dtype=torch.float64)
    shape = tiling.site_shape(stationary=True)
    assert shape == (tiling.span, 2, rows, cols)
    elements = np.arange(int(np.prod(shape)))
    got = apply_pe_faults("pe.weight", tiling, operands.expand(len(elements), -1, -1),
                          weights, acc.expand(len(elements), -1, -1).clone(), elements, elements,
                          np.full(len(elements), 1 << (WEIGHT_BITS - 1)), "bitflip", WEIGHT_BITS, True, ACC_BITS)
    reloaded = ahead = 0
    for element in elements.tolist():
        cycle, bank, r, c = (int(x) for x in np.unravel_index(element, shape))
        expected = simulate_timeline(tiling, a, w, ACC_BITS, ("pe.weight", cycle, bank, r, c,
                                                              corrupt(WEIGHT_BITS - 1, WEIGHT_BITS, True, "bitflip")))
        assert np.array_equal(got[element].T.numpy().astype(np.int64), started_at(np.zeros(n, np.int64), expected)), (
            cycle, bank, r, c)
        changed = not np.array_equal(expected.astype(np.int64), a @ w)
        tile = min(max((cycle - r - c) // tiling.period, 0), tiling.tiles - 1)   # the tile the PE passed last
        reloaded += changed and bank == tile % 2 and tile + 2 < tiling.tiles and \
            cycle >= (tile + 2) * tiling.period + r
        ahead += changed and bank != tile % 2
    assert reloaded > 0   # sites where the bank already holds the tile after next, which the flip corrupts
    assert ahead > 0      # the other bank, loaded for the next tile before its first row arrives


def grouped_orders(rng: np.random.Generator, tiling: LayerTiling, groups: int, length: int | None
                   ) -> tuple[tuple[int, ...], ...]:
    """Return a K order per N slice as the accelerator makes them for a grouped conv: each N slice streams
    the K indices of its columns' groups and, as a word's lanes of other groups' channels do, one K index
    of another group (if any), shuffled among padding lanes, in whole slices of `rows`; all `length` long (the
    output-stationary machine's one timeline) or each its own."""
    k_group, n_group = tiling.k // groups, tiling.n // groups
    orders = []
    for first in range(-tiling.lead, tiling.n, tiling.cols):
        outs = [x for x in range(first, first + tiling.cols) if 0 <= x < tiling.n]
        own = sorted({x // n_group for x in outs})
        ks = [k for g in own for k in range(g * k_group, (g + 1) * k_group)]
        foreign = [k for k in range(tiling.k) if k // k_group not in own]
        ks += [int(rng.choice(foreign))] if foreign else []
        slots = length or (len(ks) + tiling.rows) // tiling.rows * tiling.rows + tiling.rows * int(rng.integers(0, 2))
        order = np.full(slots, -1)
        order[rng.choice(slots, size=len(ks), replace=False)] = rng.permutation(ks)
        orders.append(tuple(int(i) for i in order))
    return tuple(orders)


@pytest.mark.parametrize("rows, cols", [(2, 2), (2, 4), (4, 2), (3, 3)])
@pytest.mark.parametrize("schedule", ["windows", "timeline", "stream"])
@pytest.mark.parametrize("site", ["pe.act", "pe.weight", "pe.psum", "pe.shadow"])
def test_grouped_conv_pe_faults_on_the_machines_gemm_equal_its_cycle_simulation(rows, cols, schedule, site):
    """The accelerator runs a grouped conv as one GEMM over all its input channels, block-diagonal
    weights, each N slice streaming only the K slices of its own groups (`LayerTiling.slice_orders`: as
    many K tiles as it needs, weight-stationary): every PE site of that schedule (each tile in its
    window, the double-buffered tiles' timeline, the output-stationary stream) equals the cycle-by-cycle
    simulation, zero weights of other groups and their flips included."""
    if site == "pe.shadow" and schedule != "stream":
        pytest.skip("shadow registers are the output-stationary PE's")
    rng = np.random.default_rng(zlib.crc32(repr(("grouped", rows, cols, schedule, site)).encode()))
    groups, m = 3, 4
    dataflow = "os" if schedule == "stream" else "ws"
    plain = LayerTiling(m, groups * 4, groups * 2, rows, cols, dataflow, lead=cols - 1)   # 3 groups, 2 outputs each
    length = (9 // rows + 2) * rows if dataflow == "os" else None   # up to 2 groups of 4 K indices, one foreign
    orders = grouped_orders(rng, plain, groups, length)
    period = {"windows": 0, "timeline": machine_tile_period(m, rows, cols),
              "stream": machine_stream_period(len(orders[0]), cols)}[schedule]
    tiling = dataclasses.replace(plain, slice_orders=orders, period=period)
    if schedule == "timeline":
        assert len({len(order) for order in orders}) > 1 or rows == 3   # N slices with K tiles of their own
    simulated = {"windows": simulate, "timeline": simulate_timeline, "stream": simulate_stream}[schedule]
    trials_on_a_timeline(tiling, site, rng, simulated, 40 if site != "pe.shadow" else 80, groups=groups)
