"""Plots of where faults hurt: per layer (a heatmap over design points) and per bit position.

Both read the single-fault counts of `dsetool.report.faultdata`; rates come with the Wilson interval the
campaigns use, and a cell with fewer than `MIN_CELL` faults is left blank rather than shown as a rate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dsetool.faults import site_registry
from dsetool.faults.stats import wilson
from dsetool.report.plotkit import (
    MAX_LEGEND,
    MAX_ROWS,
    Drawn,
    PlotInput,
    colors,
    describe,
    new_figure,
    note,
    point_tag,
    varying,
)

if TYPE_CHECKING:
    import pandas as pd

MIN_CELL = 5
MAX_BARRED = 4
RATES = (("sdc", "SDC rate (%)"), ("critical", "critical rate (%)"))


def layer_heatmap(data: PlotInput) -> Drawn | str:
    """Draw the SDC and critical rates of single faults by layer (columns) and design point (rows)."""
    import numpy as np

    counts = data.faults.by_layer
    if counts.empty:
        return "no campaign has single-fault inferences to attribute to a layer (faults.parquet)"
    totals = counts.groupby("point_id")["n"].sum()
    chosen = sorted(totals.sort_values(ascending=False, kind="stable").index[:MAX_ROWS])
    layers = [name for name in data.faults.layer_order if name in set(counts["layer"])]
    layers += sorted(set(counts["layer"]) - set(layers))
    table = data.table.set_index("point_id").loc[chosen].reset_index()
    moving = varying(table, data.axes)
    labels = [f"{point_tag(row)} {describe(row, moving)}".strip() for _, row in table.iterrows()]
    matrices = [_matrix(counts, chosen, layers, rate) for rate, _ in RATES]
    top = max(1.0, *(float(np.nanmax(m)) if np.isfinite(m).any() else 0.0 for m in matrices))
    fig = new_figure(min(4.5 + 1.0 * len(layers), 13) + 0.06 * max(map(len, labels)), 0.3 * len(chosen) + 1.8)
    panels = fig.subplots(1, 2, sharey=True)
    for ax, (_, title), matrix in zip(panels, RATES, matrices, strict=True):
        # One colour scale for both panels (critical <= SDC), never narrower than 0-1 % so that zero is pale.
        image = ax.imshow(matrix, aspect="auto", cmap=_cmap(), vmin=0, vmax=top, interpolation="nearest")
        ax.set_xticks(range(len(layers)), layers, rotation=45 if len(layers) > 6 else 0,
                      ha="right" if len(layers) > 6 else "center")
        ax.set_title(title.replace(" (%)", ""))
        if len(chosen) * len(layers) <= 120:
            _annotate(ax, matrix, top)
    fig.colorbar(image, ax=list(panels), shrink=min(0.9, 0.3 + 4 / (len(chosen) + 4)), label="rate (%)")
    panels[0].set_yticks(range(len(chosen)), labels, fontsize=8 if len(chosen) > 20 else 9)
    fig.suptitle("Per-layer vulnerability (single-fault inferences)")
    caption = (f"Share of single-fault inferences hitting a layer that change the prediction (SDC) or turn a "
               f"correct one wrong (critical). Grey: fewer than {MIN_CELL} faults in that layer.")
    return Drawn(fig, note(caption, len(chosen), len(totals), "design points (those with the most single faults)"))


def _matrix(counts: pd.DataFrame, points: list[int], layers: list[str], rate: str) -> Any:
    import numpy as np

    matrix = np.full((len(points), len(layers)), np.nan)
    index = {p: i for i, p in enumerate(points)}
    column = {name: j for j, name in enumerate(layers)}
    for row in counts[counts["point_id"].isin(points)].itertuples(index=False):
        if row.n >= MIN_CELL:
            matrix[index[row.point_id], column[row.layer]] = 100.0 * getattr(row, rate) / row.n
    return matrix


def _cmap() -> Any:
    from matplotlib import colormaps

    return colormaps["YlOrRd"].with_extremes(bad="0.85")


def _annotate(ax: Any, matrix: Any, top: float) -> None:
    import numpy as np

    for (i, j), value in np.ndenumerate(matrix):
        if np.isfinite(value):
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7,
                    color="white" if value > 0.6 * top else "black")


def bit_sensitivity(data: PlotInput) -> Drawn | str:
    """Plot SDC and critical rates of single bit flips by bit position, one line per register kind."""
    counts = data.faults.by_bit
    if counts.empty:
        return "no campaign has single-fault inferences to attribute to a bit (faults.parquet)"
    info = data.table.set_index("point_id")[["weight_bits", "act_bits", "protection_label"]]
    joined = counts.join(info, on="point_id")
    several = joined["protection_label"].nunique() > 1
    joined["group"] = [_group(row, several) for _, row in joined.iterrows()]
    pooled = joined.groupby(["group", "bit"], sort=True)[["n", "sdc", "critical"]].sum().reset_index()
    groups = list(dict.fromkeys(sorted(pooled["group"])))[:MAX_LEGEND]
    bars = len(groups) <= MAX_BARRED   # beyond a few lines, interval bars hide the lines they belong to
    fig = new_figure(12, 3.8)
    panels = fig.subplots(1, 2, sharex=True, sharey=True)
    tops = []
    for ax, (rate, title) in zip(panels, RATES, strict=True):
        for k, (group, color) in enumerate(zip(groups, colors(len(groups)), strict=True)):
            dodge = 0.25 * (k - (len(groups) - 1) / 2) / max(1, len(groups) - 1)   # lines side by side, not on top
            tops.append(_bit_line(ax, pooled[pooled["group"] == group], rate, color, group, dodge if bars else None))
        ax.set_xlabel("bit position (0 = LSB)")
        ax.set_ylabel(title)
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    # Scale to the rates, not to the intervals: a bit hit a dozen times has a 25 %-wide interval that would
    # flatten every line; such a bar runs off the top, which itself says "too few faults here".
    panels[0].set_ylim(0, max(1.0, 1.6 * max(tops)))
    fig.legend(handles=panels[0].get_legend_handles_labels()[0], loc="outside right center", fontsize=8,
               frameon=False)
    fig.suptitle("Bit-position sensitivity (single-fault inferences)")
    caption = ("Single faults pooled over the design points with the same register kind and width"
               + (" and protection" if several else "") + "; "
               + ("bars: 95 % Wilson intervals (cut at the top of the axis); " if bars else
                  f"no interval bars with more than {MAX_BARRED} lines; ")
               + f"bits with fewer than {MIN_CELL} faults are left out.")
    return Drawn(fig, note(caption, len(groups), pooled["group"].nunique(), "lines"))


def _group(row: Any, with_protection: bool) -> str:
    site = str(row["site"])
    width = _register_width(row, site)
    name = f"{site} ({int(width)}-bit)" if width is not None else site
    return f"{name}, {row['protection_label']}" if with_protection else name


def _register_width(row: Any, site: str) -> Any:
    """Return the width of the register a fault site hits at the row's design point (its widest layer's
    act_bits or weight_bits, as `site_registry` says), or None for an accumulator, whose width varies."""
    kind = site_registry.REGISTRY.get(site)
    bits = kind.register.quant_bits if kind is not None else None
    return row[bits] if bits is not None else None


def _bit_line(ax: Any, line: pd.DataFrame, rate: str, color: Any, label: str, dodge: float | None) -> float:
    """Draw one register kind's rate by bit, with Wilson error bars unless `dodge` is None; return its top."""
    line = line[line["n"] >= MIN_CELL]
    if line.empty:
        return 0.0
    bounds = [wilson(int(k), int(n)) for k, n in zip(line[rate], line["n"], strict=True)]
    values = [100 * b.rate for b in bounds]
    if dodge is None:
        ax.plot(line["bit"], values, marker="o", ms=4, color=color, label=label)
        return max(values)
    low = [max(0.0, v - 100 * b.low) for v, b in zip(values, bounds, strict=True)]
    high = [max(0.0, 100 * b.high - v) for v, b in zip(values, bounds, strict=True)]
    bars = ax.errorbar(line["bit"] + dodge, values, yerr=[low, high], marker="o", ms=4, capsize=2, color=color,
                       label=label, elinewidth=0.8)
    for part in bars[2]:
        part.set_alpha(0.45)
    return max(values)
