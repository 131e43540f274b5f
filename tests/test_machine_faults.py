"""Faults injected into the compiled RTL of the accelerator give the engine's fault model bit for bit:
activation-buffer flips (a layer's input or its requantized output) through the machine's fault port,
weight flips as a faulty weight memory, PE-register flips at one cycle through its PE fault port (on the
single-buffered machine's tile windows and the double-buffered one's shared timeline), without and with
a range check where the layers read their inputs or after their output stages (which must clip the
faulty codes as the engine's check does and raise the alarm exactly when the engine says a check
acted)."""

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
    PE_SITES,
    buffer_flip,
    check_faults,
    draw,
    engine_outcomes,
    flipped_weight,
    machine_groups,
    output_flip,
    pe_flip,
    session_runner,
)
from dsetool.protect.check import placed
from hw import machine_host, rtlsim
from hw.machine import Machine
from tests.fixtures.engines import digits, exported_engine, factory_engine
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


def _check_in_rtl(engine: Engine, program, x: torch.Tensor, groups, faults, workdir: Path, make=None,
                  golden_alarms: np.ndarray | None = None, **machine):
    """Build the machine of `program` (`machine_of`'s `machine` options) with its fault ports, load it and
    run `check_faults` on it."""
    shape, images = machine_of(program, **machine)
    compiled = rtlsim.build(Machine(shape, fault_port=True), workdir)
    with compiled.open() as session:
        machine_host.load(session, shape, images)
        run = session_runner(session, program, shape, lambda p: machine_of(p, **machine)[1])
        return check_faults(engine, program, x, groups, faults, run, make or Engine, golden_alarms,
                            tmr=machine.get("tmr", False))


@pytest.mark.parametrize("placement", [None, "input", "output"])
def test_buffer_and_weight_faults_in_rtl_give_the_engines_outcomes(lenet: Engine, rtl_builds: Path,
                                                                   placement: str | None) -> None:
    make = _engine_maker(lenet, placement)
    engine = make(lenet.model)
    program = compile_program(engine, 4, 4)
    x = digits().test.x[:IMAGES]
    acc = EngineNetwork(engine).acc_bits()
    groups = machine_groups(engine, acc)
    faults = draw(groups, IMAGES, 96, seed=3)
    assert {groups[g].site for g, *_ in faults} == {"act", "out", "weight"}
    outcome = _check_in_rtl(engine, program, x, groups, faults, rtl_builds, make,
                            engine_alarms(engine, x) if placement else None)
    assert outcome.first_disagreement is None
    assert outcome.agree == outcome.faults == 96
    assert outcome.changed >= 5   # enough faults reach the logits for the agreement to mean something
    if placement:
        assert outcome.alarm_agree == outcome.faults


@pytest.mark.parametrize("dataflow, weight_buffers, placement",
                         [("ws", 1, None), ("ws", 2, None), ("ws", 2, "input"), ("os", 1, None)])
def test_pe_register_faults_in_rtl_give_the_engines_outcomes(lenet: Engine, rtl_builds: Path, dataflow: str,
                                                             weight_buffers: int, placement: str | None) -> None:
    """Each PE site is the register the machine holds at that cycle: its K order, its tile order and its
    tiles' shared timeline (two weight banks; or the output-stationary tiles streaming back to back, each
    finished sum latched into a shadow), bias and all sums wrapping as the machine's accumulators do."""
    make = _engine_maker(lenet, placement)
    engine = make(lenet.model)
    program = compile_program(engine, 4, 4)
    shape, _ = machine_of(program, weight_buffers=weight_buffers, dataflow=dataflow)
    x = digits().test.x[:IMAGES]
    groups = [g for g in machine_groups(engine, EngineNetwork(engine).acc_bits(), shape.array, weight_buffers)
              if g.site in PE_SITES]
    sites = [site for site in PE_SITES if dataflow == "os" or site != "pe.shadow"]   # shadows: the OS PE's
    assert {(g.site, g.tiling.period > 0) for g in groups if g.tiling is not None} == \
        {(site, weight_buffers == 2 or dataflow == "os") for site in sites}
    faults = draw(groups, IMAGES, 150, seed=weight_buffers)
    outcome = _check_in_rtl(engine, program, x, groups, faults, rtl_builds, make,
                            engine_alarms(engine, x) if placement else None,
                            weight_buffers=weight_buffers, dataflow=dataflow)
    assert outcome.first_disagreement is None
    assert outcome.agree == outcome.faults == 150
    assert outcome.changed >= 10
    if placement:
        assert outcome.alarm_agree == outcome.faults


