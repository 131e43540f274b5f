"""Adapt the integer engine to what fault evaluation needs (`dsetool.faults.apply.Network`)."""

from __future__ import annotations

import torch

from dsetool.engine import Engine
from dsetool.engine.intmodel import MaxPool2d, QuantAct, WeightOp


class EngineNetwork:
    """The engine seen op by op, with each weight layer's GEMM operands in (N, K) / (B, K, M) form."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._weights = {i: layer.weight.T.contiguous() for i, layer in engine.layers.items()}
        self._tensors = {i: layer.weight_tensor for i, layer in engine.layers.items()}

    @property
    def n_ops(self) -> int:
        """Return the number of ops."""
        return len(self.engine.model.ops)

    def run_op(self, index: int, tensor: torch.Tensor) -> torch.Tensor:
        """Execute op `index` on its (batched) input."""
        return self.engine.run(tensor, start=index, stop=index + 1)

    def weight_matrix(self, index: int) -> torch.Tensor:
        """Return weight op `index`'s integer weights as (N, K)."""
        return self._weights[index]

    def gemm_input(self, index: int, tensor: torch.Tensor) -> torch.Tensor:
        """Return the (B, K, M) operand matrices of weight op `index` for its input `tensor`."""
        return self.engine.layers[index].im2col(tensor).transpose(1, 2)

    def can_mask(self, index: int) -> bool:
        """Say whether op `index` can turn a corrupted input back into the golden output.

        Requantization (rounding, saturation, ReLU) and max-pooling can; a GEMM of a changed input
        (almost) never gives the golden accumulators, and flatten only reshapes.
        """
        return isinstance(self.engine.model.ops[index], QuantAct | MaxPool2d)

    def weight_op(self, index: int) -> WeightOp | None:
        """Return op `index` when it is a conv/linear layer (its geometry), else None."""
        layer = self.engine.layers.get(index)
        return layer.op if layer is not None else None

    def weight_tensor(self, index: int) -> torch.Tensor:
        """Return weight op `index`'s integer weights in torch layout, in the layer's accumulator dtype."""
        return self._tensors[index]

    def bias(self, index: int) -> torch.Tensor:
        """Return weight op `index`'s integer bias (N,)."""
        return self.engine.layers[index].bias

    def acc_bits(self) -> dict[str, int]:
        """Return each weight layer's accumulator width."""
        return {layer.name: layer.widths.acc_bits for layer in self.engine.layers.values()}

    def logit_scale(self) -> torch.Tensor:
        """Return the per-class scale of the logit accumulators (top-1 must compare scaled values)."""
        return self.engine.acc_scale(self.engine.weight_layers[-1])
