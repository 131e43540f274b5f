"""The GEMM a weight layer puts on the systolic array: one derivation for every place that needs it.

The cycle model (`hw.cycles` via `dsetool.arrays`), the layer shapes of built-in, factory and QONNX
networks (`dsetool.models`), the PE fault tables (`dsetool.faults.sites`) and the integer model's ops
(`dsetool.engine.intmodel`) all ask a layer for its GEMM here, so strides, padding and groups are counted
one way. Pure Python: deciding a synth cache hit reads it without importing torch.
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
    """Return the (M, K, N) GEMMs the array runs, one after the other: a grouped conv's groups run as
    separate GEMMs (a depthwise conv is C GEMMs of N = 1, so it fills one array column: the schedule the
    cycle model and the PE fault mapping assume)."""
    return [g.tile_shape for g in gemms for _ in range(g.groups)]


def window_side(size: int, kernel: int, stride: int, padding: int) -> int:
    """Return the output side of a convolution or pool (floor mode, dilation 1)."""
    return (size + 2 * padding - kernel) // stride + 1
