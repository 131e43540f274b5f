"""The report on the terminal: the best rows, the recommendations, what was skipped (rich, on stderr).

stderr, like every human-facing output of the CLI, so `--json` on stdout stays machine-readable.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dsetool.report.columns import AXIS_PREFIX
from dsetool.report.plots import PlotResult
from dsetool.report.results import Results
from dsetool.report.summary import cell, headline, left_out, recommendation_lines

TOP_ROWS = 12
MAX_RECOMMENDATION_LINES = 8


def top_rows(results: Results, n: int = TOP_ROWS) -> list[int]:
    """Return the positions of the rows to show: front members first, then by accuracy under faults, then P."""
    t = results.table.reset_index(drop=True)
    ranked = t.assign(_acc=t["accuracy_under_faults"].fillna(-1.0)).sort_values(
        ["pareto", "_acc", "point_id"], ascending=[False, False, True], kind="stable")
    return [int(i) for i in ranked.index[:n]]


def show(results: Results, plots: Sequence[PlotResult], directory: Path, notes: Sequence[str] = (),
         kept: bool = False) -> None:
    """Print the report's headline to stderr."""
    import sys

    from rich.console import Console
    from rich.table import Table

    # Wide when not a terminal, so a log keeps whole rows (as `dsetool.tables` does).
    console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
    t = results.table.reset_index(drop=True)
    shown = top_rows(results)
    table = Table(title=f"{results.experiment}: {len(shown)} of {len(t)} design points "
                        "(front first, then accuracy under faults)")
    columns = headline(results)
    for column, heading in columns:
        table.add_column(heading, justify="left" if column.startswith(AXIS_PREFIX) else "right")
    for i in shown:
        table.add_row(*(cell(c, t.at[i, c], t.loc[i]) for c, _ in columns))
    console.print(table)
    lines = recommendation_lines(results)
    for line in lines[:MAX_RECOMMENDATION_LINES]:
        console.print(f"recommended for {line}", highlight=False, markup=False)
    if len(lines) > MAX_RECOMMENDATION_LINES:
        console.print(f"... {len(lines) - MAX_RECOMMENDATION_LINES} more recommendations in summary.md",
                      highlight=False)
    console.print(left_out(results), highlight=False, markup=False)
    for line in notes:
        console.print(f"note: {line}", style="yellow", highlight=False, markup=False)
    for plot in plots:
        if plot.skipped:
            console.print(f"plot {plot.name} skipped: {plot.caption}", highlight=False, markup=False)
    done = "kept, written from the same results before," if kept else "written"
    console.print(f"report {done} in {directory}/ (report.html, summary.md, results.csv, results.parquet, plots/)",
                  highlight=False, markup=False)
