"""The timing loop the benchmark scripts share (each script runs from this directory, so it imports this)."""

from __future__ import annotations

import time
from collections.abc import Callable


def call_seconds(run: Callable[[], object], repeats: int, warmups: int = 1) -> list[float]:
    """Return the wall time of each of `repeats` calls of `run`, after `warmups` untimed calls (the first
    calls pay for allocations and compilation a steady state does not)."""
    for _ in range(warmups):
        run()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return times
