"""Sweeps: the grid's shared stage graph, resuming, the local pool and a real Dask cluster give equal results."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import dsetool.stages.inject
from dsetool.cli import main
from dsetool.config import RunConfig, load_experiment
from dsetool.executors import ProcessPool
from dsetool.store import Store
from dsetool.sweep import Plan, Task, index_keys, plan
from tests.conftest import REPO, TINY_EXPERIMENT

# Two bit widths x two protections, campaigns only (no synthesis): 1 float model, 2 QAT models, 2 profiles
# of bounds (clip only), 4 campaigns.
SMALL = {**TINY_EXPERIMENT, "name": "small", "stages": ["inject"],
         "faults": {"site": "pe.psum", "samples": 200, "inputs": 64},
         "sweep": {"quant.bits": [8, 4], "hw.protection": ["none", "clip"]}}


def run(args, runs_dir):
    return CliRunner().invoke(main, [*args, "--runs", str(runs_dir)])


def json_rows(text):
    """Return the stage entries a sweep printed (the report's own line left out)."""
    rows = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [row for row in rows if row["stage"] != "report"]


def test_plan_shares_upstream_work_across_the_grid():
    exp = load_experiment(REPO / "configs" / "lenet.yaml")
    graph = plan(exp)
    stages = [task.stage for task in graph.ordered()]
    # 4 bit widths x QAT/PTQ x 3 protections x 2 fault sites x 2 arrays: one float model; one model per
    # (bits, method); one bound profile per model (clip and zero share it); a campaign per point, except that
    # activation-buffer faults do not depend on the array; one synthesis per (bits, protection, array)
    assert len(exp.points) == 96
    assert stages.count("pretrain") == 1
    assert stages.count("train-qat") == 4 and stages.count("ptq") == 4
    assert stages.count("range-restrict") == 8
    assert stages.count("inject") == 96 - 24
    assert stages.count("synth") == 4 * 3 * 2
    position = {task.id: i for i, task in enumerate(graph.ordered())}
    assert all(position[need] < position[task.id] for task in graph.ordered() for need in task.needs)
    clip = next(label for label in graph.points if "clip" in label)
    keys = index_keys(graph.points[clip])
    assert set(keys) == {"pretrain", "train-qat", "range-restrict", "inject", "synth", "synth-baseline"}
    assert keys["synth"] != keys["synth-baseline"]


def test_stages_key_limits_what_a_point_computes():
    median = ["sweep.hw.protection=[median3]", "protect.placement=output"]   # a channel filter: at the outputs
    exp = load_experiment(REPO / "configs" / "lenet.yaml", ["stages=[quantize]", *median])
    assert {task.stage for task in plan(exp).ordered()} == {"pretrain", "train-qat", "ptq"}
    exp = load_experiment(REPO / "configs" / "lenet.yaml", median)
    assert "synth" not in {task.stage for task in plan(exp).ordered()}   # no RTL for the median


@pytest.mark.slow
def test_failed_task_blocks_only_its_dependents_and_the_sweep_resumes(tmp_path, write_experiment, monkeypatch):
    path = write_experiment(SMALL)
    runs_dir = tmp_path / "runs"
    real = dsetool.stages.inject.run

    def flaky(ctx):
        if ctx.config.quant.weight_bits == 4 and ctx.config.hw.protection == "clip":
            raise RuntimeError("injected failure")
        return real(ctx)

    monkeypatch.setattr(dsetool.stages.inject, "run", flaky)
    first = run(["sweep", str(path), "--json"], runs_dir)
    assert first.exit_code == 1
    assert "1 of 9 tasks failed" in first.output and "stage inject at point quant.bits=4,hw.protection=clip" \
        in first.output and "injected failure" in first.output
    done = Store(runs_dir).read_index("small")["points"]
    assert sorted(label for label, point in done.items() if point["complete"]) == [
        "quant.bits=4,hw.protection=none", "quant.bits=8,hw.protection=clip", "quant.bits=8,hw.protection=none"]
    failed = done["quant.bits=4,hw.protection=clip"]   # its finished stages are recorded, so gc spares them
    assert not failed["complete"] and set(failed["keys"]) == {"pretrain", "train-qat", "range-restrict"}
    assert "points 3/4" in first.output
    monkeypatch.setattr(dsetool.stages.inject, "run", real)
    second = run(["sweep", str(path), "--json"], runs_dir)
    assert second.exit_code == 0, second.output
    assert "8 cached, 1 computed, 0 failed" in second.output
    rows = json_rows(second.stdout)
    assert [r["point"] for r in rows if not r["cached"]] == ["quant.bits=4,hw.protection=clip"]
    assert all(point["complete"] for point in Store(runs_dir).read_index("small")["points"].values())


def _reference(tmp_path: Path, experiment: Path) -> dict[tuple[str, str], dict]:
    result = run(["sweep", str(experiment), "--json"], tmp_path / "reference")
    assert result.exit_code == 0, result.output
    return {(r["stage"], r["key"]): r["metrics"] for r in json_rows(result.stdout)}


def _stable(metrics: dict) -> dict:
    """Drop what depends on the machine's speed, not on the computation."""
    return {k: v for k, v in metrics.items() if "second" not in k and not k.startswith("sec_")}


@pytest.mark.slow
def test_local_pool_equals_in_process(tmp_path, write_experiment):
    path = write_experiment(SMALL)
    reference = _reference(tmp_path, path)
    pooled = subprocess.run([sys.executable, "-m", "dsetool.cli", "sweep", str(path), "--jobs", "2", "--json",
                             "--runs", str(tmp_path / "pool")], capture_output=True, text=True, cwd=tmp_path)
    assert pooled.returncode == 0, pooled.stderr
    rows = json_rows(pooled.stdout)
    assert {(r["stage"], r["key"]) for r in rows} == set(reference)
    for r in rows:
        assert _stable(r["metrics"]) == _stable(reference[(r["stage"], r["key"])]), r["stage"]
        assert Path(tmp_path / r["path"]).is_dir() and not Path(r["path"]).is_absolute()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dask", *args], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _busy_worker(address: str) -> str:
    """Return the address of a worker that is running a task right now."""
    from distributed import Client

    with Client(address, timeout="30s") as client:
        found: list[str] = []

        def busy() -> bool:
            found[:] = [worker for worker, tasks in client.processing().items() if tasks]
            return bool(found)

        _wait_for(busy, 60, "a busy worker")
        return found[0]


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.slow
def test_dask_cluster_survives_a_dead_worker_and_equals_a_local_run(tmp_path, write_experiment):
    path = write_experiment(SMALL)
    reference = _reference(tmp_path, path)
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = _spawn(["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                       tmp_path / "scheduler.log")
    workers: list[subprocess.Popen] = []
    try:
        _wait_for(lambda: "Scheduler at" in (tmp_path / "scheduler.log").read_text(), 60, "the scheduler")
        for i in range(2):
            workers.append(_spawn(["worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard",
                                   "--name", f"w{i}"], tmp_path / f"worker{i}.log"))
        for i in range(2):
            _wait_for(lambda i=i: "Registered to" in (tmp_path / f"worker{i}.log").read_text(), 60, f"worker {i}")
        runs_dir = tmp_path / "shared"
        sweep = subprocess.Popen([sys.executable, "-m", "dsetool.cli", "sweep", str(path), "--json", "--runs",
                                  str(runs_dir), "--executor", "dask", "--scheduler", address],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        # once the float model is in the store, kill the worker that is computing a QAT model
        _wait_for(lambda: any(runs_dir.glob("pretrain/??/*/manifest.json")), 120, "the float model")
        busy = _busy_worker(address)
        victim = next(w for i, w in enumerate(workers) if busy in (tmp_path / f"worker{i}.log").read_text())
        assert sweep.poll() is None
        os.killpg(victim.pid, signal.SIGKILL)
        out, err = sweep.communicate(timeout=600)
        assert sweep.returncode == 0, err
        rows = json_rows(out)
        assert {(r["stage"], r["key"]) for r in rows} == set(reference)
        for r in rows:
            assert _stable(r["metrics"]) == _stable(reference[(r["stage"], r["key"])]), r["stage"]
        gc = run(["runs", "gc"], runs_dir)   # what the dead worker left half-written is never an entry
        assert gc.exit_code == 0 and not list(runs_dir.glob("*/??/.tmp-*"))
        assert len(list(Store(runs_dir).entries())) == len(reference)
    finally:
        for process in [*workers, scheduler]:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.mark.slow
def test_sweep_json_feeds_a_shell_pipeline(tmp_path, write_experiment):
    path = write_experiment({**SMALL, "sweep": {"quant.bits": [8]}})
    consumer = ("import json, os, sys\n"
                "rows = [json.loads(line) for line in sys.stdin]\n"
                "assert all(set(r) >= {'stage', 'key', 'path', 'cached', 'metrics'} for r in rows)\n"
                "entries = [r for r in rows if r['stage'] != 'report']\n"
                "assert all(os.path.isfile(os.path.join(r['path'], 'manifest.json')) for r in entries)\n"
                "assert all(set(r) >= {'point', 'axes'} for r in entries)\n"
                "report = [r for r in rows if r['stage'] == 'report']\n"
                "assert len(report) == 1 and all(os.path.isfile(f) for f in report[0]['files'])\n"
                "print(' '.join(sorted(r['stage'] for r in rows)))\n")
    pipeline = (f"{sys.executable} -m dsetool.cli sweep {path} --json --runs runs 2>/dev/null"
                f" | {sys.executable} -c \"$CONSUMER\"")
    out = subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "CONSUMER": consumer})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["inject", "pretrain", "report", "train-qat"]


def _dies(runs_dir: str, task: Task) -> tuple[bool, float]:
    """Stand in for `run_task` in pool workers: `once` kills its worker the first time, `always` every time."""
    marker = Path(runs_dir) / f"{task.key}.died"
    if task.key == "always" or (task.key == "once" and not marker.exists()):
        marker.touch()
        os._exit(1)
    time.sleep(0.2)
    return False, 0.2


def test_a_dead_pool_worker_costs_only_its_own_task(tmp_path):
    cfg = RunConfig()
    tasks = {f"s/{key}": Task("s", key, cfg, needs) for key, needs in
             [("ok", ()), ("once", ()), ("always", ()), ("after", ("s/always",)), ("later", ("s/once",))]}
    graph = Plan(tasks, {"p": tuple(tasks)})
    outcomes: dict[str, str] = {}
    shown: dict[str, str] = {}   # the rows a sweep's display would show: running tasks only
    started: list[str] = []

    class Watch:
        def running(self, task_id: str, description: str) -> None:
            assert task_id not in shown
            shown[task_id] = description
            started.append(task_id)

        def stopped(self, task_id: str) -> None:
            del shown[task_id]

    ProcessPool(2, retries=1, work=_dies, watch=Watch()).run(graph, list(tasks.values()), tmp_path,
                                                             lambda o: outcomes.__setitem__(o.task.key, o.error))
    assert outcomes["ok"] == outcomes["once"] == outcomes["later"] == ""   # retried in a fresh pool
    assert outcomes["always"] == "its worker process died 2 times"
    assert outcomes["after"] == "not run: upstream s failed"
    assert shown == {} and "s/after" not in started   # no row outlives its task; a blocked task never gets one


def _sleeps(runs_dir: str, task: Task) -> tuple[bool, float]:
    """Stand in for `run_task`: a task long enough for the pool to see it running."""
    time.sleep(2.5)
    return False, 2.5


def test_a_pool_shows_a_row_per_task_its_workers_run_not_per_queued_task(tmp_path):
    tasks = {f"s/{key}": Task("s", key, RunConfig(), ()) for key in ("a", "b", "c")}
    graph = Plan(tasks, {"p": tuple(tasks)})
    rows: dict[str, str] = {}
    most: list[int] = []

    class Watch:
        def running(self, task_id: str, description: str) -> None:
            rows[task_id] = description
            most.append(len(rows))

        def stopped(self, task_id: str) -> None:
            del rows[task_id]

    ProcessPool(2, work=_sleeps, watch=Watch()).run(graph, list(tasks.values()), tmp_path, lambda o: None)
    assert len(most) == 3 and max(most) == 2 and rows == {}      # three tasks, never more rows than workers


@pytest.mark.slow
def test_an_unreachable_scheduler_is_a_usage_error(tmp_path, write_experiment):
    path = write_experiment(SMALL)
    result = run(["sweep", str(path), "--executor", "dask", "--scheduler", f"tcp://127.0.0.1:{_free_port()}"],
                 tmp_path / "runs")
    assert result.exit_code == 2 and "cannot reach the Dask scheduler" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_jobs_default_to_one_per_core_and_stay_in_process_for_one_task(monkeypatch):
    from dsetool import cli
    from dsetool.executors import InProcess, make_executor

    monkeypatch.setattr(cli.os, "cpu_count", lambda: 8)
    assert [cli._workers(None, todo) for todo in (0, 1, 3, 50)] == [1, 1, 3, 8]
    assert cli._workers(2, 50) == 2 and cli._workers(4, 1) == 4           # an explicit count is kept
    assert isinstance(make_executor(cli._workers(None, 1), "local", None, None, False), InProcess)
    assert isinstance(make_executor(cli._workers(None, 3), "local", None, None, False), ProcessPool)


@pytest.mark.parametrize("value", ["0", "two", "300"])
def test_a_bad_jobs_value_is_a_usage_error(tmp_path, write_experiment, value):
    path = write_experiment(SMALL)
    result = run(["sweep", str(path), "--jobs", value], tmp_path / "runs")
    assert result.exit_code == 2 and "--jobs" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("manifest.json"))
