"""Stage `inject`: paired accuracies down to the report, and how the engine is held to Brevitas."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from dsetool.cli import main
from dsetool.faults.stats import paired_difference
from dsetool.stages.inject import GoldenMismatch, judge_agreement
from tests.conftest import TINY_EXPERIMENT


def test_po2_scales_must_agree_bit_for_bit():
    judge_agreement("po2", 1.0, 0.0, 64, minimum=0.99)
    with pytest.raises(GoldenMismatch, match=r"po2 scales, which must be bit-exact: on top-1 for 0 of 64 .* 0.5 LSB"):
        judge_agreement("po2", 1.0, 0.5, 64, minimum=0.0)
    with pytest.raises(GoldenMismatch, match="po2"):
        judge_agreement("po2", 63 / 64, 0.0, 64, minimum=0.0)


def test_float_scales_may_differ_within_the_configured_agreement():
    judge_agreement("float", 1.0, 3.0, 200, minimum=0.99)        # logits off by LSBs, same top-1
    judge_agreement("float", 198 / 200, 3.0, 200, minimum=0.99)   # two near ties flipped: within 1 %
    with pytest.raises(GoldenMismatch, match=r"top-1 for 3 of 200 .* below faults.golden_agreement 0.99"):
        judge_agreement("float", 197 / 200, 3.0, 200, minimum=0.99)


@pytest.mark.slow
def test_accuracy_under_faults_is_paired_with_the_clean_accuracy_of_the_same_inputs(tmp_path, write_experiment):
    """A campaign on 12 of the 360 test images: their clean accuracy is not the test split's, and the report
    compares accuracy under faults with the golden run of the very same inferences, never with quant_acc."""
    faults = {"site": "act", "bits": "msb", "samples": 600, "inputs": 12, "seed": 5, "shard_size": 256}
    path = write_experiment({**TINY_EXPERIMENT, "name": "paired", "stages": ["inject"], "faults": faults,
                             "sweep": {"hw.protection": ["none", "afd"]}})
    runs = tmp_path / "runs"
    for command in ("sweep", "report"):
        result = CliRunner().invoke(main, [command, str(path), "--runs", str(runs)])
        assert result.exit_code == 0, result.output
    assert "clean acc %" in result.output and "drop pp [95% CI]" in result.output   # the report's table
    table = pd.read_csv(runs / "experiments" / "paired" / "results.csv")
    assert len(table) == 2
    for _, row in table.iterrows():
        rows = pd.read_parquet(next(runs.glob(f"inject/*/{row['inject_key']}/faults.parquet")))
        golden, faulty = (rows["golden_top1"] == rows["label"]), (rows["faulty_top1"] == rows["label"])
        assert row["golden_accuracy"] == pytest.approx(golden.mean()) != pytest.approx(row["quant_acc"])
        assert row["accuracy_under_faults"] == pytest.approx(faulty.mean())
        drop = paired_difference(int((golden & ~faulty).sum()), int((~golden & faulty).sum()),
                                 int((golden & faulty).sum()), len(rows))
        assert (row["accuracy_drop"], row["accuracy_drop_ci_lo"], row["accuracy_drop_ci_hi"]) == pytest.approx(
            (drop.rate, drop.low, drop.high))
        # Faults never seem to improve the network beyond what the paired interval allows.
        assert row["accuracy_under_faults"] - row["golden_accuracy"] <= -row["accuracy_drop_ci_lo"] + 1e-12
        assert row["stop_reason"] == "samples" and row["faulty_inferences"] == 600
    plain, filtered = table.iloc[0], table.iloc[1]
    assert pd.isna(plain["detected_rate"]) and pd.isna(plain["changed_rate"])
    assert pd.isna(filtered["detected_rate"]) and filtered["changed_rate"] > 0   # AFD filters, it detects nothing


@pytest.mark.slow
def test_a_float_scale_campaign_records_its_agreement_with_brevitas(tmp_path, write_experiment):
    path = write_experiment({**TINY_EXPERIMENT, "quant": {"scaling": "float"},
                             "faults": {"samples": 100, "inputs": 64}})
    result = CliRunner().invoke(main, ["inject", str(path), "--runs", str(tmp_path / "runs"), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout.splitlines()[0])["metrics"]
    assert metrics["golden_agreement"] >= 0.99 and metrics["max_lsb_deviation"] >= 0.0
    assert metrics["sizing"] == "explicit" and metrics["stop_reason"] == "samples"
