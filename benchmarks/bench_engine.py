"""Print clean (fault-free) throughput of the integer engine and of Brevitas on LeNet-5 W8A8, side by side.

Run: `.venv/bin/python benchmarks/bench_engine.py [--threads N] [--batch 256] [--repeats 20]`. Both run the
same calibrated model (random weights: throughput does not depend on their values) on the same batch; the
best of `repeats` timed runs is reported, after one warm-up each.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from timing import call_seconds  # (this directory: the script's own, first on sys.path)

from dsetool.engine import Engine, load_intmodel
from dsetool.models.export import calibrate_activations, export_integer
from dsetool.models.quant import QuantSpec
from dsetool.models.zoo import build_model

SHAPE = (1, 32, 32)


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    """Return the fastest of `repeats` timed calls, after one untimed warm-up call."""
    return min(call_seconds(run, repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    brevitas = build_model("lenet5", in_channels=1, num_classes=10, image_size=SHAPE[1:],
                           quant=QuantSpec(weight_bits=8, act_bits=8))
    calibrate_activations(brevitas, [torch.rand(256, *SHAPE)])
    brevitas.eval()
    with tempfile.TemporaryDirectory() as out:
        export_integer(brevitas, Path(out), arch="lenet5", input_shape=SHAPE)
        engine = Engine(load_intmodel(out))
    x = torch.rand(args.batch, *SHAPE)
    with torch.no_grad():
        assert torch.equal(engine.dequantized_logits(x), brevitas(x).double()), "engine and Brevitas disagree"
        brevitas_s = best_seconds(lambda: brevitas(x), args.repeats)
    engine_s = best_seconds(lambda: engine.logits(x), args.repeats)
    golden_s = best_seconds(lambda: engine.run(x, keep=True), args.repeats)
    print(f"LeNet-5 W8A8, batch {args.batch}, {args.threads} thread(s), best of {args.repeats}:")
    print(f"  Brevitas forward (float32)        {args.batch / brevitas_s:9.0f} images/s")
    print(f"  engine logits (exact integers)   {args.batch / engine_s:9.0f} images/s "
          f"({brevitas_s / engine_s:.2f}x Brevitas)")
    print(f"  engine golden run (keep=True)     {args.batch / golden_s:9.0f} images/s")


if __name__ == "__main__":
    main()
