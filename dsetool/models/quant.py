"""Quantization specs and the Brevitas quantizer presets they select.

A `QuantSpec` is plain data (configs build it without importing torch). The presets are tables from
(scaling, granularity) or (scaling, signed) to a Brevitas quantizer class, resolved lazily by name, with the
bit width overridden through the injector's `let`. `QuantLayers` turns a spec into Brevitas layers; the float
baseline in `zoo.FloatLayers` has the same methods, so the architectures are written once.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

SCALINGS = ("po2", "float")
GRANULARITIES = ("per_tensor", "per_channel")
WEIGHT_BITS_RANGE = (2, 16)
ACT_BITS_RANGE = (2, 16)
BIAS_BITS = 32

_FIXED = "brevitas.quant.fixed_point"
_SCALED = "brevitas.quant.scaled_int"

# (scaling, weight_granularity) -> narrow-range signed weight quantizer (max-abs statistics of the weights).
WEIGHT_PRESETS: Mapping[tuple[str, str], tuple[str, str]] = MappingProxyType({
    ("po2", "per_tensor"): (_FIXED, "Int8WeightPerTensorFixedPoint"),
    ("po2", "per_channel"): (_FIXED, "Int8WeightPerChannelFixedPoint"),
    ("float", "per_tensor"): (_SCALED, "Int8WeightPerTensorFloat"),
    ("float", "per_channel"): (_SCALED, "Int8WeightPerChannelFloat"),
})

# (scaling, signed) -> per-tensor activation quantizer whose learned scale starts from runtime statistics.
ACT_PRESETS: Mapping[tuple[str, bool], tuple[str, str]] = MappingProxyType({
    ("po2", False): (_FIXED, "Uint8ActPerTensorFixedPoint"),
    ("po2", True): (_FIXED, "Int8ActPerTensorFixedPoint"),
    ("float", False): (_SCALED, "Uint8ActPerTensorFloat"),
    ("float", True): (_SCALED, "Int8ActPerTensorFloat"),
})

# The bias lives in the accumulator: int32 at scale input_scale * weight_scale, so the array adds it exactly.
BIAS_PRESET = (_SCALED, "Int32Bias")


@dataclass(frozen=True)
class LayerBits:
    """Bit widths of one weight layer; `act_bits` is the width of this layer's *input* activations."""

    weight_bits: int
    act_bits: int

    def __post_init__(self) -> None:
        _check_bits("Weight", self.weight_bits, WEIGHT_BITS_RANGE)
        _check_bits("Activation", self.act_bits, ACT_BITS_RANGE)


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize a network: default bit widths, per-layer overrides and the scale format.

    `scaling="po2"` restricts every scale to a power of two (requantization is a shift in hardware, and
    Brevitas's float arithmetic on such values is exact); `"float"` allows any float scale.
    `relu_unsigned=True` quantizes post-ReLU activations to 0..2^b-1 (as FINN does), `False` to the signed
    range, of which ReLU uses 0..2^(b-1)-1.
    """

    weight_bits: int = 8
    act_bits: int = 8
    per_layer: Mapping[str, LayerBits] = field(default_factory=dict)
    scaling: str = "po2"
    weight_granularity: str = "per_tensor"
    relu_unsigned: bool = True

    def __post_init__(self) -> None:
        LayerBits(self.weight_bits, self.act_bits)
        _check_choice("Quant scaling", self.scaling, SCALINGS)
        _check_choice("Weight granularity", self.weight_granularity, GRANULARITIES)
        for name, bits in self.per_layer.items():
            if not isinstance(bits, LayerBits):
                raise TypeError(f"Per-layer bits for {name!r} must be a LayerBits, not {bits!r}")

    def bits_for(self, layer: str) -> LayerBits:
        """Return the bit widths of `layer`: its override if any, else the defaults."""
        default = LayerBits(self.weight_bits, self.act_bits)
        return self.per_layer.get(layer, default)


def _check_bits(kind: str, bits: object, bounds: tuple[int, int]) -> None:
    low, high = bounds
    if not isinstance(bits, int) or isinstance(bits, bool) or not low <= bits <= high:
        raise ValueError(f"{kind} bit width must be an integer in {low}..{high}, not {bits!r}")


def _check_choice(kind: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{kind} must be one of {', '.join(map(repr, choices))}, not {value!r}")


def _resolve(preset: tuple[str, str]) -> Any:
    module, name = preset
    return getattr(importlib.import_module(module), name)


def weight_quantizer(spec: QuantSpec, bits: int) -> Any:
    """Return the Brevitas weight quantizer of `spec` at `bits` bits (narrow range, signed)."""
    return _resolve(WEIGHT_PRESETS[spec.scaling, spec.weight_granularity]).let(bit_width=bits)


def act_quantizer(spec: QuantSpec, bits: int, *, signed: bool) -> Any:
    """Return the Brevitas per-tensor activation quantizer of `spec` at `bits` bits."""
    return _resolve(ACT_PRESETS[spec.scaling, signed]).let(bit_width=bits)


def bias_quantizer() -> Any:
    """Return the int32 accumulator-scale bias quantizer (needs the input's scale at run time)."""
    return _resolve(BIAS_PRESET)


class QuantLayers:
    """Build Brevitas layers for one network; every method mirrors `zoo.FloatLayers`.

    Layers that feed a weight layer return QuantTensors, so the next layer sees its input scale (Int32Bias
    needs it); weight layers return plain tensors, which are the float logits at the end of the network.
    """

    def __init__(self, spec: QuantSpec) -> None:
        self.spec = spec

    def input(self, first_layer: str) -> Any:
        """Quantize the raw input, unsigned since pixels lie in [0, 1], at the first layer's act_bits."""
        from brevitas.nn import QuantIdentity

        bits = self.spec.bits_for(first_layer).act_bits
        return QuantIdentity(act_quant=act_quantizer(self.spec, bits, signed=False), return_quant_tensor=True)

    def conv(self, name: str, in_channels: int, out_channels: int, kernel: int, padding: int, stride: int = 1,
             groups: int = 1) -> Any:
        """Return a quantized conv layer named `name` (the name selects its bit widths)."""
        from brevitas.nn import QuantConv2d

        return QuantConv2d(in_channels, out_channels, kernel, stride=stride, padding=padding, groups=groups,
                           bias=True, **self._weight_kwargs(name))

    def shared_quant(self, next_layer: str) -> Any:
        """Return the signed quantizer both inputs of an add pass through (one module, so one scale: the
        sum of their codes is an exact integer), at the act_bits of `next_layer`."""
        from brevitas.nn import QuantIdentity

        bits = self.spec.bits_for(next_layer).act_bits
        return QuantIdentity(act_quant=act_quantizer(self.spec, bits, signed=True), return_quant_tensor=True)

    def linear(self, name: str, in_features: int, out_features: int) -> Any:
        """Return a quantized fully connected layer named `name`."""
        from brevitas.nn import QuantLinear

        return QuantLinear(in_features, out_features, bias=True, **self._weight_kwargs(name))

    def relu(self, next_layer: str) -> Any:
        """Return a ReLU that quantizes its output at the act_bits of `next_layer`, whose input it is."""
        from brevitas.nn import QuantReLU

        bits = self.spec.bits_for(next_layer).act_bits
        quant = act_quantizer(self.spec, bits, signed=not self.spec.relu_unsigned)
        return QuantReLU(act_quant=quant, return_quant_tensor=True)

    def _weight_kwargs(self, name: str) -> dict[str, Any]:
        bits = self.spec.bits_for(name).weight_bits
        return {"weight_quant": weight_quantizer(self.spec, bits), "bias_quant": bias_quantizer(),
                "return_quant_tensor": False}
