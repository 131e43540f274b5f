"""The accelerator in compiled RTL simulation: agreement with the integer engine and measured cycles.

For every network and design given (default: LeNet-5 at W8A8 and W4A4, po2 and float scales, per-tensor
and per-channel weight scales, on 4x4 and 8x8 weight-stationary arrays; `--arch` adds ResNet-20 and the
others), this exports a quantized model with seeded random weights (calibrated on digits; the machine
runs whatever the integer model says, trained or not), compiles its program, builds the machine in
Verilator, loads it over the host port and runs `--images` test images. It prints, per design, the share
of images whose logits equal the engine's, the measured cycles per inference, the machine schedule's
count (`hw.cycles`, without simulation) and the simulator's speed, on the weight-stationary machine with
`--weight-buffers` weight registers per PE (default 2, as synth builds it; 1: one per PE) or, with
`--dataflow os`, the output-stationary one (`hw.machine_stream`).

    .venv/bin/python benchmarks/machine_rtl.py [--arch lenet5 resnet20] [--images 32] [--bits 8 4]
        [--scaling po2 float] [--granularity per_tensor per_channel] [--sides 4 8] [--weight-buffers 2]
        [--dataflow ws]
"""

from __future__ import annotations

import argparse
import itertools
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dsetool.data import load_dataset
from dsetool.engine import Engine, load_intmodel
from dsetool.machine.compiler import compile_program
from dsetool.machine.encode import input_codes, machine_of
from dsetool.machine.program import program_cycles
from dsetool.models.export import calibrate_activations, export_integer
from dsetool.models.quant import QuantSpec
from dsetool.models.zoo import build_model
from hw import machine_host, rtlsim
from hw.machine import Machine


def engine_of(arch: str, bits: int, scaling: str, granularity: str, directory: Path) -> tuple[Engine, torch.Tensor]:
    torch.manual_seed(0)
    data = load_dataset("digits", image_size=8 if arch == "mlp" else 32)
    spec = QuantSpec(weight_bits=bits, act_bits=bits, scaling=scaling, weight_granularity=granularity)
    model = build_model(arch, in_channels=1, num_classes=10, image_size=data.image_size, quant=spec)
    calibrate_activations(model, [data.calib.x[:64]])
    export_integer(model.eval(), directory, arch=arch, input_shape=(1, *data.image_size))
    return Engine(load_intmodel(directory)), data.test.x


def measure(arch: str, bits: int, scaling: str, granularity: str, side: int, images: int, work: Path,
            weight_buffers: int = 2, dataflow: str = "ws") -> str:
    engine, x = engine_of(arch, bits, scaling, granularity, work / f"{arch}-{bits}-{scaling}-{granularity}")
    x = x[:images]
    program = compile_program(engine, side, side)
    if dataflow == "os":
        weight_buffers = 1   # its weights stream
    shape, contents = machine_of(program, weight_buffers=weight_buffers, dataflow=dataflow)
    began = time.perf_counter()
    compiled = rtlsim.build(Machine(shape), work / "builds")
    built = time.perf_counter() - began
    results = []
    with compiled.open() as session:
        machine_host.load(session, shape, contents)
        for codes in engine.quantize_input(x).numpy():
            results.append(machine_host.infer(session, shape, input_codes(program, codes)))
        rate = session.cycles_per_second
    agreement = float(np.mean(np.all(np.array([r[0] for r in results]) == engine.logits(x).numpy(), axis=1)))
    cycles = sorted({r[1] for r in results})
    return (f"| {arch} | W{bits}A{bits} {scaling} {granularity} | {side}x{side} {dataflow} | {agreement:.3f} | "
            f"{', '.join(map(str, cycles))} | {program_cycles(program, weight_buffers, dataflow)} | {rate / 1e6:.2f} | "
            f"{built:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["lenet5"])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 4])
    parser.add_argument("--scaling", nargs="+", default=["po2", "float"])
    parser.add_argument("--granularity", nargs="+", default=["per_tensor", "per_channel"])
    parser.add_argument("--sides", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--weight-buffers", type=int, choices=(1, 2), default=2)
    parser.add_argument("--dataflow", choices=("ws", "os"), default="ws")
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"{time.strftime('%Y-%m-%d')}")
    print("| network | design | array | agreement | RTL cycles | model cycles | Mcycles/s | build s |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for arch, bits, scaling, granularity, side in itertools.product(
                args.arch, args.bits, args.scaling, args.granularity, args.sides):
            print(measure(arch, bits, scaling, granularity, side, args.images, Path(tmp), args.weight_buffers,
                          args.dataflow), flush=True)


if __name__ == "__main__":
    main()
