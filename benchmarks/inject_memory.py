"""Print the peak memory of a large single-fault campaign on LeNet-5 W8A8 (streaming check).

Run: `.venv/bin/python benchmarks/inject_memory.py [FAULTS]` (default 1,000,000; about 5 minutes on 2
cores). Rows go to Parquet shards and counts are accumulated shard by shard, so the peak resident set
must not grow with the number of faults.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from dsetool.data import load_dataset
from dsetool.engine import Engine, load_intmodel
from dsetool.faults.campaign import CampaignSpec, Golden, merge_shards, run_campaign
from dsetool.faults.network import EngineNetwork
from dsetool.faults.sites import site_groups
from dsetool.models.export import calibrate_activations, export_integer
from dsetool.models.quant import QuantSpec
from dsetool.models.zoo import build_model


def peak_rss_mib() -> float:
    """Return this process's peak resident set size in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    """Run the campaign and print faults/s and peak RSS before and after."""
    faults = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    torch.manual_seed(0)
    data = load_dataset("digits", image_size=32)
    model = build_model("lenet5", in_channels=1, num_classes=10, image_size=(32, 32),
                        quant=QuantSpec(weight_bits=8, act_bits=8))
    calibrate_activations(model, [data.calib.x])
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        export_integer(model, root, arch="lenet5", input_shape=(1, 32, 32))
        engine = Engine(load_intmodel(root))
        network = EngineNetwork(engine)
        x, y = data.test.x[:256], data.test.y[:256]
        golden = Golden(engine.run(x, keep=True), y, network.logit_scale())
        groups = site_groups(engine.model, "act", [], network.acc_bits())
        spec = CampaignSpec("bitflip", "all", 1, None, faults, 0.01, 0.95, False, 0, 8192, 256)
        before = peak_rss_mib()
        began = time.perf_counter()
        tally, _, _ = run_campaign(network, golden, groups, spec, root, lambda t, p: None)
        seconds = time.perf_counter() - began
        merge_shards(root, root, -(-faults // spec.shard_size))
        size = (root / "faults.parquet").stat().st_size / 2**20
    print(f"faults: {tally.counts['n']}, {seconds:.0f} s, {tally.counts['n'] / seconds:.0f} faults/s")
    print(f"peak RSS before the campaign: {before:.0f} MiB; after: {peak_rss_mib():.0f} MiB (target < 2048 MiB)")
    print(f"faults.parquet: {size:.1f} MiB")


if __name__ == "__main__":
    main()
