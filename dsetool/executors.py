"""Where a sweep's tasks run: in this process, in a local process pool, or on a Dask cluster.

Every executor runs the same function, `run_task`, which opens the store by path and publishes one entry
(the store's per-key lock and atomic rename make concurrent writers safe, and a task killed half-way
leaves nothing that reads as valid). An executor only decides where and when: a task starts once the
tasks it needs are in the store. It reports each finished task to `on_done` in the calling process and
never stops the sweep for one failure: the tasks downstream of a failed one are reported as failed too,
and everything independent of it still runs (so the next run resumes with less to do).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from dsetool.progress import Reporter, SilentReporter, SweepProgress
from dsetool.schedule import priorities
from dsetool.sweep import Plan, Task


@dataclass(frozen=True)
class Outcome:
    """How one task ended: `error` is empty when its entry is in the store."""

    task: Task
    cached: bool
    seconds: float
    error: str = ""


OnDone = Callable[[Outcome], None]


class ExecutorError(Exception):
    """The executor cannot run at all (e.g. the Dask scheduler is unreachable): a usage error."""


class Executor(Protocol):
    """Run the tasks of a plan that are not done yet, upstream first."""

    def run(self, plan: Plan, todo: Sequence[Task], runs_dir: Path, on_done: OnDone) -> None:
        """Compute every task in `todo` (a dependency-ordered subset of `plan`), calling `on_done` for each."""


def run_task(runs_dir: str, task: Task, reporter: Reporter | None = None, *_after: Any) -> tuple[bool, float]:
    """Compute one task into the store at `runs_dir`; return (cached, seconds).

    `_after` takes the results of the tasks it waits for, so Dask orders it after them; they are unused.
    """
    import time

    from dsetool.stages import ensure
    from dsetool.store import Store

    start = time.perf_counter()
    entry, cached = ensure(Store(runs_dir), task.stage, task.config, reporter or SilentReporter())
    if entry.key != task.key:  # pragma: no cover - the plan and the worker disagree on the code
        raise RuntimeError(f"{task.stage} computed key {entry.key[:12]}, the plan expected {task.key[:12]}: "
                           f"do the workers run the same dsetool version?")
    return cached, time.perf_counter() - start


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class _Blocked:
    """Track failed tasks so their dependents are reported failed instead of run."""

    def __init__(self, plan: Plan, on_done: OnDone) -> None:
        self.plan = plan
        self.on_done = on_done
        self.failed: dict[str, str] = {}

    def blocker(self, task: Task) -> str | None:
        return next((need for need in task.needs if need in self.failed), None)

    def skip(self, task: Task, need: str) -> None:
        self.failed[task.id] = f"not run: upstream {need.split('/')[0]} failed"
        self.on_done(Outcome(task, False, 0.0, self.failed[task.id]))

    def fail(self, task: Task, error: str, seconds: float = 0.0) -> None:
        self.failed[task.id] = error
        self.on_done(Outcome(task, False, seconds, error))


class InProcess:
    """Run the tasks one after another in this process, showing each stage's own progress."""

    def __init__(self, reporter: Reporter | None = None, debug: bool = False) -> None:
        self.reporter = reporter
        self.debug = debug

    def run(self, plan: Plan, todo: Sequence[Task], runs_dir: Path, on_done: OnDone) -> None:
        """Compute `todo` in order; a failure blocks only its dependents (re-raised with `debug`)."""
        blocked = _Blocked(plan, on_done)
        for task in todo:
            need = blocked.blocker(task)
            if need is not None:
                blocked.skip(task, need)
                continue
            try:
                cached, seconds = run_task(str(runs_dir), task, self.reporter)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                if self.debug:
                    raise
                blocked.fail(task, _error(exc))
                continue
            on_done(Outcome(task, cached, seconds))


