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
