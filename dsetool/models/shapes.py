"""Layer shapes of the zoo's architectures in pure Python: the GEMMs the array runs, without torch.

The synth stage needs each layer's GEMM (M x K x N per image) to count cycles and latency, and deciding a
cache hit must not import torch, so shapes are propagated here from the torch-free layer specs.
"""

from __future__ import annotations

from dataclasses import dataclass

from dsetool.models.zoo import DEFAULT_MLP_HIDDEN, Conv, Flatten, Linear, Pool, input_size, layers


@dataclass(frozen=True)
class Gemm:
    """One weight layer as a GEMM per image: M output positions, K-long dot products, N outputs."""

    layer: str
    m: int
    k: int
    n: int


def gemm_shapes(arch: str, in_channels: int, native: tuple[int, int], num_classes: int,
                mlp_hidden: tuple[int, ...] = DEFAULT_MLP_HIDDEN) -> list[Gemm]:
    """Return every weight layer's GEMM shape, in execution order."""
    side = input_size(arch, native)
    channels, height, width = in_channels, *(native if side is None else (side, side))
    features = 0
    out: list[Gemm] = []
    for spec in layers(arch, mlp_hidden):
        if isinstance(spec, Conv):
            height = height + 2 * spec.padding - spec.kernel + 1
            width = width + 2 * spec.padding - spec.kernel + 1
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
