"""The report's plots from the results table, the registry of all plots, and drawing them to files.

Each plot either draws from the data the experiment has or names why it cannot (the experiment does not
vary the BER, nothing was synthesized...); a skipped plot writes no file and the summary says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsetool.report import faultplots, hwplots, trainplots
from dsetool.report.columns import axis_column
from dsetool.report.plotkit import (
    MAX_LEGEND,
    Drawn,
    PlotFunction,
    PlotInput,
    colors,
    describe,
    new_figure,
    note,
    point_tag,
    save,
    short_names,
    varying,
)

if TYPE_CHECKING:
    import pandas as pd

MAX_FACETS = 9


@dataclass(frozen=True)
class PlotResult:
    """One plot of the report: the files written, or empty `files` and the reason in `caption`."""

    name: str
    title: str
    files: tuple[Path, ...]
    caption: str

    @property
    def skipped(self) -> bool:
        """Tell whether the plot was not drawn."""
        return not self.files


def accuracy_vs_ber(data: PlotInput) -> Drawn | str:
    """Plot accuracy under faults against the bit error rate, one line per design (log x).

    Panels split the other fault axes (site, model); when there are none and more than `LINES_PER_PANEL`
    designs, they split the design axis with the fewest values instead (e.g. the bit width), so a panel
    never holds more lines than an eye can follow.
    """
    if "faults.ber" not in data.axes or data.table["ber"].nunique() < 2:
        return "the experiment does not vary faults.ber"
    t = data.table[data.table["ber"].notna() & data.table["accuracy_under_faults"].notna()]
    if t["ber"].nunique() < 2:
        return "fewer than two bit error rates have campaign results"
    facet_axes, line_axes = _ber_panels(t, data.axes)
    t = t.assign(_facet=[describe(row, facet_axes) or "all points" for _, row in t.iterrows()],
                 _line=[describe(row, line_axes) or str(row["protection_label"]) for _, row in t.iterrows()])
    facets = list(dict.fromkeys(t["_facet"]))
    lines = list(dict.fromkeys(t["_line"]))
    palette = dict(zip(lines[:MAX_LEGEND], colors(min(len(lines), MAX_LEGEND)), strict=True))
    shown = facets[:MAX_FACETS]
    longest = max(map(len, palette))
    fig, grid = _grid(len(shown), width=4.2, height=3.3, min_width=min(14.0, 0.065 * longest * 2 + 1.5))
    low = max(0.0, 10 * math.floor((100 * t["accuracy_under_faults"].min() - 3) / 10))
    for ax, facet in zip(grid, shown, strict=True):
        _ber_panel(ax, t[t["_facet"] == facet], palette)
        ax.set_ylim(low, 101)   # the same range in every panel, so panels compare at a glance
        if facet_axes:
            ax.set_title(facet, fontsize=9)
    handles = [_legend_handle(color, label) for label, color in palette.items()]
    width = fig.get_figwidth()
    ncols = max(1, min(4, len(handles), int(width // (0.065 * longest + 0.6))))
    fig.legend(handles=handles, loc="outside lower center", ncols=ncols, fontsize=8, frameon=False)
    fig.suptitle("Accuracy under faults vs bit error rate")
    caption = note("Each line is one design (its values of the other axes), shaded over its 95 % Wilson "
                   "interval; dotted, in its colour: the same inferences without faults; panels split "
                   + (", ".join(short_names(facet_axes).values()) if facet_axes else "nothing") + ".",
                   len(shown), len(facets), "panels")
    return Drawn(fig, note(caption, len(palette), len(lines), "lines"))


def _ber_panel(ax: Any, group: pd.DataFrame, palette: dict[str, Any]) -> None:
    for label, line in group.groupby("_line", sort=False):
        if label in palette:
            line = line.sort_values("ber")
            ax.plot(line["ber"], 100 * line["accuracy_under_faults"], marker="o", ms=4, color=palette[label])
            clean = line[line["golden_accuracy"].notna()]   # the same inferences without faults
            ax.plot(clean["ber"], 100 * clean["golden_accuracy"], linestyle=":", linewidth=1, color=palette[label])
            ax.fill_between(line["ber"], 100 * line["accuracy_ci_lo"], 100 * line["accuracy_ci_hi"],
                            color=palette[label], alpha=0.15, linewidth=0)
    ax.set_xscale("log")
    ax.grid(True, which="major", alpha=0.3)
    ax.set_xlabel("bit error rate")
    ax.set_ylabel("accuracy under faults (%)")


LINES_PER_PANEL = 8


def _ber_panels(t: pd.DataFrame, axes: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Return (axes that split panels, axes that make lines) for the BER plot."""
    moving = varying(t, axes)
    facet_axes = [a for a in moving if a.startswith("faults.") and a != "faults.ber"]
    line_axes = [a for a in moving if not a.startswith("faults.")]
    designs = t.groupby([axis_column(a) for a in line_axes]).ngroups if line_axes else 1
    if not facet_axes and len(line_axes) > 1 and designs > LINES_PER_PANEL:
        fewest = min(line_axes, key=lambda a: t[axis_column(a)].astype(str).nunique())
        facet_axes, line_axes = [fewest], [a for a in line_axes if a != fewest]
    return facet_axes, line_axes


