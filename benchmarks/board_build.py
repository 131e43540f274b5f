"""The UART accelerator on a ULX3S: what `dsetool board` builds, for LeNet-5 on the default machine.

For each `--sides` array, LeNet-5 (`--bits`, default W8A8, po2 per-tensor scales, seeded random weights
calibrated on digits, as `benchmarks/machine_rtl.py` makes it) is compiled and the machine synth would
build for it (double-buffered weights unless `--weight-buffers 1`) is taken through Yosys, nextpnr-ecp5
with the board's pins and clock, and ecppack (`hw.board.build`, the board's 25 MHz clock, `--baud`). Printed
per array, as a Markdown row: LUT, FF, DSP, BRAM, Fmax, the bitstream's size and the seconds of each tool,
plus the critical path nextpnr reports. The bitstream holds no weights: the host loads them over the UART.

    .venv/bin/python benchmarks/board_build.py [--sides 4 8] [--board ulx3s-85f] [--baud 115200]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from dsetool.machine.compiler import compile_program
from dsetool.machine.encode import machine_of
from hw import board as boards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--bits", type=int, default=8)
    parser.add_argument("--board", default="ulx3s-85f")
    parser.add_argument("--baud", type=int, default=boards.DEFAULT_BAUD)
    parser.add_argument("--weight-buffers", type=int, choices=(1, 2), default=2)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from machine_rtl import engine_of

    print("| array | LUT | FF | DSP | BRAM | Fmax | bitstream | Yosys / nextpnr / ecppack | critical path |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        engine, _ = engine_of("lenet5", args.bits, "po2", "per_tensor", work / "lenet5")
        for side in args.sides:
            shape, _ = machine_of(compile_program(engine, side, side), weight_buffers=args.weight_buffers)
            started = time.perf_counter()
            built = boards.build(shape, args.board, work / f"board-{side}", baud=args.baud)
            result = built.synth
            if result.status != "ok":
                print(f"| {side}x{side} | {result.status}: {result.message} |")
                continue
            tools = " / ".join(f"{result.seconds.get(key, 0.0):.1f}" for key in ("synth", "pnr", "pack"))
            used = result.resources
            path = result.critical_path
            where = f"{path.get('from', '?')} -> {path.get('to', '?')}, {path.get('ns', 0.0):.1f} ns" if path else "-"
            print(f"| {side}x{side} | {used.get('LUT', 0):,} | {used.get('FF', 0):,} | {used.get('DSP', 0)} | "
                  f"{used.get('BRAM', 0)} | {result.fmax_mhz or 0.0:.1f} MHz | {built.bitstream_bytes:,} B | "
                  f"{tools} s ({time.perf_counter() - started:.0f} s in all) | {where} |", flush=True)


if __name__ == "__main__":
    main()
