"""Bit-level properties of the engine's primitives, against exact Fraction arithmetic and torch's conv2d.

Synthetic integer models (built here as export dicts, no Brevitas) cover what the zoo does not: a pool or a
flatten between a layer and its requantizer, and the float64 exactness guards.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from dsetool.engine import Engine, executor, ops, parse_intmodel  # noqa: E402
from dsetool.engine.executor import RegisterWidths, _NarrowPlan  # noqa: E402
from dsetool.engine.intmodel import OP_CLASSES, Flatten  # noqa: E402
from dsetool.gemm import window_side  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def round_half_even(value: Fraction) -> int:
    return round(value)  # Python rounds a Fraction half to even


# -- rounding shifts and the fixed-point multiplier ------------------------------------------------------

@given(st.lists(st.integers(-(2**62), 2**62 - 1), min_size=1, max_size=20), st.integers(-8, 80))
def test_shift_rounds_half_to_even_exactly(values: list[int], shift: int) -> None:
    if shift < 0:
        values = [v >> 10 for v in values]  # keep the left shift inside int64
    got = ops.shift_round_half_even(torch.tensor(values), shift).tolist()
    assert got == [round_half_even(Fraction(v) / Fraction(2) ** shift) for v in values]


@given(st.lists(st.tuples(st.integers(-(2**40), 2**40), st.integers(-4, 63)), min_size=1, max_size=20))
def test_shift_takes_a_shift_per_element(pairs: list[tuple[int, int]]) -> None:
    values, shifts = (torch.tensor(column) for column in zip(*pairs, strict=True))
    got = ops.shift_round_half_even(values, shifts).tolist()
    assert got == [round_half_even(Fraction(v) / Fraction(2) ** s) for v, s in pairs]


def test_shift_rounds_ties_to_even() -> None:
    values = torch.tensor([-7, -6, -5, -3, -2, -1, 1, 2, 3, 5, 6, 7]) * 2  # x.5 * 4 = x.5 ties at shift 2
    assert ops.shift_round_half_even(values, 2).tolist() == [-4, -3, -2, -2, -1, 0, 0, 1, 2, 2, 3, 4]


ratios = st.fractions(min_value=Fraction(1, 2**40), max_value=Fraction(2**20)).filter(lambda r: r > 0)


@given(ratios, st.integers(1, 32))
def test_fixed_point_multiplier_is_the_most_precise_of_its_width(ratio: Fraction, bits: int) -> None:
    multiplier, shift = ops.fixed_point_multiplier(ratio, bits)
    assert 2 ** (bits - 1) <= multiplier < 2**bits
    error = abs(Fraction(multiplier) / Fraction(2) ** shift - ratio)
    assert error <= Fraction(1, 2) / Fraction(2) ** shift
    assert error / ratio < Fraction(1, 2**bits - 1)
    assert round_half_even(ratio * Fraction(2) ** (shift + 1)) >= 2**bits  # one more bit of shift overflows


def test_fixed_point_multiplier_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"^Requantization ratio must be positive, not Fraction\(0, 1\)$"):
        ops.fixed_point_multiplier(Fraction(0), 16)
    with pytest.raises(ValueError, match=r"^Multiplier bits must be a positive integer, not 0$"):
        ops.fixed_point_multiplier(Fraction(1, 3), 0)


@given(st.lists(st.integers(-(2**36), 2**36), min_size=1, max_size=30), ratios, st.integers(1, 16),
       st.sampled_from([(0, 255), (-128, 127), (0, 3)]))
def test_float64_requantize_equals_the_integer_output_stage(acc: list[int], ratio: Fraction, bits: int,
                                                           qrange: tuple[int, int]) -> None:
    multiplier, shift = ops.fixed_point_multiplier(ratio, bits)
    factor = float(Fraction(multiplier) / Fraction(2) ** shift)
    got = ops.requantize(torch.tensor(acc, dtype=torch.float64), factor, *qrange)
    hardware = ops.fixed_point_requantize_int(torch.tensor(acc), multiplier, shift, *qrange)
    exact = [min(max(round_half_even(Fraction(max(a, 0) * multiplier) / Fraction(2) ** shift), qrange[0]),
                 qrange[1]) for a in acc]
    assert got.tolist() == hardware.tolist() == exact


def test_quantize_rounds_half_to_even_in_float32_and_clamps() -> None:
    x = torch.tensor([-1.0, 0.0, 0.125, 0.375, 0.625, 1.0, 50.0])
    assert ops.quantize(x, 0.25, 0, 15).tolist() == [0, 0, 0, 2, 2, 4, 15]
    assert ops.quantize(x, 0.25, 0, 15).dtype == ops.CODE_DTYPE


def test_int_range_and_signed_width() -> None:
    assert ops.int_range(4, signed=False) == (0, 15)
    assert ops.int_range(4, signed=True) == (-8, 7)
    assert ops.int_range(4, signed=True, narrow_range=True) == (-7, 7)
    assert [ops.signed_width(lo, hi) for lo, hi in [(0, 0), (-1, 0), (0, 1), (-128, 127), (-129, 0), (0, 128)]] \
        == [1, 1, 2, 8, 9, 9]


# -- im2col + GEMM is a convolution ------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3), st.integers(0, 2),
       st.integers(4, 9), st.integers(4, 9), st.integers(0, 2**31 - 1))
def test_im2col_gemm_equals_conv2d(channels: int, out_channels: int, kernel: int, stride: int, padding: int,
                                   height: int, width: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(-128, 128, (2, channels, height, width), generator=generator).double()
    weight = torch.randint(-127, 128, (out_channels, channels, kernel, kernel), generator=generator).double()
    bias = torch.randint(-(2**20), 2**20, (out_channels,), generator=generator).double()
    expected = torch.nn.functional.conv2d(x, weight, bias, stride=stride, padding=padding)
    columns = ops.im2col(x, (kernel, kernel), (stride, stride), (padding, padding))
    assert columns.shape == (2, expected.shape[2] * expected.shape[3], channels * kernel * kernel)
    acc = ops.gemm(columns, weight.reshape(out_channels, -1).T, bias)
    assert torch.equal(acc.transpose(1, 2).reshape(expected.shape), expected)
    assert expected.shape[2] == window_side(height, kernel, stride, padding)


# -- the 2**53 guard --------------------------------------------------------------------------------------

@given(st.integers(1, 4), st.tuples(st.integers(-8, 0), st.integers(0, 8)),
       st.tuples(st.integers(-8, 0), st.integers(0, 8)), st.tuples(st.integers(-50, 0), st.integers(0, 50)))
def test_gemm_bound_is_the_exact_range_of_every_partial_sum(k: int, act: tuple[int, int], weight: tuple[int, int],
                                                            bias: tuple[int, int]) -> None:
    low, high = ops.gemm_bound(k, act, weight, bias)
    products = [a * w for a in range(act[0], act[1] + 1) for w in range(weight[0], weight[1] + 1)]
    assert (low, high) == (k * min(products) + bias[0], k * max(products) + bias[1])


def test_check_exact_stops_at_two_to_the_53() -> None:
    ops.check_exact((-(2**53) + 1, 2**53 - 1), "Layer 'x'")
    message = (r"^Layer 'x': accumulators up to 9007199254740992 reach 2\*\*53, beyond the float64 engine's "
               r"exact range \(fewer bits or a smaller layer would fit\)$")
    with pytest.raises(ValueError, match=message):
        ops.check_exact((-(2**53), 0), "Layer 'x'")
    ops.check_exact((0, 2**37 - 1), "Stage", factor_bits=16)
    with pytest.raises(ValueError, match=r"^Stage: accumulators up to 137438953472 times a 16-bit multiplier"):
        ops.check_exact((0, 2**37), "Stage", factor_bits=16)


# -- synthetic models --------------------------------------------------------------------------------------

class Builder:
    """Write an integer export (json dict + arrays) layer by layer, with random integer weights."""

    def __init__(self, shape: tuple[int, ...], bits: int, scale: float, *, scaling: str = "float",
                 per_channel: bool = False, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.scaling, self.per_channel, self.shape = scaling, per_channel, shape
        self.ops: list[dict[str, Any]] = []
        self.arrays: dict[str, np.ndarray] = {}
        self.scale = scale
        self._quant("quant_input", "input_quant", bits, scale, signed=False)
        self.input_shape = shape

    def _add(self, op: dict[str, Any]) -> Builder:
        reads = op.pop("inputs", None) or ([self.cursor] if getattr(self, "cursor", None) else None)
        self.cursor = None
        self.ops.append({**op, "out_shape": list(self.shape), **({"inputs": reads} if reads else {})})
        return self

    def branch(self, name: str) -> Builder:
        """Let the next op read op `name` (not the last one), at that op's shape and codes' scale."""
        op = next(o for o in self.ops if o["name"] == name)
        self.cursor, self.shape = name, tuple(op["out_shape"])
        self.scale = op.get("scale", self.scale)
        return self

    def quant(self, name: str, bits: int, scale: float, signed: bool = True) -> Builder:
        """A quant_identity: requantize the previous op's integers (no ReLU)."""
        return self._quant("quant_identity", name, bits, scale, signed)

    def avgpool(self, name: str, kernel: int = 2, stride: int = 2, padding: int = 0) -> Builder:
        channels, height, width = self.shape
        self.shape = (channels, *(window_side(size, kernel, stride, padding) for size in (height, width)))
        return self._add({"op": "avgpool2d", "name": name, "kernel": [kernel, kernel], "stride": [stride, stride],
                          "padding": [padding, padding]})

    def add(self, name: str, first: str, second: str) -> Builder:
        return self._add({"op": "add", "name": name, "inputs": [first, second]})

    def _quant(self, kind: str, name: str, bits: int, scale: float, signed: bool) -> Builder:
        self.scale = scale
        extra = {"scale_exp": int(np.log2(scale))} if self.scaling == "po2" else {}
        return self._add({"op": kind, "name": name, "scale": scale, "bits": bits, "signed": signed,
                          "narrow_range": False, "zero_point": 0, "rounding": "half_even", **extra})

    def relu(self, name: str, bits: int, scale: float, signed: bool = False) -> Builder:
        return self._quant("quant_relu", name, bits, scale, signed)

    def _weights(self, name: str, shape: tuple[int, ...], bits: int) -> dict[str, Any]:
        limit = 2 ** (bits - 1) - 1
        self.arrays[f"{name}.weight"] = self.rng.integers(-limit, limit + 1, shape).astype(np.int16)
        self.arrays[f"{name}.bias"] = self.rng.integers(-(2**12), 2**12, shape[0]).astype(np.int64)
        scales = 2.0 ** self.rng.integers(-9, -5, shape[0]) if self.scaling == "po2" else \
            self.rng.uniform(0.001, 0.01, shape[0])
        scale = scales if self.per_channel else np.array(scales[0])
        self.arrays[f"{name}.weight_scale"] = scale
        fields = {"weight": f"{name}.weight", "weight_scale": f"{name}.weight_scale", "bias": f"{name}.bias",
                  "weight_bits": bits, "weight_signed": True, "weight_narrow_range": True,
                  "weight_rounding": "half_even", "input_scale": self.scale, "bias_bits": 32, "bias_signed": True}
        if self.scaling == "po2":
            exps = [int(np.log2(s)) for s in scale.reshape(-1)]
            fields |= {"weight_scale_exp": exps if self.per_channel else exps[0],
                       "input_scale_exp": int(np.log2(self.scale))}
        return fields

    def conv(self, name: str, out: int, kernel: int, padding: int = 0, bits: int = 8, stride: int = 1,
             groups: int = 1) -> Builder:
        channels, height, width = self.shape
        fields = self._weights(name, (out, channels // groups, kernel, kernel), bits)
        side = [window_side(size, kernel, stride, padding) for size in (height, width)]
        self.shape = (out, *side)
        return self._add({"op": "conv2d", "name": name, "in_channels": channels, "out_channels": out,
                          "kernel": [kernel, kernel], "stride": [stride, stride], "padding": [padding, padding],
                          "groups": groups, **fields})

    def linear(self, name: str, out: int, bits: int = 8) -> Builder:
        (features,) = self.shape
        fields = self._weights(name, (out, features), bits)
        self.shape = (out,)
        return self._add({"op": "linear", "name": name, "in_features": features, "out_features": out, **fields})

    def pool(self, name: str, kernel: int = 2, stride: int = 2, padding: int = 0) -> Builder:
        channels, height, width = self.shape
        self.shape = (channels, *(window_side(size, kernel, stride, padding) for size in (height, width)))
        return self._add({"op": "maxpool2d", "name": name, "kernel": [kernel, kernel], "stride": [stride, stride],
                          "padding": [padding, padding]})

    def flatten(self) -> Builder:
        self.shape = (int(np.prod(self.shape)),)
        return self._add({"op": "flatten", "name": "flatten", "start_dim": 1, "order": "chw"})

    def config(self) -> dict[str, Any]:
        """Return the export's JSON part (what `intmodel.json` holds): version 1 for a chain, version 2 (every
        op naming its inputs) once an op reads something else than the op before it."""
        header = {"format": "dsetool-intmodel", "version": 1, "arch": "tiny", "input_shape": list(self.input_shape),
                  "num_classes": self.shape[0], "scaling": self.scaling,
                  "weight_granularity": "per_channel" if self.per_channel else "per_tensor",
                  "logits": self.ops[-1]["name"]}
        if not any("inputs" in op for op in self.ops):
            return {**header, "ops": self.ops}
        ops_ = [{**op, "inputs": op.get("inputs") or [self.ops[i - 1]["name"] if i else "input"]}
                for i, op in enumerate(self.ops)]
        return {**header, "version": 2, "ops": ops_}

    def build(self) -> Any:
        return parse_intmodel(self.config(), self.arrays)


def reference_requantize(acc: np.ndarray, channel_of: np.ndarray, model: Any, conv: dict[str, Any],
                         relu: dict[str, Any], bits: int) -> np.ndarray:
    """Requantize with exact rationals: round_half_even(relu(acc) * M_c / 2**s_c), M_c from the ratio."""
    scales = np.broadcast_to(conv.weight_scale, (conv.out_features,))
    constants = [ops.fixed_point_multiplier(Fraction(conv.input_scale) * Fraction(float(s)) / Fraction(relu.scale),
                                            bits) for s in scales]
    qmin, qmax = relu.qrange
    flat = [min(max(round_half_even(Fraction(max(int(a), 0) * constants[c][0]) / Fraction(2) ** constants[c][1]),
                    qmin), qmax) for a, c in zip(acc.reshape(-1), channel_of.reshape(-1), strict=True)]
    return np.array(flat, dtype=np.float64).reshape(acc.shape)


@pytest.mark.parametrize("between", ["pool", "flatten", "pool+flatten"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_requantizer_reads_accumulators_through_pool_and_flatten(between: str, per_channel: bool) -> None:
    builder = Builder((2, 6, 6), 8, 1 / 255, per_channel=per_channel).conv("conv", 3, 3, padding=1)
    for part in between.split("+"):
        builder.pool("pool") if part == "pool" else builder.flatten()
    builder.relu("relu", 6, 0.05)
    if "flatten" not in between:
        builder.flatten()
    model = builder.linear("fc", 4).build()
    engine = Engine(model, multiplier_bits=12)
    x = torch.rand(5, 2, 6, 6)
    outputs = engine.run(x, keep=True)
    relu_index = [op.kind for op in model.ops].index("quant_relu")
    acc = outputs[relu_index - 1].numpy()
    per_image = acc.shape[1:]
    channel_of = np.broadcast_to(np.repeat(np.arange(3), acc[0].size // 3).reshape(per_image), acc.shape)
    expected = reference_requantize(acc, channel_of, model, model.ops[1], model.ops[relu_index], 12)
    assert np.array_equal(outputs[relu_index].numpy(), expected)
    assert 0 < expected.max() <= 63  # the test exercises rounding, not only clamping


def test_po2_output_stage_is_a_shift(tmp_path: Any) -> None:
    model = Builder((1, 4, 4), 8, 2.0**-8, scaling="po2", per_channel=True).conv("conv", 2, 3) \
        .relu("relu", 4, 2.0**-2).flatten().linear("fc", 3).build()
    engine = Engine(model)
    requantizer = engine.requantizers[1]
    conv = model.ops[1]
    assert requantizer.multiplier == (1, 1)
    assert requantizer.shift == tuple(-2 - (-8) - e for e in conv.weight_scale_exp)  # type: ignore[union-attr]
    codes = engine.run(torch.rand(3, 1, 4, 4), stop=2)
    assert torch.equal(engine.requantize(1, codes),
                       torch.round(codes.clamp(min=0) * requantizer.factor.reshape(2, 1, 1)).clamp(0, 15))


def test_engine_refuses_accumulators_beyond_two_to_the_53() -> None:
    builder = Builder((2, 128, 128), 32, 2.0**-32).flatten()
    with pytest.raises(ValueError, match=r"^Layer 'fc': accumulators up to \d+ reach 2\*\*53, beyond the float64 "):
        Engine(builder.linear("fc", 1).build())
    with pytest.raises(ValueError, match=r"^Multiplier bits must be an integer in 1\.\.32, not 0$"):
        Engine(Builder((1, 4, 4), 8, 0.1).flatten().linear("fc", 2).build(), multiplier_bits=0)


@pytest.mark.parametrize("bits", [8, 16])
def test_output_stage_falls_back_to_int64_beyond_two_to_the_53(bits: int) -> None:
    """acc < 2**42 times a 16-bit multiplier needs int64; an 8-bit one stays in float64. Both are exact."""
    model = Builder((1, 32, 32), 16, 2.0**-16, seed=3).flatten().linear("fc1", 4, bits=16) \
        .relu("relu", 8, 20.0).linear("fc2", 2).build()
    engine = Engine(model, multiplier_bits=bits)
    assert engine.requantizers[2].compute_dtype == (torch.int64 if bits == 16 else torch.float64)
    x = torch.rand(64, 1, 32, 32)
    acc = engine.run(x, stop=3)
    channel_of = np.broadcast_to(np.arange(4), acc.shape)
    expected = reference_requantize(acc.numpy(), channel_of, model, model.ops[2], model.ops[3], bits)
    assert np.array_equal(engine.run(acc, start=3, stop=4).numpy(), expected)
    assert ((0 < expected) & (expected < 255)).mean() > 0.1  # rounding, not only ReLU and clamping
    assert np.array_equal(engine.requantize(2, acc[:, 1], torch.ones(64, dtype=torch.long)).numpy(), expected[:, 1])
    with pytest.raises(ValueError, match=r"^Output stage of 'fc1': accumulators up to \d+ times a 24-bit "
                                         r"multiplier reach 2\*\*63, beyond the int64 engine's exact range"):
        Engine(model, multiplier_bits=24)


def test_importing_the_engine_imports_neither_brevitas_nor_amaranth() -> None:
    code = ("import sys, dsetool.engine; bad = {'brevitas', 'amaranth'} & {m.split('.')[0] for m in sys.modules};"
            "sys.exit(str(bad) if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("kernel, stride, padding, size", [
    ((2, 2), (2, 2), (0, 0), (28, 28)), ((3, 3), (2, 2), (1, 1), (9, 7)), ((2, 3), (1, 2), (0, 1), (5, 6)),
    ((1, 1), (1, 1), (0, 0), (4, 5)), ((1, 3), (2, 1), (0, 1), (6, 6)), ((4, 4), (4, 4), (0, 0), (8, 8)),
])
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_max_pool_equals_torch(kernel, stride, padding, size, ceil_mode):
    from dsetool.engine.ops import max_pool2d

    codes = torch.randint(-128, 128, (3, 4, *size)).double()
    expected = torch.nn.functional.max_pool2d(codes, kernel, stride=stride, padding=padding, ceil_mode=ceil_mode)
    assert torch.equal(max_pool2d(codes, kernel, stride, padding, ceil_mode), expected)


def test_window_sides_follow_torch_in_both_modes() -> None:
    """Ceil mode keeps a window past the far edge only while it starts inside the input or its near
    padding: torch's rule, over every small geometry."""
    from dsetool.gemm import window_side

    for size in range(1, 12):
        for kernel in range(1, min(size, 5) + 1):
            for stride in range(1, 5):
                for padding in range(0, kernel // 2 + 1):
                    for ceil_mode in (False, True):
                        out = torch.nn.functional.max_pool2d(torch.zeros(1, 1, size, size), kernel, stride, padding,
                                                             ceil_mode=ceil_mode)
                        assert window_side(size, kernel, stride, padding, ceil_mode) == out.shape[-1], \
                            (size, kernel, stride, padding, ceil_mode)


def test_accumulators_run_in_float32_only_while_every_register_value_is_an_exact_float32() -> None:
    assert ops.accumulator_dtype((-(2**23), 2**23 - 1)) == torch.float32           # a 24-bit register
    assert ops.accumulator_dtype((-(2**24 - 1), 2**24 - 1)) == torch.float32       # 25 bits: |v| <= 2**24
    assert ops.accumulator_dtype((0, 2**24)) == torch.float64                      # a partial sum of 2**24 + 1
    assert ops.accumulator_dtype((-(2**30), 5)) == torch.float64


def residual_model(scaling: str = "po2", second_scale: float | None = None) -> Builder:
    """conv1 -> relu1 -> {conv2 -> q_a, relu1 -> q_b} -> add -> relu2 -> avgpool -> q_pool -> flatten -> fc,
    with a depthwise conv2; `second_scale` gives q_b another scale than q_a (which the loader refuses)."""
    b = Builder((2, 6, 6), 8, 2.0**-6, scaling=scaling, seed=3).conv("conv1", 4, 3, padding=1) \
        .relu("relu1", 6, 2.0**-3).conv("conv2", 4, 3, padding=1, groups=4).quant("q_a", 7, 2.0**-2)
    b.branch("relu1").quant("q_b", 7, second_scale or 2.0**-2).add("add", "q_a", "q_b")
    return b.relu("relu2", 6, 2.0**-1).avgpool("pool", 3, 3).quant("q_pool", 6, 2.0**-1, signed=False) \
        .flatten().linear("fc", 3)


def test_graph_ops_equal_exact_rational_arithmetic() -> None:
    """Add, average pool (a window of 9: the po2 output stage takes the fixed-point multiplier) and a
    requantizer without ReLU, against the same integer rules computed with Python fractions."""
    model = residual_model().build()
    engine = Engine(model, multiplier_bits=20)
    outputs = engine.run(torch.rand(5, 2, 6, 6), keep=True)
    names = [op.name for op in model.ops]
    values = {name: outputs[i].numpy() for i, name in enumerate(names)}
    assert np.array_equal(values["add"], values["q_a"] + values["q_b"])
    sums = values["relu2"].reshape(5, 4, 2, 3, 2, 3).sum(axis=(3, 5))
    assert np.array_equal(values["pool"], sums)
    ratio = Fraction(2) ** -1 / 9 / Fraction(2) ** -1
    multiplier, shift = ops.fixed_point_multiplier(ratio, 20)
    expected = [min(max(round_half_even(Fraction(int(v) * multiplier, 2**shift)), 0), 63)
                for v in sums.reshape(-1)]
    assert np.array_equal(values["q_pool"].reshape(-1), expected)
    signed = engine.output_stages[names.index("q_a")]
    assert not signed.relu and values["q_a"].min() < 0   # no ReLU: negative codes survive
    assert engine.dtypes[names.index("add")] == torch.float32 and engine.ranges[names.index("add")] == (-128, 126)


def test_a_po2_model_is_bit_exact_only_with_power_of_two_pool_windows() -> None:
    assert not residual_model().build().bit_exact   # a 3x3 average pool: a fixed-point multiplier
    b = Builder((2, 4, 4), 8, 2.0**-6, scaling="po2").conv("conv1", 4, 3, padding=1).relu("relu1", 6, 2.0**-3) \
        .avgpool("pool", 2, 2).quant("q", 6, 2.0**-2).flatten().linear("fc", 3)
    assert b.build().bit_exact and not Builder((2, 4, 4), 8, 0.01).flatten().linear("fc", 3).build().bit_exact


def test_an_engine_built_and_run_in_inference_mode_recomputes_what_it_cannot_cache(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Tensors made under `torch.inference_mode` have no version counter: the routes then check the
    weights at every call instead of caching on it."""
    monkeypatch.setattr(ops, "INT8_GEMM_ENABLED", False)
    model = Builder((64, 6, 6), 8, 1 / 255, seed=5).conv("conv", 8, 3, padding=1).relu("relu", 8, 0.5) \
        .flatten().linear("fc", 3).build()
    x = torch.rand(3, 64, 6, 6)
    expected = Engine(model).run(x)
    with torch.inference_mode():
        engine = Engine(model)
        assert engine.layers[engine.weight_layers[0]].route == "narrow"
        assert torch.equal(engine.run(x), expected) and torch.equal(engine.run(x), expected)


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_a_layer_too_wide_for_float32_runs_as_exact_float32_products(kind: str, monkeypatch: pytest.MonkeyPatch
                                                                     ) -> None:
    """8-bit codes and weights over K = 576 (64 x 3 x 3, or 16 x 6 x 6 flattened): accumulators beyond 2**24
    need float64 in the worst case.
    With these weights every partial sum stays below 2**24, so one float32 product is exact ("narrow");
    large weights (edited in place, as a brute-force weight fault does) are not: the engine cuts the input
    channels into slices whose products are exact in float32, summed in float64 ("parts"), and past
    `MAX_PARTS` slices splits the weights into halves instead ("split")."""
    monkeypatch.setattr(ops, "INT8_GEMM_ENABLED", False)
    shape = (64, 6, 6) if kind == "conv" else (16, 6, 6)
    builder = Builder(shape, 8, 1 / 255, seed=5)
    builder = builder.conv("conv", 8, 3, padding=1) if kind == "conv" else builder.flatten().linear("fc0", 8)
    model = builder.relu("relu", 8, 0.5).flatten().linear("fc", 3).build()
    engine = Engine(model)
    layer = engine.layers[engine.weight_layers[0]]
    assert layer.dtype == torch.float64 and layer.split is not None and layer.route == "narrow"
    codes = torch.randint(0, 256, (4, *shape)).to(torch.float32)
    codes[0] = 255    # the register's top code everywhere

    def expected() -> torch.Tensor:
        if kind == "conv":
            return torch.nn.functional.conv2d(codes.double(), layer.weight_tensor, layer.bias, padding=1)
        return codes.reshape(4, -1).double() @ layer.weight_tensor.T + layer.bias

    assert torch.equal(layer(codes), expected())
    units = 64 if kind == "conv" else 576      # input channels, or features
    layer.weight_tensor[2:5].abs_().add_(100).clamp_(max=127)   # channels 2-4: weights of 100-127
    plan = layer._narrow_plan()
    assert layer._wide_route() == "parts" and plan is not None and len(plan.bounds) == 2
    assert plan.bounds[0][0] == 0 and plan.bounds[-1][1] == units and plan.bounds[0][1] == plan.bounds[1][0]
    got = layer(codes)
    assert torch.equal(got, expected()) and got[:, 2:5].abs().max() >= 2**24 and got.is_contiguous()
    layer.weight_tensor.abs_().add_(100).clamp_(max=127)         # every channel: two slices, past MAX_PARTS = 1
    monkeypatch.setattr(executor, "MAX_PARTS", 1)
    assert layer._narrow_plan() is None and layer._wide_route() == "split"
    got = layer(codes)
    assert torch.equal(got, expected()) and got.abs().max() >= 2**24


def test_a_float64_layer_whose_bias_alone_does_not_fit_float32_adds_it_after_its_one_product() -> None:
    """One slice, but a bias that would pass 2**24 inside the float32 product: the product runs without it
    and the bias is added in float64."""
    weight = torch.ones(3, 4, dtype=torch.float64)
    bias = torch.tensor([2.0**24, 1.0, -2.0**25], dtype=torch.float64)
    widths = RegisterWidths(act_bits=8, act_signed=False, weight_bits=8, weight_signed=True, acc_bits=27,
                            acc_range=(-2**26, 2**26))
    plan = _NarrowPlan.of(weight, bias, widths, grouped=False)
    assert plan is not None and plan.bounds == ((0, 4),) and plan.bias.dtype == torch.float64
    assert _NarrowPlan.of(weight, bias, widths, grouped=True) is not None
    heavy = torch.full((3, 8), 127.0, dtype=torch.float64)     # 8 x 255 x 127 < 2**24, but 2**24 / (255 x 127) = 518
    assert _NarrowPlan.of(heavy, bias * 0, widths, grouped=False).bounds == ((0, 8),)
    wide = torch.full((3, 1100), 127.0, dtype=torch.float64)    # 518 + 518 + 64 features: three slices
    plan = _NarrowPlan.of(wide, bias * 0, widths, grouped=False)
    assert plan is not None and plan.bounds == ((0, 518), (518, 1036), (1036, 1100))
    assert _NarrowPlan.of(wide, bias * 0, widths, grouped=True) is None


@pytest.mark.parametrize("groups", [1, 8])
def test_a_float64_layer_runs_exact_with_a_bias_one_float32_product_could_not_hold(
        groups: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """16-bit codes into a 3x3 conv (depthwise too): float64 by the register bound (9 x 65535 x 128 >
    2**24), the weights fit one float32 product, a bias of 2**22 does not join it: the product runs whole,
    without the bias, and the bias is added in float64."""
    monkeypatch.setattr(ops, "INT8_GEMM_ENABLED", False)
    builder = Builder((8, 6, 6), 8, 1 / 255, seed=3).relu("a16", 16, 1e-4).conv("dw", 8, 3, padding=1, groups=groups)
    rng = np.random.default_rng(0)
    magnitude = 28 if groups > 1 else 3   # sum_k |w| x 65535: 252 or 216 x 65535 < 2**24, over K = 9 or 72 taps
    shape = builder.arrays["dw.weight"].shape
    builder.arrays["dw.weight"][:] = rng.choice([-magnitude, magnitude], shape)
    builder.arrays["dw.bias"][:] = rng.choice([-2**22, 2**22], 8)              # with it, past 2**24
    engine = Engine(builder.relu("relu", 8, 0.5).flatten().linear("fc", 3).build())
    layer = engine.layers[engine.weight_layers[0]]
    plan = layer._narrow_plan()
    assert layer.dtype == torch.float64 and layer.route == "narrow"
    assert plan is not None and len(plan.bounds) == 1 and plan.bias.dtype == torch.float64
    codes = torch.randint(0, 2**16, (3, 8, 6, 6)).to(torch.float32)
    codes[0] = 2**16 - 1
    expected = torch.nn.functional.conv2d(codes.double(), layer.weight_tensor, layer.bias, padding=1, groups=groups)
    assert torch.equal(layer(codes), expected)
    engine.run(torch.rand(2, 8, 6, 6))


def test_an_add_of_two_scales_is_refused() -> None:
    with pytest.raises(ValueError, match=r"op 6 \('add'\): adds 'q_a' and 'q_b', whose scales 0.25 and 0.125 differ"):
        residual_model(second_scale=2.0**-3).build()


def test_groups_must_divide_the_channels() -> None:
    config = residual_model().config()
    config["ops"][3]["groups"] = 3
    with pytest.raises(ValueError, match=r"op 3 \('conv2'\): 3 groups do not divide 4 input and 4 output channels"):
        parse_intmodel(config, residual_model().arrays)


def test_an_op_class_without_an_engine_step_is_refused_by_name() -> None:
    """The engine runs an op through its class's builder (`Engine._BUILDERS`), never by guessing: an op class
    it does not know (a new kind added to the integer model only) is a clear error naming the op."""

    @dataclasses.dataclass(frozen=True)
    class Reshape(Flatten):
        pass

    model = Builder((1, 4, 4), 8, 0.1).flatten().linear("fc", 2).build()
    index = next(i for i, op in enumerate(model.ops) if isinstance(op, Flatten))
    ops = list(model.ops)
    ops[index] = Reshape(name="reshape", out_shape=model.ops[index].out_shape)
    with pytest.raises(ValueError, match="no step for op 'reshape' of kind 'flatten'"):
        Engine(dataclasses.replace(model, ops=tuple(ops)))
    assert set(Engine._BUILDERS) == set(OP_CLASSES)


def test_a_large_batch_runs_in_parts_with_the_same_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """`run` takes `run_chunk` images at a time (its widest output under `RUN_CHUNK_BYTES`): the logits and
    a partial run equal those of the batch run whole, also for a batch that is not a multiple; a run that
    keeps every output runs whole."""
    engine = Engine(residual_model().build(), multiplier_bits=20)
    x = torch.rand(11, 2, 6, 6)
    whole_logits, whole = engine.run(x), engine.run(x, keep=True)
    assert engine.run_chunk >= len(x)   # tiny maps: one part
    engine.run_chunk = 4
    calls: list[int] = []
    step = engine.step
    monkeypatch.setattr(engine, "step", lambda index, *inputs, **kw: calls.append(len(inputs[0])) or
                        step(index, *inputs, **kw))
    assert torch.equal(engine.run(x), whole_logits)
    assert sorted(set(calls)) == [3, 4]   # parts of 4, 4 and 3 images
    assert torch.equal(engine.run(x, start=0, stop=3), whole[2])
    calls.clear()
    kept = engine.run(x, keep=True)
    assert set(calls) == {11} and all(torch.equal(a, b) for a, b in zip(kept, whole, strict=True))


@pytest.mark.parametrize("arch, bits", [("resnet8", 8), ("mobilenet", 4), ("alexnet32", 8)])
def test_a_clean_run_gives_the_same_integers_channels_last(arch: str, bits: int, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A clean `run` convolves channels-last inside (residual adds, depthwise convs, pools; AlexNet-32's
    seeded float64 layers take the narrow and parts routes): the same logits and a contiguous result; a
    run that keeps its outputs stays plain NCHW, as the fault paths index it."""
    from tests.fixtures.engines import digits, exported_engine

    monkeypatch.setattr(ops, "INT8_GEMM_ENABLED", False)
    engine = exported_engine(tmp_path, arch, bits=bits, size=16)
    x = digits(16).test.x[:24]
    monkeypatch.setattr(executor, "CHANNELS_LAST", False)
    plain = engine.run(x)
    monkeypatch.setattr(executor, "CHANNELS_LAST", True)
    layouts: list[bool] = []
    real = ops.conv2d

    def recorded(codes, *args):  # type: ignore[no-untyped-def]
        layouts.append(ops.is_channels_last(codes))
        return real(codes, *args)

    monkeypatch.setattr(ops, "conv2d", recorded)
    inside = engine.run(x)
    assert torch.equal(inside, plain) and inside.is_contiguous()
    assert sum(layouts) >= len(layouts) - 1   # all but a first conv of one input channel
    layouts.clear()
    kept = engine.run(x, keep=True)
    assert all(out.is_contiguous() for out in kept) and torch.equal(kept[-1], plain) and not any(layouts)


def test_a_conv_follows_its_codes_layout_and_sees_weights_edited_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ops, "INT8_GEMM_ENABLED", False)
    model = Builder((6, 5, 5), 8, 1 / 255, seed=2).conv("conv", 4, 3, padding=1).relu("relu", 8, 0.5) \
        .flatten().linear("fc", 3).build()
    engine = Engine(model)
    layer = engine.layers[engine.weight_layers[0]]
    codes = torch.randint(0, 256, (3, 6, 5, 5)).to(torch.float32)
    plain = layer(codes)
    last = layer(codes.contiguous(memory_format=torch.channels_last))
    assert ops.is_channels_last(last) and torch.equal(last, plain) and plain.is_contiguous()
    one_channel = torch.zeros(2, 1, 4, 4)
    assert not ops.is_channels_last(one_channel) and not ops.is_channels_last(torch.zeros(2, 5))
    layer.weight_tensor[1].add_(3)                                    # a brute-force weight fault
    edited = layer(codes.contiguous(memory_format=torch.channels_last))
    assert torch.equal(edited, layer(codes)) and not torch.equal(edited, plain)
