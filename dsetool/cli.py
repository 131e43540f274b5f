"""The `dsetool` command line: thin click commands over the library.

Heavy libraries (torch, brevitas, amaranth) are imported only inside command bodies, and only when a
stage must actually compute, so `dsetool --help` and fully cached runs answer at once. Human output goes
to stderr; `--json` puts one JSON object per result on stdout. Exit codes: 0 ok, 1 a stage failed,
2 usage or configuration error.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from dsetool.config import Experiment, Point
    from dsetool.store import Entry, Store

RUNS_ENV = "DSETOOL_RUNS"


class UserError(click.ClickException):
    """A usage or configuration error: one line, exit code 2."""

    exit_code = 2


class StageFailure(click.ClickException):
    """A stage failed while computing a design point: exit code 1."""

    exit_code = 1


def _options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add the options every experiment command shares."""
    decorators = [
        click.argument("experiment", type=click.Path(dir_okay=False)),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Override a setting, e.g. --set quant.bits=4 (repeatable)."),
        _common_json, _common_debug, _common_runs,
    ]
    for decorate in reversed(decorators):
        func = decorate(func)
    return func


_common_json = click.option("--json", "as_json", is_flag=True, help="One JSON object per result on stdout.")
_common_debug = click.option("--debug", is_flag=True, help="Show tracebacks.")
_common_runs = click.option("--runs", "runs_dir", default=lambda: os.environ.get(RUNS_ENV, "runs"),
                            show_default="runs or $DSETOOL_RUNS", help="Store directory.")


