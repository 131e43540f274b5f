"""Report an experiment: a results table, the Pareto fronts, recommendations, plots, summary.md and report.html.

Modules, one job each: `columns` (the documented column names), `collect` (look the stages of every design
point up in the store, never computing), `pareto` and `recommend` (the fronts and the picks), `results` (the
table they form), `faultdata` (per-layer / per-bit counts from faults.parquet), `plotkit`, `plots`,
`faultplots`, `hwplots` and `trainplots` (matplotlib figures), `summary`, `html` and `console` (the human
views), and `write` (writing it all into `runs/experiments/<name>/`).
"""

from __future__ import annotations

from dsetool.report.write import NoResults, ReportFiles, json_summary, write_report

__all__ = ["NoResults", "ReportFiles", "json_summary", "write_report"]
