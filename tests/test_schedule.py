"""The pool's order: work that unlocks other work first, then the longest chain of estimated work first."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from dsetool.config import HwConfig, RunConfig
from dsetool.executors import ProcessPool
from dsetool.schedule import bottom_levels, estimate_seconds, priorities
from dsetool.sweep import Plan, Task


def _array(rows: int, tmr: bool = False) -> RunConfig:
    return dataclasses.replace(RunConfig(), hw=HwConfig(rows=rows, cols=rows, tmr=tmr))


def _graph() -> Plan:
    """A model chain (float model -> QAT model -> campaign) listed before three syntheses."""
    cfg = RunConfig()
    tasks = [Task("pretrain", "float", cfg, ()), Task("train-qat", "w8", cfg, ("pretrain/float",)),
             Task("inject", "act", cfg, ("train-qat/w8",)), Task("synth", "small", _array(4), ()),
             Task("synth", "large", _array(8), ()), Task("synth", "tmr", _array(4, tmr=True), ())]
    return Plan({t.id: t for t in tasks}, {"p": tuple(t.id for t in tasks)})


def test_bigger_arrays_and_wider_operands_are_estimated_longer():
    small, large, tmr = (estimate_seconds(Task("synth", "k", cfg, ())) for cfg in (_array(4), _array(8),
                                                                                     _array(4, tmr=True)))
    narrow = dataclasses.replace(_array(4), quant=dataclasses.replace(RunConfig().quant, weight_bits=4, act_bits=4))
    assert estimate_seconds(Task("synth", "k", narrow, ())) < small < tmr and small * 4 < large
    datapath = dataclasses.replace(_array(4), hw=dataclasses.replace(_array(4).hw, synth="datapath"))
    assert estimate_seconds(Task("synth", "k", datapath, ())) * 3 < small   # the whole accelerator: ~3.5x


def test_a_task_ranks_by_the_longest_chain_it_starts():
    graph = _graph()
    levels = bottom_levels(graph, set(graph.tasks))
    chain = [estimate_seconds(graph.tasks[i]) for i in ("pretrain/float", "train-qat/w8", "inject/act")]
    assert levels["pretrain/float"] == sum(chain)               # the whole chain waits on the float model
    assert levels["inject/act"] == chain[-1]
    assert levels["synth/large"] > levels["synth/tmr"] > levels["synth/small"]


def test_cached_tasks_add_nothing_to_a_chain():
    graph = _graph()
    levels = bottom_levels(graph, {"pretrain/float", "synth/small"})
    assert set(levels) == {"pretrain/float", "synth/small"}
    assert levels["pretrain/float"] == estimate_seconds(graph.tasks["pretrain/float"])


def test_work_that_unlocks_work_ranks_above_every_leaf():
    graph = _graph()
    rank = priorities(graph, set(graph.tasks))
    leaves = [rank[i] for i in ("inject/act", "synth/small", "synth/large", "synth/tmr")]
    assert min(rank["pretrain/float"], rank["train-qat/w8"]) > max(leaves)
    assert rank["pretrain/float"] > rank["train-qat/w8"]
    assert rank["synth/large"] > rank["synth/tmr"] > rank["synth/small"] > rank["inject/act"]


def _logs_start(runs_dir: str, task: Task) -> tuple[bool, float]:
    """Stand in for `run_task`: append the task's id to a log in the order the worker starts tasks."""
    with (Path(runs_dir) / "started.log").open("a") as log:
        log.write(task.id + "\n")
    time.sleep(0.05)
    return False, 0.05


def test_a_pool_starts_the_most_urgent_ready_task_not_the_first_listed(tmp_path):
    graph = _graph()
    ProcessPool(1, work=_logs_start).run(graph, list(graph.ordered()), tmp_path, lambda o: None)
    started = (tmp_path / "started.log").read_text().split()
    # the chain first (each link as soon as it is ready), then the leaves longest first (the plan lists
    # the campaign before the syntheses, and the syntheses smallest first)
    assert started == ["pretrain/float", "train-qat/w8", "synth/large", "synth/tmr", "synth/small", "inject/act"]
