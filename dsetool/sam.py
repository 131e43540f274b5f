"""Sharpness-aware minimisation (Foret et al., ICLR 2021), the optimiser step of FlatENN's sharpness-aware
quantization (SAQ): SAM applied inside QAT, the perturbation added to the latent float weights.

One step takes two forward/backward passes: the gradient g at w gives the worst-case perturbation of
radius rho to first order, e = rho g / ||g||; the gradient at w + e then updates w. A network in a flat
minimum keeps its loss when its weights move, which FlatENN links to tolerating faults.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

_TINY = 1e-12   # keeps e finite where the gradient vanishes
SHARPNESS_RHO = 0.05   # the radius of every trained model's `sharpness` metric (SAM's customary rho)
HESSIAN_PROBES = 8     # Rademacher probes per batch of every trained model's `hessian_trace` metric


def sam_step(params: Sequence[torch.Tensor], loss_at: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer,
             rho: float) -> float:
    """Take one SAM step on `params` and return the loss at the unperturbed weights.

    `loss_at()` runs a forward pass of the current batch and returns its loss (with any penalties);
    `optimizer` holds `params`. With rho 0 it is a plain step.
    """
    optimizer.zero_grad(set_to_none=True)
    loss = loss_at()
    loss.backward()
    if rho > 0:
        with_grad = [p for p in params if p.grad is not None]
        norm = torch.sqrt(sum((p.grad.detach().double().square().sum() for p in with_grad),  # type: ignore[union-attr]
                              torch.zeros((), dtype=torch.float64)))
        scale = rho / (float(norm) + _TINY)
        saved = [p.detach().clone() for p in with_grad]   # restored exactly, not by subtracting e
        with torch.no_grad():
            for p in with_grad:
                p.add_(p.grad * scale)   # type: ignore[operator]
        optimizer.zero_grad(set_to_none=True)
        loss_at().backward()
        with torch.no_grad():
            for p, original in zip(with_grad, saved, strict=True):
                p.copy_(original)
    optimizer.step()
    return float(loss.detach())


def sharpness(params: Sequence[torch.Tensor], loss_at: Callable[[], torch.Tensor], rho: float) -> float:
    """Return the loss increase under the first-order worst-case perturbation of radius rho (SAM's
    estimate of sharpness) on one batch: L(w + rho g / ||g||) - L(w). Leaves the weights as they were."""
    for p in params:
        p.grad = None
    loss = loss_at()
    loss.backward()
    with_grad = [p for p in params if p.grad is not None]
    norm = float(torch.sqrt(sum((p.grad.double().square().sum() for p in with_grad),  # type: ignore[union-attr]
                                torch.zeros((), dtype=torch.float64))))
    scale = rho / (norm + _TINY)
    saved = [p.detach().clone() for p in with_grad]
    with torch.no_grad():
        for p in with_grad:
            p.add_(p.grad * scale)   # type: ignore[operator]
        perturbed = float(loss_at())
        for p, original in zip(with_grad, saved, strict=True):
            p.copy_(original)
    for p in params:
        p.grad = None
    return perturbed - float(loss.detach())


def model_sharpness(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, rho: float, batch_size: int = 256
                    ) -> float:
    """Return `sharpness` of the cross-entropy averaged over the batches of (x, y), in eval mode (the
    quantizers' scales fixed): the per-model metric FlatENN relates to fault tolerance."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    loss_fn = torch.nn.CrossEntropyLoss()
    rises, sizes = [], []
    for i in range(0, len(y), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]

        def batch_loss(xb: torch.Tensor = xb, yb: torch.Tensor = yb) -> torch.Tensor:
            return loss_fn(model(xb), yb)

        rises.append(sharpness(params, batch_loss, rho))
        sizes.append(len(yb))
    return sum(r * n for r, n in zip(rises, sizes, strict=True)) / sum(sizes) if sizes else float("nan")


def hessian_trace(params: Sequence[torch.Tensor], loss_at: Callable[[], torch.Tensor], probes: int,
                  generator: torch.Generator) -> float:
    """Return Hutchinson's estimate of the loss Hessian's trace, the mean of v^T H v over `probes`
    Rademacher vectors v (each H v by differentiating g . v once more)."""
    loss = loss_at()
    pairs = [(p, g) for p, g in zip(params, torch.autograd.grad(loss, list(params), create_graph=True,
                                                                allow_unused=True), strict=True)
             if g is not None and g.requires_grad]   # parameters the loss does not reach curve nowhere
    used = [p for p, _ in pairs]
    total = 0.0
    for _ in range(probes):
        vs = [torch.randint(0, 2, p.shape, generator=generator).to(p.dtype).mul_(2).sub_(1) for p in used]
        dot = sum(((g * v).sum() for (_, g), v in zip(pairs, vs, strict=True)), torch.zeros((), dtype=loss.dtype))
        products = torch.autograd.grad(dot, used, retain_graph=True, allow_unused=True)
        total += float(sum(((hv * v).sum() for hv, v in zip(products, vs, strict=True) if hv is not None),
                           torch.zeros((), dtype=torch.float64)))
    return total / probes


def model_hessian_trace(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, probes: int = HESSIAN_PROBES,
                        batch_size: int = 256, seed: int = 0) -> float:
    """Return `hessian_trace` of the cross-entropy averaged over the batches of (x, y), in eval mode."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    traces, sizes = [], []
    for i in range(0, len(y), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]

        def batch_loss(xb: torch.Tensor = xb, yb: torch.Tensor = yb) -> torch.Tensor:
            return loss_fn(model(xb), yb)

        traces.append(hessian_trace(params, batch_loss, probes, generator))
        sizes.append(len(yb))
    return sum(t * n for t, n in zip(traces, sizes, strict=True)) / sum(sizes) if sizes else float("nan")
