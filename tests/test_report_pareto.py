"""The Pareto fronts: dominance, one front per fault scenario, who is left out and why."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dsetool.report.pareto import OBJECTIVES, dominates, exclusion, front_indices, oriented, pareto
from tests.test_report_collect import synthetic, table_of  # noqa: F401  (synthetic is a fixture)


def row(acc: float | None, lut: int | None, dsp: int | None, latency: float | None, status: str | None = "ok",
        scenario: str = "s") -> dict[str, Any]:
    return {"accuracy_under_faults": acc, "lut": lut, "dsp": dsp, "latency_us": latency, "synth_status": status,
            "fault_scenario": scenario}


def test_dominance_needs_one_strict_improvement():
    assert dominates((1, 1), (1, 0)) and not dominates((1, 1), (1, 1)) and not dominates((2, 0), (1, 1))


def test_objectives_are_oriented_so_larger_is_better():
    assert [name for name, _ in OBJECTIVES] == ["accuracy_under_faults", "lut", "dsp", "latency_us"]
    assert oriented(row(0.9, 100, 4, 2.5)) == (0.9, -100.0, -4.0, -2.5)


def test_equal_points_are_both_on_the_front():
    assert front_indices([(1.0, -2.0), (1.0, -2.0), (0.5, -3.0)]) == [0, 1]


def test_exclusion_reasons():
    assert exclusion(row(0.9, 100, 4, 2.5)) is None
    assert exclusion(row(0.9, 100, 4, None, status="does_not_fit")) == "synth does_not_fit"
    assert exclusion(row(0.9, None, None, None, status=None)) == "no synthesis"
    assert exclusion(row(None, 100, 4, 2.5)) == "no fault campaign"
    assert exclusion(row(None, None, None, None, status=None)) == "no fault campaign, no synthesis"
    assert exclusion(row(0.9, 100, 4, None)) == "missing latency_us"


def test_fronts_are_per_fault_scenario():
    rows = [row(0.9, 100, 4, 1.0, scenario="a"), row(0.5, 200, 4, 1.0, scenario="b"),
            row(0.4, 300, 4, 1.0, scenario="b")]
    front = pareto(rows)
    assert front.members == {0, 1}   # 1 would be dominated by 0, but they are not comparable
    assert front.scenarios == ("a", "b")


def test_synthetic_fronts_and_left_out(synthetic):  # noqa: F811
    table = table_of(*synthetic)
    assert list(table.loc[table["pareto"], "point_id"]) == [2, 4, 6, 7]
    reasons = dict(zip(table["point_id"], table["pareto_excluded"], strict=True))
    assert reasons[3] == reasons[8] == "synth does_not_fit"
    assert reasons[5] == reasons[10] == "no synthesis"
    assert reasons[9] == "no fault campaign"
    assert table.loc[table["point_id"] == 1, "pareto_excluded"].isna().all()   # dominated by P4, not excluded


maybe = st.one_of(st.none(), st.integers(0, 5))
rows_strategy = st.lists(st.tuples(maybe, maybe, maybe, maybe, st.sampled_from(["ok", "ok", "does_not_fit"]),
                                   st.sampled_from(["a", "b"])), min_size=0, max_size=24)


@settings(max_examples=200, deadline=None)
@given(rows_strategy)
def test_front_property(spec):
    """No member is dominated in its scenario; every other complete point is dominated by a member."""
    rows = [row(None if a is None else a / 5, lut, dsp, lat, status, scen) for a, lut, dsp, lat, status, scen in spec]
    front = pareto(rows)
    complete = [i for i in range(len(rows)) if i not in front.excluded]
    assert front.members <= set(complete)
    for i in complete:
        rivals = [j for j in complete if rows[j]["fault_scenario"] == rows[i]["fault_scenario"] and j != i]
        if i in front.members:
            assert not any(dominates(oriented(rows[j]), oriented(rows[i])) for j in rivals)
        else:
            assert any(j in front.members and dominates(oriented(rows[j]), oriented(rows[i])) for j in rivals)
    for i in front.excluded:
        assert any(rows[i][name] is None for name, _ in OBJECTIVES) or rows[i]["synth_status"] != "ok"


def test_an_area_only_scenario_is_judged_on_cycles():
    """xc7z020 has no place and route: no Fmax, no latency; its front uses cycles per inference."""
    rows = [{**row(0.9, 100, 4, None), "cycles": 1000}, {**row(0.8, 100, 4, None), "cycles": 900},
            {**row(0.7, 100, 4, None), "cycles": 1000}]
    front = pareto(rows)
    assert front.members == {0, 1} and not front.excluded
    mixed = [*rows, row(0.95, 50, 2, 3.0)]   # one row with a latency: latency decides, the others lack it
    assert pareto(mixed).members == {3} and pareto(mixed).excluded[0] == "missing latency_us"


def test_nearby_bit_error_rates_are_separate_scenarios():
    import dataclasses

    from dsetool.config import RunConfig
    from dsetool.report.collect import scenario

    base = RunConfig()
    names = {scenario(dataclasses.replace(base, faults=dataclasses.replace(base.faults, ber=ber)))
             for ber in (1e-4, 1.2e-4, 1.5e-4, 2.5e-4, 3e-4)}
    assert len(names) == 5


def test_a_datapath_is_not_set_against_whole_accelerators():
    """An output-stationary point has no accelerator, so its synthesis is the datapath alone: far fewer LUTs
    than any accelerator, yet not a cheaper machine. Beside accelerators it stays off the front; alone it
    competes."""
    accelerator = {**row(0.9, 9000, 64, 200.0), "synth_scope": "machine"}
    os = {**row(0.95, 5000, 64, 150.0), "synth_scope": "datapath"}
    front = pareto([accelerator, os])
    assert front.members == {0} and front.excluded == {1: "datapath only, the others are whole accelerators"}
    assert pareto([os, {**os, "accuracy_under_faults": 0.5}]).members == {0}
