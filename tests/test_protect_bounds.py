"""Profiled activation bounds: what the engine's requantized layer outputs take on the calibration images,
widened by factor and margin, per layer or per channel, and Ozen's global range modes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dsetool.cli import main
from dsetool.protect.bounds import profiled_bounds, protected_ops, widened
from tests.fixtures.engines import digits, exported_engine


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory):
    return exported_engine(tmp_path_factory.mktemp("lenet"), "lenet5", bits=4)


def test_protected_tensors_are_the_requantized_outputs_of_every_layer_but_the_logits(engine) -> None:
    assert [layer for layer, _ in protected_ops(engine.model, [])] == ["conv1", "conv2", "fc1", "fc2"]
    assert [engine.model.ops[i].name for _, i in protected_ops(engine.model, ["fc1"])] == ["relu3"]


def test_bounds_are_the_extreme_codes_on_the_calibration_images(engine) -> None:
    images = digits().calib.x[:300]   # two profiling chunks
    outputs = engine.run(images, keep=True)
    per_layer = profiled_bounds(engine, images, [], "layer", "profiled", 1.0, 0.0)
    per_channel = profiled_bounds(engine, images, [], "channel", "profiled", 1.0, 0.0)
    for whole, split in zip(per_layer, per_channel, strict=True):
        codes = outputs[whole.op_index].reshape(len(images), outputs[whole.op_index].shape[1], -1)
        assert (whole.lo, whole.hi) == ((int(codes.min()),), (int(codes.max()),))
        assert split.hi == tuple(int(v) for v in codes.amax(dim=(0, 2)))
        assert len(split.lo) == codes.shape[1] and min(split.lo) == whole.lo[0] and max(split.hi) == whole.hi[0]
        assert whole.qmin <= whole.lo[0] <= whole.hi[0] <= whole.qmax
    # 4-bit ReLU codes: profiled on few images some layers stay below the top code, so the check can fire
    assert any(b.hi[0] < b.qmax for b in per_layer)


@pytest.mark.parametrize("lo, hi, factor, margin, expected", [
    (0, 100, 1.1, 0, (0, 110)),       # a ReLU output: only the top moves
    (-10, 50, 1.1, 0, (-11, 55)),     # both bounds move away from zero
    (5, 9, 1.5, 0, (3, 14)),          # a positive minimum moves towards zero: the range only widens
    (0, 7, 1.0, 2, (-2, 9)),          # margin in codes, before the clamp to the register
])
def test_factor_and_margin_only_widen(lo, hi, factor, margin, expected) -> None:
    got = widened(np.array([lo]), np.array([hi]), factor, margin)
    assert (int(got[0][0]), int(got[1][0])) == expected


def test_clamped_to_the_codes_a_tensor_holds(engine) -> None:
    images = digits().calib.x[:64]
    for b in profiled_bounds(engine, images, [], "layer", "profiled", 100.0, 1000.0):
        assert (b.lo, b.hi) == ((b.qmin,), (b.qmax,))


def test_global_modes_share_one_real_range(engine) -> None:
    images = digits().calib.x[:64]
    profiled = profiled_bounds(engine, images, [], "layer", "profiled", 1.0, 0.0)
    shared = profiled_bounds(engine, images, [], "layer", "global", 1.0, 0.0)
    top = max(b.hi[0] * b.scale for b in profiled)
    for b in shared:
        assert b.hi[0] == min(b.qmax, int(np.ceil(top / b.scale)))   # the widest layer's range, in own codes
        assert b.hi[0] >= next(p for p in profiled if p.layer == b.layer).hi[0]
    ten = profiled_bounds(engine, images, [], "layer", "global10", 1.0, 0.0)
    assert all(t.hi[0] == min(t.qmax, int(np.ceil(10 * top / t.scale))) for t in ten)


def test_stage_writes_readable_bounds_once(tmp_path: Path, write_experiment) -> None:
    path = write_experiment({"name": "bounds", "model": {"arch": "lenet5"}, "quant": {"bits": 4, "method": "ptq"},
                             "train": {"pretrain": {"epochs": 1}}, "protect": {"granularity": "channel",
                                                                               "factor": 1.1}})
    runs = tmp_path / "runs"
    first = CliRunner().invoke(main, ["range-restrict", str(path), "--json", "--runs", str(runs)])
    assert first.exit_code == 0, first.output
    row = json.loads(first.stdout.splitlines()[0])
    assert (row["stage"], row["cached"], row["metrics"]["protected_layers"]) == ("range-restrict", False, 4)
    document = json.loads((runs / "range-restrict" / row["key"][:2] / row["key"] / "bounds.json").read_text())
    assert list(document["layers"]) == ["conv1", "conv2", "fc1", "fc2"] and document["factor"] == 1.1
    assert len(document["layers"]["conv2"]["hi"]) == 16   # one pair per output channel
    again = CliRunner().invoke(main, ["range-restrict", str(path), "--json", "--runs", str(runs)])
    assert json.loads(again.stdout.splitlines()[0])["cached"] is True


@pytest.mark.parametrize("protect, message", [
    ({"layers": ["fc3"]}, "protect.layers: fc3 computes the logits: it has no requantized output to protect"),
    ({"range": "global", "granularity": "channel"}, "protect.range: global bounds are one range per layer"),
])
def test_bounds_the_model_cannot_have_are_config_errors(tmp_path: Path, write_experiment, protect, message) -> None:
    path = write_experiment({"model": {"arch": "lenet5"}, "protect": protect})
    result = CliRunner().invoke(main, ["range-restrict", str(path), "--runs", str(tmp_path / "runs")])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "runs").exists()
