"""Terminal tables of results (rich, on stderr so stdout stays machine-readable)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dsetool.config import Point
    from dsetool.store import Entry

PERCENT_METRICS = ("float_test_acc", "quant_val_acc", "quant_test_acc")


def _pct(value: Any) -> str:
    return f"{100 * value:.2f}" if isinstance(value, int | float) else "-"


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def results_table(experiment: str, rows: Sequence[tuple[Point, Entry, bool]]) -> None:
    """Print one row per design point: its axes, accuracies, and whether it was a cache hit."""
    from rich.table import Table

    table = Table(title=f"{experiment}: {len(rows)} design points")
    for column in ("point", "stage", "W/A", "float test %", "quant val %", "quant test %", "key", "cached"):
        table.add_column(column, justify="right" if "%" in column else "left")
    for point, entry, cached in rows:
        m = entry.metrics
        table.add_row(point.label, entry.stage, f"{m.get('weight_bits', '-')}/{m.get('act_bits', '-')}",
                      *(_pct(m.get(name)) for name in PERCENT_METRICS), entry.key[:12],
                      "yes" if cached else "no")
    _console().print(table)


def entries_table(entries: Iterable[Entry]) -> None:
    """Print the store's entries with their headline metrics."""
    from rich.table import Table

    table = Table(title="runs store")
    for column in ("stage", "key", "created", "seconds", "headline"):
        table.add_column(column)
    for entry in entries:
        m = entry.metrics
        headline = "  ".join(f"{k}={_pct(m[k])}%" for k in ("float_test_acc", "quant_test_acc") if k in m)
        table.add_row(entry.stage, entry.key[:12], str(entry.manifest.get("created", "")),
                      str(entry.manifest.get("seconds", "")), headline)
    _console().print(table)
