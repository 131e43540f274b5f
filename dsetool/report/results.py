"""The results table of an experiment (one row per design point), its fronts and recommendations.

This is the report's model: every output (CSV, parquet, markdown, HTML, terminal, JSON) is a view of one
`Results`, so they can never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsetool.report import collect
from dsetool.report.columns import AXIS_PREFIX, ordered
from dsetool.report.pareto import Front, pareto
from dsetool.report.recommend import DEFAULT_TOLERANCE, Recommendation, recommend

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Results:
    """The table (a DataFrame in the documented column order), its fronts and the recommendations."""

    experiment: str
    source: str
    axes: tuple[str, ...]
    table: pd.DataFrame
    front: Front
    recommendations: tuple[Recommendation, ...]
    tolerance: float

    @property
    def front_rows(self) -> pd.DataFrame:
        """Return the rows on a front, in point order."""
        return self.table[self.table["pareto"]]

    def counts(self) -> dict[str, int]:
        """Return how many points there are, and how many have a campaign, a synthesis, a place on a front."""
        t = self.table
        return {"points": len(t), "with_campaign": int(t["inject_key"].notna().sum()),
                "with_synthesis": int(t["synth_key"].notna().sum()), "on_front": int(t["pareto"].sum()),
                "left_out": len(self.front.excluded)}


def build(experiment: str, source: str, axes: Sequence[str], found: Sequence[collect.PointResults],
          tolerance: float = DEFAULT_TOLERANCE) -> Results:
    """Return the results of the design points found in the store."""
    import pandas as pd

    rows = collect.rows(found)
    front = pareto(rows)
    for i, row in enumerate(rows):
        row["pareto"] = i in front.members
        row["pareto_excluded"] = front.excluded.get(i)
    columns = ordered(list(axes))
    table = pd.DataFrame.from_records(rows, columns=columns)
    return Results(experiment, source, tuple(axes), _typed(table), front,
                   tuple(recommend(rows, front, tolerance)), tolerance)


# Columns that are numbers even when every cell is blank (so the parquet schema does not depend on the data).
FLOAT_COLUMNS = ("float_acc", "quant_acc", "ber", "golden_accuracy", "accuracy_under_faults", "accuracy_ci_lo",
                 "accuracy_ci_hi", "accuracy_drop", "accuracy_drop_ci_lo", "accuracy_drop_ci_hi", "masked_rate",
                 "masked_ci_lo", "masked_ci_hi", "sdc_rate", "sdc_ci_lo", "sdc_ci_hi", "critical_rate",
                 "critical_ci_lo", "critical_ci_hi", "detected_rate", "sdc_detected_rate", "changed_rate",
                 "golden_agreement", "fmax_mhz", "latency_us", "lut_overhead_pct",
                 "ff_overhead_pct", "dsp_overhead_pct", "fmax_overhead_pct", "act_sparsity", "sharpness",
                 "hessian_trace")
COUNT_COLUMNS = ("faults_per_inference", "faulty_inferences", "lut", "ff", "dsp", "bram", "cycles")


def _typed(table: pd.DataFrame) -> pd.DataFrame:
    """Give every column a fixed dtype: floats, nullable integers for counts, bools, strings."""
    table = table.copy()
    for name in FLOAT_COLUMNS:
        table[name] = table[name].astype("float64")
    for name in COUNT_COLUMNS:
        table[name] = table[name].astype("Int64")
    for name in ("tmr", "pareto"):
        table[name] = table[name].astype(bool)
    for name in ("point_id", "weight_bits", "act_bits"):
        table[name] = table[name].astype("int64")
    for name in (c for c in table.columns if c.startswith(AXIS_PREFIX)):
        if len({type(v) for v in table[name]}) > 1:   # e.g. `all` and 7 on a faults.bits axis: parquet wants one
            table[name] = table[name].astype(str)
    return table


def write_tables(results: Results, directory: Path) -> tuple[Path, Path]:
    """Write `results.csv` and `results.parquet` into `directory`; return both paths."""
    csv, parquet = directory / "results.csv", directory / "results.parquet"
    results.table.to_csv(csv, index=False)   # full precision: `dsetool check` reads it back as a baseline
    results.table.to_parquet(parquet, index=False)
    return csv, parquet


def as_json(results: Results) -> dict[str, Any]:
    """Return the counts, front and recommendations as plain JSON (for `--json` and the summary)."""
    excluded = results.front.excluded_summary()
    return {"experiment": results.experiment, **results.counts(), "left_out_reasons": excluded,
            "front": [str(p) for p in results.front_rows["point"]],
            "recommendations": [r.as_json() for r in results.recommendations], "tolerance": results.tolerance}
