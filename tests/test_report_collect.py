"""Reading an experiment's results out of the store: one row per point, blanks where a stage is missing.

Also home of `synthetic_store`, the small fake experiment every report test uses: ten design points
(two BERs x five designs), fake campaign and synthesis entries made with `Store.compute`, no training and
no toolchain. The designs, at BER 1e-4 / 1e-3:

| P (1e-4, 1e-3) | design      | accuracy under faults | synthesis                          |
|----------------|-------------|-----------------------|------------------------------------|
| 1, 6           | W8 none     | 0.90 / 0.70           | ok, 1000 LUT, 64 DSP, 100 MHz      |
| 2, 7           | W8 clip     | 0.95 / 0.90           | ok, 1100 LUT, 64 DSP, 95 MHz       |
| 3, 8           | W8 TMR      | 0.97 / 0.93           | does_not_fit, 3300 LUT, 192 DSP    |
| 4, 9           | W4 none     | 0.91 / (no campaign)  | ok, 600 LUT, 64 DSP, 110 MHz       |
| 5, 10          | W4 clip     | 0.95 / 0.85           | (none)                             |
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from dsetool.config import Experiment, load_experiment
from dsetool.report import collect
from dsetool.report.columns import NAMES, axis_column, ordered
from dsetool.report.results import build
from dsetool.stages import quant_stage, stage_key
from dsetool.store import Result, Store

EXPERIMENT: dict[str, Any] = {
    "name": "synthetic",
    "model": {"arch": "mlp", "mlp_hidden": [16]},
    "quant": {"method": "qat"},
    "faults": {"site": "act", "samples": 40},
    "sweep": {"faults.ber": [1e-4, 1e-3]},
    "zip": {"quant.bits": [8, 8, 8, 4, 4], "hw.protection": ["none", "clip", "none", "none", "clip"],
            "hw.tmr": [False, False, True, False, False]},
}
ACCURACY = {(8, "none", False): (0.90, 0.70), (8, "clip", False): (0.95, 0.90), (8, "none", True): (0.97, 0.93),
            (4, "none", False): (0.91, None), (4, "clip", False): (0.95, 0.85)}
SYNTH = {(8, "none", False): {"status": "ok", "lut": 1000, "ff": 900, "dsp": 64, "bram": 8, "fmax_mhz": 100.0},
         (8, "clip", False): {"status": "ok", "lut": 1100, "ff": 950, "dsp": 64, "bram": 8, "fmax_mhz": 95.0},
         (8, "none", True): {"status": "does_not_fit", "lut": 3300, "ff": 2800, "dsp": 192, "bram": 24,
                             "fmax_mhz": None},
         (4, "none", False): {"status": "ok", "lut": 600, "ff": 500, "dsp": 64, "bram": 8, "fmax_mhz": 110.0}}


def design(cfg: Any) -> tuple[int, str, bool]:
    return cfg.quant.weight_bits, cfg.hw.protection, cfg.hw.tmr


def put(store: Store, stage: str, cfg: Any, metrics: dict[str, Any], files: dict[str, Any] | None = None) -> None:
    """Publish a fake entry under the key the real stage would have at `cfg`."""
    key, inputs = stage_key(stage, cfg)

    def build_fn(out: Path) -> Result:
        for name, table in (files or {}).items():
            pq.write_table(table, out / name)
        return Result(metrics)

    store.compute(stage, key, inputs, build_fn)


def faults_table(n: int, sdc_every: int) -> pa.Table:
    """Return a fake faults.parquet: single faults over fc1/fc2 and bits 0..7, one SDC every `sdc_every`."""
    outcome = ["sdc" if i % sdc_every == 0 else "masked" for i in range(n)]
    return pa.table({"outcome": pa.array(outcome).dictionary_encode(), "critical": [o == "sdc" for o in outcome],
                     "n_faults": [1 if i % 10 else 2 for i in range(n)], "site": ["act"] * n,
                     "layer": ["fc1" if i % 3 else "fc2" for i in range(n)], "bit": [i % 8 for i in range(n)]})


def synthetic_store(root: Path, write_yaml: Path) -> tuple[Store, Experiment]:
    """Write the synthetic experiment file and fill a store with its fake results."""
    write_yaml.write_text(yaml.safe_dump(EXPERIMENT, sort_keys=False))
    exp = load_experiment(write_yaml)
    store = Store(root)
    for point in exp.points:
        cfg = point.config
        high_ber = cfg.faults.ber == 1e-3
        put(store, "pretrain", cfg, {"float_test_acc": 0.98})
        trained = {"act_sparsity": 0.6, "sharpness": 0.03, "hessian_trace": 40.0} if cfg.quant.weight_bits == 8 \
            else {"act_sparsity": 0.7, "sharpness": 0.05}
        put(store, quant_stage(cfg), cfg, {"quant_test_acc": 0.97 if cfg.quant.weight_bits == 8 else 0.96, **trained})
        accuracy = ACCURACY[design(cfg)][high_ber]
        if accuracy is not None:
            put(store, "inject", cfg, campaign_metrics(accuracy), {"faults.parquet": faults_table(60, 4 + high_ber)})
        if design(cfg) in SYNTH:
            put(store, "synth", cfg, SYNTH[design(cfg)])
    return store, exp


def campaign_metrics(accuracy: float) -> dict[str, Any]:
    """What a campaign of 40 faulty inferences reports, its golden run right on 39 of them."""
    from dsetool.faults.stats import paired_difference, wilson

    sdc = round(1 - accuracy, 4)
    correct = round(accuracy * 40)
    drop, faulty = paired_difference(39 - correct, 0, correct, 40), wilson(correct, 40)
    return {"accuracy_under_faults": accuracy, "golden_accuracy": 39 / 40, "accuracy_drop": drop.rate,
            "accuracy_drop_ci": [drop.low, drop.high], "accuracy_ci": [faulty.low, faulty.high],
            "faulty_inferences": 40, "stop_reason": "samples",
            "masked_rate": 0.5, "masked_ci": [0.35, 0.65], "sdc_rate": sdc, "sdc_ci": [sdc / 2, sdc * 2],
            "critical_rate": sdc / 2, "critical_ci": [0.0, sdc], "detected_rate": 0.0, "quant_test_acc": 0.97,
            "float_test_acc": 0.98}


@pytest.fixture
def synthetic(tmp_path: Path) -> tuple[Store, Experiment]:
    return synthetic_store(tmp_path / "runs", tmp_path / "synthetic.yaml")


def table_of(store: Store, exp: Experiment) -> Any:
    axes = tuple(dict.fromkeys(k for p in exp.points for k in p.axes))
    return build(exp.name, exp.source, axes, collect.find(store, exp)).table


def test_one_row_per_point_in_documented_order(synthetic):
    table = table_of(*synthetic)
    axes = ["faults.ber", "quant.bits", "hw.protection", "hw.tmr"]
    assert list(table.columns) == ordered(axes)
    assert list(table["point_id"]) == list(range(1, 11))
    assert table.loc[0, "point"] == "faults.ber=0.0001,quant.bits=8,hw.protection=none,hw.tmr=False"
    assert table.loc[0, axis_column("faults.ber")] == 1e-4


def test_identity_and_accuracy_columns(synthetic):
    row = table_of(*synthetic).iloc[1]
    assert (row["model"], row["dataset"], row["weight_bits"], row["act_bits"], row["method"]) == (
        "mlp", "digits", 8, 8, "qat")
    assert (row["protection"], row["tmr"], row["protection_label"], row["array"], row["target"]) == (
        "clip", False, "clip", "8x8 ws", "ecp5-45k")
    assert (row["float_acc"], row["quant_acc"]) == (0.98, 0.97)


def test_reliability_columns_split_the_interval(synthetic):
    row = table_of(*synthetic).iloc[1]
    assert row["fault_scenario"] == "act bitflip ber=0.0001"
    assert (row["fault_site"], row["fault_model"], row["ber"]) == ("act", "bitflip", 1e-4)
    assert pd.isna(row["faults_per_inference"])
    assert (row["sdc_rate"], row["sdc_ci_lo"], row["sdc_ci_hi"]) == pytest.approx((0.05, 0.025, 0.1))
    assert (row["accuracy_under_faults"], row["faulty_inferences"]) == (0.95, 40)


def test_hardware_columns_with_overhead_against_the_unprotected_array(synthetic):
    table = table_of(*synthetic)
    plain, clip = table.iloc[0], table.iloc[1]
    assert (clip["lut"], clip["dsp"], clip["fmax_mhz"], clip["synth_status"]) == (1100, 64, 95.0, "ok")
    assert clip["lut_overhead_pct"] == pytest.approx(10.0)
    assert clip["fmax_overhead_pct"] == pytest.approx(-5.0)
    assert plain["lut_overhead_pct"] == 0.0
    assert clip["latency_us"] == pytest.approx(clip["cycles"] / 95.0)
    assert plain["cycles"] == clip["cycles"] > 0


def test_missing_entries_are_blank_not_zero(synthetic):
    table = table_of(*synthetic)
    no_synth, no_campaign, misfit = table.iloc[4], table.iloc[8], table.iloc[2]
    assert pd.isna(no_synth["synth_key"]) and all(
        table[c].isna().iloc[4] for c in ("lut", "dsp", "fmax_mhz", "latency_us", "cycles", "lut_overhead_pct"))
    assert pd.isna(no_campaign["inject_key"]) and math.isnan(no_campaign["accuracy_under_faults"])
    assert no_campaign["quant_acc"] == 0.96   # from the quantized model when no campaign ran
    assert misfit["synth_status"] == "does_not_fit" and misfit["lut"] == 3300
    assert math.isnan(misfit["fmax_mhz"]) and math.isnan(misfit["latency_us"])


def test_the_trained_models_sparsity_and_sharpness_are_columns(synthetic):
    table = table_of(*synthetic)
    w8, w4 = table.iloc[0], table.iloc[3]
    assert (w8["act_sparsity"], w8["sharpness"], w8["hessian_trace"]) == (0.6, 0.03, 40.0)
    assert (w4["act_sparsity"], w4["sharpness"]) == (0.7, 0.05) and pd.isna(w4["hessian_trace"])


def test_nothing_is_computed_and_an_empty_store_has_no_results(tmp_path, synthetic):
    _, exp = synthetic
    found = collect.find(Store(tmp_path / "empty"), exp)
    assert not collect.has_results(found)
    assert not (tmp_path / "empty").exists()


def test_every_documented_column_is_unique():
    assert len(NAMES) == len(set(NAMES))
    assert all(name == name.lower() and " " not in name for name in NAMES)


def test_the_readme_documents_every_column_as_the_list_does():
    from dsetool.report.columns import COLUMNS
    from tests.conftest import REPO

    readme = (REPO / "README.md").read_text()
    start = readme.index("| column | meaning |", readme.index("**Columns.**"))
    table = readme[start:readme.index("\n\n", start)]
    documented = dict(re.findall(r"^\| `([a-z_]+)` \| (.+?) \|$", table, re.M))
    for name, meaning in COLUMNS:
        assert documented.get(name) == meaning, name
    assert set(documented) == {name for name, _ in COLUMNS}


def test_accuracy_under_faults_carries_its_wilson_interval(synthetic):
    from dsetool.faults.stats import wilson

    store, exp = synthetic
    t = table_of(store, exp)
    with_campaign = t[t["accuracy_under_faults"].notna()]
    assert len(with_campaign) and t.loc[t["accuracy_under_faults"].isna(), "accuracy_ci_lo"].isna().all()
    for _, row in with_campaign.iterrows():
        expected = wilson(round(row["accuracy_under_faults"] * 40), 40)   # 40 faulty inferences each
        assert (row["accuracy_ci_lo"], row["accuracy_ci_hi"]) == pytest.approx((expected.low, expected.high))
        assert row["accuracy_ci_lo"] < row["accuracy_under_faults"] < row["accuracy_ci_hi"]
