"""`dsetool report` through click: exit codes, one JSON line, one-line errors, no heavy import for --help."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from dsetool.cli import main
from dsetool.report import plots
from tests.test_report_collect import synthetic  # noqa: F401  (a fixture)


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch):
    """The CLI's contract does not depend on the plots, which are the slow part (tested in test_report_write)."""
    monkeypatch.setattr(plots, "PLOTS", ())


def invoke(*args: str):
    return CliRunner().invoke(main, ["report", *args])


def test_json_is_one_object_with_relative_paths(synthetic, monkeypatch):  # noqa: F811
    store, exp = synthetic
    monkeypatch.chdir(store.root.parent)
    result = invoke(exp.source, "--runs", "runs", "--json")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1
    payload = json.loads(lines[0])
    assert payload["stage"] == "report" and payload["path"] == "runs/experiments/synthetic"
    assert payload["files"] == [f"runs/experiments/synthetic/{name}" for name in
                                ("results.csv", "results.parquet", "summary.md", "report.html")]
    assert payload["metrics"]["points"] == 10 and payload["metrics"]["on_front"] == 4
    assert [r["objective"] for r in payload["metrics"]["recommendations"]] == ["reliability", "hardware"] * 2


def test_human_output_goes_to_stderr(synthetic):  # noqa: F811
    store, exp = synthetic
    result = invoke(exp.source, "--runs", str(store.root))
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "recommended for reliability [act bitflip ber=0.0001]: P2 " in result.stderr


def test_tolerance_changes_the_hardware_pick(synthetic):  # noqa: F811
    store, exp = synthetic
    result = invoke(exp.source, "--runs", str(store.root), "--json", "--tolerance", "0.05")
    recs = json.loads(result.stdout)["metrics"]["recommendations"]
    assert recs[1]["objective"] == "hardware" and recs[1]["point_id"] == 4


def test_a_bad_experiment_file_exits_2_naming_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    result = invoke(str(bad), "--runs", str(tmp_path / "runs"))
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and str(bad) in result.stderr


def test_an_unknown_override_exits_2(synthetic):  # noqa: F811
    store, exp = synthetic
    result = invoke(exp.source, "--runs", str(store.root), "--set", "quant.bitz=4")
    assert result.exit_code == 2 and "quant.bitz" in result.stderr


def test_an_empty_store_exits_1_saying_to_run_the_sweep(synthetic, tmp_path):  # noqa: F811
    _, exp = synthetic
    result = invoke(exp.source, "--runs", str(tmp_path / "empty"))
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert f"run `dsetool sweep {exp.source}` first" in result.stderr


def test_help_imports_neither_matplotlib_nor_torch():
    code = ("import sys; from dsetool.cli import main\n"
            "try:\n    main(['report', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('heavy=' + ','.join(m for m in ('torch', 'brevitas', 'amaranth', 'matplotlib', 'pandas') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "heavy="
