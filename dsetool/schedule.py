"""Which ready task a pool starts next: work that unlocks other work first, then the longest first.

A pool that starts tasks in plan order puts the model chain (float model, quantized models, bounds,
campaigns) behind every synthesis that happened to be ready first, and can leave the longest synthesis for
last, so one core idles while the other finishes it. So a task that other tasks of the sweep wait for
starts before any task nothing waits for (the chain then runs on one worker alongside the syntheses and
keeps the ready set full, instead of ending the sweep with two workers and one chain), and among either
kind the one with the longest path of estimated seconds from it to the end of the sweep (its "bottom
level", the classic list-scheduling priority) goes first: the longest syntheses start early and short
campaigns fill the tail. The estimates only have to rank tasks, not predict wall time: they are rough
seconds of each stage on a 2-core laptop (LeNet-5 on the embedded digits, YoWASP Yosys/nextpnr).

Training runs on `train.threads` threads (2) even in a pool worker whose share is one core, so next to
a synthesis it shares a core (LeNet-5 W8A8 QAT: 12.9 s alone, 18.5 s next to nextpnr; on one thread 15.3 s
either way). Still it starts at once rather than waiting for a free machine: the synthesis beside it keeps
about 90 % of its speed, worth more than the 5.6 s the training loses.
"""

from __future__ import annotations

from collections.abc import Collection

from dsetool.config import RunConfig
from dsetool.design import design_of
from dsetool.sweep import Plan, Task

PRETRAIN_SECONDS_PER_EPOCH = 0.8   # float LeNet-5 on the digits training split, 2 threads
QAT_SECONDS_PER_EPOCH = 2.0        # the same network with Brevitas quantizers
CALIBRATION_SECONDS = 3.0          # a PTQ calibration pass
BOUNDS_SECONDS = 1.0               # profiling the bounds of one model
CAMPAIGN_SECONDS = 2.0             # one fault campaign of a few thousand faulty inferences
SYNTH_SECONDS_4X4 = 45.0           # Yosys + nextpnr of a W8A8 4x4 array on an ECP5
SYNTH_GROWTH = 1.3                 # synthesis time grows a little faster than the PE count (routing)
TMR_FACTOR = 4.0                   # three datapaths and the voters
ACCELERATOR_FACTOR = 3.5           # the whole accelerator against its datapath (LeNet-5 W8A8: 3.3x at 8x8)
UNLOCKS = 1e6                      # added to a task others wait for: it ranks above every task that is not


def estimate_seconds(task: Task) -> float:
    """Return a rough duration of `task`, good enough to rank it against the sweep's other tasks."""
    cfg: RunConfig = task.config
    if task.stage == "pretrain":
        return PRETRAIN_SECONDS_PER_EPOCH * cfg.train.pretrain.epochs
    if task.stage == "train-qat":
        return QAT_SECONDS_PER_EPOCH * cfg.train.qat.epochs
    if task.stage == "ptq":
        return CALIBRATION_SECONDS
    if task.stage == "range-restrict":
        return BOUNDS_SECONDS
    if task.stage == "inject":
        return CAMPAIGN_SECONDS
    if task.stage == "synth":
        pes = cfg.hw.rows * cfg.hw.cols
        bits = max(cfg.quant.weight_bits, cfg.quant.act_bits)   # 4x4 W4A4 took about half of W8A8
        seconds = SYNTH_SECONDS_4X4 * (pes / 16) ** SYNTH_GROWTH * (bits / 8) ** 0.8
        return seconds * (TMR_FACTOR if cfg.hw.tmr else 1.0) * (1.0 if design_of(cfg).unbuilt else ACCELERATOR_FACTOR)
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


def priorities(plan: Plan, todo: Collection[str]) -> dict[str, float]:
    """Return the rank of every task id in `todo` (higher starts first): `UNLOCKS` for a task other todo
    tasks wait for, plus its bottom level."""
    levels = bottom_levels(plan, todo)
    dependents = plan.dependents()
    return {task_id: level + (UNLOCKS if any(d in levels for d in dependents[task_id]) else 0.0)
            for task_id, level in levels.items()}
