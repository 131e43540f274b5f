"""The network's untrained skeleton builds the same accelerator as a model with other weights and scales
(what lets one synthesis serve every trained model of a design point)."""

from __future__ import annotations

import dataclasses

import pytest

from dsetool.config import RunConfig
from dsetool.design import design_of
from dsetool.machine.build import checked_engine, design_machine, machine_acc_bits
from dsetool.machine.compiler import UnsupportedOp, compile_program
from dsetool.machine.program import program_cycles
from dsetool.stages.skeleton import skeleton_bounds, skeleton_model
from tests.fixtures.engines import exported_engine


def _config(bits: int, granularity: str, seed: int, protection: str = "none", placement: str = "output") -> RunConfig:
    base = RunConfig()
    quant = dataclasses.replace(base.quant, weight_bits=bits, act_bits=bits, weight_granularity=granularity)
    hw = dataclasses.replace(base.hw, rows=4, cols=4, protection=protection)
    model = dataclasses.replace(base.model, arch="lenet5")
    protect = dataclasses.replace(base.protect, placement=placement)
    return dataclasses.replace(base, seed=seed, quant=quant, hw=hw, model=model, protect=protect)


@pytest.mark.parametrize(("bits", "protection", "placement"), [(4, "none", "output"), (8, "clip", "output"),
                                                               (4, "sed", "input")])
def test_the_skeleton_builds_the_machine_a_model_with_other_weights_builds(tmp_path, bits, protection, placement):
    cfg = _config(bits, "per_tensor", seed=7, protection=protection, placement=placement)
    design = design_of(cfg)
    model, calib = skeleton_model(cfg, tmp_path / "skeleton")
    skeleton = compile_program(checked_engine(design, model, skeleton_bounds(design, model, calib)), 4, 4)
    other = exported_engine(tmp_path / "other", bits=bits, granularity="per_channel")   # other seed and scales
    trained_design = design_of(_config(bits, "per_channel", seed=0, protection=protection, placement=placement))
    trained = compile_program(checked_engine(trained_design, other.model,
                                             skeleton_bounds(trained_design, other.model, calib[:16])), 4, 4)
    assert skeleton.weights != trained.weights
    shape, _ = design_machine(design, skeleton)
    assert shape == design_machine(design, trained)[0]
    assert program_cycles(skeleton) == program_cycles(trained)
    assert shape.array.acc_bits == machine_acc_bits(design) == design.acc_bits + 1
    assert shape.check == {"none": "none", "clip": "clip", "sed": "detect"}[protection]
    assert (shape.input_check, shape.bounds_words > 0) == ((placement == "input"),) * 2


def test_a_model_needing_wider_accumulators_than_the_design_is_refused(tmp_path):
    cfg = _config(4, "per_tensor", seed=7)
    design = design_of(dataclasses.replace(cfg, hw=dataclasses.replace(cfg.hw, acc_bits=8)))
    program = compile_program(design.engine(skeleton_model(cfg, tmp_path)[0]), 4, 4)
    with pytest.raises(UnsupportedOp, match=r"accumulators need \d+ bits; the machine has 8"):
        design_machine(design, program)