def _legend_handle(color: Any, label: str) -> Any:
    from matplotlib.lines import Line2D

    return Line2D([], [], color=color, marker="o", ms=4, label=label)


def _grid(n: int, width: float, height: float, ncols: int = 3, min_width: float = 0.0) -> tuple[Any, list[Any]]:
    """Return a figure with `n` panels in rows of at most `ncols`, and the panels in reading order."""
    cols = min(ncols, n)
    rows = math.ceil(n / cols)
    fig = new_figure(max(width * cols, min_width), height * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


PARETO_PANELS = (("lut", "LUTs"), ("dsp", "DSP blocks"), ("latency_us", "latency per inference (us)"))


SCENARIO_ROWS = 4   # up to this many fault scenarios get a row of panels each; more share one row by colour


def pareto_scatter(data: PlotInput) -> Drawn | str:
    """Plot accuracy under faults against each cost (LUT, DSP, latency), the fronts highlighted.

    Each fault scenario gets its own row of panels (up to `SCENARIO_ROWS`; beyond that they share one row,
    one colour each), so two scenarios with similar accuracies never hide each other. The accuracy axis
    spans the fronts, not the worst point: a collapsed design (PTQ at 2 bits) would otherwise squash every
    front into one line; points below the axis are drawn as triangles on its bottom edge and counted.
    """
    t = data.table[data.table["pareto_excluded"].isna()]
    if t.empty:
        return "no design point has accuracy under faults, LUT, DSP and latency (fault campaign and synthesis)"
    scenarios = list(dict.fromkeys(t["fault_scenario"]))[:MAX_LEGEND]
    # A cost every point shares (e.g. the same DSP count) separates nothing: no panel for it.
    panels = [(c, label) for c, label in PARETO_PANELS if t[c].nunique() > 1] or [PARETO_PANELS[0]]
    rows = [[name] for name in scenarios] if len(scenarios) <= SCENARIO_ROWS else [scenarios]
    fig = new_figure(4 * len(panels) + 0.5, 3.2 * len(rows) + 1.0)
    grid = fig.subplots(len(rows), len(panels), squeeze=False, sharey=True)
    palette = dict(zip(scenarios, ["tab:red"] * len(scenarios) if len(rows) > 1 or len(scenarios) == 1
                       else colors(len(scenarios)), strict=True))
    shown = t[t["fault_scenario"].isin(scenarios)]
    floor = _accuracy_floor(shown)
    below = 0
    for axes, names in zip(grid, rows, strict=True):
        for ax, (column, label) in zip(axes, panels, strict=True):
            group = shown[shown["fault_scenario"].isin(names)]
            for name in names:
                below += _pareto_points(ax, group[group["fault_scenario"] == name], column, palette[name], floor)
            _tag_front(ax, group[group["pareto"].astype(bool)], column, floor)
            ax.set_xlabel(label)
            ax.grid(True, alpha=0.3)
            ax.margins(x=0.12)
        if len(rows) > 1:
            axes[0].set_title(names[0], fontsize=9, loc="left")
        axes[0].set_ylabel("accuracy under faults (%)")
    top = max(shown["accuracy_under_faults"].max(), shown["golden_accuracy"].max(skipna=True)
              if shown["golden_accuracy"].notna().any() else 0.0)
    grid[0][0].set_ylim(floor, min(100.5, 100 * float(top) + 1.0))
    fig.legend(handles=_pareto_legend(scenarios if len(rows) == 1 else [], list(palette.values())),
               loc="outside lower center", fontsize=8, frameon=False, ncols=min(3, len(scenarios) + 1))
    fig.suptitle("Pareto front: accuracy under faults vs " + ", ".join(label.split(" (")[0] for _, label in panels))
    caption = ("Filled: on the front of its fault scenario (no other point there has at least the accuracy and at "
               "most the LUTs, DSPs and latency, one strictly better); hollow: dominated. Front points are tagged "
               "P<n> as in the results table (where tags would overlap, the leftmost is kept; summary.md lists "
               "every front point). Bars: the 95 % interval of a front point's accuracy under faults; grey "
               "dash: the fault-free accuracy of the same inferences.")
    if below:
        count = below // len(panels)
        caption += (f" The accuracy axis starts at {floor:.0f} %: {count} dominated "
                    f"{'point lies' if count == 1 else 'points lie'} lower, drawn as triangles on its bottom edge.")
    constant = [f"{label.split(' (')[0]} ({t[c].iloc[0]:g})" for c, label in PARETO_PANELS
                if (c, label) not in panels]
    if constant:
        caption += f" Every point has the same {', '.join(constant)}: no panel for it."
    return Drawn(fig, note(caption, len(scenarios), t["fault_scenario"].nunique(), "fault scenarios"))


COLLAPSE_POINTS = 10.0   # a point this far (or three front spans) below every front has collapsed


def _accuracy_floor(t: pd.DataFrame) -> float:
    """Return the bottom of the accuracy axis: 2 points below the lowest point that has not collapsed. A
    collapsed design (PTQ at 2 bits, far below every front) would squash the fronts into a line; it is
    drawn on the bottom edge instead."""
    accuracy = 100 * t["accuracy_under_faults"].astype(float)
    front = accuracy[t["pareto"].astype(bool)]
    if front.empty:
        return max(0.0, float(accuracy.min()) - 2.0)
    reach = max(COLLAPSE_POINTS, 3 * (float(accuracy.max()) - float(front.min())))
    kept = accuracy[accuracy >= float(front.min()) - reach]
    return max(0.0, float(kept.min()) - 2.0)


def _pareto_points(ax: Any, group: pd.DataFrame, column: str, color: Any, floor: float) -> int:
    """Draw a scenario's points; return how many lie below the axis (drawn on its bottom edge)."""
    on = group[group["pareto"].astype(bool)]
    off = group[~group["pareto"].astype(bool)]
    low = off[100 * off["accuracy_under_faults"] < floor]
    off = off.drop(low.index)
    ax.scatter(off[column], 100 * off["accuracy_under_faults"], s=24, facecolors="none", edgecolors=color)
    ax.scatter(on[column], 100 * on["accuracy_under_faults"], s=36, color=color, zorder=3)
    bars = on[on["accuracy_ci_lo"].notna() & on["accuracy_ci_hi"].notna()]
    if not bars.empty:   # the front's accuracy with its interval, and the same inferences without faults
        accuracy = 100 * bars["accuracy_under_faults"].astype(float)
        spread = [accuracy - 100 * bars["accuracy_ci_lo"].astype(float),
                  100 * bars["accuracy_ci_hi"].astype(float) - accuracy]
        ax.errorbar(bars[column], accuracy, yerr=spread, fmt="none", ecolor=color, elinewidth=0.8, zorder=2)
        clean = bars[bars["golden_accuracy"].notna()]
        ax.scatter(clean[column], 100 * clean["golden_accuracy"].astype(float), marker="_", s=60, color="0.4",
                   zorder=2)
    if not low.empty:
        ax.scatter(low[column], [floor] * len(low), marker="v", s=30, facecolors="none", edgecolors=color,
                   clip_on=False, zorder=3)
    return len(low)


def _tag_front(ax: Any, on: pd.DataFrame, column: str, floor: float) -> None:
    """Tag front points P<n>: points that coincide (one design under several BERs) share a tag, and a tag
    that would overlap one already placed (in axis fractions) is left out."""
    tags: dict[tuple[float, float], list[str]] = {}
    for _, row in on.sort_values(column).iterrows():
        spot = (float(row[column]), round(100 * float(row["accuracy_under_faults"]), 6))
        tags.setdefault(spot, []).append(point_tag(row))
    xs = [x for x, _ in tags] or [0.0]
    span_x = (max(xs) - min(xs)) or 1.0
    top = max((y for _, y in tags), default=100.0)
    span_y = (top - floor) or 1.0
    placed: list[tuple[float, float, float]] = []   # (x, y, width) in axis fractions
    for (x, y), names in tags.items():
        text = ", ".join(names)
        fx, fy, width = (x - min(xs)) / span_x, (y - floor) / span_y, 0.016 * len(text)
        if any(abs(fy - py) < 0.07 and fx < px + pw and px < fx + width for px, py, pw in placed):
            continue
        placed.append((fx, fy, width))
        ax.annotate(text, (x, y), xytext=(4, 4), textcoords="offset points", fontsize=7)


def _pareto_legend(scenarios: list[str], palette: list[Any]) -> list[Any]:
    from matplotlib.lines import Line2D

    def dot(color: Any, label: str, face: Any = None) -> Any:
        return Line2D([], [], color=color, marker="o", linestyle="", ms=6, markerfacecolor=face or color,
                      label=label)

    handles = [dot("0.3", "on the front"), dot("0.3", "dominated", face="none"),
               Line2D([], [], color="0.4", marker="_", linestyle="", ms=10, label="without faults (same inferences)")]
    if len(scenarios) > 1:
        handles += [dot(c, name) for name, c in zip(scenarios, palette, strict=True)]
    return handles


# Accuracy under faults against the fault-free accuracy of the same inferences (paired); the test split's
# accuracy only where no design point has a campaign (it is measured on other inputs).
BIT_PANELS = (("accuracy (%)", ("golden_accuracy", "accuracy_under_faults")), ("SDC rate (%)", ("sdc_rate",)),
              ("LUTs", ("lut",)))
TEST_ACCURACY_PANEL = ("accuracy (%)", ("quant_acc",))


def bit_width(data: PlotInput) -> Drawn | str:
    """Plot accuracy, SDC rate and area against the bit width (W/A), one dot per design point."""
    t = data.table.assign(width=[f"W{w}A{a}" for w, a in zip(data.table["weight_bits"], data.table["act_bits"],
                                                              strict=True)])
    order = sorted(set(t["width"]), key=lambda s: tuple(int(x) for x in s[1:].split("A")))
    if len(order) < 2:
        return "every design point has the same bit widths"
    candidates = BIT_PANELS if t["golden_accuracy"].notna().any() else (TEST_ACCURACY_PANEL, *BIT_PANELS[1:])
    panels = [(title, cols) for title, cols in candidates if any(t[c].notna().any() for c in cols)]
    missing = [title.split(" (")[0] for title, cols in candidates if (title, cols) not in panels]
    if not panels:
        return "no design point has accuracy, a fault campaign or a synthesis"
    fig, grid = _grid(len(panels), width=3.8, height=3.2)
    for ax, (title, columns) in zip(grid, panels, strict=True):
        for k, column in enumerate(columns):
            _strip(ax, t, order, column, colors(2)[k], offset=(k - (len(columns) - 1) / 2) * 0.2)
        ax.set_xticks(range(len(order)), order)
        ax.set_ylabel(title)
        ax.grid(True, axis="y", alpha=0.3)
        if len(columns) > 1:
            ax.legend(fontsize=8)
    fig.suptitle("Bit width vs accuracy, SDC rate and area")
    caption = ("Dots are design points (spread sideways so they do not hide each other); the line joins the "
               "medians. Other axes are pooled, so the spread shows what they change.")
    if missing:
        caption += f" No panel for {' or '.join(missing)}: no design point has it."
    return Drawn(fig, caption)


STRIP_LABELS = {"quant_acc": "test split, without faults", "golden_accuracy": "without faults (same inputs)",
                "accuracy_under_faults": "under faults"}


def _strip(ax: Any, t: pd.DataFrame, order: list[str], column: str, color: Any, offset: float) -> None:
    scale = 1.0 if column == "lut" else 100.0
    medians = []
    for x, width in enumerate(order):
        values = t.loc[(t["width"] == width) & t[column].notna(), column].astype(float).to_numpy() * scale
        jitter = [offset + 0.12 * ((i * 0.618) % 1 - 0.5) for i in range(len(values))]
        ax.scatter([x + j for j in jitter], values, s=12, color=color, alpha=0.6,
                   label=STRIP_LABELS.get(column) if x == 0 else None)
        medians.append(float(_median(values)))
    ax.plot([x + offset for x in range(len(order))], medians, color=color, lw=1.5)


def _median(values: Any) -> float:
    import numpy as np

    return float(np.median(values)) if len(values) else float("nan")


# (file name, title, function), in the order the report shows them.
PLOTS: tuple[tuple[str, str, PlotFunction], ...] = (
    ("accuracy_vs_ber", "Accuracy under faults vs bit error rate", accuracy_vs_ber),
    ("pareto", "Pareto front", pareto_scatter),
    ("layer_vulnerability", "Per-layer vulnerability", faultplots.layer_heatmap),
    ("bit_sensitivity", "Bit-position sensitivity", faultplots.bit_sensitivity),
    ("bit_width", "Bit width vs accuracy, SDC rate and area", bit_width),
    ("training", "Accuracy under faults vs the trained model", trainplots.training_resilience),
    ("hardware_cost", "Hardware cost per design", hwplots.hardware_cost),
)


def draw_all(data: PlotInput, directory: Path) -> list[PlotResult]:
    """Draw every plot the data allows into `directory`; return what was written and what was skipped."""
    results = []
    for name, title, plot in PLOTS:
        drawn = plot(data)
        if isinstance(drawn, str):
            results.append(PlotResult(name, title, (), drawn))
            continue
        files = save(drawn, directory, name)
        results.append(PlotResult(name, title, files, drawn.caption))
    return results