def _guarded(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library exceptions into one-line errors with the contract's exit codes."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from dsetool.data import DatasetError
        from dsetool.validate import ConfigError

        try:
            return func(*args, **kwargs)
        except (ConfigError, DatasetError) as exc:
            if kwargs.get("debug"):
                raise
            raise UserError(str(exc)) from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dsetool")
def main() -> None:
    """Explore quantized, fault-tolerant systolic-array DNN accelerators: accuracy, reliability, area."""


def _run_points(stage: str, experiment: str, overrides: tuple[str, ...], as_json: bool, debug: bool,
                runs_dir: str) -> None:
    from dsetool.config import load_experiment

    exp = load_experiment(experiment, overrides)
    store = _store(runs_dir)
    _preflight(exp)
    rows = []
    seen: set[tuple[str, str]] = set()
    for point in exp.points:
        entry, cached = _compute(store, stage, point, debug)
        store.record_point(exp.name, exp.source, point.label, dict(point.axes), _chain_keys(entry))
        entry = _with_derived(store, entry, point, debug)
        if (stage, entry.key) in seen and stage != "synth":
            continue
        seen.add((stage, entry.key))
        rows.append((point, entry, cached))
        if as_json:
            _emit_json(entry, cached, point)
    from dsetool.tables import results_table

    results_table(exp.name, rows)


def _with_derived(store: Store, entry: Entry, point: Point, debug: bool, compute: bool = True) -> Entry:
    """Add the metrics that depend on the design point, not only on the cached entry: synth latency, and a
    protection's overhead against the unprotected design built the same way (synthesized too, once, if it
    is not cached and `compute`; otherwise the overhead is left out when the store lacks it)."""
    if entry.stage != "synth":
        return entry
    import dataclasses

    from dsetool.config import Point as DesignPoint
    from dsetool.design import design_of
    from dsetool.stages.synth import derived_metrics

    base = None
    design = design_of(point.config)
    if design.protected:
        plain = DesignPoint(axes=point.axes, config=design.baseline().config)
        if compute:
            base = _compute(store, "synth", plain, debug)[0].metrics
        else:
            from dsetool.stages import stage_key

            found = store.get("synth", stage_key("synth", plain.config)[0])
            base = found.metrics if found is not None else None
    metrics = {**entry.metrics, **derived_metrics(design, entry.metrics, base)}
    return dataclasses.replace(entry, manifest={**entry.manifest, "metrics": metrics})


def _preflight(exp: Experiment) -> None:
    """Fail before touching the store when a design point's data set is not there."""
    from dsetool.data import DatasetError, require_available
    from dsetool.validate import ConfigError

    for cfg in {p.config.data for p in exp.points}:
        try:
            require_available(cfg.name, root=cfg.root, download=cfg.download)
        except DatasetError as exc:
            raise ConfigError(exp.source, "data", str(exc)) from None


def _compute(store: Store, stage: str, point: Point, debug: bool) -> tuple[Entry, bool]:
    from dsetool.data import DatasetError
    from dsetool.progress import RichReporter
    from dsetool.stages import ensure
    from dsetool.validate import ConfigError

    try:
        return ensure(store, stage, point.config, RichReporter())
    except (DatasetError, ConfigError, KeyboardInterrupt):
        raise
    except Exception as exc:
        if debug:
            raise
        raise StageFailure(f"stage {stage} failed at point {point.label}: {type(exc).__name__}: {exc}") from None


def _chain_keys(entry: Entry) -> dict[str, str]:
    return {entry.stage: entry.key, **entry.manifest.get("inputs", {}).get("upstream", {})}


def _emit_json(entry: Entry, cached: bool, point: Point | None = None) -> None:
    payload: dict[str, Any] = {"stage": entry.stage, "key": entry.key, "path": os.path.relpath(entry.path),
                               "cached": cached, "metrics": entry.metrics}
    if point is not None:
        payload["point"] = point.label
        payload["axes"] = dict(point.axes)
    click.echo(json.dumps(payload, sort_keys=True))


def _store(runs_dir: str) -> Store:
    from dsetool.store import Store

    return Store(runs_dir, warn=lambda message: click.echo(message, err=True))


def _stage_command(name: str, stage: str, summary: str) -> None:
    """Register a command that runs `stage` (and what it needs) at every design point of an experiment."""

    @main.command(name, help=summary)
    @_options
    @_guarded
    def command(experiment: str, overrides: tuple[str, ...], as_json: bool, debug: bool, runs_dir: str) -> None:
        _run_points(stage, experiment, overrides, as_json, debug, runs_dir)


_stage_command("train-qat", "train-qat",
               "Quantization-aware training at every design point (float pre-training shared and cached).")
_stage_command("ptq", "ptq", "Post-training quantization at every design point, from the cached float model.")
_stage_command("inject", "inject", "Run a seeded fault campaign on the bit-exact integer engine at every design "
                                   "point (quantizing first, with QAT or PTQ as quant.method says).")
_stage_command("range-restrict", "range-restrict", "Profile the bounds of every protected activation tensor "
                                                   "(requantized layer outputs) on the calibration split.")
_stage_command("synth", "synth", "Generate the design point's accelerator (or, hw.synth: datapath, its datapath) in "
                                 "Amaranth and synthesize it with Yosys/nextpnr (area, Fmax, cycles and latency per "
                                 "inference).")
_stage_command("rtlsim", "rtlsim", "Run the design point's network on its accelerator in compiled RTL simulation "
                                   "(Verilator): agreement with the engine bit for bit, measured cycles.")


class JobsType(click.ParamType):
    """`--jobs`: a count from 1 to 256, or `auto` (None: decided once the tasks to run are known)."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | None:
        if value is None or value == "auto":
            return None
        try:
            count = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither a whole number nor 'auto'", param, ctx)
        if not 1 <= count <= 256:
            self.fail(f"{count} is not in 1..256", param, ctx)
        return count


JOBS = JobsType()


def _workers(jobs: int | None, todo: int) -> int:
    """Return the tasks to run at once: `--jobs` when given, else one per core but no more than there are
    tasks to compute (a single task, or a warm store, stays in this process with its stage progress bar)."""
    if jobs is not None:
        return jobs
    return max(1, min(os.cpu_count() or 1, todo))


@main.command("sweep")
@_options
@click.option("--jobs", "-j", type=JOBS, default="auto", show_default=True, envvar="DSETOOL_JOBS",
              help="Tasks run at once in local worker processes (each gets its share of the cores); auto: one "
                   "per core, in this process when one task or one core. Environment: DSETOOL_JOBS.")
@click.option("--executor", type=click.Choice(["local", "dask"]), default="local", show_default=True,
              help="Run tasks here, or on a Dask distributed cluster sharing the store's file system.")
@click.option("--scheduler", metavar="tcp://HOST:PORT", help="The Dask scheduler (with --executor dask).")
@_guarded
def sweep(experiment: str, overrides: tuple[str, ...], as_json: bool, debug: bool, runs_dir: str,
          jobs: int | None, executor: str, scheduler: str | None) -> None:
    """Run every stage of every design point of the experiment's sweep grid, sharing upstream work."""
    from dsetool.config import load_experiment
    from dsetool.executors import ExecutorError, make_executor
    from dsetool.orchestrate import run_sweep
    from dsetool.progress import SweepProgress
    from dsetool.sweep import cached, plan

    if executor == "dask" and not scheduler:
        raise UserError("sweep: --executor dask needs --scheduler tcp://HOST:PORT")
    exp = load_experiment(experiment, overrides)
    store = _store(runs_dir)
    _preflight(exp)
    graph = plan(exp)
    hits = cached(graph, store)
    progress = SweepProgress(exp.name, len(graph.tasks) - len(hits), len(graph.points), len(hits))
    try:
        workers = _workers(jobs, len(graph.tasks) - len(hits))
        result = run_sweep(exp, store, make_executor(workers, executor, scheduler, progress, debug), progress,
                           graph, hits)
    except ExecutorError as exc:
        raise UserError(f"sweep: {exc}") from None
    finally:
        progress.close()
    click.echo(f"sweep {exp.name}: {len(graph.points)} points, {len(graph.tasks)} tasks "
               f"({result.cache_hits} cached, {len(result.computed)} computed, {len(result.failures)} failed) "
               f"in {result.seconds:.1f} s", err=True)
    _emit_sweep(exp, store, graph, result.computed, as_json, debug)
    _sweep_report(exp, store, as_json)
    if result.failures:
        task_id, error = next(iter(result.failures.items()))
        raise StageFailure(f"sweep: {len(result.failures)} of {len(graph.tasks)} tasks failed; first: stage "
                           f"{task_id.split('/')[0]} at point {graph.first_point(task_id)}: {error}")


def _emit_sweep(exp: Experiment, store: Store, graph: Any, computed: set[str], as_json: bool, debug: bool) -> None:
    """With --json, print one object per stage entry of every design point (a synthesis once per point,
    with the point's latency and overhead; a point's baseline synthesis only as its own point)."""
    if not as_json:
        return
    seen: set[str] = set()
    for point in exp.points:
        own: set[str] = set()   # a second synth of a point is its baseline
        for task_id in graph.points[point.label]:
            task = graph.tasks[task_id]
            entry = store.get(task.stage, task.key)
            if entry is None or task.stage in own or (task_id in seen and task.stage != "synth"):
                continue
            own.add(task.stage)
            seen.add(task_id)
            _emit_json(_with_derived(store, entry, point, debug, compute=False), task_id not in computed, point)


def _sweep_report(exp: Experiment, store: Store, as_json: bool) -> None:
    """Write the experiment's report from what the sweep left in the store and show its summary."""
    from dsetool.report import NoResults, json_summary, write_report
    from dsetool.report.console import show

    try:
        files = write_report(store, exp)
    except NoResults:
        return
    show(files.results, files.plots, files.directory, files.notes, files.kept)
    if as_json:
        click.echo(json.dumps(json_summary(files), sort_keys=True))


@main.command("report")
@_options
@click.option("--tolerance", type=click.FloatRange(0.0, 1.0), default=0.01, show_default=True,
              help="Hardware pick: how far (absolute, 0.01 = 1 point) below the front's best accuracy under "
                   "faults the smallest design may be.")
@_guarded
def report(experiment: str, overrides: tuple[str, ...], as_json: bool, debug: bool, runs_dir: str,
           tolerance: float) -> None:
    """Write results.csv/.parquet, plots, summary.md and report.html of an experiment into
    runs/experiments/NAME/, from what the store holds (it computes nothing: run `dsetool sweep` first).
    Exit 1 when the store has no result for any design point."""
    from dsetool.config import load_experiment
    from dsetool.report import NoResults, json_summary, write_report
    from dsetool.report.console import show

    exp = load_experiment(experiment, overrides)
    try:
        files = write_report(_store(runs_dir), exp, tolerance)
    except NoResults as exc:
        raise StageFailure(str(exc)) from None
    show(files.results, files.plots, files.directory, files.notes, files.kept)
    if as_json:
        click.echo(json.dumps(json_summary(files), sort_keys=True))


@main.command("check")
@_options
@click.option("--baseline", "baseline_csv", required=True, type=click.Path(dir_okay=False),
              help="A results.csv written by `dsetool report` (the accepted results).")
@click.option("--tolerance", "tolerances", multiple=True, metavar="METRIC=VALUE",
              help="Loosen or tighten one metric's tolerance, e.g. accuracy_drop=0.005 or lut=2% "
                   "(repeatable).")
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False), help="Also write a JUnit XML report.")
@click.option("--jobs", "-j", type=JOBS, default="auto", show_default=True, envvar="DSETOOL_JOBS",
              help="Tasks run at once when something must be recomputed (auto: one per core).")
