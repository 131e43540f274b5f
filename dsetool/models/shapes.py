"""Layer shapes of the zoo's architectures in pure Python: what the datapath runs, without torch.

The synth stage needs each layer's GEMM (M x K x N per image) and each post-GEMM op's vector-unit pass to
count cycles and latency, and deciding a cache hit must not import torch, so shapes are propagated here
from the torch-free layer specs (chains) and nodes (graphs). A test holds both to the exported integer
model (`IntModel.vector_passes`, `op.gemm`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dsetool import gemm as datapath
from dsetool.gemm import Gemm, VectorPass, window_side
from dsetool.models.graphs import GRAPH_INPUT, GRAPHS, Node
from dsetool.models.zoo import DEFAULT_MLP_HIDDEN, Conv, Flatten, Linear, Pool, ReLU, input_size, layers

# a graph node's kind -> its role on the datapath (`dsetool.gemm.ROLES`)
_NODE_ROLES = {"input": datapath.INPUT, "conv": datapath.GEMM, "linear": datapath.GEMM,
               "relu": datapath.REQUANTIZE, "addq": datapath.REQUANTIZE, "add": datapath.ADD,
               "maxpool": datapath.WINDOW, "gap": datapath.WINDOW, "flatten": datapath.RESHAPE}


@dataclass(frozen=True)
class NetworkShapes:
    """Every weight layer's GEMM and every post-GEMM op's vector pass, in execution order."""

    gemms: tuple[Gemm, ...]
    vector_passes: tuple[VectorPass, ...]


def network_shapes(arch: str, in_channels: int, native: tuple[int, int], num_classes: int,
                   mlp_hidden: tuple[int, ...] = DEFAULT_MLP_HIDDEN) -> NetworkShapes:
    """Return what the built-in network `arch` puts on the datapath for images of `native` size."""
    side = input_size(arch, native)
    if arch in GRAPHS:
        assert side is not None
        return _graph_shapes(GRAPHS[arch], (in_channels, side, side), num_classes)
    return _chain_shapes(arch, (in_channels, *(native if side is None else (side, side))), num_classes,
                         mlp_hidden)


def gemm_shapes(arch: str, in_channels: int, native: tuple[int, int], num_classes: int,
                mlp_hidden: tuple[int, ...] = DEFAULT_MLP_HIDDEN) -> list[Gemm]:
    """Return every weight layer's GEMM shape, in execution order."""
    return list(network_shapes(arch, in_channels, native, num_classes, mlp_hidden).gemms)


def _chain_shapes(arch: str, image: tuple[int, int, int], num_classes: int, mlp_hidden: tuple[int, ...]
                  ) -> NetworkShapes:
    (channels, height, width), features = image, 0
    gemms: list[Gemm] = []
    passes: list[VectorPass] = []
    role = datapath.INPUT   # of the tensor the next layer reads
    counts = {"relu": 0, "pool": 0}   # the export numbers ReLUs and pools in order of appearance (`zoo`)
    for spec in layers(arch, mlp_hidden):
        if isinstance(spec, Conv):
            height = window_side(height, spec.kernel, 1, spec.padding)
            width = window_side(width, spec.kernel, 1, spec.padding)
            gemms.append(Gemm.conv(spec.name, (spec.out_channels, height, width), channels, (spec.kernel,) * 2))
            channels, role = spec.out_channels, datapath.GEMM
        elif isinstance(spec, Pool):
            height, width = height // spec.kernel, width // spec.kernel
            counts["pool"] += 1
            vector = datapath.vector_pass(f"pool{counts['pool']}", datapath.WINDOW, role, (channels, height, width),
                                          spec.kernel ** 2)
            passes.extend([vector] if vector else [])
            role = datapath.WINDOW
        elif isinstance(spec, ReLU):
            shape = (features,) if features else (channels, height, width)
            counts["relu"] += 1
            vector = datapath.vector_pass(f"relu{counts['relu']}", datapath.REQUANTIZE, role, shape)
            passes.extend([vector] if vector else [])
            role = datapath.REQUANTIZE
        elif isinstance(spec, Flatten):
            features = channels * height * width
        elif isinstance(spec, Linear):
            n = spec.out_features or num_classes
            gemms.append(Gemm.linear(spec.name, features, n))
            features, role = n, datapath.GEMM
    return NetworkShapes(tuple(gemms), tuple(passes))


def _graph_shapes(nodes: tuple[Node, ...], image: tuple[int, int, int], num_classes: int) -> NetworkShapes:
    shapes: dict[str, tuple[int, ...]] = {GRAPH_INPUT: image}
    roles = {GRAPH_INPUT: datapath.INPUT}
    gemms: list[Gemm] = []
    passes: list[VectorPass] = []
    for node in nodes:
        shape = shapes[node.inputs[0]]
        window = divisor = 1
        if node.kind == "conv":
            channels, height, width = shape
            groups = channels if node.groups == 0 else node.groups
            n = node.out or num_classes
            shape = (n, *(window_side(s, node.kernel, node.stride, node.padding) for s in (height, width)))
            gemms.append(Gemm.conv(node.name, shape, channels, (node.kernel,) * 2, groups))
        elif node.kind == "linear":
            n = node.out or num_classes
            gemms.append(Gemm.linear(node.name, math.prod(shape), n))
            shape = (n,)
        elif node.kind == "maxpool":
            window = node.kernel ** 2
            shape = (shape[0], *(window_side(s, node.kernel, node.stride, 0) for s in shape[1:]))
        elif node.kind == "gap":
            window = divisor = math.prod(shape[1:])   # window sums: the quantizer reading them averages
            shape = (shape[0], 1, 1)
        elif node.kind == "flatten":
            shape = (math.prod(shape),)
        role, source = _NODE_ROLES[node.kind], roles[node.inputs[0]]
        vector = datapath.vector_pass(node.name, role, source, shape, window, divisor)
        passes.extend([vector] if vector else [])
        shapes[node.name] = shape
        roles[node.name] = source if role == datapath.RESHAPE else role
    return NetworkShapes(tuple(gemms), tuple(passes))
