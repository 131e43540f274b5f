"""Print the sweep figures: the README's main job from an empty store and again, and --jobs 2 against 1.

Run on an idle machine: `.venv/bin/python benchmarks/sweep_bars.py [--skip-main] [--jobs N|auto]`.
- `dsetool sweep configs/lenet.yaml --jobs N` (default auto, the command's own default) in a fresh
  temporary store: wall time cold, then the same command again three times (all cache hits). Tens of
  minutes: 96 points, 24 syntheses.
- A 4-point sweep (LeNet-5 at W8A8/W4A4, unprotected and clip, on a 4x4 array: 1 float model, 2 QAT
  models, 2 bound profiles, 4 campaigns, 4 syntheses) in fresh stores, `--jobs 1` then `--jobs 2`, and
  their ratio; `--rounds` pairs one after the other (this machine's speed drifts by 10-30 % over minutes,
  so one pair can say little), and the ratio of their sums.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FOUR_POINTS = ("sweep={quant.bits: [8, 4], hw.protection: [none, clip]}", "zip={}", "quant.method=qat",
               "faults.site=pe.psum", "hw.rows=4", "hw.cols=4")


def sweep(store: Path, jobs: int | str, overrides: tuple[str, ...] = ()) -> float:
    """Return the wall time of one `dsetool sweep configs/lenet.yaml` into `store`."""
    args = [sys.executable, "-m", "dsetool.cli", "sweep", "configs/lenet.yaml", "--runs", str(store),
            "--jobs", str(jobs)]
    for item in overrides:
        args += ["--set", item]
    began = time.perf_counter()
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"sweep failed ({done.returncode}):\n{done.stderr[-3000:]}")
    print(next(line for line in done.stderr.splitlines() if line.startswith("sweep ")), flush=True)
    return seconds


def main() -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-main", action="store_true", help="only the 4-point --jobs comparison")
    parser.add_argument("--jobs", default="auto", help="--jobs of the main sweep")
    parser.add_argument("--rounds", type=int, default=2, help="--jobs 1 / --jobs 2 pairs of the 4-point sweep")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        if not args.skip_main:
            cold = sweep(Path(root) / "main", args.jobs)
            warm = [sweep(Path(root) / "main", args.jobs) for _ in range(3)]
            print(f"sweep configs/lenet.yaml --jobs {args.jobs}: empty store {cold / 60:.1f} min (bar < 20 min), "
                  f"again {' / '.join(f'{w:.1f}' for w in warm)} s (bar < 10 s)")
        pairs = []
        for round_ in range(args.rounds):
            one = sweep(Path(root) / f"one{round_}", 1, FOUR_POINTS)
            two = sweep(Path(root) / f"two{round_}", 2, FOUR_POINTS)
            pairs.append((one, two))
            print(f"4-point sweep, empty store: --jobs 1 {one:.0f} s, --jobs 2 {two:.0f} s, {one / two:.2f}x",
                  flush=True)
        ones, twos = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
        print(f"4-point sweep, {len(pairs)} pairs: --jobs 1 {ones:.0f} s, --jobs 2 {twos:.0f} s in all, "
              f"{ones / twos:.2f}x (bar >= 1.6x)")


if __name__ == "__main__":
    main()
