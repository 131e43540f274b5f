"""Run a sweep: plan the grid's stage graph, compute what the store lacks, record every finished task.

Each finished task is recorded in its design points' entries of the experiment's index at once (and a
point is marked complete with its last task), so an interrupted sweep keeps what it finished, `runs gc`
spares it, and the same command resumes where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Collection
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
    """What a sweep did: the plan, its cache hits, the ids it computed, the failures (id -> error)."""

    plan: Plan
    cache_hits: int
    computed: set[str] = field(default_factory=set)
    seconds: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)
    complete: set[str] = field(default_factory=set)   # labels of the points whose every task is in the store


def run_sweep(exp: Experiment, store: Store, executor: Executor, progress: SweepProgress | None = None,
              planned: Plan | None = None, hits: Collection[str] | None = None) -> SweepResult:
    """Compute every task of `exp` the store does not hold and record each finished one in the index.

    `planned` and `hits` (the plan's cached task ids) may be passed when the caller already has them.
    """
    start = time.perf_counter()
    graph = planned or plan(exp)
    have = set(hits) if hits is not None else cached(graph, store)
    todo = [task for task in graph.ordered() if task.id not in have]
    result = SweepResult(graph, cache_hits=len(have))
    pending = {label: set(ids) - have for label, ids in graph.points.items()}
    axes = {point.label: dict(point.axes) for point in exp.points}
    _record(store, exp, graph, axes, have, result, pending)

    def on_done(outcome: Outcome) -> None:
        task_id = outcome.task.id
        if outcome.error:
            result.failures[task_id] = outcome.error
        elif outcome.cached:   # another sweep sharing the store published it first
            result.cache_hits += 1
        else:
            result.computed.add(task_id)
        if not outcome.error:
            _record(store, exp, graph, axes, {task_id}, result, pending)
        if progress is not None:
            progress.task_done(graph.describe(task_id), len(result.complete), outcome.error)

    executor.run(graph, todo, Path(store.root), on_done)
    result.seconds = time.perf_counter() - start
    return result


def _record(store: Store, exp: Experiment, graph: Plan, axes: dict[str, dict[str, Any]], done: Collection[str],
            result: SweepResult, pending: dict[str, set[str]]) -> None:
    """Record the finished tasks `done` in every design point made of them (one index write)."""
    updates: list[tuple[str, dict[str, Any], dict[str, str], bool | None]] = []
    for label, ids in graph.points.items():
        mine = [task_id for task_id in ids if task_id in done]
        if not mine:
            continue
        pending[label].difference_update(mine)
        complete = not pending[label]
        if complete:
            result.complete.add(label)
        updates.append((label, axes[label], _names(ids, mine), complete))
    if updates:
        store.record_points(exp.name, exp.source, updates)


def _names(ids: tuple[str, ...], mine: list[str]) -> dict[str, str]:
    """Return the index names of `mine` among a point's task ids (its second synthesis is the baseline)."""
    every = index_keys(ids)
    keys = {task_id.partition("/")[2] for task_id in mine}
    return {name: key for name, key in every.items() if key in keys}
