"""The int8 x int8 -> int32 route of the engine's weight layers: bit-identical to float64 arithmetic.

Checks `ops.int8_conv2d` / `ops.int8_linear` against float64 convolutions over full registers (extreme codes
included), the exactness guards that keep the float route, weights edited in place, and whole engines
with the route on and off.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from dsetool.engine import Engine, executor, ops  # noqa: E402
from tests.fixtures.engines import digits, exported_engine  # noqa: E402
from tests.test_engine_ops import Builder  # noqa: E402

pytestmark = pytest.mark.skipif(not ops.int8_gemm_available(), reason="no exact torch._int_mm on this machine")
F = torch.nn.functional


@pytest.fixture(autouse=True)
def _one_thread_and_the_route_wherever_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """One thread; and the int8 route taken wherever it is exact, also where it is slower than float32 (a
    CPU without VNNI), so these tests check its integers on every machine."""
    torch.set_num_threads(1)
    monkeypatch.setattr(ops, "int8_gemm_fast", ops.int8_gemm_available)


def register_values(shape: tuple[int, ...], low: int, high: int, generator: torch.Generator) -> torch.Tensor:
    """Random integers in [low, high] as float32, a tenth of them at either end of the register."""
    values = torch.randint(low, high + 1, shape, generator=generator)
    ends = torch.rand(shape, generator=generator)
    values = torch.where(ends < 0.05, low, torch.where(ends > 0.95, high, values))
    return values.to(torch.float32)


def int8_operands(weight: torch.Tensor, bias: torch.Tensor, act_offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    matrix = ops.int8_weight_matrix(weight)
    offsets = bias.to(torch.int64) + act_offset * matrix.to(torch.int64).sum(dim=0)
    return matrix, offsets.to(torch.float64)


ACTS = [(bits, signed) for bits in range(2, 9) for signed in (False, True)]
WEIGHTS = {"full 8-bit": (-128, 127), "narrow 8-bit": (-127, 127), "4-bit": (-8, 7), "2-bit": (-2, 1)}


@pytest.mark.parametrize("bits, signed", ACTS)
@pytest.mark.parametrize("weights", list(WEIGHTS))
@pytest.mark.parametrize("kernel, stride, padding", [(1, 1, 0), (1, 2, 0), (3, 1, 1), (3, 2, 1), (5, 1, 2),
                                                     (2, 3, 0)])
def test_int8_conv2d_equals_the_float64_convolution(bits: int, signed: bool, weights: str, kernel: int, stride: int,
                                                    padding: int, monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(bits * 100 + kernel * 10 + stride)
    act_range, weight_range = ops.int_range(bits, signed), WEIGHTS[weights]
    act_offset = ops.int8_gemm_exact(5 * kernel * kernel, act_range, weight_range)
    assert act_offset == (128 if (bits, signed) == (8, False) else 0)
    codes = register_values((7, 5, 9, 8), *act_range, generator)
    weight = register_values((6, 5, kernel, kernel), *weight_range, generator)
    bias = register_values((6,), -(2**20), 2**20, generator)
    monkeypatch.setattr(ops, "INT8_CHUNK_BYTES", 1)   # one image per GEMM: the chunks must tile the batch
    for chunk in (1, 2**21):
        monkeypatch.setattr(ops, "INT8_CHUNK_BYTES", chunk)
        acc = ops.int8_conv2d(codes, *int8_operands(weight, bias, act_offset), act_offset, (kernel, kernel),
                              (stride, stride), (padding, padding))
        expected = F.conv2d(codes.double(), weight.double(), bias.double(), stride=stride, padding=padding)
        assert acc.dtype == torch.float64 and acc.is_contiguous()
        assert torch.equal(acc, expected)


@pytest.mark.parametrize("bits, signed", ACTS)
@pytest.mark.parametrize("weights", list(WEIGHTS))
def test_int8_linear_equals_the_float64_product(bits: int, signed: bool, weights: str) -> None:
    generator = torch.Generator().manual_seed(bits)
    act_range, weight_range = ops.int_range(bits, signed), WEIGHTS[weights]
    act_offset = ops.int8_gemm_exact(300, act_range, weight_range)
    assert act_offset is not None
    codes = register_values((5, 3, 10, 10), *act_range, generator)   # flattened by the layer
    weight = register_values((11, 300), *weight_range, generator)
    bias = register_values((11,), -(2**20), 2**20, generator)
    acc = ops.int8_linear(codes, *int8_operands(weight, bias, act_offset), act_offset)
    assert torch.equal(acc, codes.reshape(5, -1).double() @ weight.double().T + bias.double())


def test_the_int32_guard_keeps_the_float_route() -> None:
    """Bytes times int8 weights: K * 255 * 128 (oneDNN's unsigned re-bias) must stay below 2**31."""
    assert ops.int8_gemm_exact(65_793, (0, 255), (-128, 127)) == 128
    assert ops.int8_gemm_exact(65_794, (0, 255), (-128, 127)) is None
    assert ops.int8_gemm_exact(16, (0, 511), (-128, 127)) is None       # 9-bit codes do not fit int8
    assert ops.int8_gemm_exact(16, (-128, 127), (-256, 255)) is None    # nor do 9-bit weights
    assert ops.int8_gemm_exact(16, (-1, 255), (-8, 7)) is None          # nor 0..255 with a sign
    model = Builder((1, 32, 32), 16, 2.0**-16, seed=3).flatten().linear("fc1", 4, bits=16) \
        .relu("relu", 8, 20.0).linear("fc2", 2).build()
    first, second = (Engine(model).layers[index] for index in Engine(model).weight_layers)
    assert first.route == "float" and first.int8 is None   # 16-bit codes and weights
    assert second.route == "float" and second.dtype == torch.float32   # too small to pay off
    wide = Engine(Builder((6, 10, 10), 8, 2.0**-8).flatten().linear("fc", 2).build())
    layer = wide.layers[wide.weight_layers[0]]
    assert layer.route == "int8" and layer.dtype == torch.float64   # float64 accumulators: int8 at any size


def small_model(act_bits: int, signed: bool, weight_bits: int = 8) -> Builder:
    """Stride, padding, a depthwise and a grouped conv, a 1x1 conv, a linear layer; signed or unsigned codes."""
    b = Builder((3, 11, 11), act_bits, 2.0**-act_bits, scaling="po2", seed=act_bits)
    b.conv("conv1", 16, 3, padding=1, stride=2, bits=weight_bits).relu("relu1", act_bits, 2.0**-2, signed=signed)
    b.conv("dw", 16, 3, padding=1, groups=16, bits=weight_bits).relu("relu2", act_bits, 2.0**-2, signed=signed)
    b.conv("grouped", 8, 3, padding=0, groups=4, bits=weight_bits).relu("relu3", act_bits, 2.0**-1, signed=signed)
    b.conv("pw", 24, 1, bits=weight_bits).relu("relu4", act_bits, 2.0**0, signed=signed)
    return b.flatten().linear("fc", 5, bits=weight_bits)


@pytest.mark.parametrize("act_bits, signed, weight_bits", [(8, False, 8), (8, True, 8), (4, False, 4), (2, True, 3),
                                                          (7, False, 8)])
def test_an_engine_gives_the_same_integers_on_both_routes(act_bits: int, signed: bool, weight_bits: int,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    model = small_model(act_bits, signed, weight_bits).build()
    monkeypatch.setattr(ops, "INT8_GEMM_ENABLED", False)
    reference = Engine(model)
    monkeypatch.setattr(ops, "INT8_GEMM_ENABLED", True)
    monkeypatch.setattr(executor, "INT8_MIN_WORK", 0)   # every layer, however small
    engine = Engine(model)
    routes = {layer.name: layer.route for layer in engine.layers.values()}
    assert routes == {"conv1": "int8", "dw": "float", "grouped": "float", "pw": "int8", "fc": "int8"}
    assert all(layer.route != "int8" for layer in reference.layers.values())
    x = torch.rand(9, 3, 11, 11)
    got, expected = engine.run(x, keep=True), reference.run(x, keep=True)
    for index, (value, wanted) in enumerate(zip(got, expected, strict=True)):
        assert value.dtype == wanted.dtype == engine.dtypes[index]
        assert value.is_contiguous() and torch.equal(value, wanted), model.ops[index].name
    assert got[-1].abs().max() > 0


def test_weights_edited_in_place_run_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """A brute-force weight fault writes `layer.weight`; the int8 operands follow it, and a value beyond the
    weight register (which the int32 proof assumed) takes the float route for that call."""
    monkeypatch.setattr(executor, "INT8_MIN_WORK", 0)
    engine = Engine(small_model(8, False, 4).build())
    layer = engine.layers[engine.weight_layers[-2]]   # pw: 4-bit weights, unsigned 8-bit codes
    assert layer.route == "int8"
    codes = torch.randint(0, 256, (4, *engine.input_shape(engine.weight_layers[-2]))).to(torch.float32)

    def expected() -> torch.Tensor:
        return F.conv2d(codes.double(), layer.weight_tensor.double(), layer.bias.double()).to(layer.dtype)

    assert torch.equal(layer(codes), expected())
    for value in (-8.0, 7.0, 100.0):
        layer.weight[3, 5] = value
        assert torch.equal(layer(codes), expected())


def test_a_probe_without_int_mm_keeps_the_float_route(monkeypatch: pytest.MonkeyPatch) -> None:
    ops._probe_int_mm.cache_clear()
    monkeypatch.delattr(torch, "_int_mm")
    try:
        assert not ops.int8_gemm_available()
        engine = Engine(small_model(8, False).build())
        assert all(layer.route != "int8" for layer in engine.layers.values())
    finally:
        ops._probe_int_mm.cache_clear()


def test_a_slow_int8_gemm_keeps_the_float_route(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor, "INT8_MIN_WORK", 0)
    monkeypatch.setattr(ops, "int8_gemm_fast", lambda device="cpu": False)
    engine = Engine(small_model(8, False).build())
    assert all(layer.route != "int8" for layer in engine.layers.values())


def test_the_speed_probe_times_both_products_once_on_one_thread() -> None:
    """Three timed calls of each product, on one thread (a loaded machine stalls a multi-threaded GEMM at
    its barrier, which once made the float32 product look as slow as the int8 reference loop); the
    process's thread count is restored after, and the answer is cached."""
    ops._probe_int_mm_speed.cache_clear()
    calls = {"int8": 0, "float32": 0}
    threads: set[int] = set()
    real_int_mm, real_mm = torch._int_mm, torch.mm

    def counted(name, multiply):  # type: ignore[no-untyped-def]
        def run(a, b):  # type: ignore[no-untyped-def]
            calls[name] += 1
            threads.add(torch.get_num_threads())
            return multiply(a, b)
        return run

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "_int_mm", counted("int8", real_int_mm))
        patch.setattr(torch, "mm", counted("float32", real_mm))
        before = torch.get_num_threads()
        torch.set_num_threads(2)
        try:
            first = ops._probe_int_mm_speed("cpu")
            assert ops._probe_int_mm_speed("cpu") is first     # cached: measured once per process
            assert torch.get_num_threads() == 2
        finally:
            torch.set_num_threads(before)
    assert calls == {"int8": 3, "float32": 3} and threads == {1}
    ops._probe_int_mm_speed.cache_clear()


@pytest.mark.parametrize("arch", ["lenet5", "resnet8"])
def test_a_built_in_model_gives_identical_logits_with_the_route_on_and_off(tmp_path: Path, arch: str,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    size = 32 if arch == "lenet5" else 16
    monkeypatch.setattr(executor, "INT8_MIN_WORK", 0)
    engine = exported_engine(tmp_path, arch, bits=8, size=size)
    assert any(layer.route == "int8" for layer in engine.layers.values())
    monkeypatch.setattr(ops, "INT8_GEMM_ENABLED", False)
    reference = Engine(engine.model)
    x = digits(size).test.x[:64]
    got, expected = engine.run(x, keep=True), reference.run(x, keep=True)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


@pytest.mark.parametrize("bits, signed", [(8, False), (8, True), (5, False)])
def test_large_planes_cast_before_the_transpose(bits: int, signed: bool) -> None:
    """Planes of `TRANSPOSE_AFTER_CAST` codes or more take the cast-first conversion: the same integers."""
    generator = torch.Generator().manual_seed(bits)
    act_range = ops.int_range(bits, signed)
    act_offset = ops.int8_act_offset(act_range)
    assert act_offset is not None
    codes = register_values((3, 4, 32, 33), *act_range, generator)
    assert 32 * 33 >= ops.TRANSPOSE_AFTER_CAST
    weight = register_values((5, 4, 3, 3), -128, 127, generator)
    bias = register_values((5,), -(2**20), 2**20, generator)
    acc = ops.int8_conv2d(codes, *int8_operands(weight, bias, act_offset), act_offset, (3, 3), (1, 1), (1, 1))
    assert torch.equal(acc, F.conv2d(codes.double(), weight.double(), bias.double(), padding=1))
