"""Adapt the integer engine to what fault evaluation needs (`dsetool.faults.apply.Network`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from dsetool.engine import Engine
from dsetool.engine.intmodel import MaxPool2d, QuantAct, WeightOp
from dsetool.faults import kernels


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

    def run_op(self, index: int, *tensors: torch.Tensor, checked: bool = True) -> torch.Tensor:
        """Execute op `index` on its (batched) input tensors (`checked` False: without the protection after it)."""
        sources = self.engine.model.inputs[index]
        cast = [t.to(self.engine.dtypes[source]) if source >= 0 else t.to(torch.float32)
                for t, source in zip(tensors, sources, strict=True)]
        return self.engine.step(index, *cast, checked=checked)

    def check(self, index: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Return the protection applied to op `index`'s output, if any."""
        return self.engine.checks.get(index)

    def input_check(self, index: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Return the protection applied to weight op `index`'s input as it reads it, if any."""
        return self.engine.input_checks.get(index)

    def masked_by(self, index: int, acc: torch.Tensor, golden_acc: torch.Tensor, golden_out: torch.Tensor
                  ) -> np.ndarray:
        """Return, per row, the step of op `index` (a max pool, an output stage, or a weight op's input
        check) after which the rows' input `acc` gave the golden output (see `dsetool.faults.kernels`: the
        latest step any value needed). `golden_out` holds an output stage's golden codes before its
        protection, if it has one: a code that differs from them was masked by the protection."""
        rows = len(acc)
        input_check = self.engine.input_checks.get(index)
        if isinstance(self.engine.model.ops[index], MaxPool2d) or input_check is not None:
            unchanged = (acc == golden_acc).reshape(rows, -1).all(dim=1).numpy()
            if input_check is None:
                return np.where(unchanged, kernels.ARITHMETIC, kernels.POOL).astype(np.int8)
            checked = (input_check(acc) == input_check(golden_acc)).reshape(rows, -1).all(dim=1).numpy()
            return np.where(~unchanged & checked, kernels.PROTECTION, kernels.ARITHMETIC).astype(np.int8)
        requantizer = self.engine.output_stages[index]
        faulty, golden = acc.to(torch.float64), golden_acc.to(torch.float64)
        rounded, golden_rounded = requantizer.rounded(faulty), requantizer.rounded(golden)
        codes = rounded.clamp(requantizer.qmin, requantizer.qmax)
        inside = codes == golden_out.reshape(codes.shape).to(torch.float64)   # the output stage alone masked it
        why = torch.full_like(codes, float(kernels.PROTECTION))
        why = torch.where(inside & (codes == golden_rounded.clamp(requantizer.qmin, requantizer.qmax)),
                          kernels.SATURATION, why)
        why = torch.where(inside & (rounded == golden_rounded), kernels.ROUNDING, why)
        if requantizer.relu:
            why = torch.where(inside & (faulty <= 0) & (golden <= 0), kernels.RELU, why)
        why = torch.where(faulty == golden, kernels.ARITHMETIC, why)
        return why.reshape(rows, -1).amax(dim=1).numpy().astype(np.int8)

    def weight_matrix(self, index: int) -> torch.Tensor:
        """Return weight op `index`'s integer weights as (N, K)."""
        return self._weights[index]

    def gemm_input(self, index: int, tensor: torch.Tensor) -> torch.Tensor:
        """Return the (B, K, M) operand matrices of weight op `index` for its input `tensor` (a grouped conv:
        over all input channels, group after group; its output channel n reads rows
        group(n) * K_group .. of them, `weight_matrix` holding only the K_group of its own group)."""
        return self.engine.layers[index].im2col(tensor).transpose(1, 2)

    def can_mask(self, index: int) -> bool:
        """Say whether op `index` can turn a corrupted input back into the golden output.

        Requantization (rounding, saturation, ReLU) and max-pooling can; a GEMM, an add or a pool's sum of a
        changed input (almost) never gives the golden values, and flatten only reshapes.
        """
        op = self.engine.model.ops[index]
        return isinstance(op, MaxPool2d) or (isinstance(op, QuantAct) and op.kind != "quant_input")

    def weight_op(self, index: int) -> WeightOp | None:
        """Return op `index` when it is a conv/linear layer (its geometry), else None."""
        layer = self.engine.layers.get(index)
        return layer.op if layer is not None else None

    def weight_tensor(self, index: int) -> torch.Tensor:
        """Return weight op `index`'s integer weights in torch layout, in the layer's accumulator dtype."""
        return self._tensors[index]

    def acc_bits(self) -> dict[str, int]:
        """Return each weight layer's accumulator width."""
        return {layer.name: layer.widths.acc_bits for layer in self.engine.layers.values()}

    def logit_scale(self) -> torch.Tensor:
        """Return the per-class scale of the integer logits (top-1 must compare scaled values)."""
        return self.engine.logit_scale()
