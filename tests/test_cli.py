"""The command line: exit codes, one-line errors, JSON output, lazy imports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from dsetool.cli import main
from tests.conftest import TINY_EXPERIMENT


def run(args, runs_dir):
    return CliRunner().invoke(main, [*args, "--runs", str(runs_dir)] if args[0] != "schema" else args)


def test_help_imports_no_heavy_library():
    code = ("import sys; from dsetool.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'brevitas', 'amaranth') if m in sys.modules]\n"
            "print('heavy=' + ','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "heavy="


def test_every_stage_command_exists():
    result = CliRunner().invoke(main, ["--help"])
    for name in ("train-qat", "ptq", "range-restrict", "inject", "synth", "report", "sweep", "runs", "check"):
        assert name in result.output


BAD_INPUTS = {
    "missing file": (None, []),
    "not yaml": ("name: [oops\n", []),
    "a list": ("- 1\n- 2\n", []),
    "wrong type": ({"quant": {"weight_bits": "eight"}}, []),
    "out of range": ({"quant": {"act_bits": 1}}, []),
    "unknown key": ({"quant": {"bitz": 4}}, []),
    "unknown dataset": ({"data": {"name": "imagenet"}}, []),
    "unknown model": ({"model": {"arch": "resnet"}}, []),
    "set missing key": ({"name": "ok"}, ["--set", "quant.nope=3"]),
    "alias bomb": ("a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
                   "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
                   "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n", []),
    "path in name": ({"name": "../../etc"}, []),
    "duplicate key": ("name: twice\nseed: 1\nseed: 2\n", []),
    "yaml tag": ("name: tagged\nseed: !!float 1\n", []),
    "dataset not on disk": ({"data": {"name": "mnist", "root": "nowhere"}}, []),
    "unknown fault site": ({"faults": {"site": "psum"}}, []),
    "bit beyond register": ({"faults": {"bits": [12]}}, []),
    "ber outside (0, 1)": ({"faults": {"ber": 0}}, []),
    "fault layer missing": ({"faults": {"layers": ["fc9"]}}, []),
    "protected layer missing": ({"protect": {"layers": ["conv7"]}}, []),
    "negative bound margin": ({"protect": {"margin": -1}}, []),
    "unknown range mode": ({"protect": {"range": "wide"}}, []),
    "unknown protection": ({"hw": {"protection": "median7"}}, []),
    "afd gamma not a power of two": ({"protect": {"gamma": 3}}, []),
    "unknown check placement": ({"protect": {"placement": "middle"}}, []),
    "unknown regularizer": ({"train": {"regularizer": "l3"}}, []),
    "channel filter at flattened inputs": ({"hw": {"protection": "median3"}, "protect": {"placement": "input"}}, []),
    "negative SAM radius": ({"train": {"saq": {"rho": -0.1}}}, []),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
@pytest.mark.parametrize("command", ["train-qat", "sweep", "inject", "range-restrict"])
def test_bad_input_exit_2_one_line_nothing_written(tmp_path, write_experiment, case, command):
    content, extra = BAD_INPUTS[case]
    path = tmp_path / "missing.yaml" if content is None else write_experiment(content)
    runs_dir = tmp_path / "runs"
    result = run([command, str(path), *extra], runs_dir)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert str(path) in lines[0] or "--set" in lines[0]
    assert not runs_dir.exists()


def test_schema_prints_json():
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0
    assert json.loads(result.output)["title"] == "dsetool experiment"


def test_runs_show_unknown_key(tmp_path):
    result = run(["runs", "show", "abcdef"], tmp_path / "runs")
    assert result.exit_code == 2 and "no entry" in result.output


@pytest.mark.slow
def test_inject_json_summary(tmp_path, write_experiment):
    path = write_experiment({**TINY_EXPERIMENT, "faults": {"site": "weight", "samples": 300, "inputs": 64,
                                                           "shard_size": 100}})
    result = run(["inject", str(path), "--json"], tmp_path / "runs")
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout.splitlines()[0])
    metrics = row["metrics"]
    assert row["stage"] == "inject" and metrics["faulty_inferences"] == 300
    assert metrics["golden_agreement"] == 1.0 and metrics["max_lsb_deviation"] == 0.0
    low, high = metrics["sdc_ci"]
    assert low <= metrics["sdc_rate"] <= high
    assert (tmp_path / "runs" / "inject").is_dir()


@pytest.mark.slow
def test_protected_campaign_runs_on_the_checked_engine(tmp_path, write_experiment):
    """hw.protection zero: bounds profiled first (range-restrict), the same faults then hit the checked
    engine; accumulator MSB flips that leave the bounds are zeroed, so outcomes change and no more SDCs appear."""
    faults = {"site": "pe.psum", "bits": "msb", "layers": ["fc1"], "samples": 600, "inputs": 64, "seed": 3}
    rows = {}
    for protection in ("none", "zero"):
        path = write_experiment({**TINY_EXPERIMENT, "hw": {"protection": protection}, "faults": faults},
                                f"{protection}.yaml")
        result = run(["inject", str(path), "--json"], tmp_path / "runs")
        assert result.exit_code == 0, result.output
        rows[protection] = json.loads(result.stdout.splitlines()[0])["metrics"]
    assert rows["zero"]["protection"] == "zero" and isinstance(rows["zero"]["clean_predictions_changed"], int)
    assert "clean_predictions_changed" not in rows["none"]
    assert rows["zero"]["masked_rate"] != rows["none"]["masked_rate"]
    assert rows["zero"]["sdc_rate"] <= rows["none"]["sdc_rate"]
    assert any((tmp_path / "runs" / "range-restrict").iterdir())
    assert rows["zero"]["detected_rate"] > 0 and "detected_rate" not in rows["none"]   # no detector, no figure
    assert rows["zero"]["sdc_detected_rate"] is None or 0 <= rows["zero"]["sdc_detected_rate"] <= 1
    assert "protection" in rows["zero"]["masked_by"] and "protection" not in rows["none"]["masked_by"]


@pytest.mark.slow
def test_every_protection_scheme_and_tmr_run_a_campaign(tmp_path, write_experiment):
    """sed flags without changing a value; median and AFD need no bounds; TMR outvotes every single fault."""
    faults = {"site": "pe.psum", "bits": "msb", "layers": ["fc1"], "samples": 300, "inputs": 64, "seed": 3}
    rows = {}
    for name, hw in {"none": {}, "sed": {"protection": "sed"}, "median3": {"protection": "median3", "cols": 4},
                     "median5": {"protection": "median5"}, "afd": {"protection": "afd"},
                     "tmr": {"tmr": True}}.items():
        path = write_experiment({**TINY_EXPERIMENT, "hw": hw, "faults": faults}, f"{name}.yaml")
        result = run(["inject", str(path), "--json"], tmp_path / "runs")
        assert result.exit_code == 0, result.output
        rows[name] = json.loads(result.stdout.splitlines()[0])["metrics"]
    assert rows["sed"]["sdc_rate"] == rows["none"]["sdc_rate"] and rows["sed"]["clean_predictions_changed"] == 0
    assert rows["sed"]["detected_rate"] > 0 and rows["sed"]["sdc_detected_rate"] is not None
    assert "changed_rate" not in rows["sed"]
    assert all(isinstance(rows[name]["clean_predictions_changed"], int) for name in ("median3", "median5", "afd"))
    for name in ("median3", "median5", "afd", "tmr"):   # filters and votes change values; they detect nothing
        assert "detected_rate" not in rows[name] and "sdc_detected_rate" not in rows[name], name
        assert 0 <= rows[name]["changed_rate"] <= 1, name
    assert rows["median3"]["changed_rate"] > 0 and rows["tmr"]["changed_rate"] > 0
    assert rows["median3"]["masked_by"]["protection"]["n"] > 0   # the filter itself masked some faults
    assert rows["tmr"]["sdc_rate"] == 0 and rows["tmr"]["masked_rate"] == 1.0 and rows["none"]["sdc_rate"] > 0
    assert rows["tmr"]["masked_by"]["vote"]["n"] > 0 and rows["tmr"]["tmr"] is True


@pytest.mark.slow
def test_train_qat_then_cached_json(tmp_path, write_experiment):
    path = write_experiment({**TINY_EXPERIMENT, "sweep": {"quant.bits": [8, 4]}})
    runs_dir = tmp_path / "runs"
    first = run(["train-qat", str(path), "--json"], runs_dir)
    assert first.exit_code == 0, first.output
    rows = [json.loads(line) for line in first.stdout.splitlines() if line.startswith("{")]
    assert [r["cached"] for r in rows] == [False, False]
    assert {r["metrics"]["weight_bits"] for r in rows} == {8, 4}
    for r in rows:   # every trained model reports its activation sparsity and sharpness
        assert 0 < r["metrics"]["act_sparsity"] < 1 and set(r["metrics"]["act_sparsity_by_layer"]) == {"relu1"}
        assert r["metrics"]["sharpness"] > 0 and r["metrics"]["hessian_trace"] > 0
    assert all(r["stage"] == "train-qat" and r["path"].startswith(str(runs_dir)) or "runs" in r["path"]
               for r in rows)
    second = run(["train-qat", str(path), "--json"], runs_dir)
    again = [json.loads(line) for line in second.stdout.splitlines() if line.startswith("{")]
    assert [r["cached"] for r in again] == [True, True]
    assert [r["key"] for r in again] == [r["key"] for r in rows]
    listing = run(["runs", "ls", "--json"], runs_dir)
    stages = sorted(json.loads(line)["stage"] for line in listing.stdout.splitlines() if line.startswith("{"))
    assert stages == ["pretrain", "train-qat", "train-qat"]
    shown = run(["runs", "show", rows[0]["key"][:10]], runs_dir)
    assert json.loads(shown.stdout)["key"] == rows[0]["key"]
