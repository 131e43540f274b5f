"""Testbench drivers that run a GEMM through a WSArray or OSArray tile by tile, in one Simulator or inside
another testbench, with hooks on each streaming cycle for probing or forcing registers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
from amaranth.sim import Simulator

from hw.array import OSArray, WSArray
from hw.arrayconfig import ArrayConfig

Hook = Callable[[Any, int, int, int], None]  # (ctx, k- or m-tile, n-tile, streaming cycle u)


def wrap(value: np.ndarray, width: int) -> np.ndarray:
    half = 1 << (width - 1)
    return (value + half) % (1 << width) - half


def padded(a: np.ndarray, w: np.ndarray, rows: int, cols: int, ws: bool) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad A and W so the tiled dimensions are multiples of the array's (K, N for ws; M, N for os)."""
    (m, k), n = a.shape, w.shape[1]
    mp, kp = (m, -(-k // rows) * rows) if ws else (-(-m // rows) * rows, k)
    a_pad = np.zeros((mp, kp), dtype=np.int64)
    a_pad[:m, :k] = a
    w_pad = np.zeros((kp, -(-n // cols) * cols), dtype=np.int64)
    w_pad[:k, :n] = w
    return a_pad, w_pad


def operands(rng: np.random.Generator, config: ArrayConfig, m: int, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Return random A (M x K) and W (K x N) codes that fit the config's operand widths."""
    lo = -(1 << (config.act_bits - 1)) if config.act_signed else 0
    hi = (1 << (config.act_bits - 1)) if config.act_signed else (1 << config.act_bits)
    a = rng.integers(lo, hi, size=(m, k))
    w = rng.integers(-(1 << (config.weight_bits - 1)), 1 << (config.weight_bits - 1), size=(k, n))
    return a, w


async def drive_gemm(ctx: Any, array: WSArray | OSArray, a: np.ndarray, w: np.ndarray, observe: Hook | None = None,
                     idle: int = 0, present: Hook | None = None) -> tuple[np.ndarray, int]:
    """Drive A (M x K) @ W (K x N) through the array from a running testbench; return (out, cycles).

    `present` runs after streaming cycle u's inputs are set and before its clock edge; `observe` runs after
    the edge, before any output is read. `idle` is what the driver leaves on the operand lanes while `valid`
    is low (the array must ignore it).
    """
    drive = drive_ws if isinstance(array, WSArray) else drive_os
    return await drive(ctx, array, a, w, observe, idle, present)


def run_gemm(array: WSArray | OSArray, a: np.ndarray, w: np.ndarray, observe: Hook | None = None,
             idle: int = 0, present: Hook | None = None) -> tuple[np.ndarray, int]:
    """Simulate one GEMM on a fresh Simulator (see `drive_gemm`); return (out, cycles)."""
    result: list[tuple[np.ndarray, int]] = []

    async def bench(ctx: Any) -> None:
        result.append(await drive_gemm(ctx, array, a, w, observe, idle, present))

    simulate(array, bench)
    return result[0]


def simulate(array: WSArray | OSArray, bench: Callable[[Any], Awaitable[None]]) -> None:
    """Run one async testbench on the array with a clock on its sync domain."""
    sim = Simulator(array)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


class _Rows:
    """Clock edges of a GEMM, with every output row collected, in order, on whichever edge it appears."""

    def __init__(self, ctx: Any, dut: Any, cols: int, on_output: Callable[[Any], None] | None = None) -> None:
        self.ctx, self.dut, self.cols, self.on_output = ctx, dut, cols, on_output
        self.rows: list[list[int]] = []
        self.cycles = 0

    async def edge(self, after: Callable[[], None] | None = None) -> None:
        """Tick once; run `after` (a hook that must see the edge before any output is read); collect a row."""
        await self.ctx.tick()
        self.cycles += 1
        if after is not None:
            after()
        if self.ctx.get(self.dut.out_valid):
            self.rows.append([self.ctx.get(self.dut.out[c]) for c in range(self.cols)])
            if self.on_output is not None:
                self.on_output(self.ctx)

    async def drain(self, count: int, limit: int = 1000) -> None:
        """Tick until `count` rows have appeared; fail after `limit` edges without them."""
        for _ in range(limit):
            if len(self.rows) >= count:
                break
            await self.edge()
        assert len(self.rows) == count, f"{len(self.rows)} output rows after the drain, expected {count}"


async def drive_ws(ctx: Any, array: Any, a: np.ndarray, w: np.ndarray, observe: Hook | None = None,
                   idle: int = 0, present: Hook | None = None,
                   on_output: Callable[[Any], None] | None = None) -> tuple[np.ndarray, int]:
    """Drive A (M x K) @ W (K x N) through a WS array (or a datapath around one) tile by tile; return
    (out, cycles).

    Tiles run back to back, each for its 2R + C + M - 2 cycles of the schedule. A bare array's tiles run
    k-tile outer, n-tile inner (as `LayerTiling.decode` numbers them) and their rows are summed here,
    wrapping at the array's acc_bits. A datapath (it has `k_first`) sums its K tiles itself: its tiles run
    n-tile outer, k-tile inner, marked first/last, and only the last K tile's rows come out. Output rows are
    collected on whichever edge they appear, so a datapath's output stage drains a tile while the next one
    runs, and after the last tile the driver waits for the remaining rows; `on_output(ctx)` runs on every
    edge after which a row is valid. Cycles count every clock edge from the first weight-load cycle to the
    one after which the last output row is valid.
    """
    rows, cols = array.config.rows, array.config.cols
    m, n = a.shape[0], w.shape[1]
    a_pad, w_pad = padded(a, w, rows, cols, ws=True)
    k_tiles, n_tiles = a_pad.shape[1] // rows, w_pad.shape[1] // cols
    summed_inside = hasattr(array, "k_first")
    grid = [(kt, nt) for nt in range(n_tiles) for kt in range(k_tiles)] if summed_inside else \
        [(kt, nt) for kt in range(k_tiles) for nt in range(n_tiles)]
    clock = _Rows(ctx, array, cols, on_output)
    for kt, nt in grid:
        w_tile = w_pad[kt * rows:(kt + 1) * rows, nt * cols:(nt + 1) * cols]
        ctx.set(array.w_load, 1)
        for r in reversed(range(rows)):
            for c in range(cols):
                ctx.set(array.w[c], int(w_tile[r, c]))
            await clock.edge()
        ctx.set(array.w_load, 0)
        if summed_inside:
            ctx.set(array.k_first, int(kt == 0))
            ctx.set(array.k_last, int(kt == k_tiles - 1))
        for u in range(m + rows + cols - 2):
            ctx.set(array.a_valid, int(u < m))
            for r in range(rows):
                ctx.set(array.a[r], int(a_pad[u, kt * rows + r]) if u < m else idle)
            if present is not None:
                present(ctx, kt, nt, u)
            await clock.edge(None if observe is None else lambda: observe(ctx, kt, nt, u))  # noqa: B023
    emitted = [(kt, nt) for kt, nt in grid if not summed_inside or kt == k_tiles - 1]
    await clock.drain(m * len(emitted))
    out = np.zeros((m, w_pad.shape[1]), dtype=np.int64)
    for t, (_, nt) in enumerate(emitted):
        out[:, nt * cols:(nt + 1) * cols] += np.array(clock.rows[t * m:(t + 1) * m], dtype=np.int64)
    return (out[:, :n] if summed_inside else wrap(out[:, :n], array.acc_bits)), clock.cycles


async def drive_os(ctx: Any, array: OSArray, a: np.ndarray, w: np.ndarray, observe: Hook | None = None,
                   idle: int = 0, present: Hook | None = None) -> tuple[np.ndarray, int]:
    """Drive A (M x K) @ W (K x N) through the OS array tile by tile (m-tile outer, n-tile inner); return
    (out, cycles), cycles counted from the first streaming cycle to the one after which the last tile is done."""
    rows, cols = array.config.rows, array.config.cols
    (m, k), n = a.shape, w.shape[1]
    a_pad, w_pad = padded(a, w, rows, cols, ws=False)
    out = np.zeros((a_pad.shape[0], w_pad.shape[1]), dtype=np.int64)
    cycles = 0
    for mt in range(a_pad.shape[0] // rows):
        for nt in range(w_pad.shape[1] // cols):
            u = 0
            while u == 0 or not ctx.get(array.out_valid):
                ctx.set(array.start, int(u == 0))
                ctx.set(array.valid, int(u < k))
                ctx.set(array.last, int(u == k - 1))
                for r in range(rows):
                    ctx.set(array.a[r], int(a_pad[mt * rows + r, u]) if u < k else idle)
                for c in range(cols):
                    ctx.set(array.w[c], int(w_pad[u, nt * cols + c]) if u < k else idle)
                if present is not None:
                    present(ctx, mt, nt, u)
                await ctx.tick()
                cycles += 1
                if observe is not None:
                    observe(ctx, mt, nt, u)
                u += 1
            block = [[ctx.get(array.out[r][c]) for c in range(cols)] for r in range(rows)]
            out[mt * rows:(mt + 1) * rows, nt * cols:(nt + 1) * cols] = np.array(block, dtype=np.int64)
    return wrap(out[:m, :n], array.acc_bits), cycles


async def drive_os_rows(ctx: Any, dut: Any, a: np.ndarray, w: np.ndarray,
                        on_output: Callable[[Any], None] | None = None) -> tuple[np.ndarray, int]:
    """Drive A (M x K) @ W (K x N) through an `OSDatapath` (m-tile outer, n-tile inner); return (out, cycles).

    Each tile streams for its R + C + K - 2 cycles, back to back; the datapath returns each tile as R rows of
    C codes, collected on whichever edge they appear (`on_output` as for `drive_ws`); after the last tile the
    driver waits for the rest.
    Cycles count every edge from the first streaming cycle to the one after which the last row is valid.
    """
    rows, cols = dut.config.rows, dut.config.cols
    (m, k), n = a.shape, w.shape[1]
    a_pad, w_pad = padded(a, w, rows, cols, ws=False)
    grid = [(mt, nt) for mt in range(a_pad.shape[0] // rows) for nt in range(w_pad.shape[1] // cols)]
    clock = _Rows(ctx, dut, cols, on_output)
    for mt, nt in grid:
        for u in range(rows + cols + k - 2):
            ctx.set(dut.start, int(u == 0))
            ctx.set(dut.valid, int(u < k))
            ctx.set(dut.last, int(u == k - 1))
            for r in range(rows):
                ctx.set(dut.a[r], int(a_pad[mt * rows + r, u]) if u < k else 0)
            for c in range(cols):
                ctx.set(dut.w[c], int(w_pad[u, nt * cols + c]) if u < k else 0)
            await clock.edge()
    await clock.drain(rows * len(grid))
    out = np.zeros((a_pad.shape[0], w_pad.shape[1]), dtype=np.int64)
    for t, (mt, nt) in enumerate(grid):
        out[mt * rows:(mt + 1) * rows, nt * cols:(nt + 1) * cols] = clock.rows[t * rows:(t + 1) * rows]
    return out[:m, :n], clock.cycles


class CombProbe:
    """Evaluate a combinational component from plain calls, all in one Simulator.

    A background testbench wakes once per simulated microsecond, applies the pending inputs and reads the
    outputs, so each hypothesis example costs one time step rather than a new Simulator.
    """

    def __init__(self, dut: Any) -> None:
        self._sim = Simulator(dut)
        self._sim.add_testbench(self._serve, background=True)
        self._request: tuple[Sequence[tuple[Any, int]], Sequence[Any]] = ((), ())
        self._result: list[Any] = []
        self._steps = 0

    async def _serve(self, ctx: Any) -> None:
        while True:
            await ctx.delay(1e-6)
            inputs, outputs = self._request
            for port, value in inputs:
                ctx.set(port, value)
            self._result = [ctx.get(port) for port in outputs]

    def __call__(self, inputs: Sequence[tuple[Any, int]], outputs: Sequence[Any]) -> list[Any]:
        """Set each (port, value) of `inputs`, then return the values of `outputs`."""
        self._request = (inputs, outputs)
        self._steps += 1
        self._sim.run_until((self._steps + 0.5) * 1e-6)
        return self._result
