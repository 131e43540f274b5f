"""The Pareto front of an experiment: accuracy under faults against area and latency.

Objectives, each compared on its own (no invented weighting of LUTs against DSP blocks):
accuracy under faults (higher is better), LUT, DSP (area: the two resources that run out first on an FPGA
array, lower is better) and latency per inference (lower is better). Point `a` dominates `b` when it is
at least as good in every objective and strictly better in one; the front is the set of points no other
point dominates (equal points are both on it).

Accuracy under faults only compares within one fault scenario (the same site, fault model and rate): a
point under BER 1e-5 is not "more reliable" than one under 1e-2. So there is one front per scenario.
A point enters a front only with all four objectives and a synthesis that fit (`synth_status: ok`); the
others are listed with the reason in `pareto_excluded`. Where a scenario has both whole accelerators and
points synthesized as a datapath alone (`synth_scope`: output-stationary points have no accelerator),
the datapaths stay off the front: their area and latency leave out the memories, the
control and the schedule the accelerators pay for. A scenario whose designs have no latency at all
(an area-only target: no place and route, no Fmax) is judged on cycles per inference instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# (column, +1 higher is better / -1 lower is better)
OBJECTIVES: tuple[tuple[str, int], ...] = (
    ("accuracy_under_faults", +1), ("lut", -1), ("dsp", -1), ("latency_us", -1))
SCENARIO = "fault_scenario"
SCOPE, MACHINE, DATAPATH = "synth_scope", "machine", "datapath"
DATAPATH_ONLY = "datapath only, the others are whole accelerators"


@dataclass(frozen=True)
class Front:
    """The fronts of an experiment: which rows are on one, and why the others could not be."""

    members: frozenset[int]          # row indices on the front of their scenario
    excluded: Mapping[int, str]      # row index -> reason it cannot be on a front
    scenarios: tuple[str, ...]       # scenarios in first-seen order

    def excluded_summary(self) -> dict[str, int]:
        """Return how many points were left out for each reason, most common first."""
        counts: dict[str, int] = {}
        for reason in self.excluded.values():
            counts[reason] = counts.get(reason, 0) + 1
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Tell whether objective vector `a` dominates `b` (vectors already oriented: larger is better)."""
    return all(x >= y for x, y in zip(a, b, strict=True)) and any(x > y for x, y in zip(a, b, strict=True))


def front_indices(vectors: Sequence[Sequence[float]]) -> list[int]:
    """Return the indices of the vectors no other vector dominates (larger is better in every component).

    Quadratic, which is fine for the hundreds of points an experiment has, and obviously correct.
    """
    return [i for i, v in enumerate(vectors) if not any(dominates(w, v) for j, w in enumerate(vectors) if j != i)]


def objectives(rows: Sequence[Mapping[str, Any]]) -> tuple[tuple[str, int], ...]:
    """Return the objectives of one scenario's front: latency per inference, or, when no row has one (an
    area-only target such as xc7z020 has no Fmax), the cycles per inference in its place."""
    if any(_present(row.get("latency_us")) for row in rows) or not any(_present(row.get("cycles")) for row in rows):
        return OBJECTIVES
    return (*OBJECTIVES[:-1], ("cycles", -1))


def oriented(row: Mapping[str, Any], chosen: tuple[tuple[str, int], ...] = OBJECTIVES) -> tuple[float, ...]:
    """Return a row's objectives oriented so that larger is better in each."""
    return tuple(sign * float(row[name]) for name, sign in chosen)


def exclusion(row: Mapping[str, Any], chosen: tuple[tuple[str, int], ...] = OBJECTIVES) -> str | None:
    """Return why a row cannot be on a front, or None when it can."""
    status = row.get("synth_status")
    if isinstance(status, str) and status != "ok":
        return f"synth {status}"
    reasons = []
    if not _present(row.get("accuracy_under_faults")):
        reasons.append("no fault campaign")
    if not isinstance(status, str):
        reasons.append("no synthesis")
    else:
        reasons += [f"missing {name}" for name, _ in chosen[1:] if not _present(row.get(name))]
    return ", ".join(reasons) or None


def _present(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def pareto(rows: Sequence[Mapping[str, Any]]) -> Front:
    """Return the front of every fault scenario among `rows` (each a results row)."""
    scenarios = tuple(dict.fromkeys(str(row.get(SCENARIO)) for row in rows))
    excluded: dict[int, str] = {}
    members: set[int] = set()
    for name in scenarios:
        mine = [i for i, row in enumerate(rows) if str(row.get(SCENARIO)) == name]
        chosen = objectives([rows[i] for i in mine])
        mixed = {rows[i].get(SCOPE) for i in mine} >= {MACHINE, DATAPATH}
        for i in mine:
            reason = exclusion(rows[i], chosen)
            if reason is None and mixed and rows[i].get(SCOPE) == DATAPATH:
                reason = DATAPATH_ONLY
            if reason is not None:
                excluded[i] = reason
        candidates = [i for i in mine if i not in excluded]
        on_front = front_indices([oriented(rows[i], chosen) for i in candidates])
        members.update(candidates[k] for k in on_front)
    return Front(frozenset(members), excluded, scenarios)
