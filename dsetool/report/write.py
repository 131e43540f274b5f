"""Write an experiment's report into its folder of the store, from what the store holds.

Everything is first written into a temporary directory beside the final place, then each file is moved
in with one rename and `plots/` is swapped whole: a reader never sees a half-written file, and a plot that
this run skips does not survive from an earlier run to contradict the summary.

A report is a function of the store entries it reads (content-addressed), the experiment's settings and the
tolerance, so `report.json` records a fingerprint of those: when nothing changed, the files already there
are the report and drawing the plots again (most of a warm sweep's time) is skipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsetool.config import Experiment
from dsetool.report import collect, faultdata, html, summary
from dsetool.report import plots as plot_registry
from dsetool.report.plotkit import PlotInput
from dsetool.report.plots import PlotResult, draw_all
from dsetool.report.recommend import DEFAULT_TOLERANCE
from dsetool.report.results import Results, build, write_tables
from dsetool.store import Store

PLOTS_DIR = "plots"
STAMP = "report.json"


class NoResults(Exception):
    """The store holds nothing for any design point of the experiment."""


@dataclass(frozen=True)
class ReportFiles:
    """What `write_report` wrote (final paths), the results it wrote them from, and the plots drawn or skipped."""

    directory: Path
    csv: Path
    parquet: Path
    html: Path
    summary: Path
    plots: tuple[PlotResult, ...]
    results: Results
    notes: tuple[str, ...] = ()
    kept: bool = False   # the report already there was written from the same inputs, and left as it was

    def paths(self) -> list[Path]:
        """Return every written file: tables, summary, HTML, then each plot's PNG and SVG."""
        return [self.csv, self.parquet, self.summary, self.html, *(f for p in self.plots for f in p.files)]


def write_report(store: Store, exp: Experiment, tolerance: float = DEFAULT_TOLERANCE) -> ReportFiles:
    """Write results.csv/.parquet, plots/, summary.md and report.html for `exp`; return their paths.

    Raises NoResults (with a one-line message naming the next command) when no design point has any entry.
    """
    found = collect.find(store, exp)
    if not collect.has_results(found):
        raise NoResults(no_results_message(store, exp))
    axes = tuple(dict.fromkeys(k for p in exp.points for k in p.axes))
    results = build(exp.name, exp.source, axes, found, tolerance)
    notes = _notes(store, exp, results)
    final = store.experiment_dir(exp.name)
    fingerprint = _fingerprint(exp, tolerance, found, results, notes)
    kept = _kept_plots(final, fingerprint)
    if kept is not None:
        return _files(final, kept, results, notes, kept=True)
    final.mkdir(parents=True, exist_ok=True)
    work = final / f".report-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    try:
        plots = draw_all(PlotInput(results.table, axes, faultdata.load(found)), work / PLOTS_DIR)
        csv, parquet = write_tables(results, work)
        names = [csv.name, parquet.name, "summary.md", "report.html"]
        (work / "summary.md").write_text(summary.render(results, plots, [Path(n) for n in names], notes))
        (work / "report.html").write_text(html.render(results, plots))
        (work / STAMP).write_text(json.dumps(_stamp(fingerprint, plots), indent=2, sort_keys=True))
        with store.experiment_lock(exp.name):   # a sweep and a `report` may publish at the same time
            _publish(work, final, names)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    moved = tuple(dataclasses.replace(p, files=tuple(final / PLOTS_DIR / f.name for f in p.files)) for p in plots)
    return _files(final, moved, results, notes)


def _files(final: Path, plots: tuple[PlotResult, ...], results: Results, notes: tuple[str, ...],
           kept: bool = False) -> ReportFiles:
    return ReportFiles(final, final / "results.csv", final / "results.parquet", final / "report.html",
                       final / "summary.md", plots, results, notes, kept)


