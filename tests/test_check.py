"""The CI regression gate: tolerances per metric kind, missing points, JUnit output, the `check` command."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pandas as pd
import pytest
from click.testing import CliRunner

from dsetool.check import DEFAULT_RULES, compare, parse_tolerances, read_baseline, rules_with, write_junit
from dsetool.cli import main
from tests.conftest import TINY_EXPERIMENT

BASE = {"point": "p1", "quant_acc": 0.95, "accuracy_under_faults": 0.90, "golden_accuracy": 0.93,
        "accuracy_drop": 0.03, "accuracy_drop_ci_lo": 0.02, "accuracy_drop_ci_hi": 0.045, "sdc_rate": 0.10,
        "sdc_ci_lo": 0.08, "sdc_ci_hi": 0.12, "lut": 1000, "latency_us": 100.0}


def verdicts(current, rules=DEFAULT_RULES, baseline=(BASE,)):
    return {f.metric: f for f in compare(list(baseline), current, rules)}


def test_nothing_moved_passes_and_only_baseline_metrics_are_checked():
    found = verdicts([dict(BASE)])
    assert set(found) == {"quant_acc", "accuracy_drop", "sdc_rate", "lut", "latency_us"}
    assert not any(f.regressed for f in found.values())


def test_each_kind_of_regression_is_caught_at_its_limit():
    found = verdicts([{**BASE, "quant_acc": 0.929, "sdc_rate": 0.121, "lut": 1001, "latency_us": 105.0,
                       "accuracy_drop": 0.046}])
    assert found["quant_acc"].regressed and "dropped below 0.93" in found["quant_acc"].reason
    assert found["accuracy_drop"].regressed and "0.045" in found["accuracy_drop"].reason   # the paired drop's top
    assert found["sdc_rate"].regressed and "interval top" in found["sdc_rate"].reason   # above 0.12, not 0.10
    assert found["lut"].regressed and found["lut"].delta == 1
    assert not found["latency_us"].regressed   # 5 % allowed: the placer's Fmax moves
    within = verdicts([{**BASE, "quant_acc": 0.931, "sdc_rate": 0.119, "accuracy_drop": 0.044,
                        "accuracy_under_faults": 0.80}])   # a lower accuracy on other inputs is no regression
    assert not any(f.regressed for f in within.values())


def test_tolerances_override_the_defaults_and_bad_ones_are_refused():
    rules = rules_with(parse_tolerances(["lut=2%", "quant_acc=0.05"]))
    found = verdicts([{**BASE, "quant_acc": 0.905, "lut": 1015}], rules)
    assert not found["quant_acc"].regressed and not found["lut"].regressed
    for bad, why in [("lut", "expected metric=value"), ("nope=1", "expected metric=value"),
                     ("quant_acc=1%", "absolute tolerance"), ("lut=-1", ">= 0"), ("lut=abc", "not a number")]:
        with pytest.raises(ValueError, match=why):
            parse_tolerances([bad])


def test_a_missing_point_or_metric_regresses():
    found = compare([BASE, {**BASE, "point": "p2"}], [{"point": "p1", "quant_acc": 0.95}])
    reasons = {(f.point, f.metric): f.reason for f in found if f.regressed}
    assert reasons[("p1", "lut")] == "metric missing" and reasons[("p2", "quant_acc")] == "design point missing"


def test_junit_has_one_case_per_check_and_failures_for_regressions(tmp_path):
    findings = compare([BASE], [{**BASE, "lut": 2000}])
    write_junit(findings, tmp_path / "junit.xml", "exp")
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    assert suite.get("tests") == str(len(findings)) and suite.get("failures") == "1"
    failed = [case for case in suite if case.find("failure") is not None]
    assert [case.get("name") for case in failed] == ["lut"]
    assert "grew more than 0 %" in failed[0].find("failure").get("message")


def test_baseline_must_be_a_results_csv(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="column 'point' missing"):
        read_baseline(tmp_path / "x.csv")
    pd.DataFrame([BASE, {**BASE, "point": "p2", "lut": None}]).to_csv(tmp_path / "r.csv", index=False)
    rows = read_baseline(tmp_path / "r.csv")
    assert rows[1]["lut"] is None and rows[0]["quant_acc"] == 0.95


@pytest.mark.slow
def test_check_command_passes_on_its_own_report_and_fails_on_a_better_baseline(tmp_path, write_experiment):
    path = write_experiment({**TINY_EXPERIMENT, "name": "gate", "stages": ["quantize"],
                             "sweep": {"quant.bits": [8, 4]}})
    runs_dir = tmp_path / "runs"
    runner = CliRunner()
    made = runner.invoke(main, ["report", str(path), "--runs", str(runs_dir)])
    assert made.exit_code != 0   # nothing in the store yet: the report says to sweep first
    swept = runner.invoke(main, ["sweep", str(path), "--runs", str(runs_dir)])
    assert swept.exit_code == 0, swept.output
    made = runner.invoke(main, ["report", str(path), "--runs", str(runs_dir)])
    assert made.exit_code == 0, made.output
    csv = runs_dir / "experiments" / "gate" / "results.csv"
    ok = runner.invoke(main, ["check", str(path), "--baseline", str(csv), "--runs", str(runs_dir), "--json"])
    assert ok.exit_code == 0, ok.output
    checks = [json.loads(line) for line in ok.stdout.splitlines() if line.startswith("{")]
    assert {c["metric"] for c in checks} == {"float_acc", "quant_acc"} and not any(c["regressed"] for c in checks)
    better = pd.read_csv(csv)
    better.loc[better["weight_bits"] == 4, "quant_acc"] += 0.05   # beyond the 2 points training may move
    better.to_csv(tmp_path / "better.csv", index=False)
    junit = tmp_path / "junit.xml"
    bad = runner.invoke(main, ["check", str(path), "--baseline", str(tmp_path / "better.csv"), "--runs",
                               str(runs_dir), "--junit", str(junit)])
    assert bad.exit_code == 1 and "1 of 4 checks regressed" in bad.output, bad.output
    assert "quant_acc" in bad.output and "quant.bits=4" in bad.output
    assert ET.parse(junit).getroot().get("failures") == "1"
    loose = runner.invoke(main, ["check", str(path), "--baseline", str(tmp_path / "better.csv"), "--runs",
                                 str(runs_dir), "--tolerance", "quant_acc=0.06"])
    assert loose.exit_code == 0, loose.output
    missing = runner.invoke(main, ["check", str(path), "--baseline", str(tmp_path / "nope.csv"), "--runs",
                                   str(runs_dir)])
    assert missing.exit_code == 2 and "nope.csv" in missing.output
