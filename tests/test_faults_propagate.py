"""Sparse propagation of activation faults gives exactly the logits of recomputing the faulty inference.

On a model with the awkward geometry the zoo lacks (strided, padded convolutions; overlapping, padded
max-pool windows; a pool between a convolution and its output stage; a non-square map; per-channel
scales) and on both output-stage kinds (po2: float32 shifts; float: the fixed-point multiplier), whether
faults stay sparse as far as they can (`SPARSE_COST` 0) or hand over to the dense computation at the
first convolution after the fault (huge `SPARSE_COST`).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsetool.engine import Engine
from dsetool.engine.intmodel import IntModel
from dsetool.faults import apply, kernels, propagate
from dsetool.faults.apply import Faults, evaluate
from dsetool.faults.campaign import CampaignSpec, draw_shard
from dsetool.faults.network import EngineNetwork
from dsetool.faults.sampler import FaultList
from dsetool.faults.sites import SiteGroup, site_groups
from dsetool.protect.bounds import protected_ops
from dsetool.protect.check import RangeCheck, at_inputs
from tests.test_engine_ops import Builder
from tests.test_faults_campaign import brute_force

N_INPUTS = 24


def awkward_model(scaling: str) -> Builder:
    """A small net whose pools overlap and pad and whose convolutions stride and pad; conv3 pools its
    accumulators before the output stage (the unfused path)."""
    return Builder((2, 13, 11), 8, 2.0**-6, scaling=scaling, per_channel=True, seed=11) \
        .conv("conv1", 6, 3, padding=1, stride=2).relu("relu1", 8, 2.0**-3) \
        .pool("pool1", kernel=3, stride=2, padding=1) \
        .conv("conv2", 8, 3, padding=1).relu("relu2", 6, 2.0**-2) \
        .conv("conv3", 5, 2).pool("pool3", kernel=2, stride=1).relu("relu3", 6, 2.0**-2) \
        .flatten().linear("fc1", 12).relu("relu4", 8, 2.0**-2).linear("fc2", 4)


def narrow_checks(model: IntModel, mode: str | None) -> dict[int, RangeCheck]:
    """Range checks on every requantized layer output, narrow enough to fire often: [1, half the codes]."""
    if mode is None:
        return {}
    return {index: RangeCheck(mode, np.ones(op.out_shape[0], dtype=np.int64),
                              np.full(op.out_shape[0], max(1, op.qrange[1] // 2), dtype=np.int64))
            for _, index in protected_ops(model, []) for op in [model.ops[index]]}


def act_faults(builder: Builder, network: EngineNetwork, layers: list[str], model: str, size: int, seed: int
               ) -> tuple[list[SiteGroup], FaultList]:
    """Draw `size` single activation faults (one per inference) over `layers` (empty: all)."""
    groups = site_groups(network.engine.model, "act", layers, network.acc_bits())
    spec = CampaignSpec(model=model, bits="all", faults_per_inference=1, ber=None, samples=size, margin=0.02,
                        confidence=0.95, early_stop=False, seed=seed, shard_size=size, batch_size=size)
    return groups, draw_shard(spec, groups, N_INPUTS, shard=0, size=size)


def checked_engine(model: IntModel, check: str | None, placement: str) -> Engine:
    """The engine with `narrow_checks` after the output stages or at the weight layers' inputs."""
    checks = narrow_checks(model, check)
    if placement == "input":
        return Engine(model, input_checks=at_inputs(model, checks))
    return Engine(model, checks=checks)


@pytest.mark.parametrize("scaling", ["po2", "float"])
@pytest.mark.parametrize("cost, check, placement", [(0, None, "output"), (10**9, None, "output"),
                                                    (0, "clip", "output"), (0, "zero", "output"),
                                                    (10**9, "zero", "output"), (0, "clip", "input"),
                                                    (10**9, "zero", "input")])