@_guarded
def check(experiment: str, overrides: tuple[str, ...], as_json: bool, debug: bool, runs_dir: str,
          baseline_csv: str, tolerances: tuple[str, ...], junit_path: str | None, jobs: int | None) -> None:
    """Re-run an experiment (cache-aware) and exit 1 when a metric regressed against a baseline results.csv."""
    from pathlib import Path

    from dsetool import check as gate
    from dsetool.config import load_experiment
    from dsetool.executors import make_executor
    from dsetool.orchestrate import run_sweep
    from dsetool.report.collect import find, rows
    from dsetool.sweep import cached, plan

    try:
        rules = gate.rules_with(gate.parse_tolerances(tolerances))
        baseline = gate.read_baseline(Path(baseline_csv))
    except ValueError as exc:
        raise UserError(f"check: {exc}") from None
    exp = load_experiment(experiment, overrides)
    store = _store(runs_dir)
    _preflight(exp)
    graph = plan(exp)
    hits = cached(graph, store)
    executor = make_executor(_workers(jobs, len(graph.tasks) - len(hits)), "local", None, None, debug)
    result = run_sweep(exp, store, executor, None, graph, hits)
    if result.failures:
        task_id, error = next(iter(result.failures.items()))
        raise StageFailure(f"check: stage {task_id.split('/')[0]} failed at point {result.plan.first_point(task_id)}:"
                           f" {error}")
    findings = gate.compare(baseline, rows(find(store, exp)), rules)
    if junit_path:
        gate.write_junit(findings, Path(junit_path), exp.name)
    if as_json:
        for f in findings:
            click.echo(json.dumps({"stage": "check", "key": None, "cached": False, "path": baseline_csv,
                                   "point": f.point, "metric": f.metric, "baseline": f.baseline,
                                   "current": f.current, "limit": f.limit, "regressed": f.regressed,
                                   "reason": f.reason}, sort_keys=True))
    from dsetool.tables import check_table

    check_table(exp.name, findings)
    bad = [f for f in findings if f.regressed]
    if bad:
        raise StageFailure(f"check: {len(bad)} of {len(findings)} checks regressed against {baseline_csv}")


