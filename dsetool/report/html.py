"""`report.html`: one self-contained page (inline CSS, plots as base64 data URIs, no external URL).

Self-contained so it can be mailed, attached to a CI run or opened on a machine with no network and no
runs/ store; the SVGs stay beside it for papers, the PNGs are what the page embeds.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from html import escape

from dsetool.report import seeds
from dsetool.report.columns import AXIS_PREFIX
from dsetool.report.plots import PlotResult
from dsetool.report.results import Results
from dsetool.report.summary import cell, headline, left_out, recommendation_lines

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: 12px; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; position: sticky; top: 0; } td.text { text-align: left; }
tr.front td { background: #fff3e8; font-weight: 600; }
.scroll { overflow: auto; max-height: 36em; border: 1px solid #eee; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; } .muted { color: #666; }
li.rec { margin: .3em 0; } code { background: #f5f5f5; padding: 0 3px; }
"""



def render(results: Results, plots: Sequence[PlotResult]) -> str:
    """Return the HTML page of a report."""
    counts = results.counts()
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>dsetool report: {escape(results.experiment)}</title><style>{CSS}</style></head><body>",
        f"<h1>Report: {escape(results.experiment)}</h1>",
        f"<p class=muted>From <code>{escape(results.source)}</code>: {counts['points']} design points, "
        f"{counts['with_campaign']} with a fault campaign, {counts['with_synthesis']} with a synthesis, "
        f"{counts['on_front']} on a Pareto front.</p>",
        "<h2>Recommendations</h2>", _recommendations(results),
        "<h2>Pareto front</h2>",
        "<p>Objectives: accuracy under faults (higher is better); LUT, DSP and latency per inference (lower is "
        f"better), each on its own; one front per fault scenario. {escape(left_out(results))}</p>",
        _table(results, front_only=True), _seed_table(results),
        "<h2>Plots</h2>", *(_figure(p) for p in plots if not p.skipped), _skipped(plots),
        "<h2>All design points</h2>",
        "<p class=muted>Every column is in <code>results.csv</code> / <code>results.parquet</code>; rows on a "
        "front are highlighted.</p>",
        f"<div class=scroll>{_table(results, front_only=False)}</div>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _recommendations(results: Results) -> str:
    items = []
    for line in recommendation_lines(results):
        objective, rest = line.split(": ", 1)
        items.append(f"<li class=rec><b>{escape(objective)}</b>: {escape(rest)}</li>")
    return "<ul>" + "".join(items) + "</ul>"


def _seed_table(results: Results) -> str:
    rows = seeds.seed_rows(results)
    if not rows:
        return ""
    head = "".join(f"<th>{escape(h)}</th>" for h in seeds.HEADINGS)
    body = "".join("<tr>" + "".join(f"<td{' class=text' if i == 0 else ''}>{escape(c)}</td>"
                                    for i, c in enumerate(seeds.cells(r))) + "</tr>" for r in rows)
    return (f"<h2>Fmax over place-and-route seeds</h2><p>{escape(seeds.INTRO)}</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def _table(results: Results, front_only: bool) -> str:
    rows = results.front_rows if front_only else results.table
    if rows.empty:
        return "<p>No design point is on a front.</p>"
    columns = headline(results)
    head = "".join(f"<th>{escape(h)}</th>" for _, h in columns)
    body = []
    for _, row in rows.iterrows():
        css = " class=front" if row["pareto"] and not front_only else ""
        cells = "".join(f"<td{' class=text' if c.startswith(AXIS_PREFIX) else ''}>{escape(cell(c, row[c], row))}</td>"
                        for c, _ in columns)
        body.append(f"<tr{css}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure(plot: PlotResult) -> str:
    png = next(f for f in plot.files if f.suffix == ".png")
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{escape(plot.title)}" src="data:image/png;base64,{data}">'
            f"<figcaption><b>{escape(plot.title)}.</b> {escape(plot.caption)}</figcaption></figure>")


def _skipped(plots: Sequence[PlotResult]) -> str:
    skipped = [p for p in plots if p.skipped]
    if not skipped:
        return ""
    items = "".join(f"<li>{escape(p.title)}: {escape(p.caption)}</li>" for p in skipped)
    return f"<p>Not drawn, for lack of data:</p><ul>{items}</ul>"
