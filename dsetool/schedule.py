"""Which ready task a pool starts next: the one with the longest chain of estimated work still behind it.

A pool that starts tasks in plan order puts the model chain (float model, quantized models, bounds,
campaigns) behind every synthesis that happened to be ready first, and can leave the longest synthesis for
last, so one core idles while the other finishes it. Ordering by the estimated seconds of the longest path
from a task to the end of the sweep (its "bottom level", the classic list-scheduling priority) starts long
syntheses first and starts each link of the model chain as soon as it is ready, with short tasks left to
fill the tail. The estimates only have to rank tasks, not predict wall time: they are rough seconds of
each stage on a 2-core laptop (LeNet-5 on the embedded digits, YoWASP Yosys/nextpnr).
"""

from __future__ import annotations

from collections.abc import Collection

from dsetool.config import RunConfig
from dsetool.sweep import Plan, Task

SECONDS_PER_EPOCH = 1.5       # LeNet-5 on the digits training split, 2 threads
CALIBRATION_SECONDS = 3.0     # a PTQ calibration pass
BOUNDS_SECONDS = 1.0          # profiling the bounds of one model
CAMPAIGN_SECONDS = 5.0        # one fault campaign of a few thousand faulty inferences
SYNTH_SECONDS_4X4 = 40.0      # Yosys + nextpnr of a 4x4 array on an ECP5
SYNTH_GROWTH = 1.3            # synthesis time grows a little faster than the PE count (routing congestion)
TMR_FACTOR = 4.0              # three datapaths and the voters


def estimate_seconds(task: Task) -> float:
    """Return a rough duration of `task`, good enough to rank it against the sweep's other tasks."""
    cfg: RunConfig = task.config
    if task.stage == "pretrain":
        return SECONDS_PER_EPOCH * cfg.train.pretrain.epochs
    if task.stage == "train-qat":
        return SECONDS_PER_EPOCH * cfg.train.qat.epochs
    if task.stage == "ptq":
        return CALIBRATION_SECONDS
    if task.stage == "range-restrict":
        return BOUNDS_SECONDS
    if task.stage == "inject":
        return CAMPAIGN_SECONDS
    if task.stage == "synth":
        pes = cfg.hw.rows * cfg.hw.cols
        seconds = SYNTH_SECONDS_4X4 * (pes / 16) ** SYNTH_GROWTH
        return seconds * (TMR_FACTOR if cfg.hw.tmr else 1.0)
    return CAMPAIGN_SECONDS


def bottom_levels(plan: Plan, todo: Collection[str]) -> dict[str, float]:
    """Return, for every task id in `todo`, its estimate plus the longest chain of todo tasks waiting on it.

    Tasks outside `todo` (already in the store) cost nothing and wait for nothing.
    """
    dependents = plan.dependents()
    levels: dict[str, float] = {}
    for task in reversed(list(plan.ordered())):   # dependents come later in the plan: visit them first
        if task.id not in todo:
            continue
        after = max((levels[d] for d in dependents[task.id] if d in levels), default=0.0)
        levels[task.id] = estimate_seconds(task) + after
    return levels