@pytest.mark.parametrize("rows, cols, dataflow, weight_buffers", [(2, 4, "ws", 2), (4, 4, "os", 1)])
def test_pe_faults_of_grouped_convs_in_rtl_give_the_engines_outcomes(rtl_builds: Path,
                                                                     tmp_path: Path, rows: int, cols: int,
                                                                     dataflow: str, weight_buffers: int) -> None:
    """A depthwise conv (6 channels: one word and part of the next) and a grouped one (2 groups of 4) run as
    one GEMM over all their input channels, each N slice streaming the K slices of its own groups: the
    PE sites of that schedule, the tiles' timeline (N slices with K tiles of their own on 2 x 4) or the
    output-stationary stream with its shadows, are the machine's registers."""
    engine = factory_engine(tmp_path / "net", "tests.fixtures.tiny_mobilenet:make", bits=4, size=8)
    grouped = {op.name for op in engine.model.ops if getattr(op, "groups", 1) > 1}
    program = compile_program(engine, rows, cols)
    shape, _ = machine_of(program, weight_buffers=weight_buffers, dataflow=dataflow)
    x = digits(8).test.x[:IMAGES]
    groups = [g for g in machine_groups(engine, EngineNetwork(engine).acc_bits(), shape.array, weight_buffers)
              if g.site in PE_SITES and g.layer in grouped]
    assert {g.layer for g in groups} == grouped and all(g.tiling.slice_orders for g in groups)
    faults = draw(groups, IMAGES, 200, seed=rows)
    outcome = _check_in_rtl(engine, program, x, groups, faults, rtl_builds, weight_buffers=weight_buffers,
                            dataflow=dataflow)
    assert outcome.first_disagreement is None
    assert outcome.agree == outcome.faults == 200
    assert outcome.changed >= 5


@pytest.mark.parametrize("dataflow, weight_buffers, placement", [("ws", 2, None), ("os", 1, None), ("ws", 2, "output")])
def test_pe_faults_of_a_tmr_machine_hit_one_replica_and_are_outvoted(lenet: Engine, rtl_builds: Path, dataflow: str,
                                                                     weight_buffers: int,
                                                                     placement: str | None) -> None:
    """With the datapath triplicated, the PE fault port reaches replica `rep0` only: every PE fault there
    leaves the voted logits fault-free (and, with per-channel clipping after the output stages, which sit
    inside the datapath, the fault-free alarm), among them faults that change that replica's logits (the
    engine's model of the fault without the vote), each of which made the voters see the replicas
    disagree (a port reaching no replica fails); were the fault in all three replicas, it would show."""
    make = _engine_maker(lenet, placement)
    engine = make(lenet.model)
    program = compile_program(engine, 4, 4)
    shape, _ = machine_of(program, tmr=True, weight_buffers=weight_buffers, dataflow=dataflow)
    x = digits().test.x[:IMAGES]
    groups = [g for g in machine_groups(engine, EngineNetwork(engine).acc_bits(), shape.array, weight_buffers)
              if g.site in PE_SITES]
    assert {g.site for g in groups} == {site for site in PE_SITES if dataflow == "os" or site != "pe.shadow"}
    faults = draw(groups, IMAGES, 100, seed=5)
    outcome = _check_in_rtl(engine, program, x, groups, faults, rtl_builds, make,
                            engine_alarms(engine, x) if placement else None, tmr=True,
                            weight_buffers=weight_buffers, dataflow=dataflow)
    assert outcome.first_disagreement is None
    assert (outcome.agree, outcome.changed) == (100, 0)
    assert outcome.outvoted >= 5
    if placement:
        assert outcome.alarm_agree == outcome.faults
        _, detected = engine_outcomes(engine, x, groups, faults)
        assert detected.sum() > 0   # checks in the faulted replica acted, and the voted alarm stayed fault-free