def _limit_threads(threads: int) -> None:
    """Pin every math library of a pool worker to its share of the cores (set before torch loads)."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[name] = str(threads)
    # Training runs on `train.threads` whatever this share is, so two workers can hold more threads than
    # there are cores: idle OpenMP threads must sleep, not spin, or they steal the other worker's core.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


WATCH_SECONDS = 1.0   # how often a pool looks for tasks its workers have started (for the progress rows)


class Watch(Protocol):
    """What a pool tells about the tasks its workers run (`SweepProgress` draws a row for each)."""

    def running(self, task_id: str, description: str) -> None:
        """A worker started the task."""

    def stopped(self, task_id: str) -> None:
        """The task finished, failed or was lost with its worker."""


class ProcessPool:
    """Run up to `jobs` tasks at once in fresh worker processes, each with its share of the cores.

    A worker that dies (killed, out of memory) breaks a `ProcessPoolExecutor` for every task in it; the
    pool is then replaced and the tasks that were running rerun one at a time, so the one that kills its
    worker is found (and fails after `retries` deaths) without failing the work that merely shared its pool.
    """

    def __init__(self, jobs: int, retries: int = 1, work: Callable[..., tuple[bool, float]] = run_task,
                 watch: Watch | None = None) -> None:
        self.jobs = jobs
        self.watch = watch   # shown which tasks are running (a sweep's progress display)
        self.retries = retries
        self.work = work   # what a worker runs per task (a module-level function: it is pickled)
        self.threads = max(1, (os.cpu_count() or 1) // jobs)

    def _pool(self) -> Any:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")  # no fork of a process that may hold torch threads
        return ProcessPoolExecutor(self.jobs, mp_context=context, initializer=_limit_threads,
                                   initargs=(self.threads,))

    def _lost(self, tasks: list[Task], deaths: dict[str, int], suspects: set[str], waiting: dict[str, Task],
              blocked: _Blocked) -> None:
        """Requeue the tasks of a pool whose worker died. Which task killed it is known only when it ran
        alone: that one counts a death (and fails after `retries`); the others rerun alone to find out."""
        for task in tasks:
            if len(tasks) == 1:
                deaths[task.id] = deaths.get(task.id, 0) + 1
                if deaths[task.id] > self.retries:
                    blocked.fail(task, f"its worker process died {deaths[task.id]} times")
                    continue
            suspects.add(task.id)
            waiting[task.id] = task

    def _show_started(self, plan: Plan, running: Mapping[Any, Task], shown: set[str]) -> None:
        """Tell the watch about tasks a worker has picked up (a submitted future reads `running` once it
        enters the pool's call queue; no more tasks than workers are submitted, so each of them runs)."""
        if self.watch is None:
            return
        executing = [task for future, task in running.items() if future.running()][:self.jobs]
        for task in executing:
            if task.id not in shown:
                shown.add(task.id)
                self.watch.running(task.id, plan.describe(task.id))

    def _hide(self, task: Task, shown: set[str]) -> None:
        if self.watch is not None and task.id in shown:
            shown.discard(task.id)
            self.watch.stopped(task.id)

    def run(self, plan: Plan, todo: Sequence[Task], runs_dir: Path, on_done: OnDone) -> None:
        """Start the most urgent ready task (`dsetool.schedule`) on each idle worker until all are done."""
        from concurrent.futures import FIRST_COMPLETED, Future, wait
        from concurrent.futures.process import BrokenProcessPool

        blocked = _Blocked(plan, on_done)
        waiting = {task.id: task for task in todo}
        done = {task_id for task_id in plan.tasks if task_id not in waiting}
        running: dict[Future[tuple[bool, float]], Task] = {}
        deaths: dict[str, int] = {}
        suspects: set[str] = set()   # tasks that were in a pool when a worker died: each reruns alone
        shown: set[str] = set()      # tasks the watch was told are running
        pool = self._pool()

        rank = priorities(plan, waiting)

        def ready() -> list[Task]:
            tasks = [t for t in waiting.values() if all(n in done or n in blocked.failed for n in t.needs)]
            return sorted(tasks, key=lambda t: -rank[t.id])   # stable: plan order breaks ties

        def submittable() -> list[Task]:
            """The most urgent ready tasks, one per idle worker (a task is never queued behind another, so
            one that becomes ready later and ranks higher still goes first)."""
            tasks = ready()
            if any(t.id in suspects for t in tasks) and not running:
                return [next(t for t in tasks if t.id in suspects)]
            if any(running[f].id in suspects for f in running):
                return []
            return [t for t in tasks if t.id not in suspects][:self.jobs - len(running)]

        try:
            while waiting or running:
                broken = False
                for task in submittable():
                    del waiting[task.id]
                    need = blocked.blocker(task)
                    if need is not None:
                        blocked.skip(task, need)
                        continue
                    try:
                        running[pool.submit(self.work, str(runs_dir), task.with_threads(self.threads))] = task
                    except BrokenProcessPool:
                        waiting[task.id] = task   # never started: not an attempt
                        broken = True
                        break
                if running and not broken:
                    finished, _ = wait(running, timeout=WATCH_SECONDS, return_when=FIRST_COMPLETED)
                    for future in finished:
                        task = running[future]
                        try:
                            cached, seconds = future.result()
                        except BrokenProcessPool:
                            broken = True
                            continue   # lost with the rest of the pool below
                        except Exception as exc:
                            blocked.fail(task, _error(exc))
                        else:
                            done.add(task.id)
                            on_done(Outcome(task, cached, seconds))
                        self._hide(task, shown)
                        del running[future]
                    self._show_started(plan, running, shown)
                elif not running and not broken and waiting and not ready():  # pragma: no cover - plans are ordered
                    raise RuntimeError(f"sweep: {len(waiting)} tasks wait for tasks outside the plan")
                if broken:
                    for task in running.values():
                        self._hide(task, shown)
                    self._lost(list(running.values()), deaths, suspects, waiting, blocked)
                    running.clear()
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = self._pool()
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()


class Dask:
    """Run the tasks on a Dask distributed cluster whose workers share `runs_dir` (a shared file system).

    Each task is one Dask task named after its store key and given the futures of the tasks it needs,
    so the scheduler orders them; a worker that dies mid-task has its task rescheduled on another
    worker (the store never publishes a half-written entry), and a task that raises is retried
    `retries` times before it counts as failed.
    """

    def __init__(self, scheduler: str, retries: int = 1) -> None:
        self.scheduler = scheduler
        self.retries = retries

    def run(self, plan: Plan, todo: Sequence[Task], runs_dir: Path, on_done: OnDone) -> None:
        """Submit the whole graph at once and report tasks as they finish."""
        from distributed import Client, as_completed

        try:
            client = Client(self.scheduler, timeout="30s")
        except (OSError, TimeoutError) as exc:
            raise ExecutorError(f"cannot reach the Dask scheduler at {self.scheduler}: {exc}") from None
        with client:
            rank = priorities(plan, {task.id for task in todo})   # Dask starts higher priorities first
            futures: dict[str, Any] = {}
            for task in todo:
                after = [futures[need] for need in task.needs if need in futures]
                futures[task.id] = client.submit(run_task, str(runs_dir.resolve()), task, None, *after,
                                                 key=task.id.replace("/", "-"), pure=False, retries=self.retries,
                                                 priority=round(rank[task.id]))
            tasks = {future.key: plan.tasks[task_id] for task_id, future in futures.items()}
            blocked = _Blocked(plan, on_done)
            for future in as_completed(list(futures.values())):
                task = tasks[future.key]
                try:
                    cached, seconds = future.result()
                except Exception as exc:
                    # a task whose upstream failed raises the upstream's error: name it as blocked by it
                    need = blocked.blocker(task) or next(
                        (n for n in task.needs if n in futures and futures[n].status == "error"), None)
                    if need is not None:
                        blocked.skip(task, need)
                    else:
                        blocked.fail(task, _error(exc))
                    continue
                on_done(Outcome(task, cached, seconds))


def make_executor(jobs: int, executor: str, scheduler: str | None, reporter: Reporter | None,
                  debug: bool) -> Executor:
    """Return the executor the command line asked for."""
    if executor == "dask":
        if not scheduler:
            raise ValueError("--executor dask needs --scheduler tcp://HOST:PORT")
        return Dask(scheduler)
    watch = reporter if isinstance(reporter, SweepProgress) else None
    return InProcess(reporter, debug) if jobs == 1 else ProcessPool(jobs, watch=watch)
