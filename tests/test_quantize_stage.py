"""The train-qat and ptq stages: artifacts, reloadable checkpoints, calibration choices."""

from __future__ import annotations

import json

import pytest
import torch

from dsetool.config import load_experiment
from dsetool.stages import ensure
from dsetool.stages.common import MODEL_FILE, new_model, prepare
from dsetool.store import Store
from dsetool.training import accuracy


@pytest.mark.slow
@pytest.mark.parametrize("calibration", ["maxabs", "percentile"])
def test_ptq_artifacts_reload_to_the_same_accuracy(tmp_path, write_experiment, calibration):
    from tests.conftest import TINY_EXPERIMENT

    path = write_experiment({**TINY_EXPERIMENT, "quant": {"bits": 4, "weight_granularity": "per_channel"},
                             "ptq": {"calibration": calibration}})
    cfg = load_experiment(path).points[0].config
    entry, cached = ensure(Store(tmp_path / "runs"), "ptq", cfg)
    assert not cached
    assert {"model.pt", "intmodel.json", "intmodel.npz", "model.qonnx.onnx"} <= set(entry.manifest["artifacts"])
    state = torch.load(entry.artifact(MODEL_FILE), weights_only=True)
    splits, device = prepare(cfg)
    model = new_model(cfg, splits, quantized=True)
    model.load_state_dict(state)
    assert accuracy(model, splits.test, device) == pytest.approx(entry.metrics["quant_test_acc"])
    intmodel = json.loads(entry.artifact("intmodel.json").read_text())
    assert intmodel["format"] == "dsetool-intmodel" and intmodel["weight_granularity"] == "per_channel"
    assert entry.metrics["calibration"] == calibration and entry.metrics["qonnx"] == "ok"
    assert entry.manifest["versions"]["torch"] != "absent"
