"""Print the engine's own kernels next to the torch calls they replace, side by side in one process.

Run: `.venv/bin/python benchmarks/engine_kernels.py [--threads 2] [--batch 256] [--repeats 10]`. Each figure
is the median of `repeats` timed calls after two warm-ups, in milliseconds, on integer-valued tensors of
the shapes the built-in networks give at batch `--batch`:

- max pool: `F.max_pool2d` and the maximum over all kh * kw strided taps (the engine's earlier form)
  against `dsetool.engine.ops.max_pool2d` (row maxima, then column maxima);
- the dense fault path's "still equal to the golden run?" test of every row after an op: the tensor
  comparison it used (gather the golden rows, compare, reduce) against `kernels.still_golden` (a compiled
  scan that stops at a row's first difference), with one changed value in all but 4 % of the rows, as in a
  ResNet-20 campaign.
Each line also checks that both sides give the same result.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from timing import call_seconds  # (this directory: the script's own, first on sys.path)

from dsetool.engine import ops
from dsetool.faults import kernels


def median_ms(run: Callable[[], object], repeats: int) -> float:
    """Return the median wall time of `repeats` calls of `run`, in ms, after two untimed warm-up calls."""
    return 1000 * statistics.median(call_seconds(run, repeats, warmups=2))


def line(label: str, *times: float) -> None:
    figures = " ".join(f"{t:8.2f} ms" for t in times)
    print(f"  {label:<28} {figures} {min(times[:-1]) / times[-1]:6.2f}x")


def all_taps(codes: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """The maximum over every one of the kernel x kernel strided taps, one pass each."""
    out_h, out_w = (codes.shape[2] - kernel) // stride + 1, (codes.shape[3] - kernel) // stride + 1
    result = None
    for ky in range(kernel):
        for kx in range(kernel):
            tap = codes[:, :, ky:ky + stride * (out_h - 1) + 1:stride, kx:kx + stride * (out_w - 1) + 1:stride]
            result = tap.clone() if result is None else torch.maximum(result, tap, out=result)
    assert result is not None
    return result


def max_pools(batch: int, repeats: int) -> None:
    print("max pool 2x2 stride 2, float32  F.max_pool2d   all taps  ops.max_pool2d  speed-up over the faster")
    for channels, side in ((64, 32), (192, 16), (256, 8), (6, 28)):
        x = torch.randint(0, 256, (batch, channels, side, side)).float()
        assert torch.equal(ops.max_pool2d(x, (2, 2), (2, 2), (0, 0)), F.max_pool2d(x, 2, 2))
        assert torch.equal(all_taps(x, 2, 2), F.max_pool2d(x, 2, 2))
        line(f"{channels} channels at {side}x{side}", median_ms(lambda x=x: F.max_pool2d(x, 2, 2), repeats),
             median_ms(lambda x=x: all_taps(x, 2, 2), repeats),
             median_ms(lambda x=x: ops.max_pool2d(x, (2, 2), (2, 2), (0, 0)), repeats))


def golden_checks(batch: int, repeats: int) -> None:
    print("rows still golden after an op     tensor ops  still_golden  speed-up")
    generator = np.random.default_rng(0)
    for shape in ((16, 32, 32), (32, 16, 16), (64, 8, 8)):
        golden = torch.randint(0, 256, (batch, *shape)).float()
        images = generator.permutation(batch)
        values = golden[torch.from_numpy(images)].clone()
        flat = values.reshape(batch, -1)
        changed = generator.random(batch) >= 0.04
        flat[torch.from_numpy(np.nonzero(changed)[0]), torch.from_numpy(
            generator.integers(0, flat.shape[1], int(changed.sum())))] += 1

        def tensor_ops(golden: torch.Tensor = golden, values: torch.Tensor = values,
                       images: np.ndarray = images) -> np.ndarray:
            gathered = torch.index_select(golden, 0, torch.from_numpy(images))
            return ~(values != gathered).reshape(batch, -1).any(dim=1).numpy()

        def compiled(golden: torch.Tensor = golden, flat: torch.Tensor = flat,
                     images: np.ndarray = images) -> np.ndarray:
            same = np.ones(batch, dtype=bool)
            kernels.still_golden(flat.numpy(), golden.reshape(batch, -1).numpy(), images, same)
            return same

        assert np.array_equal(tensor_ops(), compiled()) and np.array_equal(compiled(), ~changed)
        line(f"{shape[0]} channels at {shape[1]}x{shape[2]}", median_ms(tensor_ops, repeats),
             median_ms(compiled, repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, median of {args.repeats}")
    max_pools(args.batch, args.repeats)
    golden_checks(args.batch, args.repeats)


if __name__ == "__main__":
    main()
