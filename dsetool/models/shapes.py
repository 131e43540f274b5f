"""Layer shapes of the zoo's architectures in pure Python: the GEMMs the array runs, without torch.

The synth stage needs each layer's GEMM (M x K x N per image) to count cycles and latency, and deciding a
cache hit must not import torch, so shapes are propagated here from the torch-free layer specs.
"""

from __future__ import annotations

import math

from dsetool.gemm import Gemm, window_side
from dsetool.models.graphs import GRAPH_INPUT, GRAPHS, Node
from dsetool.models.zoo import DEFAULT_MLP_HIDDEN, Conv, Flatten, Linear, Pool, input_size, layers


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
            height = window_side(height, spec.kernel, 1, spec.padding)
            width = window_side(width, spec.kernel, 1, spec.padding)
            out.append(Gemm.conv(spec.name, (spec.out_channels, height, width), channels, (spec.kernel,) * 2))
            channels = spec.out_channels
        elif isinstance(spec, Pool):
            height, width = height // spec.kernel, width // spec.kernel
        elif isinstance(spec, Flatten):
            features = channels * height * width
        elif isinstance(spec, Linear):
            n = spec.out_features or num_classes
            out.append(Gemm.linear(spec.name, features, n))
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
            shape = (n, *(window_side(s, node.kernel, node.stride, node.padding) for s in (height, width)))
            out.append(Gemm.conv(node.name, shape, channels, (node.kernel,) * 2, groups))
        elif node.kind == "linear":
            n = node.out or num_classes
            out.append(Gemm.linear(node.name, math.prod(shape), n))
            shape = (n,)
        elif node.kind == "maxpool":
            shape = (shape[0], *(window_side(s, node.kernel, node.stride, 0) for s in shape[1:]))
        elif node.kind == "gap":
            shape = (shape[0], 1, 1)
        elif node.kind == "flatten":
            shape = (math.prod(shape),)
        shapes[node.name] = shape
    return out
