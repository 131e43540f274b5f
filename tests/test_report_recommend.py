"""The recommendations: which point, why, and tie-breaking that never depends on luck."""

from __future__ import annotations

import random
from typing import Any

from dsetool.report import collect
from dsetool.report.pareto import pareto
from dsetool.report.recommend import hardware, recommend, reliability
from dsetool.report.results import build
from tests.test_report_collect import synthetic  # noqa: F401  (a fixture)


def row(point_id: int, acc: float | None, lut: int | None = None, dsp: int | None = 4, latency: float | None = 1.0,
        status: str | None = "ok") -> dict[str, Any]:
    return {"point_id": point_id, "point": f"p{point_id}", "accuracy_under_faults": acc, "lut": lut, "dsp": dsp,
            "latency_us": latency, "synth_status": status, "fault_scenario": "s"}


def picks(store, exp, tolerance=0.01):
    axes = tuple(dict.fromkeys(k for p in exp.points for k in p.axes))
    results = build(exp.name, exp.source, axes, collect.find(store, exp), tolerance)
    return {(r.objective, r.scenario): r for r in results.recommendations}


def test_synthetic_recommendations(synthetic):  # noqa: F811
    chosen = picks(*synthetic)
    low, high = "act bitflip ber=0.0001", "act bitflip ber=0.001"
    # P2 and P5 tie at 95 %; P5 has no synthesis, so P2's known area wins.
    assert chosen["reliability", low].point_id == 2
    assert "tied with 1 other" in chosen["reliability", low].reason
    # P8 (TMR) is the most accurate at 1e-3, but it does not fit the FPGA.
    assert chosen["reliability", high].point_id == 7
    assert chosen["hardware", low].point_id == 2
    assert "within 1 percentage point of" in chosen["hardware", low].reason


def test_a_wider_tolerance_picks_the_smaller_design(synthetic):  # noqa: F811
    chosen = picks(*synthetic, tolerance=0.05)
    assert chosen["hardware", "act bitflip ber=0.0001"].point_id == 4   # 91 % is within 5 points of 95 %, 600 LUT


def test_reliability_ties_go_to_area_then_latency_then_number():
    rows = [row(1, 0.9, lut=200), row(2, 0.9, lut=100, latency=2.0), row(3, 0.9, lut=100, latency=1.0),
            row(4, 0.9, lut=100, latency=1.0), row(5, 0.8, lut=10)]
    assert reliability(rows, range(5), "s").point_id == 3


def test_blank_area_counts_as_largest():
    rows = [row(1, 0.9, lut=None, status=None), row(2, 0.9, lut=5000)]
    assert reliability(rows, range(2), "s").point_id == 2


def test_designs_that_do_not_fit_are_never_recommended():
    rows = [row(1, 0.99, lut=10, latency=None, status="does_not_fit"), row(2, 0.5, lut=100)]
    assert reliability(rows, range(2), "s").point_id == 2


def test_hardware_takes_the_smallest_within_tolerance():
    rows = [row(1, 0.95, lut=1000), row(2, 0.945, lut=800), row(3, 0.90, lut=100)]
    members = sorted(pareto(rows).members)
    assert hardware(rows, members, "s", tolerance=0.01).point_id == 2
    assert hardware(rows, members, "s", tolerance=0.0).point_id == 1
    assert hardware(rows, members, "s", tolerance=0.1).point_id == 3


def test_the_same_results_in_any_order_give_the_same_picks():
    rows = [row(i, round(0.9 + 0.01 * (i % 3), 2), lut=100 * (i % 4), dsp=i % 2, latency=1.0) for i in range(1, 13)]
    expected = [(r.objective, r.point_id) for r in recommend(rows, pareto(rows))]
    for seed in range(5):
        shuffled = rows[:]
        random.Random(seed).shuffle(shuffled)
        assert [(r.objective, r.point_id) for r in recommend(shuffled, pareto(shuffled))] == expected


def test_nothing_to_recommend_says_why():
    rows = [row(1, None, status=None)]
    recs = recommend(rows, pareto(rows))
    assert [(r.objective, r.point) for r in recs] == [("reliability", None), ("hardware", None)]
    assert "no design point has a fault campaign" in recs[0].reason
