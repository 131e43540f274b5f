"""Recommend one design point per objective and fault scenario, each with its reason in one line.

- `reliability`: the highest accuracy under faults among points that have a campaign and did not fail
  synthesis; ties go to the smaller LUT count, then DSP count, then lower latency (a blank counts as worst),
  then the lower point number. When the winner has all four objectives it is on the front (a lexicographic
  optimum is never dominated).
- `hardware`: among front members whose accuracy under faults is within `tolerance` (absolute, default
  0.01 = one percentage point) of the scenario's best front accuracy, the fewest LUTs, then DSPs, then the
  lowest latency, then the higher accuracy, then the lower point number.

Every comparison ends at the point number, so the same results always give the same recommendation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dsetool.report.pareto import SCENARIO, Front

DEFAULT_TOLERANCE = 0.01
OBJECTIVE_NAMES = ("reliability", "hardware")


@dataclass(frozen=True)
class Recommendation:
    """The point chosen for one objective in one fault scenario (index None: nothing to choose from)."""

    objective: str
    scenario: str
    index: int | None
    point: str | None
    reason: str
    point_id: int | None = None

    def as_json(self) -> dict[str, Any]:
        """Return the recommendation as plain JSON."""
        return {"objective": self.objective, "scenario": self.scenario, "point": self.point,
                "point_id": self.point_id, "reason": self.reason}


def _worst_if_blank(value: Any) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else math.inf


def _area_key(row: Mapping[str, Any]) -> tuple[float, float, float]:
    return (_worst_if_blank(row.get("lut")), _worst_if_blank(row.get("dsp")), _worst_if_blank(row.get("latency_us")))


def _number(rows: Sequence[Mapping[str, Any]], index: int) -> int:
    """Return the point number a tie falls back on (its position when the row has none)."""
    return int(rows[index].get("point_id", index + 1))


def _describe(row: Mapping[str, Any]) -> str:
    """Return the headline numbers of a row, e.g. `accuracy under faults 97.20 % (97.50 % without faults on
    the same inferences), 1234 LUT, 16 DSP, 12.3 us`."""
    parts = [f"accuracy under faults {100 * row['accuracy_under_faults']:.2f} %"]
    if _worst_if_blank(row.get("golden_accuracy")) != math.inf:
        parts[0] += f" ({100 * row['golden_accuracy']:.2f} % without faults on the same inferences)"
    for name, unit, fmt in (("lut", "LUT", "{:.0f}"), ("dsp", "DSP", "{:.0f}"), ("latency_us", "us", "{:.1f}")):
        value = row.get(name)
        if _worst_if_blank(value) != math.inf:
            parts.append(f"{fmt.format(value)} {unit}")
    return ", ".join(parts)


def reliability(rows: Sequence[Mapping[str, Any]], indices: Sequence[int], scenario: str) -> Recommendation:
    """Return the most reliable point among `indices` (see the module docstring for the tie-breaking)."""
    usable = [i for i in indices if _worst_if_blank(rows[i].get("accuracy_under_faults")) != math.inf
              and rows[i].get("synth_status") in (None, "ok")]
    if not usable:
        return Recommendation("reliability", scenario, None, None, "no design point has a fault campaign")
    best = min(usable, key=lambda i: (-float(rows[i]["accuracy_under_faults"]), *_area_key(rows[i]), _number(rows, i)))
    tied = sum(1 for i in usable if rows[i]["accuracy_under_faults"] == rows[best]["accuracy_under_faults"]) - 1
    why = "highest accuracy under faults"
    if tied:
        why += f" (tied with {tied} other{'s' if tied > 1 else ''}: fewer LUTs, then DSPs, then latency, then P win)"
    if rows[best].get("synth_status") is None:
        why += " (not synthesized: its cost is unknown)"
    return _chosen("reliability", scenario, rows, best, f"{why}: {_describe(rows[best])}")


def _chosen(objective: str, scenario: str, rows: Sequence[Mapping[str, Any]], index: int,
            reason: str) -> Recommendation:
    row = rows[index]
    return Recommendation(objective, scenario, index, str(row["point"]), reason, _number(rows, index))


def hardware(rows: Sequence[Mapping[str, Any]], members: Sequence[int], scenario: str,
             tolerance: float = DEFAULT_TOLERANCE) -> Recommendation:
    """Return the smallest front member within `tolerance` of the front's best accuracy under faults."""
    if not members:
        return Recommendation("hardware", scenario, None, None,
                              "no design point has accuracy under faults, LUT, DSP and latency")
    best = max(float(rows[i]["accuracy_under_faults"]) for i in members)
    close = [i for i in members if float(rows[i]["accuracy_under_faults"]) >= best - tolerance - 1e-12]
    pick = min(close, key=lambda i: (*_area_key(rows[i]), -float(rows[i]["accuracy_under_faults"]), _number(rows, i)))
    points = f"{100 * tolerance:g} percentage point{'' if 100 * tolerance == 1 else 's'}"
    why = (f"smallest design on the front (fewest LUTs, then DSPs, then latency) within {points} of its best "
           f"accuracy under faults ({100 * best:.2f} %)")
    return _chosen("hardware", scenario, rows, pick, f"{why}: {_describe(rows[pick])}")


def recommend(rows: Sequence[Mapping[str, Any]], front: Front,
              tolerance: float = DEFAULT_TOLERANCE) -> list[Recommendation]:
    """Return a reliability and a hardware recommendation for every fault scenario, in scenario order."""
    out = []
    for name in front.scenarios:
        indices = [i for i, row in enumerate(rows) if str(row.get(SCENARIO)) == name]
        members = [i for i in indices if i in front.members]
        out += [reliability(rows, indices, name), hardware(rows, members, name, tolerance)]
    return out
