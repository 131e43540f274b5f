"""Progress reporting that stage code can call without knowing whether a terminal is attached."""

from __future__ import annotations

import sys
from typing import Any, Protocol


class Reporter(Protocol):
    """What long-running stage code reports: a task with a known number of steps, and notes."""

    def start(self, description: str, total: int) -> None:
        """Begin a task of `total` steps (e.g. epochs)."""

    def advance(self, **fields: Any) -> None:
        """Mark one step done; `fields` (loss, acc, ...) are shown beside the bar."""

    def finish(self) -> None:
        """End the current task."""

    def note(self, text: str) -> None:
        """Print one line of information for humans."""


class SilentReporter:
    """Report nothing (library use, tests, workers)."""

    def start(self, description: str, total: int) -> None:
        """Ignore."""

    def advance(self, **fields: Any) -> None:
        """Ignore."""

    def finish(self) -> None:
        """Ignore."""

    def note(self, text: str) -> None:
        """Ignore."""


class RichReporter:
    """Draw one rich progress bar per task on stderr (stdout is reserved for --json output)."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self._progress: Any = None
        self._task: Any = None

    def start(self, description: str, total: int) -> None:
        """Open a bar with the stage name, a step counter, the latest fields and the ETA."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.finish()
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
            console=self.console, transient=False, disable=not sys.stderr.isatty(),
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, info="")

    def advance(self, **fields: Any) -> None:
        """Step the bar and show the fields, e.g. `loss 0.12 acc 97.1%`."""
        if self._progress is None:
            return
        info = "  ".join(f"{k} {_fmt(v)}" for k, v in fields.items())
        self._progress.update(self._task, advance=1, info=info)
        if not sys.stderr.isatty():
            task = self._progress.tasks[0]
            self.console.print(f"{task.description} {int(task.completed)}/{int(task.total or 0)} {info}")

    def finish(self) -> None:
        """Close the bar if one is open."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def note(self, text: str) -> None:
        """Print a line above any bar."""
        self.console.print(text, highlight=False)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class SweepProgress:
    """One bar for the whole sweep (tasks done, points done, cache hits, ETA) and one for the running stage.

    Both live in one rich display (rich draws one live display at a time). The stage bar is the
    `Reporter` that stages running in this process draw on; a task running in a local pool worker gets a
    row with its elapsed time instead (`running`/`stopped`), and Dask tasks only advance the sweep bar.
    Without a terminal, each finished task prints one line instead.
    """

    def __init__(self, experiment: str, tasks: int, points: int, cached: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.tty = sys.stderr.isatty()
        self.console = Console(stderr=True, width=None if self.tty else 160)
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, disable=not self.tty,
        )
        self.points = points
        self.cached = cached
        self._sweep = self._progress.add_task(f"sweep {experiment}", total=tasks, info="")
        self._stage: Any = None
        self._workers: dict[str, Any] = {}   # task id -> row of a task running in a worker process
        self._progress.start()

    def task_done(self, description: str, points_done: int, error: str = "") -> None:
        """Advance the sweep bar by one computed task."""
        info = f"points {points_done}/{self.points}  cache hits {self.cached}"
        self._progress.update(self._sweep, advance=1, info=info)
        if not self.tty:
            task = self._progress.tasks[self._sweep]
            status = f"FAILED {error}" if error else "done"
            self.console.print(f"[{int(task.completed)}/{int(task.total or 0)}] {description}: {status} ({info})",
                               highlight=False, markup=False)
        elif error:
            self.console.print(f"{description}: FAILED {error}", highlight=False, markup=False)

    def running(self, task_id: str, description: str) -> None:
        """Show a task a worker process has started (its own stage bar lives in that process): one row
        per running task, with the time it has taken so far."""
        self._workers[task_id] = self._progress.add_task(f"  {description}", total=None, info="running")

    def stopped(self, task_id: str) -> None:
        """Remove a worker's task row (finished, failed or lost with its worker)."""
        row = self._workers.pop(task_id, None)
        if row is not None:
            self._progress.remove_task(row)

    def close(self) -> None:
        """Stop drawing."""
        self.finish()
        self._progress.stop()

    def start(self, description: str, total: int) -> None:
        """Begin the running stage's bar (Reporter)."""
        self.finish()
        self._stage = self._progress.add_task(f"  {description}", total=total, info="")

    def advance(self, **fields: Any) -> None:
        """Step the running stage's bar (Reporter)."""
        if self._stage is not None:
            info = "  ".join(f"{k} {_fmt(v)}" for k, v in fields.items())
            self._progress.update(self._stage, advance=1, info=info)

    def finish(self) -> None:
        """Remove the running stage's bar (Reporter)."""
        if self._stage is not None:
            self._progress.remove_task(self._stage)
            self._stage = None

    def note(self, text: str) -> None:
        """Print a line above the bars (Reporter)."""
        self.console.print(text, highlight=False, markup=False)