def test_sparse_propagation_equals_recomputing(monkeypatch: pytest.MonkeyPatch, scaling: str, cost: int,
                                               check: str | None, placement: str) -> None:
    """With a range check after every output stage or at every weight layer's input, too: the sparse path
    applies it as the engine does."""
    monkeypatch.setattr(propagate, "SPARSE_COST", cost)
    monkeypatch.setattr(propagate, "DENSE_START", 0)   # the dense path whenever the cost says so
    builder = awkward_model(scaling)
    model = builder.build()
    engine = checked_engine(model, check, placement)
    network = EngineNetwork(engine)
    x = torch.rand(N_INPUTS, *builder.input_shape, generator=torch.Generator().manual_seed(0)) * 3.5
    golden = engine.run(x, keep=True)
    assert check is None or not torch.equal(golden[-1], Engine(model).run(x))   # the checks do fire
    groups, faults = act_faults(builder, network, [], "bitflip", 300, seed=5)
    logits = evaluate(network, golden, faults.inputs, groups,
                      Faults(faults.trial, faults.group, faults.element, faults.bit), "bitflip").logits
    reached = dict.fromkeys(("conv1", "conv2", "conv3"), 0)
    for t in range(faults.size):
        group = groups[int(faults.group[t])]
        expected = brute_force(engine, None, group, x[faults.inputs[t]], int(faults.element[t]),
                               int(faults.bit[t]), "bitflip").reshape(-1)
        assert torch.equal(logits[t], expected.to(logits.dtype)), (group.layer, t)
        if group.layer in reached:
            reached[group.layer] += int(not torch.equal(expected, golden[-1][faults.inputs[t]]))
    assert min(reached.values()) >= 10, f"too few faults reach the logits to compare: {reached}"
    assert {groups[int(g)].layer for g in np.unique(faults.group)} >= {"conv1", "conv2", "conv3", "fc1", "fc2"}


@pytest.mark.parametrize("scaling", ["po2", "float"])
@pytest.mark.parametrize("check, placement, layers", [
    (None, "output", []), ("clip", "output", []), ("zero", "output", []), ("detect", "output", []),
    ("clip", "input", []), ("detect", "input", []), ("clip", "input", ["fc2"]), ("zero", "input", ["fc2"])])
@pytest.mark.parametrize("model", ["bitflip", "stuck1"])
def test_sparse_and_dense_paths_agree_on_what_masked_and_what_detected(
        monkeypatch: pytest.MonkeyPatch, scaling: str, check: str | None, placement: str, layers: list[str],
        model: str) -> None:
    """Each fault's masking step and detection, followed sparsely (compiled kernels) or dense (tensors);
    also with every fault in the logits layer's input (its input check masks at the last op)."""
    builder = awkward_model(scaling)
    int_model = builder.build()
    engine = checked_engine(int_model, check, placement)
    network = EngineNetwork(engine)
    x = torch.rand(N_INPUTS, *builder.input_shape, generator=torch.Generator().manual_seed(1)) * 3.5
    golden = engine.run(x, keep=True)
    groups, drawn = act_faults(builder, network, layers, model, 400, seed=9)
    faults = Faults(drawn.trial, drawn.group, drawn.element, drawn.bit)
    sparse = evaluate(network, golden, drawn.inputs, groups, faults, model)
    monkeypatch.setattr(apply, "follows", lambda engine: False)
    dense = evaluate(network, golden, drawn.inputs, groups, faults, model)
    assert torch.equal(sparse.logits, dense.logits)
    assert np.array_equal(sparse.masked_by, dense.masked_by)
    assert np.array_equal(sparse.detected, dense.detected)
    steps = {kernels.MASKED_BY[code] for code in np.unique(sparse.masked_by)}
    if layers:   # only the logits layer's input: its check, or no change at all
        assert steps <= {"", "protection", "arithmetic"} and "protection" in steps, steps
        return
    assert steps >= {"", "relu", "rounding", "pool"}, steps
    assert ("protection" in steps) <= (check in ("clip", "zero")), steps
    assert ("protection" in steps) >= (check == "clip"), steps
    assert sparse.detected.any() == (check is not None)
    assert not (sparse.detected & (sparse.masked_by == kernels.RELU)).all()
