"""Run a sweep: plan the grid's stage graph, compute what the store lacks, record every finished point.

A point is recorded in its experiment's index as soon as its last task is in the store, so an interrupted
sweep keeps (and `runs gc` spares) everything it finished, and the same command resumes where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsetool.config import Experiment
from dsetool.executors import Executor, Outcome
from dsetool.progress import SweepProgress
from dsetool.store import Store
from dsetool.sweep import Plan, cached, index_keys, plan


@dataclass
class SweepResult:
    """What a sweep did: the plan, how many tasks were cache hits, the ids it computed, the failures (id -> error)."""

    plan: Plan
    cache_hits: int
    computed: set[str] = field(default_factory=set)
    seconds: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)


def first_point(plan_: Plan, task_id: str) -> str:
    """Return the label of the first design point made of task `task_id` (to name it in messages)."""
    return next(label for label, ids in plan_.points.items() if task_id in ids)


def run_sweep(exp: Experiment, store: Store, executor: Executor, progress: SweepProgress | None = None,
              planned: Plan | None = None) -> SweepResult:
    """Compute every task of `exp` the store does not hold and record each completed design point."""
    start = time.perf_counter()
    graph = planned or plan(exp)
    have = cached(graph, store)
    todo = [task for task in graph.ordered() if task.id not in have]
    result = SweepResult(graph, cache_hits=len(have))
    pending = {label: set(ids) - have for label, ids in graph.points.items()}
    sources = {point.label: point for point in exp.points}
    for label in [label for label, left in pending.items() if not left]:
        _record(store, exp, graph, label, sources[label].axes)

    def on_done(outcome: Outcome) -> None:
        task_id = outcome.task.id
        if outcome.error:
            result.failures[task_id] = outcome.error
        else:
            result.computed.add(task_id)
        for label, left in pending.items():
            if task_id in left:
                left.discard(task_id)
                if not left and not any(i in result.failures for i in graph.points[label]):
                    _record(store, exp, graph, label, sources[label].axes)
        if progress is not None:
            finished = sum(1 for left in pending.values() if not left)
            progress.task_done(f"{outcome.task.stage} at {first_point(graph, task_id)}", finished, outcome.error)

    executor.run(graph, todo, Path(store.root), on_done)
    result.seconds = time.perf_counter() - start
    return result


def _record(store: Store, exp: Experiment, graph: Plan, label: str, axes: Mapping[str, Any]) -> None:
    store.record_point(exp.name, exp.source, label, dict(axes), index_keys(graph.points[label]))
