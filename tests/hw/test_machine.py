"""The accelerator (`hw.machine.Machine`) runs whole networks bit for bit against the integer engine, and
takes exactly the cycles `hw.cycles`' machine schedule counts: small networks in Amaranth's simulator
(convs, pools, residual adds, depthwise and grouped convs, concats, pooled logits), LeNet-5, ResNet-8,
MobileNet and SqueezeNet in the compiled (Verilator) simulation. Range checks (clip, zero, SED's detect;
per layer or per channel; after the output stages or on the codes a layer reads) act as the engine's,
and the alarm is raised exactly on the images where one of the engine's checks fires."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from amaranth.sim import Simulator

from dsetool.engine import Engine
from dsetool.machine.alarms import engine_alarms
from dsetool.machine.compiler import compile_program
from dsetool.machine.encode import input_codes, machine_of
from dsetool.machine.program import Gemm, Program, Vector, program_cycles
from dsetool.machine.reference import run_detecting
from dsetool.protect.check import RangeCheck
from hw.arrayconfig import ArrayConfig
from hw.cycles import MACHINE_CHECKED_READ
from hw.machine import Machine
from hw.machine_format import WMEM, change_beats, load_beats, memory_words
from tests.fixtures.engines import SQUEEZENET, digits, exported_engine, factory_engine
from tests.fixtures.range_checks import checked_engine

TINY_CNN = "tests.fixtures.tiny_cnn:make"
TINY_RESNET = "tests.fixtures.tiny_resnet:make"
TINY_MOBILENET = "tests.fixtures.tiny_mobilenet:make"
TINY_CONCAT = "tests.fixtures.tiny_concat:make"
TINY_FC = "tests.fixtures.tiny_fc:make"
TINY_POINTWISE = "tests.fixtures.tiny_pointwise:make"


def simulate(engine: Engine, program: Program, images: np.ndarray, weight_buffers: int = 1, dataflow: str = "ws"
             ) -> tuple[np.ndarray, list[int]]:
    """Load the machine of `program` through its host port, run every image; return logits and cycles."""
    logits, cycles, _ = simulate_detecting(engine, program, images, weight_buffers=weight_buffers, dataflow=dataflow)
    return logits, cycles


def simulate_detecting(engine: Engine, program: Program, images: np.ndarray, tmr: bool = False,
                       weight_buffers: int = 1, dataflow: str = "ws") -> tuple[np.ndarray, list[int], list[bool]]:
    """Load the machine of `program` (its datapath triplicated with `tmr`, `weight_buffers` weight banks
    per PE, weight- or output-stationary) through its host port, run every image; return logits, cycles
    and the alarm read with each image's logits."""
    shape, contents = machine_of(program, tmr=tmr, weight_buffers=weight_buffers, dataflow=dataflow)
    dut = Machine(shape)
    beats = load_beats(shape, contents)
    codes = engine.quantize_input(images).numpy()
    logits: list[list[int]] = []
    cycles: list[int] = []
    alarms: list[bool] = []

    async def bench(ctx: Any) -> None:
        await _stream(ctx, dut.load_valid, dut.load_data, beats)
        for image in codes:
            await _stream(ctx, dut.in_valid, dut.in_data, input_codes(program, image))
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            count = 1
            while not ctx.get(dut.out_valid):
                await ctx.tick()
                count += 1
            ctx.set(dut.out_ready, 1)
            alarms.append(bool(ctx.get(dut.alarm)))
            out: list[int] = []
            while len(out) < program.num_classes:
                if ctx.get(dut.out_valid):
                    out.append(ctx.get(dut.out_data))
                await ctx.tick()
            ctx.set(dut.out_ready, 0)
            logits.append(out)
            cycles.append(count)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return np.array(logits), cycles, alarms


def compiled_run(engine: Engine, program: Program, images: np.ndarray, workdir: Path, **machine: Any
                 ) -> tuple[np.ndarray, set[int]]:
    """Build the machine of `program` (`machine_of`'s keyword arguments) in Verilator, load it over the host
    port, run every image; return the logits and the set of cycles per inference."""
    from hw import machine_host, rtlsim

    shape, contents = machine_of(program, **machine)
    compiled = rtlsim.build(Machine(shape), workdir)
    results = []
    with compiled.open() as session:
        machine_host.load(session, shape, contents)
        for image in engine.quantize_input(images).numpy():
            results.append(machine_host.infer(session, shape, input_codes(program, image)))
    return np.array([logits for logits, _ in results]), {cycles for _, cycles in results}


