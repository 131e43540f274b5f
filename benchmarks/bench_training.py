"""Print seconds per training epoch of LeNet-5 on digits: float, and QAT at W8A8 and W4A4, side by side.

Run: `.venv/bin/python benchmarks/bench_training.py` (uses a throw-away store; two epochs each).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from dsetool.config import load_experiment
from dsetool.stages import ensure
from dsetool.store import Store

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    """Train each variant for two epochs and print its mean epoch time."""
    with tempfile.TemporaryDirectory() as root:
        store = Store(root)
        for bits in (8, 4):
            exp = load_experiment(REPO / "configs/lenet.yaml", [
                f"quant.bits={bits}", "quant.method=qat", "train.pretrain.epochs=2", "train.qat.epochs=2",
                "sweep={}", "zip={}", "threads=1"])
            entry, _ = ensure(store, "train-qat", exp.points[0].config)
            if bits == 8:
                up = store.get("pretrain", entry.manifest["inputs"]["upstream"]["pretrain"])
                assert up is not None
                print(f"float LeNet-5 epoch (digits, 1 thread): {up.metrics['sec_per_epoch']:.2f} s")
            print(f"QAT W{bits}A{bits} LeNet-5 epoch (digits, 1 thread): {entry.metrics['sec_per_epoch']:.2f} s")


if __name__ == "__main__":
    main()
