"""What a layer puts on the datapath: the GEMM of a weight layer on the systolic array, and the pass of a
post-GEMM op on the vector unit after the output stage. One derivation for every place that needs it.

The cycle model (`hw.cycles` via `dsetool.design`), the layer shapes of built-in, factory and QONNX
networks (`dsetool.models`), the PE fault tables (`dsetool.faults.sites`) and the integer model's ops
(`dsetool.engine.intmodel`) all ask a layer for its GEMM here, so strides, padding and groups are counted
one way; `vector_pass` is the one rule saying which other ops cost a pass of their own. Pure Python:
deciding a synth cache hit reads it without importing torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Gemm:
    """One weight layer as GEMMs per image: M output positions, K-long dot products, N outputs, in each of
    `groups` independent groups (a depthwise conv: one group per channel, N = 1 each)."""

    layer: str
    m: int
    k: int
    n: int
    groups: int = 1

    @staticmethod
    def conv(layer: str, out_shape: Sequence[int], in_channels: int, kernel: Sequence[int], groups: int = 1) -> Gemm:
        """Return a convolution's GEMM from its output shape (C_out, H_out, W_out): im2col rows are the output
        positions (strides and padding are in H_out, W_out already), a dot product covers one group's input
        channels under the kernel, and each group computes its share of the output channels."""
        out_channels, height, width = out_shape
        return Gemm(layer, height * width, in_channels // groups * math.prod(kernel), out_channels // groups, groups)

    @staticmethod
    def linear(layer: str, in_features: int, out_features: int) -> Gemm:
        """Return a linear layer's GEMM: one row per image."""
        return Gemm(layer, 1, in_features, out_features)

    @property
    def tile_shape(self) -> tuple[int, int, int]:
        """Return (M, K, N) of one group: what the array computes at a time."""
        return self.m, self.k, self.n


def array_gemms(gemms: Sequence[Gemm]) -> list[tuple[int, int, int]]:
    """Return the (M, K, N) GEMMs the closed-form cycle model counts, one after the other: a grouped conv's
    groups as separate GEMMs (a depthwise conv is C GEMMs of N = 1, filling one array column). The
    accelerator runs a grouped conv otherwise (one GEMM over all input channels, `dsetool.machine`), and
    so do the PE fault sites on its arrays (`dsetool.engine.tiling.LayerTiling.slice_orders`)."""
    return [g.tile_shape for g in gemms for _ in range(g.groups)]


def window_side(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool = False) -> int:
    """Return the output side of a convolution or pool (dilation 1). Ceil mode (a pool's option) also keeps
    a last window that runs past the far edge, as long as it starts inside the input or its near padding
    (PyTorch's rule)."""
    if not ceil_mode:
        return (size + 2 * padding - kernel) // stride + 1
    side = -(-(size + 2 * padding - kernel) // stride) + 1
    return side - 1 if (side - 1) * stride >= size + padding else side


# What a layer is to the datapath; `vector_pass` decides from it whether the layer costs cycles of its own.
GEMM = "gemm"              # a conv or linear layer: the array (`Gemm`)
REQUANTIZE = "requantize"  # a quantizer: codes from integers at another scale, ReLU included
WINDOW = "window"          # a max or average pool: one output per window of its input
ADD = "add"                # the elementwise sum of two tensors
RESHAPE = "reshape"        # a flatten, a concat: only the addressing changes
INPUT = "input"            # the images: the host writes their codes into the activation buffer
ROLES = (GEMM, REQUANTIZE, WINDOW, ADD, RESHAPE, INPUT)


@dataclass(frozen=True)
class VectorPass:
    """A post-GEMM op as the vector unit runs it: `positions` outputs per channel in each of `channels`
    channels, each reading `window` values of every operand from the activation buffer (`hw.cycles`
    counts its cycles). The quantizer reading its results divides them by `divisor` as it requantizes
    them: an average pool's window (its results are window sums), 1 for every other pass; a divisor
    that is no power of two makes that requantization more than a shift under po2 scales
    (`dsetool.design`)."""

    layer: str
    channels: int
    positions: int
    window: int = 1
    divisor: int = 1


def vector_pass(layer: str, role: str, source_role: str, out_shape: Sequence[int], window: int = 1,
                divisor: int = 1) -> VectorPass | None:
    """Return the pass a layer of `role` costs when it reads a tensor of `source_role` (looked up through
    reshapes), or None when it costs none of its own.

    Pools and adds are passes over their output. A requantization is a pass only when it reads another
    quantizer's codes (the shortcut of a residual block, re-quantized to the add's scale); otherwise it
    is fused where its input is made: a weight layer's accumulators leave through the output stage, which
    requantizes them (its drain is in the GEMM's cycles); a pool's or an add's results are requantized in
    the same pass; the host quantizes the images. A flatten or a concat only changes addresses.
    """
    for name, value in (("role", role), ("source_role", source_role)):
        if value not in ROLES:
            raise ValueError(f"Layer {layer!r}: {name} must be one of {ROLES}, not {value!r}")
    if role in (WINDOW, ADD) or (role == REQUANTIZE and source_role == REQUANTIZE):
        channels, *rest = out_shape
        return VectorPass(layer, channels, math.prod(rest), window, divisor)
    return None
