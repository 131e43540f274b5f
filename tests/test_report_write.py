"""Writing a report: the files, their columns, the self-contained HTML, the summary, no stale plots."""

from __future__ import annotations

import re

import pandas as pd
import pytest
import yaml

from dsetool.config import load_experiment
from dsetool.report import NoResults, json_summary, plots, write, write_report
from dsetool.report.columns import ordered
from dsetool.stages import stage_key
from dsetool.store import Store
from tests.test_report_collect import EXPERIMENT, campaign_metrics, put, synthetic, synthetic_store  # noqa: F401  (synthetic: a fixture)

AXES = ["faults.ber", "quant.bits", "hw.protection", "hw.tmr"]
PLOT_NAMES = ["accuracy_vs_ber", "pareto", "layer_vulnerability", "bit_sensitivity", "bit_width", "training",
              "hardware_cost"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Write the synthetic report once for the module (drawing the plots is the slow part)."""
    root = tmp_path_factory.mktemp("report")
    store, exp = synthetic_store(root / "runs", root / "synthetic.yaml")
    return store, write_report(store, exp)


@pytest.fixture
def written(made):
    return made[1]


def test_files_land_in_the_experiment_folder(made):
    store, written = made
    folder = store.experiment_dir("synthetic")
    assert written.directory == folder
    assert {p.name for p in folder.iterdir()} >= {"results.csv", "results.parquet", "summary.md", "report.html",
                                                 "plots"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in written.paths())
    assert not [p for p in folder.iterdir() if p.name.startswith(".report-")]


def test_csv_and_parquet_agree_on_columns_and_values(written):
    csv, parquet = pd.read_csv(written.csv), pd.read_parquet(written.parquet)
    assert list(csv.columns) == list(parquet.columns) == ordered(AXES)
    assert list(parquet["pareto"]) == [False, True, False, True, False, True, True, False, False, False]
    assert parquet["lut"].dtype == "Int64" and parquet["accuracy_under_faults"].dtype == "float64"
    assert csv.loc[1, "lut_overhead_pct"] == pytest.approx(10.0)
    assert pd.isna(csv.loc[4, "lut"]) and pd.isna(parquet.loc[4, "lut"])


def test_every_plot_is_drawn_as_png_and_svg(written):
    assert [p.name for p in written.plots] == PLOT_NAMES
    for plot in written.plots:
        assert not plot.skipped, plot.caption
        png, svg = plot.files
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert svg.read_text().lstrip().startswith("<?xml")


def test_html_is_self_contained(written):
    page = written.html.read_text()
    assert "http" not in page.replace('xmlns="http://www.w3.org', "")
    assert page.count('src="data:image/png;base64,') == len(PLOT_NAMES)
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)
    assert "<style>" in page and "Recommendations" in page


def test_summary_names_the_front_and_the_recommendations(written):
    text = written.summary.read_text()
    assert "- reliability [act bitflip ber=0.0001]: P2 bits=8 protection=clip tmr=False: highest accuracy" in text
    assert "- hardware [act bitflip ber=0.001]: P7 " in text
    assert "5 of 10 design points left out of the front (2 no synthesis, 2 synth does_not_fit, 1 no fault " \
           "campaign)" in text
    front = [line for line in text.splitlines() if line.startswith("| ") and line.endswith("| yes |")]
    assert [line.split(" | ")[0] for line in front] == ["| 2", "| 4", "| 6", "| 7"]


def test_skipped_plots_are_named_and_stale_ones_removed(synthetic, tmp_path, monkeypatch):  # noqa: F811
    store, exp = synthetic
    (store.experiment_dir("synthetic") / "plots").mkdir(parents=True)
    (store.experiment_dir("synthetic") / "plots" / "accuracy_vs_ber.png").write_bytes(b"from an earlier run")
    monkeypatch.setattr(plots, "PLOTS", plots.PLOTS[:1])   # only the BER plot: fast, and it must skip
    one_ber = {**EXPERIMENT, "sweep": {"faults.ber": [1e-4]}}
    path = tmp_path / "one-ber.yaml"
    path.write_text(yaml.safe_dump(one_ber, sort_keys=False))
    again = write_report(store, load_experiment(path))
    assert [(p.name, p.caption) for p in again.plots] == [
        ("accuracy_vs_ber", "the experiment does not vary faults.ber")]
    assert list((again.directory / "plots").iterdir()) == []
    assert "Accuracy under faults vs bit error rate: the experiment does not vary faults.ber" in \
        again.summary.read_text()
    assert "accuracy_vs_ber" not in again.html.read_text().split("Not drawn")[0].split("<h2>Plots</h2>")[1]


def test_json_summary_lists_relative_paths(made, monkeypatch):
    store, written = made
    monkeypatch.chdir(store.root)
    payload = json_summary(written)
    assert payload["stage"] == "report" and payload["path"] == "experiments/synthetic"
    assert payload["files"][0] == "experiments/synthetic/results.csv"
    assert payload["metrics"]["front"] == list(written.results.table["point"].iloc[[1, 3, 5, 6]])
    assert payload["metrics"]["on_front"] == 4 and payload["skipped_plots"] == {}


def test_an_empty_store_says_to_run_the_sweep(tmp_path, synthetic):  # noqa: F811
    _, exp = synthetic
    with pytest.raises(NoResults, match=r"holds no results for the 10 design points of .*synthetic.yaml; run "
                                        r"`dsetool sweep .*synthetic.yaml` first$"):
        write_report(Store(tmp_path / "empty"), exp)


def test_only_trained_models_give_a_note(tmp_path, monkeypatch, synthetic):  # noqa: F811
    _, exp = synthetic
    store = Store(tmp_path / "models-only")
    for point in exp.points:
        put(store, "pretrain", point.config, {"float_test_acc": 0.98})
    monkeypatch.setattr(plots, "PLOTS", ())
    written = write_report(store, exp)
    assert written.notes == (f"only trained models were found, no fault campaign or synthesis: run `dsetool sweep "
                             f"{exp.source}`",)
    assert "> Note: only trained models were found" in written.summary.read_text()
    assert written.results.table["float_acc"].eq(0.98).all()


def test_a_report_from_the_same_entries_is_kept_not_redrawn(synthetic, monkeypatch):  # noqa: F811
    store, exp = synthetic
    monkeypatch.setattr(plots, "PLOTS", plots.PLOTS[:1])
    first = write_report(store, exp)
    stamp = (first.directory / "report.json").stat().st_mtime_ns
    drawn: list[str] = []
    monkeypatch.setattr(write, "draw_all", lambda *a: drawn.append("drawn") or [])
    again = write_report(store, exp)
    assert drawn == [] and again.plots == first.plots
    assert not first.kept and again.kept and json_summary(again)["cached"] is True
    assert (again.directory / "report.json").stat().st_mtime_ns == stamp
    first.plots[0].files[0].unlink()                     # a file gone: written again
    write_report(store, exp)
    assert drawn == ["drawn"]


def test_a_new_entry_writes_the_report_again(synthetic, monkeypatch):  # noqa: F811
    store, exp = synthetic
    monkeypatch.setattr(plots, "PLOTS", ())
    write_report(store, exp)
    lacking = next(p.config for p in exp.points if store.get("inject", stage_key("inject", p.config)[0]) is None)
    put(store, "inject", lacking, campaign_metrics(0.5))   # an entry the report had not seen
    drawn: list[str] = []
    monkeypatch.setattr(write, "draw_all", lambda *a: drawn.append("drawn") or [])
    write_report(store, exp)
    assert drawn == ["drawn"]


def test_a_recomputed_entry_under_the_same_key_writes_the_report_again(synthetic, monkeypatch):  # noqa: F811
    import shutil

    store, exp = synthetic
    monkeypatch.setattr(plots, "PLOTS", ())
    write_report(store, exp)
    entry = next(e for e in store.entries() if e.stage == "inject")
    shutil.rmtree(entry.path)                              # removed, then computed again with another result
    cfg = next(p.config for p in exp.points if stage_key("inject", p.config)[0] == entry.key)
    put(store, "inject", cfg, campaign_metrics(0.25))
    drawn: list[str] = []
    monkeypatch.setattr(write, "draw_all", lambda *a: drawn.append("drawn") or [])
    again = write_report(store, exp)
    assert drawn == ["drawn"]
    assert 0.25 in set(again.results.table["accuracy_under_faults"])


def test_a_publish_stopped_half_way_leaves_no_stamp(synthetic, monkeypatch):  # noqa: F811
    store, exp = synthetic
    monkeypatch.setattr(plots, "PLOTS", ())
    first = write_report(store, exp)
    stamp = first.directory / "report.json"
    assert stamp.is_file()
    real_replace = write.os.replace

    def stop_at_summary(src, dst):
        if str(dst).endswith("summary.md"):
            raise KeyboardInterrupt
        real_replace(src, dst)

    put(store, "inject", next(p.config for p in exp.points
                              if store.get("inject", stage_key("inject", p.config)[0]) is None), campaign_metrics(0.5))
    monkeypatch.setattr(write.os, "replace", stop_at_summary)
    with pytest.raises(KeyboardInterrupt):
        write_report(store, exp)
    assert not stamp.exists()                              # the next run cannot take the half-moved files as current


def test_an_objective_without_any_pick_gets_one_line(tmp_path, monkeypatch, synthetic):  # noqa: F811
    from dsetool.report.summary import recommendation_lines
    from dsetool.stages import quant_stage

    _, exp = synthetic
    store = Store(tmp_path / "campaigns-only")
    for point in exp.points:
        put(store, "pretrain", point.config, {"float_test_acc": 0.98})
        put(store, quant_stage(point.config), point.config, {"quant_test_acc": 0.97})
        put(store, "inject", point.config, campaign_metrics(0.9))
    monkeypatch.setattr(plots, "PLOTS", ())
    lines = recommendation_lines(write_report(store, exp).results)
    assert [line for line in lines if line.startswith("hardware")] == [
        "hardware [every fault scenario]: (none): no design point has accuracy under faults, LUT, DSP and latency"]
    assert len([line for line in lines if line.startswith("reliability [act bitflip ber=")]) == 2
