"""Print CLI latency figures: `dsetool --help`, and a fully cached `train-qat` of configs/lenet.yaml.

Run: `make bench` (or `.venv/bin/python benchmarks/bench_cli.py`). The cached figure needs the store to
hold the experiment's results; the first run of this script computes them (slow), later runs only time.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DSETOOL = [sys.executable, "-m", "dsetool.cli"]


def wall(args: list[str], repeat: int) -> list[float]:
    """Return wall-clock seconds of `repeat` runs of a command."""
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        subprocess.run(args, cwd=REPO, check=True, capture_output=True)
        times.append(time.perf_counter() - began)
    return times


def main() -> None:
    """Print the figures."""
    exe = str(Path(sys.executable).with_name("dsetool"))
    cmd = [exe] if os.path.exists(exe) else DSETOOL
    help_times = wall([*cmd, "--help"], 7)
    print(f"dsetool --help: median {statistics.median(help_times):.3f} s (target < 0.3 s, n=7)")
    experiment = [*cmd, "train-qat", "configs/lenet.yaml"]
    cold = wall(experiment, 1)[0]
    warm = wall(experiment, 5)
    print(f"train-qat configs/lenet.yaml: first run {cold:.1f} s (cold only if the store was empty)")
    print(f"train-qat configs/lenet.yaml, all cache hits: median {statistics.median(warm):.3f} s "
          f"(target < 3 s, n=5)")


if __name__ == "__main__":
    main()