def _fingerprint(exp: Experiment, tolerance: float, found: list[collect.PointResults], results: Results,
                 notes: Sequence[str]) -> str:
    """Return the hash of everything a report is made of: the code that writes it (this package's sources and
    matplotlib's version), the experiment's file and settings, the tolerance, every store entry found (its
    whole manifest: a recomputed entry has new artifact hashes under the same key), and the table itself,
    so a metric derived outside this package (a stage's own summary) still invalidates the report."""
    import matplotlib

    points = [{"label": p.point.label, "config": dataclasses.asdict(p.point.config),
               "entries": {stage: entry.manifest for stage, entry in sorted(p.entries.items())},
               "baseline": p.baseline_synth} for p in found]
    drawn = [name for name, _, _ in plot_registry.PLOTS]
    text = json.dumps({"code": _code_hash(), "matplotlib": matplotlib.__version__, "experiment": exp.name,
                       "source": str(exp.source), "plots": drawn, "tolerance": tolerance, "points": points,
                       "table": results.table.to_csv(index=False), "notes": list(notes)},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _code_hash() -> str:
    """Return the hash of the report package's sources: a changed plot or column invalidates every report."""
    digest = hashlib.sha256()
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()


def _stamp(fingerprint: str, plots: Sequence[PlotResult]) -> dict[str, Any]:
    return {"fingerprint": fingerprint,
            "plots": [{"name": p.name, "title": p.title, "files": [f.name for f in p.files], "caption": p.caption}
                      for p in plots]}


def _kept_plots(final: Path, fingerprint: str) -> tuple[PlotResult, ...] | None:
    """Return the plots of the report already in `final` when it was written from the same inputs and every
    file is still there; None when it must be written again."""
    try:
        stamp = json.loads((final / STAMP).read_text())
        plots = tuple(PlotResult(p["name"], p["title"], tuple(final / PLOTS_DIR / f for f in p["files"]),
                                 p["caption"]) for p in stamp["plots"])
        same = stamp["fingerprint"] == fingerprint
    except (OSError, ValueError, KeyError, TypeError):
        return None
    needed = [final / n for n in ("results.csv", "results.parquet", "summary.md", "report.html")]
    if not same or not all(f.is_file() for f in [*needed, *(f for p in plots for f in p.files)]):
        return None
    return plots


def _publish(work: Path, final: Path, names: list[str]) -> None:
    """Move the files in one rename each, swap plots/ whole (the old one removed after the swap), and move
    `report.json` in last: a run stopped half-way leaves the old stamp, or none, never one that vouches for
    files not yet written."""
    (final / STAMP).unlink(missing_ok=True)
    for name in names:
        os.replace(work / name, final / name)
    new, old = work / PLOTS_DIR, final / PLOTS_DIR
    new.mkdir(exist_ok=True)
    trash = work / ".old-plots"
    if old.exists():
        os.rename(old, trash)
    os.rename(new, old)
    os.replace(work / STAMP, final / STAMP)


def no_results_message(store: Store, exp: Experiment) -> str:
    """Say that nothing is in the store and what to run; hint at different settings when an index exists."""
    return (f"report: {store.root} holds no results for the {len(exp.points)} design points of {exp.source}; "
            f"run `dsetool sweep {exp.source}` first{_index_hint(store, exp)}")


def _index_hint(store: Store, exp: Experiment) -> str:
    recorded = len(store.read_index(exp.name).get("points", {}))
    if not recorded:
        return ""
    return f" (the index of {exp.name} names {recorded} points, computed with other settings: the same --set?)"


def _notes(store: Store, exp: Experiment, results: Results) -> tuple[str, ...]:
    """Warn when only models were found: most likely the campaigns ran with other settings (a --set)."""
    counts = results.counts()
    if counts["with_campaign"] or counts["with_synthesis"]:
        return ()
    return (f"only trained models were found, no fault campaign or synthesis: run `dsetool sweep {exp.source}`"
            f"{_index_hint(store, exp)}",)


def json_summary(files: ReportFiles) -> dict[str, Any]:
    """Return the one JSON object `dsetool report --json` prints: where the report is, every file written
    (paths relative to the cwd), the counts, the front, the recommendations and the skipped plots. It has
    the keys of every stage's JSON line (`key` is null: a report is rewritten, not a store entry; `cached`
    is true when the report already there was kept)."""
    from dsetool.report.results import as_json

    return {"stage": "report", "key": None, "cached": files.kept, "experiment": files.results.experiment,
            "path": os.path.relpath(files.directory),
            "files": [os.path.relpath(p) for p in files.paths()], "metrics": as_json(files.results),
            "skipped_plots": {p.name: p.caption for p in files.plots if p.skipped}, "notes": list(files.notes)}
