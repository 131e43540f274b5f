"""The hardware plot: what each synthesized design costs (LUT, FF, DSP, Fmax), with its protection overhead.

Drawn from synthesis alone, so a hardware-only experiment (say, what the range check and TMR cost at 4x4
and 8x8) has a picture even without a fault campaign. Points that share a synthesis (the same array under
several fault settings) are drawn once.
"""

from __future__ import annotations

from typing import Any

from dsetool.report.plotkit import MAX_ROWS, Drawn, PlotInput, describe, new_figure, note, point_tag, varying

# (column, axis label, overhead column)
COSTS = (("lut", "LUTs", "lut_overhead_pct"), ("ff", "flip-flops", "ff_overhead_pct"),
         ("dsp", "DSP blocks", "dsp_overhead_pct"), ("fmax_mhz", "Fmax (MHz)", "fmax_overhead_pct"))
FIT, MISFIT = "tab:blue", "0.7"


def hardware_cost(data: PlotInput) -> Drawn | str:
    """Draw one horizontal bar per synthesized design and cost, overheads against the unprotected design."""
    t = data.table[data.table["synth_key"].notna()].drop_duplicates("synth_key")
    if t.empty:
        return "no design point has a synthesis"
    shown = t.iloc[:MAX_ROWS]
    design_axes = [a for a in varying(shown, data.axes) if not a.startswith("faults.")]
    labels = [f"{point_tag(row)} {describe(row, design_axes)}".strip() for _, row in shown.iterrows()]
    costs = [c for c in COSTS if shown[c[0]].notna().any()]
    fig = new_figure(3.2 * len(costs) + 0.07 * max(map(len, labels)) + 0.5, 0.32 * len(shown) + 1.6)
    panels = fig.subplots(1, len(costs), sharey=True, squeeze=False)[0]
    positions = list(range(len(shown)))
    for ax, (column, title, overhead) in zip(panels, costs, strict=True):
        _bars(ax, shown, positions, column, overhead)
        ax.set_xlabel(title)
        ax.grid(True, axis="x", alpha=0.3)
    panels[0].set_yticks(positions, labels, fontsize=8 if len(shown) > 20 else 9)
    panels[0].invert_yaxis()   # P1 at the top, as in the table
    fig.suptitle("Hardware cost per design (labels: change against the same array unprotected)")
    caption = ("Bars: Yosys/nextpnr results; grey: the design does not fit the target (its Yosys area, no Fmax). "
               "The percentages are the protection's overhead against the same array without protection or TMR.")
    return Drawn(fig, note(caption, len(shown), len(t), "synthesized designs"))


def _bars(ax: Any, rows: Any, positions: list[int], column: str, overhead: str) -> None:
    values = rows[column].astype(float).fillna(0.0).tolist()
    fits = [status == "ok" for status in rows["synth_status"]]
    ax.barh(positions, values, color=[FIT if ok else MISFIT for ok in fits], height=0.7)
    top = max(values) if values else 0.0
    for y, value, status in zip(positions, values, rows["synth_status"], strict=True):
        if not value and status != "ok":   # e.g. no Fmax: a misfit never reaches place and route
            ax.text(0.01 * top, y, str(status).replace("_", " "), va="center", fontsize=7, color="0.4")
    for y, value, change in zip(positions, values, rows[overhead], strict=True):
        if value and isinstance(change, float) and change == change and abs(change) >= 0.05:
            ax.text(value + 0.01 * top, y, f"{change:+.1f} %", va="center", fontsize=7)
    ax.set_xlim(0, top * 1.25 if top else 1.0)