async def _stream(ctx: Any, valid: Any, data: Any, values: list[int]) -> None:
    for value in values:
        ctx.set(valid, 1)
        ctx.set(data, value)
        await ctx.tick()
    ctx.set(valid, 0)


# each a small factory network, its input side and the arrays it runs on in Amaranth's simulator
TINY_NETWORKS = {
    TINY_CNN: (12, [(4, 4), (2, 4), (4, 2)]),      # strided, padded convs; padded and ceil-mode pools
    TINY_RESNET: (8, [(4, 4), (2, 4)]),            # residual adds, average pools, requantizations
    TINY_MOBILENET: (8, [(4, 4), (2, 4)]),         # depthwise and grouped convs
    TINY_CONCAT: (8, [(4, 4), (4, 2)]),            # concatenations, pooled logits
}


@pytest.fixture(scope="module")
def tiny_engines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Engine]:
    """Each tiny network's engine, exported once per module (W4A4, seeded random weights)."""
    return {spec: factory_engine(tmp_path_factory.mktemp("tiny"), spec, bits=4, size=size)
            for spec, (size, _) in TINY_NETWORKS.items()}


@pytest.fixture(scope="module")
def tiny_cnn(tiny_engines: dict[str, Engine]) -> Engine:
    return tiny_engines[TINY_CNN]


@pytest.mark.parametrize(("spec", "rows", "cols"), [(spec, rows, cols) for spec, (_, arrays) in TINY_NETWORKS.items()
                                                    for rows, cols in arrays])
def test_every_op_runs_bit_for_bit_in_the_counted_cycles(tiny_engines: dict[str, Engine], spec: str, rows: int,
                                                        cols: int) -> None:
    engine = tiny_engines[spec]
    x = digits(TINY_NETWORKS[spec][0]).test.x[:2]
    program = compile_program(engine, rows, cols)
    logits, cycles = simulate(engine, program, x)
    np.testing.assert_array_equal(logits, engine.logits(x).numpy())
    assert cycles == [program_cycles(program)] * 2


def test_linear_layers_and_per_channel_float_scales(tmp_path: Path) -> None:
    engine = exported_engine(tmp_path, "mlp", bits=4, scaling="float", granularity="per_channel")
    x = digits(8).test.x[:1]
    program = compile_program(engine, 4, 4)
    logits, cycles = simulate(engine, program, x)
    np.testing.assert_array_equal(logits, engine.logits(x).numpy())
    assert cycles == [program_cycles(program)]


@pytest.mark.parametrize("mode", ["clip", "zero"])
def test_range_check_unit_acts_as_the_engines_check(tiny_cnn: Engine, mode: str) -> None:
    model = tiny_cnn.model
    x = digits(12).test.x[:2]
    outputs = tiny_cnn.run(x, keep=True)
    checks = {}
    for index in tiny_cnn.output_stages:   # bounds inside the observed range, so the check acts
        codes = outputs[index].numpy()
        channels = codes.shape[1]
        per_channel = codes.transpose(1, 0, 2, 3).reshape(channels, -1)
        checks[index] = RangeCheck(mode, per_channel.min(1) + 1, np.maximum(per_channel.min(1) + 1,
                                                                          per_channel.max(1) - 1))
    checked = Engine(model, checks=checks)
    assert not np.array_equal(checked.logits(x).numpy(), tiny_cnn.logits(x).numpy())
    program = compile_program(checked, 4, 4)
    logits, _ = simulate(checked, program, x)
    np.testing.assert_array_equal(logits, checked.logits(x).numpy())


@pytest.mark.parametrize(("spec", "mode", "granularity", "rows", "cols"), [
    (TINY_CNN, "clip", "channel", 4, 4), (TINY_CNN, "zero", "layer", 2, 4),     # padded convs, a linear layer
    (TINY_RESNET, "clip", "layer", 4, 4), (TINY_RESNET, "zero", "channel", 2, 4),   # and adds' checks
    (TINY_MOBILENET, "clip", "channel", 2, 4), (TINY_CONCAT, "zero", "channel", 4, 2)])
