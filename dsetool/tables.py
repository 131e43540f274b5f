"""Terminal tables of results (rich, on stderr so stdout stays machine-readable)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dsetool.config import Point
    from dsetool.store import Entry

ACCURACY_COLUMNS = (("float_test_acc", "float %"), ("quant_val_acc", "val %"), ("quant_test_acc", "test %"))


def _pct(value: Any) -> str:
    return f"{100 * value:.2f}" if isinstance(value, int | float) else "-"


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def results_table(experiment: str, rows: Sequence[tuple[Point, Entry, bool]]) -> None:
    """Print one row per design point: its axis values, accuracies, and whether it was a cache hit."""
    from rich.table import Table

    axes = list(dict.fromkeys(key for point, _, _ in rows for key in point.axes))
    table = Table(title=f"{experiment}: {len(rows)} results")
    for key in axes:
        table.add_column(key.rsplit(".", 1)[-1])
    table.add_column("stage")
    table.add_column("W/A")
    for _, title in ACCURACY_COLUMNS:
        table.add_column(title, justify="right")
    table.add_column("key")
    table.add_column("cached")
    for point, entry, cached in rows:
        m = entry.metrics
        table.add_row(*(str(point.axes.get(key, "")) for key in axes), entry.stage,
                      f"{m.get('weight_bits', '-')}/{m.get('act_bits', '-')}",
                      *(_pct(m.get(name)) for name, _ in ACCURACY_COLUMNS), entry.key[:8],
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
