"""The accuracy bars of the shipped LeNet-5 experiment on the embedded digits data set."""

from __future__ import annotations

import pytest

from dsetool.config import load_experiment
from dsetool.stages import ensure
from dsetool.store import Store
from tests.conftest import REPO


@pytest.mark.slow
def test_lenet_digits_float_w8a8_w4a4_bars(tmp_path):
    """Float >= 97 %, W8A8 QAT >= 97 %, W4A4 QAT >= 95 % test accuracy, within 15 epochs."""
    store = Store(tmp_path)
    exp = load_experiment(REPO / "configs/lenet.yaml", ["sweep.quant.bits=[8, 4]", "sweep.quant.method=[qat]"])
    results = {}
    for point in exp.points:
        cfg = point.config
        assert cfg.train.pretrain.epochs <= 15 and cfg.train.qat.epochs <= 15
        entry, _ = ensure(store, "train-qat", cfg)
        results[cfg.quant.weight_bits] = entry.metrics
    assert results[8]["float_test_acc"] >= 0.97
    assert results[8]["quant_test_acc"] >= 0.97
    assert results[4]["quant_test_acc"] >= 0.95
