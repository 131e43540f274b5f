"""Training for fault resilience: weight-outlier penalties, an activation-sparsity penalty, and the
activation sparsity a trained model achieves.

Ozen's SNR work (§9) penalises each layer's largest weights so that the ranges a quantizer must cover
shrink and a flipped high bit does less harm: `max_magnitude` adds alpha x max|w| per layer,
`max_squared` alpha x max(w^2); `l1` and `l2` are the classical baselines (alpha x sum |w|, sum w^2), which
Ozen finds no better or worse. FlatENN reports that sparse activations make a quantized network more
vulnerable; `activation_l1` adds beta x mean |a| over the post-ReLU activations to make a model sparse on
purpose, and `activation_sparsity` measures the fraction of exact zeros each ReLU emits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from dsetool.config import REGULARIZERS
from dsetool.data import Split


def weight_layers(model: nn.Module) -> list[nn.Module]:
    """Return the conv and linear layers (Brevitas's quantized ones subclass torch's)."""
    return [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def weight_penalty(model: nn.Module, kind: str, alpha: float) -> torch.Tensor | None:
    """Return alpha times the penalty `kind` over every weight layer's (latent float) weights, or None."""
    if kind == "none" or alpha == 0:
        return None
    if kind not in REGULARIZERS:
        raise ValueError(f"Regularizer must be one of {', '.join(REGULARIZERS)}, not {kind!r}")
    term = _PENALTIES[kind]
    weights: list[torch.Tensor] = [layer.weight for layer in weight_layers(model)]   # type: ignore[misc]
    return alpha * torch.stack([term(w) for w in weights]).sum()


_PENALTIES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "l1": lambda w: w.abs().sum(), "l2": lambda w: w.square().sum(),
    "max_magnitude": lambda w: w.abs().max(), "max_squared": lambda w: w.square().max()}


def relu_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Return the model's ReLUs (torch's or Brevitas's quantizing ones) by module name (`relu1`, ... in the
    chain architectures, `layer1.0.relu` in the graph ones)."""
    from brevitas.nn import QuantReLU

    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():   # parents first: a QuantReLU's inner nn.ReLU is not another
        if isinstance(module, nn.ReLU | QuantReLU) and not any(name.startswith(f"{outer}.") for outer in found):
            found[name] = module
    return found


@contextmanager
def tapped(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Record each ReLU's latest output (a float tensor, gradients kept) while the context is open."""
    outputs: dict[str, torch.Tensor] = {}
    handles = [module.register_forward_hook(_recorder(outputs, name)) for name, module in relu_modules(model).items()]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def _recorder(outputs: dict[str, torch.Tensor], name: str) -> Any:
    def record(module: nn.Module, inputs: Any, output: Any) -> None:
        outputs[name] = output.value if hasattr(output, "value") else output   # a Brevitas QuantTensor
    return record


def activation_l1(outputs: dict[str, torch.Tensor], beta: float) -> torch.Tensor | None:
    """Return beta times the mean |activation| of each tapped ReLU output, summed over the ReLUs."""
    if beta == 0 or not outputs:
        return None
    return beta * torch.stack([a.abs().mean() for a in outputs.values()]).sum()


@torch.no_grad()
def activation_sparsity(model: nn.Module, split: Split, device: torch.device, batch_size: int = 512
                        ) -> dict[str, float]:
    """Return the fraction of exact zeros each ReLU emits on `split` (eval mode), and over all of them (`all`)."""
    model.eval()
    zeros: dict[str, int] = {}
    sizes: dict[str, int] = {}
    with tapped(model) as outputs:
        for i in range(0, len(split.y), batch_size):
            model(split.x[i:i + batch_size].to(device))
            for name, a in outputs.items():
                zeros[name] = zeros.get(name, 0) + int((a == 0).sum())
                sizes[name] = sizes.get(name, 0) + a.numel()
    result = {name: zeros[name] / sizes[name] for name in zeros if sizes[name]}
    total = sum(sizes.values())
    result["all"] = sum(zeros.values()) / total if total else float("nan")
    return result
