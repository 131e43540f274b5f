"""The plots: what each draws, when it is skipped and why, and that crowded data stays readable.

Figures are built but not saved here (saving is what costs time; test_report_write saves every plot once).
"""

from __future__ import annotations

import pandas as pd
import pytest

from dsetool.report import collect, faultdata, faultplots, hwplots, plots
from dsetool.report.plotkit import MAX_ROWS, Drawn, PlotInput, short_names
from dsetool.report.results import build
from tests.test_report_collect import synthetic  # noqa: F401  (a fixture)


@pytest.fixture
def data(synthetic):  # noqa: F811
    store, exp = synthetic
    found = collect.find(store, exp)
    axes = tuple(exp.points[0].axes)
    return PlotInput(build(exp.name, exp.source, axes, found).table, axes, faultdata.load(found))


def test_fault_counts_keep_only_single_faults(data):
    by_layer = data.faults.by_layer
    assert set(by_layer["layer"]) == {"fc1", "fc2"} and data.faults.layer_order == ("fc1", "fc2")
    assert by_layer.groupby("point_id")["n"].sum().tolist() == [54] * 9   # 60 rows, every 10th has two faults
    assert set(data.faults.by_bit["bit"]) == set(range(8))


def test_accuracy_vs_ber_draws_one_line_per_design(data):
    drawn = plots.accuracy_vs_ber(data)
    assert isinstance(drawn, Drawn)
    (ax,) = drawn.figure.axes
    solid = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
    dotted = [line for line in ax.get_lines() if line.get_linestyle() == ":"]   # the same inferences, fault-free
    assert len(solid) == len(dotted) == 5 and ax.get_xscale() == "log"
    labels = [t.get_text() for t in drawn.figure.legends[0].get_texts()]
    assert labels[:2] == ["bits=8 protection=none tmr=False", "bits=8 protection=clip tmr=False"]


def test_accuracy_vs_ber_skips_without_a_ber_axis(data):
    no_ber = PlotInput(data.table, ("quant.bits",), data.faults)
    assert plots.accuracy_vs_ber(no_ber) == "the experiment does not vary faults.ber"


def test_pareto_scatter_marks_the_front_and_drops_constant_costs(data):
    drawn = plots.pareto_scatter(data)
    assert isinstance(drawn, Drawn)
    assert [ax.get_xlabel() for ax in drawn.figure.axes][:2] == ["LUTs", "latency per inference (us)"]
    assert "same DSP blocks (64)" in drawn.caption
    tags = {t.get_text() for ax in drawn.figure.axes for t in ax.texts}
    assert tags == {"P2", "P4", "P6", "P7"}


def test_pareto_scatter_skips_without_hardware(data):
    table = data.table.assign(pareto_excluded="no synthesis", pareto=False)
    assert "no design point has accuracy under faults, LUT, DSP and latency" in plots.pareto_scatter(
        PlotInput(table, data.axes, data.faults))


def test_heatmap_caps_the_rows_and_says_so(data):
    many = pd.concat([data.faults.by_layer.assign(point_id=data.faults.by_layer["point_id"] + 100 * k)
                      for k in range(6)], ignore_index=True)
    table = pd.concat([data.table.assign(point_id=data.table["point_id"] + 100 * k) for k in range(6)],
                      ignore_index=True)
    counts = faultdata.FaultCounts(many, data.faults.by_bit, data.faults.layer_order)
    drawn = faultplots.layer_heatmap(PlotInput(table, data.axes, counts))
    assert isinstance(drawn, Drawn)
    assert len(drawn.figure.axes[0].get_yticklabels()) == MAX_ROWS
    assert f"Showing the first {MAX_ROWS} of 54 design points" in drawn.caption


def test_bit_sensitivity_groups_by_register_kind_and_width(data):
    drawn = faultplots.bit_sensitivity(data)
    assert isinstance(drawn, Drawn)
    legend = [t.get_text() for t in drawn.figure.legends[0].get_texts()]
    assert legend == ["act (4-bit), clip", "act (4-bit), none", "act (8-bit), clip", "act (8-bit), none",
                      "act (8-bit), tmr"]
    assert "no interval bars with more than 4 lines" in drawn.caption   # five lines: bars would hide them


def test_bit_sensitivity_draws_intervals_for_a_few_lines(data):
    one_protection = data.table.assign(protection_label="none")
    drawn = faultplots.bit_sensitivity(PlotInput(one_protection, data.axes, data.faults))
    assert isinstance(drawn, Drawn)
    assert [t.get_text() for t in drawn.figure.legends[0].get_texts()] == ["act (4-bit)", "act (8-bit)"]
    assert "bars: 95 % Wilson intervals" in drawn.caption


def test_fault_plots_skip_without_single_faults(data):
    empty = PlotInput(data.table, data.axes, faultdata.load([]))
    assert "no campaign has single-fault inferences" in faultplots.layer_heatmap(empty)
    assert "no campaign has single-fault inferences" in faultplots.bit_sensitivity(empty)


def test_bit_width_plot_needs_two_widths(data):
    assert isinstance(plots.bit_width(data), Drawn)
    eight = data.table[data.table["weight_bits"] == 8]
    assert plots.bit_width(PlotInput(eight, data.axes, data.faults)) == "every design point has the same bit widths"


def test_short_names_fall_back_to_the_full_key_on_a_clash():
    assert short_names(["quant.bits", "faults.bits", "hw.rows"]) == {
        "quant.bits": "quant.bits", "faults.bits": "faults.bits", "hw.rows": "rows"}


def test_hardware_cost_draws_each_synthesis_once(data):
    drawn = hwplots.hardware_cost(data)
    assert isinstance(drawn, Drawn)
    labels = [t.get_text() for t in drawn.figure.axes[0].get_yticklabels()]
    assert labels == ["P1 bits=8 protection=none tmr=False", "P2 bits=8 protection=clip tmr=False",
                      "P3 bits=8 protection=none tmr=True", "P4 bits=4 protection=none tmr=False"]
    lut_bars = drawn.figure.axes[0].patches
    assert [bar.get_width() for bar in lut_bars] == [1000, 1100, 3300, 600]
    assert lut_bars[2].get_facecolor() != lut_bars[0].get_facecolor()   # P3 does not fit: grey
    assert "+10.0 %" in {t.get_text() for t in drawn.figure.axes[0].texts}


def test_hardware_cost_skips_without_synthesis(data):
    table = data.table.assign(synth_key=None)
    assert hwplots.hardware_cost(PlotInput(table, data.axes, data.faults)) == "no design point has a synthesis"


def test_the_accuracy_axis_is_cut_only_below_a_collapsed_design():
    import pandas as pd

    from dsetool.report.plots import _accuracy_floor

    def floor(*dominated):
        acc = [0.98, 0.975, *dominated]
        return _accuracy_floor(pd.DataFrame({"accuracy_under_faults": acc,
                                             "pareto": [True, True] + [False] * len(dominated)}))

    assert floor(0.19) == pytest.approx(95.5)          # PTQ at 2 bits: on the bottom edge
    assert floor(0.94) == pytest.approx(92.0)          # a point 3.5 below the front: shown, nothing cut
    assert floor(0.919, 0.19) == pytest.approx(89.9)   # W2 QAT shown, PTQ at 2 bits on the edge
    assert floor() == pytest.approx(95.5)
