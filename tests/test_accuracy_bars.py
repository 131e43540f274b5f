"""The accuracy bars of the shipped LeNet-5 experiment on the embedded digits data set, and the evidence
that the range check protects it (the campaigns of `benchmarks/protection_evidence.py`, part 1)."""

from __future__ import annotations

from typing import Any

import pytest

from dsetool.config import load_experiment
from dsetool.stages import ensure
from dsetool.store import Store
from tests.conftest import REPO

LENET_QAT = ["sweep={quant.bits: [8, 4], quant.method: [qat]}", "zip={}"]   # the 8x8 array


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    return Store(tmp_path_factory.mktemp("runs"))


def run_points(store: Store, stage: str, overrides: list[str]) -> dict[int, dict[str, Any]]:
    """Run a stage for the W8A8 and W4A4 QAT points of configs/lenet.yaml; return metrics by bit width."""
    exp = load_experiment(REPO / "configs/lenet.yaml", [*LENET_QAT, *overrides])
    return {point.config.quant.weight_bits: ensure(store, stage, point.config)[0].metrics for point in exp.points}


@pytest.mark.slow
def test_lenet_digits_float_w8a8_w4a4_bars(store: Store) -> None:
    """Float >= 97 %, W8A8 QAT >= 96.5 %, W4A4 QAT >= 95 % test accuracy, within 15 epochs.

    Trained weights differ between CPUs, so each bar sits at least 0.75 points (almost 3 of the 360 test
    images) below the lowest accuracy measured over seeds 0-2 and 1 or 2 training threads, which change the
    weights as another CPU does (`benchmarks/ordering_margins.py`, 2026-12-06, AMD EPYC: float 97.78-98.33 %,
    W8A8 97.50-98.06 %, W4A4 97.22-98.33 %). W8A8 was held to 97 % before: half a point (two images) from
    one of those trainings, a coin toss on another machine."""
    exp = load_experiment(REPO / "configs/lenet.yaml", LENET_QAT)
    assert all(p.config.train.pretrain.epochs <= 15 and p.config.train.qat.epochs <= 15 for p in exp.points)
    results = run_points(store, "train-qat", [])
    assert results[8]["float_test_acc"] >= 0.97
    assert results[8]["quant_test_acc"] >= 0.965
    assert results[4]["quant_test_acc"] >= 0.95


@pytest.mark.slow
def test_range_check_lowers_the_critical_rate_of_partial_sum_msb_flips(store: Store) -> None:
    """Single MSB flips of the PE partial sums, 20,000 per campaign over every test image: clip with
    per-channel profiled bounds has a lower critical-fault rate than no protection at W8A8 and W4A4, paired
    over the very same faults (the two campaigns share the fault seed), and the check acts on the faults it
    masks. Two separate intervals were asserted here before: at W4A4 they overlapped in 3 of 6 trainings
    over seeds and thread counts (benchmarks/ordering_margins.py, 2026-12-06), where the paired difference's
    lower bound stayed at 0.050 points or more (estimates 0.095-0.170)."""
    import pandas as pd

    from dsetool.faults.compare import paired_outcome_difference

    faults = ["sweep.faults.site=[pe.psum]", "faults.bits=msb", "faults.samples=20000", "faults.inputs=0",
              "faults.seed=1", "faults.shard_size=4096", "faults.batch_size=256"]
    campaigns = {}
    clip = ["hw.protection=clip", "protect.granularity=channel", "protect.placement=output"]   # the README's row
    for name, extra in (("none", []), ("clip", clip)):
        exp = load_experiment(REPO / "configs/lenet.yaml", [*LENET_QAT, *faults, *extra])
        campaigns[name] = {p.config.quant.weight_bits: ensure(store, "inject", p.config)[0] for p in exp.points}
    for bits in (8, 4):
        none, clip = (pd.read_parquet(campaigns[name][bits].artifact("faults.parquet")) for name in ("none", "clip"))
        reduction = paired_outcome_difference(none, clip, "critical")
        assert reduction.low > 0, (bits, reduction)
        metrics = campaigns["clip"][bits].metrics
        assert metrics["masked_by"]["protection"]["n"] > 0 and metrics["detected_rate"] > 0
