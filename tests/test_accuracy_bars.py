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
    """Float >= 97 %, W8A8 QAT >= 97 %, W4A4 QAT >= 95 % test accuracy, within 15 epochs."""
    exp = load_experiment(REPO / "configs/lenet.yaml", LENET_QAT)
    assert all(p.config.train.pretrain.epochs <= 15 and p.config.train.qat.epochs <= 15 for p in exp.points)
    results = run_points(store, "train-qat", [])
    assert results[8]["float_test_acc"] >= 0.97
    assert results[8]["quant_test_acc"] >= 0.97
    assert results[4]["quant_test_acc"] >= 0.95


@pytest.mark.slow
def test_range_check_lowers_the_critical_rate_of_partial_sum_msb_flips(store: Store) -> None:
    """Single MSB flips of the PE partial sums, 20,000 per campaign over every test image: clip with
    per-channel profiled bounds puts the critical-fault rate's 95 % interval entirely below the unprotected
    one, at W8A8 and W4A4; the check acts on the faults it masks."""
    faults = ["sweep.faults.site=[pe.psum]", "faults.bits=msb", "faults.samples=20000", "faults.inputs=0",
              "faults.seed=1", "faults.shard_size=4096", "faults.batch_size=256"]
    none = run_points(store, "inject", faults)
    clip = run_points(store, "inject", [*faults, "hw.protection=clip", "protect.granularity=channel"])
    for bits in (8, 4):
        assert clip[bits]["critical_ci"][1] < none[bits]["critical_ci"][0], (bits, clip[bits], none[bits])
        assert clip[bits]["masked_by"]["protection"]["n"] > 0 and clip[bits]["detected_rate"] > 0