def test_input_checks_on_the_buffer_read_path_act_as_the_engines(tiny_engines: dict[str, Engine], spec: str,
                                                                  mode: str, granularity: str, rows: int,
                                                                  cols: int) -> None:
    """Checks where each layer reads its input (padding zeros are no read), bounds one code inside what
    the images give, so they fire: the machine equals the checked engine, not the unchecked one, in the
    unchanged cycle count, and raises its alarm."""
    engine = tiny_engines[spec]
    x = digits(TINY_NETWORKS[spec][0]).test.x[:2]
    checked = checked_engine(engine, x, mode, granularity, "input")
    assert checked.input_checks
    expected = checked.logits(x).numpy()
    assert not np.array_equal(expected, engine.logits(x).numpy())
    program = compile_program(checked, rows, cols)
    logits, cycles, alarms = simulate_detecting(checked, program, x)
    np.testing.assert_array_equal(logits, expected)
    assert cycles == [program_cycles(program)] * 2 and program_cycles(program) == program_cycles(
        compile_program(engine, rows, cols))
    assert alarms == engine_alarms(checked, x).tolist() == [True, True]


def test_per_channel_bounds_on_the_vector_units_outputs(tiny_engines: dict[str, Engine]) -> None:
    engine = tiny_engines[TINY_RESNET]
    x = digits(8).test.x[:2]
    checked = checked_engine(engine, x, "clip", "channel", "output")
    program = compile_program(checked, 4, 4)
    assert any(i.check == "clip" for i in program.instructions if isinstance(i, Vector))   # adds' quantizers
    logits, _, alarms = simulate_detecting(checked, program, x)
    np.testing.assert_array_equal(logits, checked.logits(x).numpy())
    assert alarms == [True, True]


@pytest.mark.parametrize(("placement", "granularity"), [("output", "channel"), ("input", "layer")])
def test_sed_raises_the_alarm_only_when_a_check_fires_and_leaves_the_values(tiny_engines: dict[str, Engine],
                                                                          placement: str, granularity: str) -> None:
    """Bounds profiled on image 0 exactly: it raises no alarm, the others do; logits are unchecked."""
    engine = tiny_engines[TINY_RESNET]
    x = digits(8).test.x[:3]
    detecting = checked_engine(engine, x[:1], "detect", granularity, placement, inset=0)
    program = compile_program(detecting, 4, 4)
    logits, cycles, alarms = simulate_detecting(detecting, program, x)
    np.testing.assert_array_equal(logits, engine.logits(x).numpy())
    assert alarms == engine_alarms(detecting, x).tolist()
    assert alarms[0] is False and any(alarms[1:])
    assert cycles == [program_cycles(program)] * 3


def test_tmr_datapath_runs_bit_for_bit_in_the_same_cycles(tiny_engines: dict[str, Engine]) -> None:
    """Three datapaths behind voters, with input checks: fault-free, what one computes, as fast."""
    engine = tiny_engines[TINY_RESNET]
    x = digits(8).test.x[:2]
    checked = checked_engine(engine, x, "clip", "channel", "input")
    program = compile_program(checked, 4, 4)
    assert machine_of(program, tmr=True)[0].array.tmr
    logits, cycles, alarms = simulate_detecting(checked, program, x, tmr=True)
    np.testing.assert_array_equal(logits, checked.logits(x).numpy())
    assert cycles == [program_cycles(program)] * 2 and alarms == [True, True]


@pytest.mark.parametrize(("config", "message"), [
    (ArrayConfig(rows=4, cols=4, dataflow="is"), "weight- or output-stationary"),
    (ArrayConfig(rows=1, cols=4), "rows must be at least 2"),
])
def test_machine_refuses_what_it_cannot_build(tiny_cnn: Engine, config: ArrayConfig, message: str) -> None:
    import dataclasses

    shape, _ = machine_of(compile_program(tiny_cnn, 4, 4))
    with pytest.raises(ValueError, match=message):
        Machine(dataclasses.replace(shape, array=config))


