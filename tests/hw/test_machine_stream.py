"""The output-stationary accelerator (`hw.machine_stream`, `ArrayConfig.dataflow` "os") runs whole
networks bit for bit against the integer engine in exactly the cycles `hw.cycles.machine_stream_gemm_cycles`
counts: every op of the tiny networks on square and oblong arrays, range checks at both sites, TMR, and
LeNet-5 in the compiled (Verilator) simulation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from dsetool.engine import Engine
from dsetool.machine.alarms import engine_alarms
from dsetool.machine.compiler import compile_program
from dsetool.machine.encode import machine_of
from dsetool.machine.program import Gemm, program_cycles
from hw.cycles import machine_stream_gemm_cycles
from hw.machine import Machine
from tests.fixtures.engines import digits, exported_engine, factory_engine
from tests.fixtures.range_checks import checked_engine
from tests.hw.test_machine import (
    TINY_CNN,
    TINY_CONCAT,
    TINY_FC,
    TINY_MOBILENET,
    TINY_RESNET,
    compiled_run,
    simulate_detecting,
)

TINY_NARROW = "tests.fixtures.tiny_narrow:make"
TINY_PIXELS = "tests.fixtures.tiny_pixels:make"
SIZES = {TINY_CNN: 12, TINY_RESNET: 8, TINY_MOBILENET: 8, TINY_CONCAT: 8, TINY_FC: 8, TINY_NARROW: 8, TINY_PIXELS: 2}


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Engine]:
    """Each tiny network's engine (W4A4, seeded random weights)."""
    return {spec: factory_engine(tmp_path_factory.mktemp("tiny"), spec, bits=4, size=size)
            for spec, size in SIZES.items()}


@pytest.mark.parametrize(("spec", "rows", "cols"), [
    (TINY_CNN, 4, 4), (TINY_CNN, 2, 4), (TINY_CNN, 4, 2),   # strided, padded convs; pools; a linear layer
    (TINY_RESNET, 2, 4), (TINY_MOBILENET, 2, 4), (TINY_MOBILENET, 4, 4),   # adds; depthwise, grouped convs
    (TINY_CONCAT, 4, 2), (TINY_FC, 2, 8),   # concats, pooled logits; M = 2 and M = 1 layers
    (TINY_NARROW, 2, 8), (TINY_NARROW, 2, 4),    # tiles of fewer K cycles than columns: the feed waits
    (TINY_PIXELS, 40, 4)])   # 4-pixel maps on 40 rows: pixels counted to M + R - 1 (5-bit M fields)
def test_every_op_runs_bit_for_bit_in_the_counted_cycles(engines: dict[str, Engine], spec: str, rows: int,
                                                        cols: int) -> None:
    """The engine's logits in `program_cycles(..., dataflow="os")`. TINY_NARROW's 1 x 1 convs stream
    tiles of one K slice (2 cycles) on 2 rows: without the wait before a tile whose last read would come
    fewer than C cycles after the previous tile's, the drain reads sums the next tiles overwrote."""
    engine = engines[spec]
    x = digits(SIZES[spec]).test.x[:2]
    program = compile_program(engine, rows, cols)
    logits, cycles, alarms = simulate_detecting(engine, program, x, dataflow="os")
    np.testing.assert_array_equal(logits, engine.logits(x).numpy())
    assert cycles == [program_cycles(program, dataflow="os")] * 2 and alarms == [False, False]
    if spec == TINY_NARROW:   # a GEMM whose tiles are shorter than the array is wide
        assert any(len(i.k_slices(0)) * rows < cols for i in program.instructions if isinstance(i, Gemm))


@pytest.mark.parametrize(("spec", "mode", "granularity", "placement", "rows", "cols"), [
    (TINY_CNN, "clip", "channel", "input", 2, 4), (TINY_RESNET, "zero", "layer", "input", 4, 4),
    (TINY_MOBILENET, "clip", "channel", "input", 2, 4), (TINY_FC, "clip", "channel", "output", 2, 8),
    (TINY_RESNET, "zero", "channel", "output", 2, 4), (TINY_CNN, "detect", "channel", "output", 4, 4)])
def test_range_checks_act_as_the_engines(engines: dict[str, Engine], spec: str, mode: str, granularity: str,
                                         placement: str, rows: int, cols: int) -> None:
    """Checks on the codes each K slice loads into the rows' shift registers (its bounds word switched
    every R cycles) and after the output stages (an N slice's constants switched between drains): the
    checked engine's logits and alarms, in the unchecked program's cycles."""
    engine = engines[spec]
    x = digits(SIZES[spec]).test.x[:2]
    checked = checked_engine(engine, x, mode, granularity, placement)
    program = compile_program(checked, rows, cols)
    logits, cycles, alarms = simulate_detecting(checked, program, x, dataflow="os")
    np.testing.assert_array_equal(logits, checked.logits(x).numpy())
    if mode != "detect":
        assert not np.array_equal(logits, engine.logits(x).numpy())
    assert alarms == engine_alarms(checked, x).tolist() == [True, True]
    assert cycles == [program_cycles(program, dataflow="os")] * 2
    assert program_cycles(program, dataflow="os") == program_cycles(compile_program(engine, rows, cols), dataflow="os")


def test_tmr_datapath_runs_bit_for_bit_in_the_same_cycles(engines: dict[str, Engine]) -> None:
    engine = engines[TINY_MOBILENET]
    x = digits(8).test.x[:1]
    program = compile_program(engine, 2, 4)
    logits, cycles, _ = simulate_detecting(engine, program, x, tmr=True, dataflow="os")
    np.testing.assert_array_equal(logits, engine.logits(x).numpy())
    assert cycles == [program_cycles(program, dataflow="os")]


def test_machine_refuses_two_weight_buffers(engines: dict[str, Engine]) -> None:
    shape, _ = machine_of(compile_program(engines[TINY_CNN], 4, 4), dataflow="os")
    with pytest.raises(ValueError, match="streams its weights"):
        Machine(dataclasses.replace(shape, weight_buffers=2))


def test_cycle_model_counts_tiles_and_the_drains_spacing() -> None:
    """M = 10 on 4 rows: 3 tiles per N slice; N slices of 2 and 1 K slices; on 8 columns the 4-cycle
    tiles take 8."""
    fixed = 2 + 2 + 1 + 5   # fetch, setup, C + R + 1 less C + R, tail
    assert machine_stream_gemm_cycles(10, [2, 1], 4, 4) == fixed + 4 + 4 + 3 * 8 + 3 * 4
    assert machine_stream_gemm_cycles(10, [2, 1], 4, 8) == fixed + 8 + 4 + 3 * 8 + 3 * 8
    with pytest.raises(ValueError, match="k_slices"):
        machine_stream_gemm_cycles(10, [], 4, 4)


@pytest.mark.toolchain
@pytest.mark.parametrize(("bits", "scaling", "granularity", "rows", "cols"), [
    (8, "po2", "per_tensor", 4, 4), (4, "float", "per_channel", 4, 8)])
def test_lenet_runs_in_compiled_simulation_bit_for_bit(rtl_builds: Path,
                                                       tmp_path: Path, bits: int, scaling: str, granularity: str,
                                                       rows: int, cols: int) -> None:
    engine = exported_engine(tmp_path / "model", "lenet5", bits, scaling, granularity)
    x = digits(32).test.x[:4]
    program = compile_program(engine, rows, cols)
    logits, cycles = compiled_run(engine, program, x, rtl_builds, dataflow="os")
    np.testing.assert_array_equal(logits, engine.logits(x).numpy())
    assert cycles == {program_cycles(program, dataflow="os")}
