"""What every report plot shares: its inputs, how a point is labelled, how a figure is saved.

Figures are built with `matplotlib.figure.Figure` directly, never pyplot: no global state, no GUI backend
(PNG goes through Agg), and nothing leaks between reports written in one process. SVGs are written with a
fixed hash salt and no date, so the same results give the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsetool.report.faultdata import FaultCounts

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

DPI = 110
MAX_LEGEND = 16          # lines per plot beyond which a legend stops being readable
MAX_ROWS = 40            # heatmap rows (design points) beyond which labels overlap


@dataclass(frozen=True)
class PlotInput:
    """What a plot reads: the results table, the experiment's sweep axes, the campaigns' fault counts."""

    table: pd.DataFrame
    axes: tuple[str, ...]
    faults: FaultCounts


@dataclass(frozen=True)
class Drawn:
    """A drawn figure and the caption the HTML report shows under it."""

    figure: Figure
    caption: str


# A plot function returns a figure, or the reason it has nothing to draw.
PlotFunction = Callable[[PlotInput], "Drawn | str"]


def new_figure(width: float, height: float) -> Figure:
    """Return an empty figure with a layout engine that keeps labels inside the canvas."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save(drawn: Drawn, directory: Path, name: str) -> tuple[Path, Path]:
    """Write the figure as `<name>.png` and `<name>.svg`; return both paths."""
    import matplotlib

    directory.mkdir(parents=True, exist_ok=True)
    png, svg = directory / f"{name}.png", directory / f"{name}.svg"
    with matplotlib.rc_context({"svg.hashsalt": "dsetool", "svg.fonttype": "path"}):
        drawn.figure.savefig(png, format="png", metadata={"Software": None})
        drawn.figure.set_layout_engine("none")   # laid out by the PNG's draw already: do not pay for it twice
        drawn.figure.savefig(svg, format="svg", metadata={"Date": None, "Creator": None})
    return png, svg


def short_names(axes: Sequence[str]) -> dict[str, str]:
    """Return a short name per axis: its last part (`quant.bits` -> `bits`), the full key where two collide."""
    last = [a.rsplit(".", 1)[-1] for a in axes]
    return {a: (s if last.count(s) == 1 else a) for a, s in zip(axes, last, strict=True)}


def varying(table: pd.DataFrame, axes: Sequence[str]) -> list[str]:
    """Return the axes that take more than one value among the table's rows."""
    from dsetool.report.columns import axis_column

    return [a for a in axes if axis_column(a) in table and table[axis_column(a)].astype(str).nunique() > 1]


def describe(row: Any, axes: Sequence[str], names: dict[str, str] | None = None) -> str:
    """Return `k=v k=v` for the given axes of a results row (empty string for none)."""
    from dsetool.report.columns import axis_column

    names = names or short_names(axes)
    return " ".join(f"{names[a]}={format_value(row[axis_column(a)])}" for a in axes)


def format_value(value: Any) -> str:
    """Format an axis value compactly: 1e-05 rather than 1.0e-05, 0.5 rather than 0.500."""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def point_tag(row: Any) -> str:
    """Return the short tag plots use for a point, `P<point_id>` (the results table has the full label)."""
    return f"P{int(row['point_id'])}"


def colors(n: int) -> list[Any]:
    """Return `n` distinguishable colours (tab10, tab20 beyond ten)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def note(caption: str, shown: int, total: int, what: str) -> str:
    """Append `(shown of total what)` to a caption when not everything fit."""
    return caption if shown >= total else f"{caption} Showing the first {shown} of {total} {what}."
