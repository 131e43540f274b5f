"""Print the least exact work a single activation fault needs, as a share of a clean inference's multiply-adds.

Run: `.venv/bin/python benchmarks/fault_work.py [--arch resnet20] [--faults 200]` (about a minute: it trains
the network as `inject_throughput.py` does). Faults are drawn as the campaign draws `act` sites (a buffer
read by a weight layer, by its size; a position; a bit), each run densely through the rest of the network
on its image. At every weight layer the changed inputs cost either a scatter (each changed input times the
kernel taps and output channels it reaches) or a recomputation of every output pixel a changed input
reaches (pixels x N x K); the cheaper of the two, summed over the layers, is a lower bound on what any
exact method computes. Why it matters: a network whose faults are rarely masked (ResNet-20) needs that
work per fault, where PyTorchFI's batched mode spends one float forward.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from inject_throughput import Plan, prepare  # (this directory: the script's own, first on sys.path)

from dsetool.data import load_dataset
from dsetool.engine.intmodel import INPUT, Conv2d, Linear


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--faults", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=6, help="float training epochs")
    args = parser.parse_args()
    torch.set_num_threads(2)
    setup = prepare(Plan(args.arch, args.epochs, 0, False, 0), load_dataset("digits", image_size=32), 256)
    engine, model = setup.net.engine, setup.net.engine.model
    golden = engine.run(setup.x, keep=True)
    weight_ops = [i for i, op in enumerate(model.ops) if isinstance(op, Conv2d | Linear)]
    # a weight layer's input buffer (through a pool or flatten, the codes of the quantizer behind it)
    buffers = sorted({model.input_of(i) for i in weight_ops} - {INPUT})
    quantizer = {model.input_of(i): model.producer(i) for i in weight_ops if model.input_of(i) != INPUT}
    sizes = np.array([golden[b][0].numel() for b in buffers], dtype=np.float64)
    full = sum(model.ops[i].gemm.m * model.ops[i].gemm.k * model.ops[i].gemm.n * model.ops[i].gemm.groups
               for i in weight_ops)
    rng = np.random.default_rng(0)
    least = scatter_total = cone_total = 0.0
    for _ in range(args.faults):
        buffer = buffers[rng.choice(len(buffers), p=sizes / sizes.sum())]
        image = int(rng.integers(len(setup.x)))
        values = {i: golden[i][image:image + 1].clone() for i in range(len(model.ops))}
        flat = values[buffer].view(-1)
        codes = model.ops[quantizer[buffer]]
        low, high = codes.qrange
        position, bit = int(rng.integers(flat.numel())), int(rng.integers(codes.bits))
        flipped = ((int(flat[position]) - low) ^ (1 << bit)) + low
        flat[position] = float(min(max(flipped, low), high))
        for index in range(buffer + 1, len(model.ops)):
            reads = [values[source] for source in model.inputs[index]]
            op = model.ops[index]
            if index in weight_ops:
                changed = reads[0] != golden[model.inputs[index][0]][image:image + 1]
                gemm, count = op.gemm, int(changed.sum())
                if isinstance(op, Conv2d):
                    scatter = count * op.kernel[0] * op.kernel[1] * gemm.n
                    reached = F.conv2d(changed.any(1, keepdim=True).float(), torch.ones(1, 1, *op.kernel),
                                       stride=op.stride, padding=op.padding)
                    cone = int((reached > 0).sum()) * gemm.n * gemm.groups * gemm.k
                else:
                    scatter, cone = count * gemm.n, gemm.k * gemm.n if count else 0
                least += min(scatter, cone)
                scatter_total += scatter
                cone_total += cone
            values[index] = engine.step(index, *reads)
    n = args.faults
    print(f"{args.arch}: {full:,} multiply-adds per inference; per fault ({n} faults): least exact work "
          f"{least / n:,.0f} ({100 * least / n / full:.1f} %), scatter only {100 * scatter_total / n / full:.1f} %, "
          f"recompute reached pixels only {100 * cone_total / n / full:.1f} %")


if __name__ == "__main__":
    main()
