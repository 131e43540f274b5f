"""The training plot: accuracy under faults against how the quantized model was trained to sit.

FlatENN's argument runs through two properties of a trained model, its activation sparsity and the sharpness
of its minimum; the report puts each design point's accuracy under faults against both (and the Hessian
trace), so an experiment that sweeps training settings (`train.act_l1`, `train.saq.rho`, a regularizer)
shows whether sparser or sharper models are the fragile ones without opening a notebook.
"""

from __future__ import annotations

from typing import Any

from dsetool.report.plotkit import MAX_LEGEND, Drawn, PlotInput, colors, new_figure, note

PANELS = (("act_sparsity", "activation sparsity (%)", 100.0),
          ("sharpness", "sharpness (loss increase at radius 0.05)", 1.0),
          ("hessian_trace", "Hessian trace (Hutchinson)", 1.0))


def training_resilience(data: PlotInput) -> Drawn | str:
    """Scatter accuracy under faults against the model's sparsity, sharpness and Hessian trace, one colour
    per fault scenario (a harsher scenario sits lower, so the colours separate)."""
    t = data.table[data.table["accuracy_under_faults"].notna()]
    panels = [p for p in PANELS if p[0] in t and t[p[0]].notna().any()]
    if not panels:
        return "no design point with a fault campaign has its model's sparsity or sharpness"
    models = t.loc[t[panels[0][0]].notna(), "quant_key"].nunique()
    if models < 2:
        return "every design point with a fault campaign has the same quantized model"
    scenarios = list(dict.fromkeys(t["fault_scenario"]))
    shown = scenarios[:MAX_LEGEND]
    palette = dict(zip(shown, colors(len(shown)), strict=True))
    fig = new_figure(3.8 * len(panels), 3.6 + 0.22 * ((len(shown) + 1) // 2))
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (column, label, scale) in zip(axes, panels, strict=True):
        _scatter(ax, t, column, scale, palette)
        ax.set_xlabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("accuracy under faults (%)")
    fig.legend(handles=[_handle(color, name) for name, color in palette.items()], loc="outside lower center",
               ncols=min(2, len(palette)), fontsize=8, frameon=False)
    fig.suptitle(f"Accuracy under faults vs the trained model ({models} quantized models)")
    caption = ("Each dot is a design point with a fault campaign, placed by its quantized model's activation "
               "sparsity (test set), sharpness (first-order SAM estimate) and Hessian trace; colour: fault "
               "scenario. FlatENN expects sparser and sharper models lower.")
    return Drawn(fig, note(caption, len(shown), len(scenarios), "fault scenarios"))


def _scatter(ax: Any, t: Any, column: str, scale: float, palette: dict[str, Any]) -> None:
    for name, color in palette.items():
        rows = t[(t["fault_scenario"] == name) & t[column].notna()]
        ax.scatter(rows[column].astype(float) * scale, 100 * rows["accuracy_under_faults"].astype(float), s=16,
                   color=color, alpha=0.75)


def _handle(color: Any, label: str) -> Any:
    from matplotlib.lines import Line2D

    return Line2D([], [], color=color, marker="o", ls="", ms=4, label=label)
