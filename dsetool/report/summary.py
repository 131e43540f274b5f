"""`summary.md`: the recommendations, the front as a table, what was left out and why, what was skipped.

Also the cell formatting every human view shares (markdown, HTML, terminal), so a number reads the same
everywhere: accuracies and rates in percent with two decimals, counts as integers, blanks as `-`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dsetool.report import seeds
from dsetool.report.columns import AXIS_PREFIX, axis_column
from dsetool.report.plotkit import describe, format_value, short_names, varying
from dsetool.report.plots import PlotResult
from dsetool.report.recommend import Recommendation
from dsetool.report.results import Results

PERCENT = {"float_acc", "quant_acc", "golden_accuracy", "accuracy_under_faults", "accuracy_drop", "masked_rate",
           "sdc_rate", "critical_rate", "detected_rate", "sdc_detected_rate", "changed_rate", "golden_agreement"}
# (column, heading) of the short tables (the front, the terminal's top rows, the HTML table): the point's number,
# then its varying axes (see `headline`), then these.
# Accuracy under faults stands next to the fault-free accuracy of the same inferences, and its drop is their
# paired difference with its interval: the test split's accuracy (`quant_acc`) is on other inputs.
METRICS: tuple[tuple[str, str], ...] = (
    ("quant_acc", "test acc %"), ("golden_accuracy", "clean acc %"), ("accuracy_under_faults", "acc faults %"),
    ("accuracy_drop", "drop pp [95% CI]"), ("sdc_rate", "SDC %"),
    ("critical_rate", "critical %"), ("lut", "LUT"), ("dsp", "DSP"), ("fmax_mhz", "Fmax MHz"),
    ("latency_us", "latency us"), ("lut_overhead_pct", "LUT ovh %"), ("pareto", "front"),
)


def cell(column: str, value: Any, row: Any = None) -> str:
    """Format one cell for people: percent for rates, one decimal for MHz/us/%, `-` for a blank; the
    accuracy drop with its interval when the cell's `row` (a mapping or a DataFrame row) has one."""
    if _blank(value):
        return "-"
    if column.startswith(AXIS_PREFIX):
        return format_value(value)
    if isinstance(value, bool) or column in ("pareto", "tmr"):
        return "yes" if value else ""
    if column == "accuracy_drop" and row is not None and not _blank(row.get("accuracy_drop_ci_lo")):
        low, high = (100 * float(row[f"accuracy_drop_ci_{end}"]) for end in ("lo", "hi"))
        return f"{100 * float(value):.2f} [{low:.2f}, {high:.2f}]"
    if column in PERCENT:
        return f"{100 * float(value):.2f}"
    if column.endswith("_pct"):
        return f"{float(value):+.1f}"
    if column in ("fmax_mhz", "latency_us"):
        return f"{float(value):.1f}"
    if column == "ber":
        return f"{float(value):g}"
    return str(value)


def _blank(value: Any) -> bool:
    import pandas as pd

    return value is None or (not isinstance(value, str | bool) and bool(pd.isna(value)))


def headline(results: Results) -> list[tuple[str, str]]:
    """Return the columns worth showing people: P, the axes that vary, the metrics some point has."""
    t = results.table
    moving = varying(t, results.axes)
    names = short_names(moving)
    axes = [(axis_column(a), names[a]) for a in moving]

    def shown(column: str) -> bool:
        return bool(t["pareto"].any()) if column == "pareto" else bool(t[column].notna().any())

    return [("point_id", "P"), *axes, *((c, h) for c, h in METRICS if shown(c))]


def markdown_table(rows: Any, columns: Sequence[tuple[str, str]]) -> str:
    """Return a markdown table of the given DataFrame rows and (column, heading) pairs."""
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    for _, row in rows.iterrows():
        lines.append("| " + " | ".join(_escape(cell(c, row[c], row)) for c, _ in columns) + " |")
    return "\n".join(lines)


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def left_out(results: Results) -> str:
    """Say how many points could not be on a front and why, in one sentence."""
    reasons = results.front.excluded_summary()
    if not reasons:
        return "Every design point had all four objectives."
    parts = ", ".join(f"{n} {reason}" for reason, n in reasons.items())
    return f"{len(results.front.excluded)} of {len(results.table)} design points left out of the front ({parts})."


def recommendation_lines(results: Results) -> list[str]:
    """Return one line per recommendation, `objective [scenario]: P<n> axis=value ...: reason`.

    An objective with no pick in any scenario for one reason (no synthesis in a campaign-only experiment)
    gets one line, not one per scenario."""
    several = len(results.front.scenarios) > 1
    lines, folded = [], set()
    for r in results.recommendations:
        same = [o for o in results.recommendations if o.objective == r.objective]
        if several and all(o.point_id is None and o.reason == r.reason for o in same):
            if r.objective not in folded:
                folded.add(r.objective)
                lines.append(f"{r.objective} [every fault scenario]: (none): {r.reason}")
            continue
        lines.append(f"{r.objective}{f' [{r.scenario}]' if several else ''}: {point_text(results, r)}: {r.reason}")
    return lines


def point_text(results: Results, rec: Recommendation) -> str:
    """Name a recommended point by number and design axes (the fault axes are in its scenario already)."""
    if rec.point_id is None:
        return "(none)"
    row = results.table[results.table["point_id"] == rec.point_id].iloc[0]
    axes = [a for a in results.axes if not a.startswith("faults.")] if len(results.front.scenarios) > 1 \
        else list(results.axes)
    return f"P{rec.point_id} {describe(row, axes)}".strip()


def render(results: Results, plots: Sequence[PlotResult], files: Sequence[Path], notes: Sequence[str] = ()) -> str:
    """Return the text of `summary.md`."""
    counts = results.counts()
    out = [f"# Report: {results.experiment}", "",
           f"From `{results.source}`: {counts['points']} design points, {counts['with_campaign']} with a fault "
           f"campaign, {counts['with_synthesis']} with a synthesis, {counts['on_front']} on a Pareto front.", ""]
    out += [f"> Note: {line}\n" for line in notes]
    out += ["## Recommendations", ""]
    out += [f"- {line}" for line in recommendation_lines(results)]
    out += ["", "## Pareto front", "",
            "Objectives: accuracy under faults (higher is better); LUT, DSP and latency per inference (lower is "
            "better), each on its own; one front per fault scenario. " + left_out(results), ""]
    front = results.front_rows
    out.append(markdown_table(front, headline(results))
               if len(front) else "No design point is on a front.")
    spread = seeds.seed_rows(results)
    if spread:
        out += ["", "## Fmax over place-and-route seeds", "", seeds.INTRO, "", seeds.markdown(spread)]
    out += ["", "## Plots", ""]
    out += [f"- {p.title}: `plots/{p.files[0].name}` (and .svg)" for p in plots if not p.skipped]
    skipped = [p for p in plots if p.skipped]
    if skipped:
        out += ["", "Skipped:", ""] + [f"- {p.title}: {p.caption}" for p in skipped]
    out += ["", "## Files", ""] + [f"- `{f.name}`" for f in files]
    return "\n".join(out) + "\n"
