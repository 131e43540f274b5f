"""Faults injected into the compiled RTL of the accelerator give the engine's fault model bit for bit:
activation-buffer flips (a layer's input or its requantized output) through the machine's fault port,
weight flips as a faulty weight memory, without and with a range check where the layers read their
inputs or after their output stages (which must clip the faulty codes as the engine's check does and
raise the alarm exactly when the engine says a check acted)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dsetool.engine import Engine
from dsetool.faults.network import EngineNetwork
from dsetool.faults.sites import site_groups
from dsetool.machine.alarms import engine_alarms
from dsetool.machine.compiler import compile_program
from dsetool.machine.encode import machine_of
from dsetool.machine.faults import (
    buffer_flip,
    check_faults,
    draw,
    flipped_weight,
    machine_groups,
    output_flip,
    session_runner,
)
from dsetool.protect.check import placed
from hw import machine_host, rtlsim
from hw.machine import Machine
from tests.fixtures.engines import digits, exported_engine
from tests.fixtures.range_checks import tight_checks

pytestmark = pytest.mark.slow
IMAGES = 8


@pytest.fixture(scope="module")
def lenet(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    torch.manual_seed(0)
    return exported_engine(tmp_path_factory.mktemp("lenet"), "lenet5", 8, "po2")


def _engine_maker(engine: Engine, placement: str | None):
    x = digits().test.x[:64]
    where = placed(engine.model, tight_checks(engine, x, "clip", "channel", inset=0), placement) if placement else {}

    def make(model):
        return Engine(model, multiplier_bits=engine.multiplier_bits, **where)

    return make


@pytest.mark.parametrize("placement", [None, "input", "output"])
def test_buffer_and_weight_faults_in_rtl_give_the_engines_outcomes(lenet: Engine, tmp_path: Path,
                                                                   placement: str | None) -> None:
    make = _engine_maker(lenet, placement)
    engine = make(lenet.model)
    program = compile_program(engine, 4, 4)
    shape, images = machine_of(program)
    x = digits().test.x[:IMAGES]
    acc = EngineNetwork(engine).acc_bits()
    groups = machine_groups(engine, acc)
    faults = draw(groups, IMAGES, 96, seed=3)
    assert {groups[g].site for g, *_ in faults} == {"act", "out", "weight"}
    compiled = rtlsim.build(Machine(shape, fault_port=True), tmp_path / "build")
    with compiled.open() as session:
        machine_host.load(session, shape, images)
        run = session_runner(session, program, shape, lambda p: machine_of(p)[1])
        golden_alarms = engine_alarms(engine, x) if placement else None
        outcome = check_faults(engine, program, x, groups, faults, run, make, golden_alarms)
    assert outcome.first_disagreement is None
    assert outcome.agree == outcome.faults == 96
    assert outcome.changed >= 5   # enough faults reach the logits for the agreement to mean something
    if placement:
        assert outcome.alarm_agree == outcome.faults


def test_a_buffer_flip_lands_on_the_word_and_lane_of_its_channel(lenet: Engine) -> None:
    program = compile_program(lenet, 4, 4)
    acc = EngineNetwork(lenet).acc_bits()
    groups = site_groups(lenet.model, "act", [], acc)
    second = groups[1]   # conv2 reads pool1's 6 x 14 x 14 codes
    c, y, x = 5, 3, 7
    flip = buffer_flip(program, second, (c * 14 + y) * 14 + x, 2)
    reader = next(i for i, instr in enumerate(program.instructions) if getattr(instr, "name", "") == second.layer)
    tensor = program.instructions[reader].source
    assert (flip.address, flip.lane, flip.mask) == (tensor.address(y, x, c // tensor.lanes), c % tensor.lanes, 4)
    assert flip.pc == reader


def test_an_output_flip_lands_in_the_tensor_its_layer_wrote_before_its_first_reader(lenet: Engine) -> None:
    program = compile_program(lenet, 4, 4)
    acc = EngineNetwork(lenet).acc_bits()
    groups = machine_groups(lenet, acc)
    outs = [g for g in groups if g.site == "out"]
    assert [g.layer for g in outs] == ["conv1", "conv2", "fc1", "fc2"]   # not fc3: its logits are not stored
    first = outs[0]   # conv1's 6 x 28 x 28 requantized codes, read by pool1
    c, y, x = 4, 20, 3
    flip = output_flip(program, first, (c * 28 + y) * 28 + x, first.width - 1)
    writer = next(i for i, instr in enumerate(program.instructions) if getattr(instr, "name", "") == "conv1")
    tensor = program.instructions[writer].dest
    assert (flip.address, flip.lane) == (tensor.address(y, x, c // tensor.lanes), c % tensor.lanes)
    assert flip.mask == 1 << (first.width - 1) and not first.signed
    assert flip.pc == writer + 1 and program.instructions[flip.pc].source.base == tensor.base
    logits = [g for g in site_groups(lenet.model, "out", [], acc) if g.layer == "fc3"][0]
    with pytest.raises(ValueError, match="fc3's output is not stored"):
        output_flip(program, logits, 0, 0)


def test_a_flipped_weight_changes_that_weight_alone(lenet: Engine) -> None:
    groups = site_groups(lenet.model, "weight", [], EngineNetwork(lenet).acc_bits())
    group = groups[0]
    faulty = flipped_weight(lenet.model, group, 7, group.width - 1)
    before = np.asarray(lenet.model.ops[group.op_index].weight).reshape(-1)
    after = np.asarray(faulty.ops[group.op_index].weight).reshape(-1)
    assert np.flatnonzero(before != after).tolist() == [7]
    assert (int(before[7]) < 0) != (int(after[7]) < 0)   # the sign bit