def test_load_stream_refuses_images_larger_than_the_memories(tiny_cnn: Engine) -> None:
    import dataclasses

    shape, contents = machine_of(compile_program(tiny_cnn, 4, 4))
    with pytest.raises(ValueError, match="holds"):
        load_beats(dataclasses.replace(shape, weight_words=1), contents)


def test_a_change_stream_writes_only_the_words_that_differ(tiny_cnn: Engine) -> None:
    """A faulty model's images against the loaded ones: a block per run of changed words (memory, first
    address, count, beats), none when nothing changed, the whole memory again when its length changed;
    applied to the loaded words, the blocks give the new images exactly."""
    shape, contents = machine_of(compile_program(tiny_cnn, 4, 4))
    loaded = memory_words(shape, contents)
    assert change_beats(shape, loaded, loaded) == []
    weights = list(loaded[WMEM])
    weights[3] ^= 1
    weights[4] ^= 1 << 5
    weights[9] ^= 1
    changed = {**loaded, WMEM: weights}
    beats = change_beats(shape, loaded, changed)
    per_word = -(-shape.word_bits(WMEM) // 32)
    assert beats[:3] == [WMEM, 3, 2] and beats[3 + 2 * per_word:6 + 2 * per_word] == [WMEM, 9, 1]
    assert len(beats) == 6 + 3 * per_word
    assert _apply(shape, loaded, beats) == changed
    shorter = {**loaded, WMEM: weights[:-1]}
    assert change_beats(shape, loaded, shorter) == _block_of(shape, WMEM, weights[:-1])


def _block_of(shape, memory: int, words: list[int]) -> list[int]:
    per_word = -(-shape.word_bits(memory) // 32)
    return [memory, 0, len(words)] + [(w >> (32 * i)) & 0xFFFFFFFF for w in words for i in range(per_word)]


def _apply(shape, loaded: dict[int, list[int]], beats: list[int]) -> dict[int, list[int]]:
    """Write a load stream's blocks into copies of the loaded words, as the machine's loader does."""
    memories = {memory: list(words) for memory, words in loaded.items()}
    at = 0
    while at < len(beats):
        memory, address, count = beats[at:at + 3]
        per_word = -(-shape.word_bits(memory) // 32)
        at += 3
        for n in range(count):
            parts = beats[at + n * per_word:at + (n + 1) * per_word]
            memories[memory][address + n] = sum(part << (32 * i) for i, part in enumerate(parts))
        at += count * per_word
    return memories


# the double-buffered machine (`MachineShape.weight_buffers` 2): each tiny network on arrays where its
# tiles run at the period's every bound (M, R, and the bank's (M + C - 1) / 2 on 2 x 8)
DOUBLE_BUFFERED = [(TINY_CNN, 4, 4), (TINY_CNN, 2, 4), (TINY_CNN, 4, 2), (TINY_RESNET, 4, 4), (TINY_RESNET, 2, 4),
                   (TINY_MOBILENET, 4, 4), (TINY_MOBILENET, 2, 4), (TINY_CONCAT, 4, 2), (TINY_FC, 4, 4),
                   (TINY_FC, 2, 2), (TINY_FC, 2, 8), (TINY_POINTWISE, 4, 4)]


@pytest.fixture(scope="module")
def tiny_fc(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """A network of conv, M = 2 and M = 1 conv and linear layers (W4A4, 8 x 8 inputs)."""
    return factory_engine(tmp_path_factory.mktemp("tiny_fc"), TINY_FC, bits=4, size=8)


@pytest.fixture(scope="module")
def tiny_pointwise(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """A 1 x 1 conv of one K tile and three N slices whose tile period is its M (W4A4, 4 x 4 inputs)."""
    return factory_engine(tmp_path_factory.mktemp("tiny_pointwise"), TINY_POINTWISE, bits=4, size=4)


def _engine(tiny_engines: dict[str, Engine], tiny_fc: Engine, spec: str, tiny_pointwise: Engine | None = None
            ) -> tuple[Engine, int]:
    if spec == TINY_POINTWISE:
        assert tiny_pointwise is not None
        return tiny_pointwise, 4
    return (tiny_fc, 8) if spec == TINY_FC else (tiny_engines[spec], TINY_NETWORKS[spec][0])


def _reference(program: Program, engine: Engine, x: Any) -> tuple[np.ndarray, list[bool]]:
    runs = [run_detecting(program, codes) for codes in engine.quantize_input(x).numpy()]
    return np.stack([logits for logits, _ in runs]), [alarm for _, alarm in runs]


@pytest.mark.parametrize(("spec", "rows", "cols"), DOUBLE_BUFFERED)
def test_double_buffered_weights_run_bit_for_bit_in_their_counted_cycles(tiny_engines: dict[str, Engine],
                                                                        tiny_fc: Engine, tiny_pointwise: Engine,
                                                                        spec: str, rows: int, cols: int) -> None:
    """Convs (strided, padded), pools, adds, depthwise and grouped convs, concats, M = 2 and M = 1
    layers (linear ones of many K and N slices), N slices of one K tile streaming back to back: the
    reference's logits, in `program_cycles` with two weight buffers, fewer than with one."""
    engine, size = _engine(tiny_engines, tiny_fc, spec, tiny_pointwise)
    x = digits(size).test.x[:2]
    program = compile_program(engine, rows, cols)
    logits, cycles = simulate(engine, program, x, weight_buffers=2)
    np.testing.assert_array_equal(logits, _reference(program, engine, x)[0])
    np.testing.assert_array_equal(logits, engine.logits(x).numpy())
    assert cycles == [program_cycles(program, weight_buffers=2)] * 2
    assert program_cycles(program, weight_buffers=2) < program_cycles(program)
    if spec == TINY_FC:   # tiles of one and of two streamed rows follow each other
        assert {i.m for i in program.instructions if isinstance(i, Gemm) and i.tiles(cols) > 1} >= {1, 2}
    if spec == TINY_POINTWISE:   # one K tile per N slice, three N slices, tile period = M
        pointwise = [i for i in program.instructions if isinstance(i, Gemm) and i.m == 16 and i.tiles(cols) == 3]
        assert len(pointwise) == 1


@pytest.mark.parametrize(("spec", "mode", "granularity", "placement", "rows", "cols"), [
    (TINY_CNN, "clip", "channel", "input", 4, 4), (TINY_RESNET, "zero", "channel", "input", 2, 4),
    (TINY_MOBILENET, "clip", "channel", "input", 2, 4), (TINY_FC, "zero", "layer", "input", 2, 2),
    (TINY_CNN, "clip", "channel", "output", 2, 4), (TINY_RESNET, "zero", "layer", "output", 4, 4),
    (TINY_FC, "clip", "channel", "output", 2, 8), (TINY_RESNET, "detect", "channel", "output", 4, 4)])
def test_double_buffered_range_checks_act_as_the_engines(tiny_engines: dict[str, Engine], tiny_fc: Engine,
                                                         spec: str, mode: str, granularity: str, placement: str,
                                                         rows: int, cols: int) -> None:
    """Checks on the codes each tile reads (its K slice's bounds, switched between back-to-back tiles)
    and after the output stages (constants of N slices streamed back to back): the checked engine's
    logits and alarms, in the unchecked program's cycles, plus one per GEMM on the read path's checked
    register (`MACHINE_CHECKED_READ`)."""
    engine, size = _engine(tiny_engines, tiny_fc, spec)
    x = digits(size).test.x[:2]
    checked = checked_engine(engine, x, mode, granularity, placement)
    program = compile_program(checked, rows, cols)
    logits, cycles, alarms = simulate_detecting(checked, program, x, weight_buffers=2)
    reference, reference_alarms = _reference(program, checked, x)
    np.testing.assert_array_equal(logits, reference)
    np.testing.assert_array_equal(logits, checked.logits(x).numpy())
    if mode != "detect":
        assert not np.array_equal(logits, engine.logits(x).numpy())
    assert alarms == reference_alarms == engine_alarms(checked, x).tolist() == [True, True]
    assert cycles == [program_cycles(program, weight_buffers=2)] * 2
    gemms = sum(isinstance(instr, Gemm) for instr in program.instructions)
    staged = MACHINE_CHECKED_READ * gemms if placement == "input" else 0
    assert program_cycles(program, weight_buffers=2) == program_cycles(compile_program(engine, rows, cols), 2) + staged


def test_double_buffered_tmr_datapath_runs_bit_for_bit(tiny_engines: dict[str, Engine]) -> None:
    engine = tiny_engines[TINY_MOBILENET]
    x = digits(8).test.x[:1]
    program = compile_program(engine, 2, 4)
    logits, cycles, _ = simulate_detecting(engine, program, x, tmr=True, weight_buffers=2)
    np.testing.assert_array_equal(logits, engine.logits(x).numpy())
    assert cycles == [program_cycles(program, weight_buffers=2)]


@pytest.mark.toolchain
@pytest.mark.parametrize(("arch", "bits", "scaling", "granularity", "rows", "cols", "images"), [
    ("lenet5", 8, "po2", "per_tensor", 8, 8, 32), ("lenet5", 4, "float", "per_channel", 4, 8, 32),
    ("resnet8", 4, "float", "per_tensor", 8, 8, 4), ("mobilenet", 4, "po2", "per_tensor", 8, 8, 3),
    ("squeezenet", 4, "po2", "per_tensor", 4, 4, 4)])
def test_networks_run_in_compiled_simulation_bit_for_bit(rtl_builds: Path,
                                                         tmp_path: Path, arch: str, bits: int, scaling: str,
                                                         granularity: str, rows: int, cols: int, images: int) -> None:
    if arch == "squeezenet":   # a factory network, for 16 x 16 images
        engine, x = factory_engine(tmp_path / "model", SQUEEZENET, bits, size=16), digits(16).test.x[:images]
    else:
        engine, x = exported_engine(tmp_path / "model", arch, bits, scaling, granularity), digits(32).test.x[:images]
    program = compile_program(engine, rows, cols)
    logits, cycles = compiled_run(engine, program, x, rtl_builds)
    np.testing.assert_array_equal(logits, engine.logits(x).numpy())
    assert cycles == {program_cycles(program)}


@pytest.mark.toolchain
def test_lenet_with_per_channel_input_clip_runs_in_compiled_simulation(rtl_builds: Path, tmp_path: Path) -> None:
    from hw import machine_host, rtlsim

    engine = exported_engine(tmp_path / "model", "lenet5", 8, "po2", "per_tensor")
    x = digits(32).test.x[:8]
    checked = checked_engine(engine, x[:4], "clip", "channel", "input")
    expected = checked.logits(x).numpy()
    assert not np.array_equal(expected, engine.logits(x).numpy())
    program = compile_program(checked, 8, 8)
    shape, contents = machine_of(program)
    assert shape.input_check and not shape.output_check
    compiled = rtlsim.build(Machine(shape), rtl_builds)
    results, alarms = [], []
    with compiled.open() as session:
        machine_host.load(session, shape, contents)
        for image in checked.quantize_input(x).numpy():
            results.append(machine_host.infer(session, shape, input_codes(program, image)))
            alarms.append(machine_host.alarm(session))
    np.testing.assert_array_equal(np.array([logits for logits, _ in results]), expected)
    assert {cycles for _, cycles in results} == {program_cycles(program)}
    assert alarms == engine_alarms(checked, x).tolist() and all(alarms[:4])


@pytest.mark.toolchain
@pytest.mark.parametrize(("arch", "rows", "cols"), [("lenet5", 4, 4), ("tiny_cnn", 4, 4)])
def test_double_buffered_machine_runs_in_compiled_simulation_bit_for_bit(rtl_builds: Path,
                                                                         tmp_path: Path, arch: str, rows: int,
                                                                         cols: int) -> None:
    """Verilator: LeNet-5 (its linear layers stream one row per tile) and the tiny CNN with two weight
    banks per PE give the engine's logits in `program_cycles` with two weight buffers."""
    if arch == "tiny_cnn":
        engine, x = factory_engine(tmp_path / "model", TINY_CNN, 4, size=12), digits(12).test.x[:4]
    else:
        engine, x = exported_engine(tmp_path / "model", arch, 4, "po2", "per_tensor"), digits(32).test.x[:4]
    program = compile_program(engine, rows, cols)
    logits, cycles = compiled_run(engine, program, x, rtl_builds, weight_buffers=2)
    np.testing.assert_array_equal(logits, engine.logits(x).numpy())
    assert cycles == {program_cycles(program, weight_buffers=2)}
    assert program_cycles(program, weight_buffers=2) < program_cycles(program)
