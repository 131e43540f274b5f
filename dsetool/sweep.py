"""The stage graph of a whole sweep: every stage instance the grid needs, once, with what it waits for.

Design points share work through the store keys: two points whose `train-qat` reads the same settings have
one key, so one task, however many protections, fault specs or arrays sit downstream of it. Planning needs
only the config and the stage registry (no torch, no tools beyond their version strings), so a sweep
knows what is cached, what is left and in which order before it computes anything.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from dsetool.config import Experiment, RunConfig
from dsetool.design import design_of
from dsetool.stages import STAGES, point_stages, stage_key
from dsetool.store import Store


@dataclass(frozen=True)
class Task:
    """One stage instance: computing `stage` at `config` publishes the store entry `key`.

    `config` is the first design point that needs it (every point needing it reads the same settings).
    `needs` names the task ids (`stage/key`) that must be in the store before it runs.
    """

    stage: str
    key: str
    config: RunConfig
    needs: tuple[str, ...]

    @property
    def id(self) -> str:
        """Name the task uniquely in the sweep and in a Dask scheduler."""
        return f"{self.stage}/{self.key}"

    def with_threads(self, threads: int) -> Task:
        """Return the task with torch limited to `threads` per process (threads is in no stage key)."""
        if self.config.threads or threads <= 0:
            return self
        return dataclasses.replace(self, config=dataclasses.replace(self.config, threads=threads))


@dataclass(frozen=True)
class Plan:
    """The tasks of a sweep in dependency order, and the task ids each design point is made of."""

    tasks: Mapping[str, Task]
    points: Mapping[str, tuple[str, ...]]  # point label -> task ids

    def ordered(self) -> Iterator[Task]:
        """Yield the tasks upstream first (insertion order is already topological)."""
        yield from self.tasks.values()

    def first_point(self, task_id: str) -> str:
        """Return the label of the first design point made of task `task_id` (to name it in messages)."""
        return next(label for label, ids in self.points.items() if task_id in ids)

    def describe(self, task_id: str) -> str:
        """Return `stage at point`, how progress lines and errors name a task."""
        return f"{self.tasks[task_id].stage} at {self.first_point(task_id)}"

    def dependents(self) -> dict[str, list[str]]:
        """Return, for every task id, the ids of the tasks that wait for it."""
        out: dict[str, list[str]] = {task_id: [] for task_id in self.tasks}
        for task in self.tasks.values():
            for need in task.needs:
                out[need].append(task.id)
        return out


def plan(exp: Experiment) -> Plan:
    """Return the deduplicated stage graph of every design point of `exp`.

    A protected or triplicated point that synthesizes also gets the synthesis of its unprotected design
    (`Design.baseline`), the baseline its overhead is measured against, as a task of its own (shared by
    every such point).
    """
    tasks: dict[str, Task] = {}
    points: dict[str, tuple[str, ...]] = {}
    for point in exp.points:
        ids = []
        stages = point_stages(point.config)
        for stage in stages:
            ids.append(_add(tasks, _task(stage, point.config)))
        if "synth" in stages and (design := design_of(point.config)).protected:
            ids.append(_add(tasks, _task("synth", design.baseline().config)))
        points[point.label] = tuple(ids)
    return Plan(tasks, points)


def _add(tasks: dict[str, Task], task: Task) -> str:
    tasks.setdefault(task.id, task)
    return task.id


def index_keys(task_ids: Sequence[str]) -> dict[str, str]:
    """Return a point's {name: key} for the experiment index; the baseline synthesis is `synth-baseline`."""
    keys: dict[str, str] = {}
    for task_id in task_ids:
        stage, _, key = task_id.partition("/")
        keys[stage if stage not in keys else f"{stage}-baseline"] = key
    return keys


def _task(stage: str, cfg: RunConfig) -> Task:
    key = stage_key(stage, cfg)[0]
    needs = tuple(f"{up}/{stage_key(up, cfg)[0]}" for up in STAGES[stage].needs(cfg))
    return Task(stage, key, cfg, needs)


def cached(plan_: Plan, store: Store) -> set[str]:
    """Return the ids of the tasks whose entries are already in the store (verified)."""
    return {task.id for task in plan_.ordered() if store.get(task.stage, task.key) is not None}
