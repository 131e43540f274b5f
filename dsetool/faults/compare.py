"""Compare two campaigns that ran the same faults: the paired difference of an outcome rate.

Two campaigns with the same fault seed, sites and sizing draw the same fault list (`faults.sampler`), so
only the design differs between them, a protection for example, and each faulty inference is a pair. A
paired comparison counts only the faults whose outcome the design changed, which is far more precise than
comparing two rates with their own intervals: a range check that turns a critical fault into a masked one
shows up even when both rates are a fraction of a percent.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dsetool.faults.stats import Rate, paired_difference

SAME_FAULTS = ("trial", "input", "n_faults", "site", "layer", "element", "bit", "faults")


def paired_outcome_difference(first: Any, second: Any, outcome: str = "critical", confidence: float = 0.95) -> Rate:
    """Return rate(first) - rate(second) of a boolean outcome (`critical`, or `sdc` from the outcome column)
    over the same faulty inferences, with Newcombe's interval; `first` and `second` are the campaigns'
    `faults.parquet` rows as DataFrames. Raise ValueError when they did not run the same faults."""
    if len(first) != len(second) or any(
            not np.array_equal(_text(first, name), _text(second, name)) for name in SAME_FAULTS):
        raise ValueError("the campaigns did not run the same faults (same seed, sites, bits and size needed)")
    a, b = (_flag(rows, outcome) for rows in (first, second))
    return paired_difference(int((a & ~b).sum()), int((~a & b).sum()), int((a & b).sum()), len(first), confidence)


def _text(rows: Any, name: str) -> np.ndarray:
    """Return a column as text (the `faults` lists included), or an empty array when the rows lack it."""
    return rows[name].astype(str).to_numpy() if name in rows.columns else np.array([], dtype=str)


def _flag(rows: Any, outcome: str) -> np.ndarray:
    if outcome in rows.columns and rows[outcome].dtype == bool:
        return rows[outcome].to_numpy()
    return (rows["outcome"].astype(str) == outcome).to_numpy()