def test_weight_banks_of_an_array_wider_than_the_tile_period_in_rtl(lenet: Engine, rtl_builds: Path) -> None:
    """On 2 x 8 the linear layers' tiles start every 4 cycles (M = 1), so tile j's weights are written
    into the bank of tile j - 2 before tile j - 1 reaches the last columns: from then on a flip of the
    bank in use meets tile j's rows. The machine agrees on the linear layers' weight sites."""
    program = compile_program(lenet, 2, 8)
    shape, _ = machine_of(program, weight_buffers=2)
    x = digits().test.x[:IMAGES]
    groups = [g for g in machine_groups(lenet, EngineNetwork(lenet).acc_bits(), shape.array, 2)
              if g.site == "pe.weight" and g.layer.startswith("fc")]
    assert all(g.tiling is not None and g.tiling.period <= 8 - 2 for g in groups)
    faults = draw(groups, IMAGES, 120, seed=7)
    outcome = _check_in_rtl(lenet, program, x, groups, faults, rtl_builds, lambda model: lenet, None, weight_buffers=2)
    assert outcome.first_disagreement is None
    assert outcome.agree == outcome.faults == 120
    assert outcome.changed >= 5


def test_a_shadow_flip_counts_from_the_cycle_after_its_latch_to_its_rows_drain_in_rtl(lenet: Engine,
                                                                                     rtl_builds: Path) -> None:
    """The output-stationary machine's shadow of PE(r, c) takes tile j's sum on cycle e_j + r + c (e_j: the
    tile's last product at PE(0, 0)) and the drain reads it on e_j + C + r: sign-bit flips on the latch
    cycle, the next one, the drain's cycle and the one after, on three of conv2's tiles and on the last
    tile's last row (drained a cycle past the streaming timeline, the population's last cycle), all as the
    engine says; the middle two reach the logits on some image, the outer two on none."""
    program = compile_program(lenet, 4, 4)
    shape, _ = machine_of(program, dataflow="os")
    x = digits().test.x[:IMAGES]
    group = next(g for g in machine_groups(lenet, EngineNetwork(lenet).acc_bits(), shape.array, 1)
                 if g.site == "pe.shadow" and g.layer == "conv2")
    tiling = group.tiling
    assert tiling is not None and tiling.period == tiling.k_stream
    cols = tiling.cols
    faults, inner, drained_last = [], [], []
    for tile, r, c in ((5, 1, 2), (30, 1, 2), (77, 1, 2), (tiling.tiles - 1, tiling.rows - 1, 1)):
        last = tile * tiling.period + tiling.k_stream - 1
        for cycle, live in ((last + r + c, False), (last + r + c + 1, True), (last + cols + r, True),
                            (last + cols + r + 1, False)):
            if cycle >= group.shape[0]:   # the last tile's last row drains on the population's last cycle
                assert (tile, cycle) == (tiling.tiles - 1, tiling.span + 1)
                continue
            element = int(np.ravel_multi_index((cycle, r, c), group.shape))
            faults += [(0, element, group.width - 1, image) for image in range(IMAGES)]
            inner += [live] * IMAGES
            if cycle == tiling.span:
                drained_last = list(range(len(faults) - IMAGES, len(faults)))
    outcome = _check_in_rtl(lenet, program, x, [group], faults, rtl_builds, lambda model: lenet, None, dataflow="os")
    assert outcome.first_disagreement is None and outcome.agree == len(faults)
    expected, _ = engine_outcomes(lenet, x, [group], faults)
    clean = lenet.logits(x).to(torch.int64).numpy()
    changed = [not np.array_equal(expected[i], clean[faults[i][3]]) for i in range(len(faults))]
    assert any(ch for ch, live in zip(changed, inner, strict=True) if live)
    assert not any(ch for ch, live in zip(changed, inner, strict=True) if not live)
    assert any(changed[i] for i in drained_last)   # the timeline's last drain reads a flip of the cycle before


