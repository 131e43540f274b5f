"""Fmax over place-and-route seeds: one row per design, its Fmax at each seed, the mean and the best.

A single nextpnr seed moves an 8x8 array's Fmax by several percent, as much as a small protection costs,
so a protection's Fmax overhead read at one seed can have either sign. When an experiment sweeps
`hw.pnr_seed`, the report sets the seeds of each design side by side, with the overhead of its mean Fmax
against the unprotected design's mean, and of its best against the unprotected best (the figure a seed sweep
in an FPGA flow reports). The unprotected Fmax at each seed is recovered from the row's own overhead.
"""

from __future__ import annotations

from dataclasses import dataclass

from dsetool.report.columns import axis_column
from dsetool.report.plotkit import describe, format_value, short_names, varying
from dsetool.report.results import Results

SEED_AXIS = "hw.pnr_seed"


@dataclass(frozen=True)
class SeedRow:
    """One design's Fmax over the seeds it was placed with (MHz, in seed order) and its overheads in %."""

    design: str
    seeds: tuple[str, ...]
    fmax: tuple[float, ...]
    overhead: tuple[float, ...]   # against the unprotected design at the same seed
    mean: float
    best: float
    mean_overhead: float
    best_overhead: float


def seed_rows(results: Results) -> list[SeedRow]:
    """Return one row per design placed with more than one seed; empty when the seed is not an axis."""
    t = results.table
    if axis_column(SEED_AXIS) not in t or SEED_AXIS not in varying(t, results.axes):
        return []
    placed = t[t["fmax_mhz"].notna() & t["fmax_overhead_pct"].notna()].drop_duplicates("synth_key")
    design_axes = [a for a in varying(placed, results.axes) if a != SEED_AXIS and not a.startswith("faults.")]
    names = short_names(design_axes)
    rows = []
    keys = [axis_column(a) for a in design_axes]
    for _, group in (placed.groupby(keys, sort=False, dropna=False) if keys else [((), placed)]):
        if group[axis_column(SEED_AXIS)].nunique() < 2:
            continue
        group = group.sort_values(axis_column(SEED_AXIS))
        fmax = group["fmax_mhz"].astype(float)
        baseline = fmax / (1 + group["fmax_overhead_pct"].astype(float) / 100)
        rows.append(SeedRow(
            design=describe(group.iloc[0], design_axes, names) or "every point",
            seeds=tuple(format_value(s) for s in group[axis_column(SEED_AXIS)]),
            fmax=tuple(fmax), overhead=tuple(group["fmax_overhead_pct"].astype(float)),
            mean=float(fmax.mean()), best=float(fmax.max()),
            mean_overhead=_pct(fmax.mean(), baseline.mean()), best_overhead=_pct(fmax.max(), baseline.max())))
    return rows


def _pct(value: float, baseline: float) -> float:
    return 100 * (value / baseline - 1)


HEADINGS = ("design", "Fmax per seed MHz (seed)", "mean MHz", "best MHz", "Fmax overhead per seed %",
            "of the mean %", "of the best %")
INTRO = ("Fmax of each design at every place-and-route seed; overheads against the unprotected design at the same "
         "seed, of the mean Fmax against its mean, and of the best against its best.")


def cells(row: SeedRow) -> tuple[str, ...]:
    """Return a row's cells under HEADINGS, formatted for people."""
    return (row.design, " / ".join(f"{f:.1f} ({s})" for f, s in zip(row.fmax, row.seeds, strict=True)),
            f"{row.mean:.1f}", f"{row.best:.1f}", " / ".join(f"{o:+.1f}" for o in row.overhead),
            f"{row.mean_overhead:+.1f}", f"{row.best_overhead:+.1f}")


def markdown(rows: list[SeedRow]) -> str:
    """Return the seed table in markdown."""
    lines = ["| " + " | ".join(HEADINGS) + " |", "|" + "---|" * len(HEADINGS)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return "\n".join(lines)