def _one_point(command: str, exp: Experiment, label: str | None) -> Point:
    """Return the design point a board command runs: the only one, or the one labelled `label`."""
    labels = [point.label for point in exp.points]
    if label is None and len(labels) == 1:
        return exp.points[0]
    if label in labels:
        return exp.points[labels.index(label)]
    what = f"no design point {label!r}" if label is not None else f"{len(labels)} design points"
    raise UserError(f"{command}: {exp.source} has {what}; pick one with --point (one of: {', '.join(labels)})")


def _board_machine(command: str, store: Store, point: Point, debug: bool) -> Any:
    """Quantize the point's model (cached) and compile it for the accelerator, as a board command needs it."""
    from dsetool import board as boards
    from dsetool.progress import RichReporter
    from dsetool.stages import quant_stage

    try:
        boards.check_point(point.config)
        _compute(store, quant_stage(point.config), point, debug)
        return boards.point_machine(store, point.config, RichReporter())
    except boards.BoardError as exc:
        raise UserError(f"{command}: {exc}") from None


_board_point = click.option("--point", "point_label", metavar="LABEL",
                            help="The design point, by its label, when the experiment has several.")
_board_baud = click.option("--baud", type=click.IntRange(1200, 12_000_000), default=115_200, show_default=True,
                           help="Serial baud rate (the bitstream is built for it).")


@main.command("board")
@_options
@_board_point
@_board_baud
@click.option("--board", "board_name", default="ulx3s-85f", show_default=True,
              help="The board (amaranth-boards platform): ulx3s-85f, ulx3s-45f or ulx3s-25f.")
@click.option("--seed", type=int, default=1, show_default=True, help="nextpnr placement seed.")
@_guarded
def board(experiment: str, overrides: tuple[str, ...], as_json: bool, debug: bool, runs_dir: str,
          point_label: str | None, baud: int, board_name: str, seed: int) -> None:
    """Build (or reuse) the bitstream of a design point's accelerator behind a UART for an FPGA board; program
    the board with it (e.g. `openFPGALoader -b ulx3s top.bit`), then run images with `dsetool board-run`."""
    from dsetool import board as boards
    from dsetool.config import load_experiment

    exp = load_experiment(experiment, overrides)
    point = _one_point("board", exp, point_label)
    store = _store(runs_dir)
    _preflight(exp)
    machine = _board_machine("board", store, point, debug)
    try:
        built = boards.build_bitstream(store, machine.shape, board_name, baud, seed=seed)
    except boards.BoardError as exc:
        raise UserError(str(exc)) from None
    except boards.BuildFailed as exc:
        raise StageFailure(str(exc)) from None
    click.echo(boards.build_summary(board_name, built), err=True)
    if as_json:
        click.echo(json.dumps({"stage": "board", "key": built.key, "path": str(built.bitstream),
                               "cached": built.cached, "point": point.label, "metrics": built.result},
                               sort_keys=True))


