"""Layer shapes of the zoo's architectures in pure Python: the GEMMs the array runs, without torch.

The synth stage needs each layer's GEMM (M x K x N per image) to count cycles and latency, and deciding a
cache hit must not import torch, so shapes are propagated here from the torch-free layer specs.
"""

from __future__ import annotations

from dataclasses import dataclass

from dsetool.models.graphs import GRAPH_INPUT, GRAPHS, Node
from dsetool.models.zoo import DEFAULT_MLP_HIDDEN, Conv, Flatten, Linear, Pool, input_size, layers


@dataclass(frozen=True)
class Gemm:
    """One weight layer as GEMMs per image: M output positions, K-long dot products, N outputs, in each of
    `groups` independent groups (a depthwise conv: one group per channel, N = 1 each)."""

    layer: str
    m: int
    k: int
    n: int
    groups: int = 1


def array_gemms(gemms: list[Gemm]) -> list[tuple[int, int, int]]:
    """Return the (M, K, N) GEMMs the array runs, one after the other: a grouped conv's groups run as
    separate GEMMs (a depthwise conv is C GEMMs of N = 1, so it fills one array column: the schedule the
    cycle model and the PE fault mapping assume)."""
    return [(g.m, g.k, g.n) for g in gemms for _ in range(g.groups)]


def conv_side(size: int, kernel: int, stride: int, padding: int) -> int:
    """Return the output side of a convolution or pool (floor mode, dilation 1)."""
    return (size + 2 * padding - kernel) // stride + 1


def gemm_shapes(arch: str, in_channels: int, native: tuple[int, int], num_classes: int,
                mlp_hidden: tuple[int, ...] = DEFAULT_MLP_HIDDEN) -> list[Gemm]:
    """Return every weight layer's GEMM shape, in execution order."""
    side = input_size(arch, native)
    if arch in GRAPHS:
        assert side is not None
        return _graph_gemms(GRAPHS[arch], (in_channels, side, side), num_classes)
    channels, height, width = in_channels, *(native if side is None else (side, side))
    features = 0
    out: list[Gemm] = []
    for spec in layers(arch, mlp_hidden):
        if isinstance(spec, Conv):
            height = conv_side(height, spec.kernel, 1, spec.padding)
            width = conv_side(width, spec.kernel, 1, spec.padding)
            out.append(Gemm(spec.name, height * width, channels * spec.kernel ** 2, spec.out_channels))
            channels = spec.out_channels
        elif isinstance(spec, Pool):
            height, width = height // spec.kernel, width // spec.kernel
        elif isinstance(spec, Flatten):
            features = channels * height * width
        elif isinstance(spec, Linear):
            n = spec.out_features or num_classes
            out.append(Gemm(spec.name, 1, features, n))
            features = n
    return out


def _graph_gemms(nodes: tuple[Node, ...], image: tuple[int, int, int], num_classes: int) -> list[Gemm]:
    shapes: dict[str, tuple[int, ...]] = {GRAPH_INPUT: image}
    out: list[Gemm] = []
    for node in nodes:
        shape = shapes[node.inputs[0]]
        if node.kind == "conv":
            channels, height, width = shape
            groups = channels if node.groups == 0 else node.groups
            n = node.out or num_classes
            sides = [conv_side(s, node.kernel, node.stride, node.padding) for s in (height, width)]
            out.append(Gemm(node.name, sides[0] * sides[1], channels // groups * node.kernel ** 2, n // groups,
                            groups))
            shape = (n, *sides)
        elif node.kind == "linear":
            n = node.out or num_classes
            out.append(Gemm(node.name, 1, _product(shape), n))
            shape = (n,)
        elif node.kind == "maxpool":
            shape = (shape[0], *(conv_side(s, node.kernel, node.stride, 0) for s in shape[1:]))
        elif node.kind == "gap":
            shape = (shape[0], 1, 1)
        elif node.kind == "flatten":
            shape = (_product(shape),)
        shapes[node.name] = shape
    return out


def _product(values: tuple[int, ...]) -> int:
    result = 1
    for value in values:
        result *= value
    return result
