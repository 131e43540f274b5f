"""The compiler (`dsetool.machine.compiler`) and the word-level reference machine: every built-in
network (MobileNet's depthwise convs included) and SqueezeNet's concats and pooled logits, both scalings
and granularities, square and oblong arrays, give the engine's logits; what the machine cannot run is
refused by name. Range checks (every mode, granularity and placement the engine evaluates) give the
checked engine's logits, and the reference's alarm is raised where one of the engine's checks fires."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dsetool.engine import Engine
from dsetool.engine.intmodel import Conv2d
from dsetool.machine.alarms import engine_alarms
from dsetool.machine.compiler import UnsupportedOp, compile_program, lanes_of
from dsetool.machine.encode import input_codes, machine_of
from dsetool.machine.program import Gemm, Program, Vector, sum_bits
from dsetool.machine.reference import Machine, run_detecting, run_image
from dsetool.machine.tiling import dense_weight, machine_k_order, machine_lead, machine_slice_orders
from dsetool.protect.check import RangeCheck, placed
from dsetool.protect.schemes import MedianFilter
from tests.fixtures.engines import SQUEEZENET, digits, exported_engine, factory_engine
from tests.fixtures.range_checks import checked_engine

ARRAYS = [(8, 8), (4, 8), (8, 4), (2, 2)]


def reference_logits(engine: Engine, program: Program, x: object) -> np.ndarray:
    return np.stack([run_image(program, codes) for codes in engine.quantize_input(x).numpy()])  # type: ignore[arg-type]


@pytest.mark.parametrize(("arch", "bits", "scaling", "granularity", "rows", "cols"), [
    ("lenet5", 4, "po2", "per_tensor", 8, 8), ("lenet5", 2, "po2", "per_tensor", 4, 8),
    ("lenet5", 8, "float", "per_channel", 8, 4), ("lenet5", 4, "po2", "per_channel", 2, 2),
    ("alexnet32", 4, "float", "per_tensor", 8, 8), ("mlp", 8, "po2", "per_channel", 4, 4),
    ("resnet8", 4, "float", "per_channel", 8, 4), ("resnet20", 8, "po2", "per_tensor", 8, 8),
    ("vgg11", 4, "po2", "per_tensor", 4, 8)])
def test_reference_machine_gives_the_engines_logits(tmp_path: Path, arch: str, bits: int, scaling: str,
                                                     granularity: str, rows: int, cols: int) -> None:
    engine = exported_engine(tmp_path, arch, bits, scaling, granularity)
    x = digits(8 if arch == "mlp" else 32).test.x[:3]
    np.testing.assert_array_equal(reference_logits(engine, compile_program(engine, rows, cols), x),
                                  engine.logits(x).numpy())


@pytest.mark.parametrize(("bits", "scaling", "granularity"), [   # every pair of values once
    (4, "po2", "per_tensor"), (8, "po2", "per_channel"), (4, "float", "per_channel"), (8, "float", "per_tensor")])
def test_depthwise_separable_mobilenet_gives_the_engines_logits(tmp_path: Path, bits: int, scaling: str,
                                                                granularity: str) -> None:
    engine = exported_engine(tmp_path, "mobilenet", bits, scaling, granularity)
    x = digits(32).test.x[:2]
    for rows, cols in ARRAYS:
        np.testing.assert_array_equal(reference_logits(engine, compile_program(engine, rows, cols), x),
                                      engine.logits(x).numpy(), err_msg=f"{rows} x {cols}")


@pytest.fixture(scope="module")
def squeezenet(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return factory_engine(tmp_path_factory.mktemp("squeezenet"), SQUEEZENET, bits=4, size=16)


@pytest.mark.parametrize(("rows", "cols"), [(16, 16), (8, 8), (4, 4), (2, 4)])
def test_squeezenet_concats_and_pooled_logits_give_the_engines_logits(squeezenet: Engine, rows: int,
                                                                       cols: int) -> None:
    x = digits(16).test.x[:3]
    np.testing.assert_array_equal(reference_logits(squeezenet, compile_program(squeezenet, rows, cols), x),
                                  squeezenet.logits(x).numpy())


def test_depthwise_conv_costs_a_tile_per_tap_and_min_side_of_channels(tmp_path: Path) -> None:
    engine = exported_engine(tmp_path, "mobilenet", 4, "po2")
    for rows, cols in ARRAYS:
        program = compile_program(engine, rows, cols)
        for gemm in (i for i in program.instructions if isinstance(i, Gemm) and i.name.endswith(".dw")):
            channels = gemm.out_channels
            assert gemm.tiles(cols) == 9 * -(-channels // cols) * -(-cols // rows), (gemm.name, rows, cols)
            assert len(gemm.slices) == gemm.n_slices(cols)   # each N slice its own K slices
            assert all(len(gemm.k_slices(n)) == 9 * -(-cols // rows) for n in range(gemm.n_slices(cols)))


def test_concat_inputs_write_their_ranges_of_one_tensor(squeezenet: Engine) -> None:
    names = {i.name: i for i in compile_program(squeezenet, 16, 16).instructions}
    expand1, expand3, pool = names["fire1.expand1.0"], names["fire1.expand3.0"], names["pool"]
    assert isinstance(expand1, Gemm) and isinstance(expand3, Gemm)
    assert expand1.dest == expand3.dest == pool.source and (expand1.dest_offset, expand3.dest_offset) == (0, 8)
    assert expand3.lead(16) == 8 and expand3.n_slices(16) == 1   # one N slice, its first 8 columns empty


def test_pooled_sums_are_the_logits_in_words_wide_enough(squeezenet: Engine) -> None:
    program = compile_program(squeezenet, 4, 4)
    last = program.instructions[-1]
    assert isinstance(last, Vector) and last.logits and last.name == "head.2"
    assert program.acc_bits >= sum_bits(program.act_bits, last.taps)


@pytest.fixture(scope="module")
def lenet(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return exported_engine(tmp_path_factory.mktemp("lenet"), "lenet5", 4, "po2")


@pytest.fixture(scope="module")
def tiny_resnet(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return factory_engine(tmp_path_factory.mktemp("resnet"), "tests.fixtures.tiny_resnet:make", bits=4, size=8)


@pytest.mark.parametrize("network", ["lenet", "squeezenet", "tiny_resnet"])
def test_buffer_reuses_words_but_never_under_a_live_tensor(request: pytest.FixtureRequest, network: str) -> None:
    """Every tensor an instruction reads (a residual's shortcut included) holds what its producer wrote:
    no instruction in between wrote over its words (except producers of the same concatenated tensor)."""
    program = compile_program(request.getfixturevalue(network), 8, 8)
    tensors = {program.input} | {i.dest for i in program.instructions if i.dest is not None}
    assert program.buffer_words < sum(t.words for t in tensors)
    written: list[tuple[int, int]] = []   # each instruction's destination words, in program order

    for instr in program.instructions:
        reads = [instr.source] + ([instr.other] if isinstance(instr, Vector) and instr.other is not None else [])
        for tensor in reads:
            words = (tensor.base, tensor.words)   # a linear layer reads its input as one 1 x 1 view
            made = max((j for j, dest in enumerate(written) if dest == words), default=-1)
            for base, count in written[made + 1:]:
                overlap = base < tensor.base + tensor.words and tensor.base < base + count
                assert (base, count) == words or not overlap, f"{instr.name} reads words written over in between"
            if instr.dest is not None:   # and no instruction writes over what it is reading
                dest = instr.dest
                assert dest.base + dest.words <= tensor.base or tensor.base + tensor.words <= dest.base, instr.name
        if instr.dest is not None:
            written.append((instr.dest.base, instr.dest.words))


def test_first_layer_streams_only_slices_with_a_real_channel(lenet: Engine) -> None:
    conv1 = compile_program(lenet, 8, 8).instructions[0]
    assert isinstance(conv1, Gemm)
    assert len(conv1.k_slices(0)) == 25   # one per tap of the 5 x 5 kernel on its one channel, not 8 lanes each


def test_input_stream_puts_channels_in_lanes(lenet: Engine) -> None:
    program = compile_program(lenet, 8, 8)
    codes = lenet.quantize_input(digits(32).test.x[:1]).numpy()[0]
    machine = Machine(program)
    machine.load(codes)
    words = machine.buffer[program.input.base:program.input.base + program.input.words]
    assert input_codes(program, codes) == [int(v) for v in words.reshape(-1)]


def test_weights_and_constants_fill_the_machines_memories(lenet: Engine) -> None:
    program = compile_program(lenet, 4, 4)
    shape, images = machine_of(program)
    assert shape.weight_words == len(images.weights) == len(program.weights)
    assert shape.instruction_words == len(program.instructions) + 1   # and the end
    assert shape.max_rows == 28 * 28


def test_signed_input_and_unsigned_relu_codes_share_lanes_one_bit_wider(tmp_path: Path) -> None:
    engine = factory_engine(tmp_path, "tests.fixtures.tiny_cnn:make", bits=4, size=12)
    program = compile_program(engine, 4, 4)
    assert (program.act_bits, program.act_signed) == (5, True)


@pytest.mark.parametrize(("rows", "cols"), [(4, 6), (3, 8)])
def test_arrays_whose_sides_do_not_divide_are_refused(rows: int, cols: int) -> None:
    with pytest.raises(UnsupportedOp, match=f"divide one another, not {rows} x {cols}"):
        lanes_of(rows, cols)


def test_concat_ranges_the_vector_unit_cannot_write_are_refused_by_name(tmp_path: Path) -> None:
    engine = factory_engine(tmp_path, "tests.fixtures.tiny_concat:make", bits=4, size=8)
    compile_program(engine, 4, 4)   # 4 lanes: the max pool writes one whole word of the concat
    with pytest.raises(UnsupportedOp, match=r"^op 'pooled.2' \(maxpool2d\) writes channels 0..3 of concat "
                                            r"'cat_1'; the vector unit writes whole words of 8 channels"):
        compile_program(engine, 8, 8)


def test_a_flattened_average_pool_keeps_its_map_layout_for_the_linear_layer(tmp_path: Path) -> None:
    engine = factory_engine(tmp_path, "tests.fixtures.tail_nets:pooled_linear", bits=4, size=8)
    x = digits(8).test.x[:4]
    for rows, cols in ((4, 4), (2, 4)):
        np.testing.assert_array_equal(reference_logits(engine, compile_program(engine, rows, cols), x),
                                      engine.logits(x).numpy())


def test_logits_that_are_a_quantizers_codes_are_refused(tmp_path: Path) -> None:
    engine = factory_engine(tmp_path, "tests.fixtures.tail_nets:relu_logits", bits=4, size=8)
    with pytest.raises(UnsupportedOp, match=r"the logits are the codes of op '.*' \(quant_relu\)"):
        compile_program(engine, 4, 4)


@pytest.fixture(scope="module")
def tiny_nets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Engine, int]]:
    sizes = {"tiny_cnn": 12, "tiny_resnet": 8, "tiny_mobilenet": 8, "tiny_concat": 8}
    return {name: (factory_engine(tmp_path_factory.mktemp(name), f"tests.fixtures.{name}:make", bits=4, size=size),
                   size) for name, size in sizes.items()}


@pytest.mark.parametrize("placement", ["input", "output"])
@pytest.mark.parametrize(("mode", "granularity"), [("clip", "channel"), ("zero", "layer"), ("detect", "channel")])
@pytest.mark.parametrize("network", ["tiny_cnn", "tiny_resnet", "tiny_mobilenet", "tiny_concat"])
def test_range_checks_give_the_checked_engines_logits_and_alarm(tiny_nets: dict[str, tuple[Engine, int]],
                                                                 network: str, mode: str, granularity: str,
                                                                 placement: str) -> None:
    engine, size = tiny_nets[network]
    x = digits(size).test.x[:4]
    checked = checked_engine(engine, x[:2], mode, granularity, placement)
    program = compile_program(checked, 2, 4)
    runs = [run_detecting(program, codes) for codes in checked.quantize_input(x).numpy()]
    np.testing.assert_array_equal(np.stack([logits for logits, _ in runs]), checked.logits(x).numpy())
    assert [alarm for _, alarm in runs] == engine_alarms(checked, x).tolist()
    assert program.check == mode


def test_input_checks_of_linear_layers_repeat_their_bounds_per_pixel(lenet: Engine) -> None:
    """LeNet's first linear layer reads a 16 x 5 x 5 map as 25 pixels' words: each word's lanes are
    checked against its channels' bounds."""
    x = digits(32).test.x[:3]
    checked = checked_engine(lenet, x[:2], "zero", "channel", "input")
    program = compile_program(checked, 8, 8)
    fc = next(i for i in program.instructions if isinstance(i, Gemm) and i.source.height == 1 and i.source.groups > 2)
    assert fc.input_check == "zero" and fc.input_period == 2 and fc.source.groups == 50
    np.testing.assert_array_equal(reference_logits(checked, program, x), checked.logits(x).numpy())
    assert not np.array_equal(checked.logits(x).numpy(), lenet.logits(x).numpy())


def test_padding_lanes_hold_the_codes_whole_range(lenet: Engine) -> None:
    """Bounds that leave out 0 on every channel: a word's padding lanes (LeNet's conv1 has 6 channels in
    8 lanes) are bounded by the codes' range, so their zeros never raise the alarm."""
    checks = {index: RangeCheck("detect", np.full(lenet.model.ops[index].out_shape[0], 1),
                                np.full(lenet.model.ops[index].out_shape[0], 2)) for index in lenet.output_stages}
    program = compile_program(Engine(lenet.model, **placed(lenet.model, checks, "input")), 8, 8)  # type: ignore[arg-type]
    conv2 = [i for i in program.instructions if isinstance(i, Gemm)][1]
    bits = program.act_bits
    whole = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if program.act_signed else (0, (1 << bits) - 1)
    assert conv2.source.channels == 6 and program.lanes == 8
    assert program.bounds[conv2.input_bounds] == ((1, 2),) * 6 + (whole,) * 2


def test_protections_other_than_range_checks_are_refused_by_name(lenet: Engine) -> None:
    quantizer = next(iter(lenet.output_stages))
    engine = Engine(lenet.model, checks={quantizer: MedianFilter(3, 8)})
    with pytest.raises(UnsupportedOp, match=r"\(MedianFilter\) has no unit on the accelerator; it builds range checks"):
        compile_program(engine, 8, 8)


def test_double_buffered_machine_loads_the_same_images_and_counts_fewer_cycles(lenet: Engine) -> None:
    """Two weight buffers (`MachineShape.weight_buffers`) change the machine, not what its host loads;
    every GEMM's count is the double-buffered closed form, never above the single buffer's."""
    import dataclasses

    from dsetool.machine.program import program_cycles
    from hw.cycles import machine_end_cycles, machine_gemm_cycles, machine_vector_cycles

    for rows, cols in ARRAYS:
        program = compile_program(lenet, rows, cols)
        (single, images), (double, double_images) = machine_of(program), machine_of(program, weight_buffers=2)
        assert double_images == images and double == dataclasses.replace(single, weight_buffers=2)
        gemms = [i for i in program.instructions if isinstance(i, Gemm)]
        vectors = [i for i in program.instructions if isinstance(i, Vector)]
        assert program_cycles(program, weight_buffers=2) == machine_end_cycles() + sum(
            machine_gemm_cycles(g.m, g.tiles(cols), rows, cols, 2) for g in gemms) + sum(
            machine_vector_cycles(v.words, v.taps) for v in vectors)
        assert program_cycles(program, weight_buffers=2) < program_cycles(program)
    with pytest.raises(ValueError, match="weight_buffers"):
        machine_of(program, weight_buffers=3)


@pytest.fixture(scope="module")
def pooled_linear(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return factory_engine(tmp_path_factory.mktemp("pooled"), "tests.fixtures.tail_nets:pooled_linear", bits=4, size=8)


@pytest.fixture(scope="module")
def narrow(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return factory_engine(tmp_path_factory.mktemp("narrow"), "tests.fixtures.tiny_narrow:make", bits=4, size=8)


@pytest.fixture(scope="module")
def tiny_mobilenet(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return factory_engine(tmp_path_factory.mktemp("mobilenet"), "tests.fixtures.tiny_mobilenet:make", bits=4, size=8)


@pytest.mark.parametrize("network", ["lenet", "squeezenet", "tiny_resnet", "pooled_linear", "narrow", "tiny_mobilenet"])
@pytest.mark.parametrize(("rows", "cols"), [(8, 8), (2, 4), (4, 2), (16, 16)])
def test_pe_sites_take_k_in_the_order_the_compiled_weight_tiles_hold_it(request: pytest.FixtureRequest,
                                                                          network: str, rows: int, cols: int) -> None:
    """`machine_k_order` (the K order of a layer's PE fault sites) names, slice by slice and lane by lane, the
    weights the compiled program loads into the array's rows: the order the accelerator streams K in, a
    flattened input, a concat's tensor, a flattened average pool's and a flat quantizer's codes (kept on
    the map they were made on) included; and `machine_lead` the empty columns before channel 0 of a layer
    writing into a concat from inside a word; a grouped conv's `machine_slice_orders`, one per N slice,
    the K slices each N slice's tiles hold."""
    engine = request.getfixturevalue(network)
    program = compile_program(engine, rows, cols)
    index = {op.name: i for i, op in enumerate(engine.model.ops)}
    ordered = leads = grouped = 0
    for gemm in (i for i in program.instructions if isinstance(i, Gemm)):
        op = engine.model.ops[index[gemm.name]]
        order = machine_k_order(engine.model, index[gemm.name], rows, cols)
        orders = machine_slice_orders(engine.model, index[gemm.name], rows, cols)
        assert (order is None) == (orders is not None) == (isinstance(op, Conv2d) and op.groups > 1)
        ordered += 1
        grouped += orders is not None
        assert machine_lead(engine.model, index[gemm.name], cols) == gemm.lead(cols), gemm.name
        leads += gemm.lead(cols) > 0
        dense = dense_weight(op)
        padded = np.zeros((dense.shape[0] + 1, dense.shape[1] + 1), dtype=np.int64)
        padded[:-1, :-1] = dense   # index -1: a padding lane or an empty column
        channels = np.arange(gemm.n_slices(cols) * cols) - gemm.lead(cols)
        channels = np.where(channels < op.out_features, channels, -1).reshape(-1, cols)
        per_n = orders if orders is not None else [order] * len(channels)   # a grouped conv: one per N slice
        assert len(per_n) == len(channels)
        expected = []
        for nt, (outs, k_order) in enumerate(zip(channels, per_n, strict=True)):
            per_slice = np.asarray(k_order).reshape(-1, rows)
            assert len(per_slice) == len(gemm.k_slices(nt))
            expected += [tuple(padded[outs, k].tolist()) for lanes in per_slice for k in lanes[::-1]]
        assert list(program.weights[gemm.weight_base:gemm.weight_base + len(expected)]) == expected, gemm.name
    assert ordered >= 2
    assert grouped == (2 if network == "tiny_mobilenet" else 0)
    assert leads > 0 or not (network == "squeezenet" and cols == 16)   # fire1's expand3 starts mid-word