def test_a_flip_of_the_first_tiles_weights_before_they_are_written_is_masked_in_rtl(lenet: Engine,
                                                                                     rtl_builds: Path) -> None:
    """The double-buffered machine writes tile j's weight row r into bank j % 2 on timeline cycle j * P + r - 1:
    a flip of that bank before then is overwritten, and one after corrupts the tile's rows (PE(3, 1)'s sign
    bit, fc1 on 4x4): bank 0 on cycles 0 and 2 (masked) and 3; bank 1, which holds no tile before tile 1's
    write, on cycles P + 1 and P + 2 (masked) and P + 3, the cycle before tile 1's first row reaches the PE."""
    program = compile_program(lenet, 4, 4)
    shape, _ = machine_of(program, weight_buffers=2)
    x = digits().test.x[:IMAGES]
    group = next(g for g in machine_groups(lenet, EngineNetwork(lenet).acc_bits(), shape.array, 2)
                 if g.site == "pe.weight" and g.layer == "fc1")
    tiling = group.tiling
    assert tiling is not None and tiling.tiles >= 2
    period = tiling.period
    where = [(0, 0), (2, 0), (3, 0), (period + 1, 1), (period + 2, 1), (period + 3, 1)]   # (cycle, bank)
    sites = [int(np.ravel_multi_index((cycle, bank, 3, 1), tiling.site_shape(stationary=True)))
             for cycle, bank in where]
    faults = [(0, element, group.width - 1, image) for element in sites for image in range(IMAGES)]
    outcome = _check_in_rtl(lenet, program, x, [group], faults, rtl_builds, lambda model: lenet, None, weight_buffers=2)
    assert outcome.first_disagreement is None
    assert outcome.agree == len(faults)
    clean = lenet.logits(x).to(torch.int64).numpy()
    expected, _ = engine_outcomes(lenet, x, [group], faults)
    changed = [not np.array_equal(expected[i], clean[i % IMAGES]) for i in range(len(faults))]
    for site in range(len(where)):
        assert any(changed[site * IMAGES:(site + 1) * IMAGES]) == (site in (2, 5)), where[site]


def test_a_pe_flip_names_the_tile_cycle_pe_and_bank_of_its_site(lenet: Engine) -> None:
    program = compile_program(lenet, 4, 4)
    shape, _ = machine_of(program, weight_buffers=2)
    acc = EngineNetwork(lenet).acc_bits()
    timeline = next(g for g in site_groups(lenet.model, "pe.weight", ["conv2"], acc, shape.array, 2))
    windows = next(g for g in site_groups(lenet.model, "pe.weight", ["conv2"], acc, shape.array, 1))
    assert timeline.tiling is not None and windows.tiling is not None
    period, k_tiles = timeline.tiling.period, timeline.tiling.tile_grid[0]
    tile = k_tiles + 3   # N slice 1, K slice 3: the machine's tile k_tiles + 3, in bank 0 or 1 by its parity
    gemm = next(i for i, instr in enumerate(program.instructions) if getattr(instr, "name", "") == "conv2")
    for bank in (tile % 2, 1 - tile % 2):   # the bank in use (row m = 7 of the tile), and the other one
        element = int(np.ravel_multi_index((tile * period + 7 + 2 + 1, bank, 2, 1),
                                           timeline.tiling.site_shape(stationary=True)))
        flip = pe_flip(program, timeline, element, 3)
        assert (flip.pc, flip.tile, flip.cycle, flip.row, flip.col) == (gemm, 0, tile * period + 10, 2, 1)
        assert (flip.register, flip.bank, flip.mask) == (1, bank, 1 << 3)
    # one tile at a time: the site's window is tile (K slice 3, N slice 1), which the machine runs as tile k_tiles + 3
    n_tiles = windows.tiling.tile_grid[1]
    element = int(np.ravel_multi_index((3 * n_tiles + 1, 10, 2, 1), windows.tiling.shape))
    flip = pe_flip(program, windows, element, 3)
    assert (flip.tile, flip.cycle, flip.bank) == (tile, 10, 0)


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