@main.command("board-run")
@_options
@_board_point
@_board_baud
@click.option("--port", "device", required=True, metavar="DEVICE", help="The board's serial port, e.g. /dev/ttyUSB0.")
@click.option("--images", "count", type=click.IntRange(1, 100_000), default=10, show_default=True,
              help="Test images to run (the first ones of the point's test split).")
@click.option("--timeout", type=click.FloatRange(0.1), default=30.0, show_default=True,
              help="Seconds a reply may take before the board counts as silent.")
@_guarded
def board_run(experiment: str, overrides: tuple[str, ...], as_json: bool, debug: bool, runs_dir: str,
              point_label: str | None, baud: int, device: str, count: int, timeout: float) -> None:
    """Load a design point's network onto a board running its `dsetool board` bitstream, over the serial port;
    run test images and print their logits and alarm against the integer engine's. Exit 1 when any differ."""
    from dsetool import board as boards
    from dsetool.config import load_experiment
    from hw.uart_protocol import LinkError

    exp = load_experiment(experiment, overrides)
    point = _one_point("board-run", exp, point_label)
    store = _store(runs_dir)
    _preflight(exp)
    machine = _board_machine("board-run", store, point, debug)
    codes, expected, engine_alarms = boards.test_images(machine, point.config, count)
    try:
        with boards.open_port(device, baud, timeout) as port:
            got = boards.run_images(port, machine, codes)
    except boards.BoardError as exc:
        raise UserError(str(exc)) from None
    except LinkError as exc:
        raise StageFailure(f"board-run: {device}: {exc}") from None
    wrong = 0
    for index, ((logits, alarm), reference, engine_alarm) in enumerate(zip(got, expected, engine_alarms, strict=True)):
        agree = logits == reference and alarm == engine_alarm
        wrong += not agree
        row = {"image": index, "logits": logits, "expected": reference, "alarm": alarm, "engine_alarm": engine_alarm,
               "agree": agree, "prediction": logits.index(max(logits))}
        click.echo(boards.image_line(row), err=True)
        if as_json:
            click.echo(json.dumps({"stage": "board-run", "point": point.label, **row}, sort_keys=True))
    click.echo(f"board-run: {len(got)} images, {len(got) - wrong} with the engine's logits and alarm", err=True)
    if wrong:
        raise StageFailure(f"board-run: the board's logits or alarm differ from the engine's on {wrong} of {len(got)} "
                           "images")


@main.command("schema")
def schema() -> None:
    """Print the JSON Schema of experiment files (for editor validation)."""
    from dsetool.config import schema as experiment_schema

    click.echo(json.dumps(experiment_schema(), indent=2))


@main.group("runs")
def runs() -> None:
    """Inspect and clean the runs/ store."""


@runs.command("ls")
@_common_json
@_common_runs
def runs_ls(as_json: bool, runs_dir: str) -> None:
    """List the entries in the store."""
    from dsetool.tables import entries_table

    entries = list(_store(runs_dir).entries())
    if as_json:
        for entry in entries:
            _emit_json(entry, True)
    entries_table(entries)


@runs.command("show")
@click.argument("key")
@_common_runs
def runs_show(key: str, runs_dir: str) -> None:
    """Print the manifest of the entry whose key starts with KEY."""
    found = _store(runs_dir).find(key) if len(key) >= 4 else []
    if len(key) < 4:
        raise UserError(f"runs show: key prefix {key!r} is too short (give at least 4 characters)")
    if not found:
        raise UserError(f"runs show: no entry whose key starts with {key!r} under {runs_dir}")
    if len(found) > 1:
        raise UserError(f"runs show: {key!r} is ambiguous ({len(found)} entries); give more characters")
    click.echo(json.dumps(found[0].manifest, indent=2, sort_keys=True))


@runs.command("gc")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@_common_runs
def runs_gc(dry_run: bool, runs_dir: str) -> None:
    """Remove entries that no experiment index references (directly or as upstream)."""
    removed = _store(runs_dir).gc(dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for name in removed:
        click.echo(f"{verb} {name}", err=True)
    click.echo(f"{verb} {len(removed)} entries", err=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
