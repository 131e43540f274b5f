"""Seeded, deterministic, resumable training and evaluation on in-memory tensor splits.

Batches come from a permutation drawn from `seed + epoch`, so a run resumed from an epoch checkpoint
sees exactly the batches an uninterrupted run would, and the result is the same bit for bit on CPU.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsetool.config import OptimConfig
from dsetool.data import Split
from dsetool.progress import Reporter
from dsetool.regularize import activation_l1, tapped, weight_penalty
from dsetool.sam import sam_step

CHECKPOINT = "epoch.pt"


@dataclass(frozen=True)
class Objective:
    """What a training phase adds to the cross-entropy, and how it steps (see `dsetool.regularize`,
    `dsetool.sam`): a weight penalty, an L1 penalty on post-ReLU activations, SAM's radius."""

    regularizer: str = "none"
    alpha: float = 0.0
    act_l1: float = 0.0
    sam_rho: float = 0.0


def seed_everything(seed: int, threads: int = 0) -> None:
    """Make CPU training reproducible: fixed seeds, deterministic kernels, a fixed thread count."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads > 0:
        torch.set_num_threads(threads)


def pick_device(name: str) -> torch.device:
    """Resolve `auto` to CUDA when present; results must not depend on the choice."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_optimizer(params: Any, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Build the optimizer the config names."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_at(cfg: OptimConfig, epoch: int) -> float:
    """Return the learning rate of an epoch under the configured schedule (a pure function: resumable)."""
    if cfg.schedule == "cosine" and cfg.epochs > 1:
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))
    if cfg.schedule == "step":
        return float(cfg.lr * cfg.step_gamma ** (epoch // cfg.step_epochs))
    return cfg.lr


@torch.no_grad()
def predict(model: nn.Module, split: Split, device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """Return the top-1 class of every sample (eval mode)."""
    model.eval()
    out = [model(split.x[i:i + batch_size].to(device)).argmax(1).cpu()
           for i in range(0, len(split.y), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def accuracy(model: nn.Module, split: Split, device: torch.device) -> float:
    """Return top-1 accuracy in [0, 1]."""
    if len(split.y) == 0:
        return float("nan")
    return float((predict(model, split, device) == split.y).float().mean())


def train(model: nn.Module, train_split: Split, val_split: Split, cfg: OptimConfig, *, seed: int,
          device: torch.device, reporter: Reporter, description: str,
          scratch: Path | None = None, objective: Objective = Objective()) -> list[dict[str, float]]:
    """Train `model` for `cfg.epochs`, resuming from `scratch/epoch.pt` when an earlier run was killed.

    Returns the per-epoch history (loss with its penalties, validation accuracy, seconds).
    """
    model.to(device)
    optimizer = make_optimizer(model.parameters(), cfg)
    start, history = _resume(model, optimizer, scratch)
    loss_fn = nn.CrossEntropyLoss()
    reporter.start(description, cfg.epochs)
    for _ in range(start):
        reporter.advance(resumed=True)
    for epoch in range(start, cfg.epochs):
        began = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, epoch)
        loss = _epoch(model, train_split, optimizer, loss_fn, cfg, seed + epoch, device, objective)
        val_acc = accuracy(model, val_split, device)
        history.append({"epoch": epoch + 1, "loss": loss, "val_acc": val_acc,
                        "seconds": time.perf_counter() - began})
        _checkpoint(model, optimizer, history, scratch)
        reporter.advance(loss=loss, val_acc=f"{100 * val_acc:.1f}%")
    reporter.finish()
    return history


def _epoch(model: nn.Module, split: Split, optimizer: torch.optim.Optimizer, loss_fn: nn.Module,
           cfg: OptimConfig, seed: int, device: torch.device, objective: Objective) -> float:
    model.train()
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(split.y), generator=generator)
    params = [p for p in model.parameters() if p.requires_grad]
    total, count = 0.0, 0
    taps: AbstractContextManager[dict[str, torch.Tensor]] = tapped(model) if objective.act_l1 else nullcontext({})
    with taps as activations:
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            x = shift_images(split.x[idx], cfg.augment_shift, generator).to(device)
            y = split.y[idx].to(device)

            def loss_at(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
                loss = loss_fn(model(x), y)
                for extra in (weight_penalty(model, objective.regularizer, objective.alpha),
                              activation_l1(activations, objective.act_l1)):
                    if extra is not None:
                        loss = loss + extra
                return loss

            total += sam_step(params, loss_at, optimizer, objective.sam_rho) * len(idx)
            count += len(idx)
    return total / max(count, 1)


def shift_images(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by a random whole-pixel offset in [-max_shift, max_shift], filling with zeros.

    Offsets come from the epoch's generator, so augmentation is as reproducible as the batch order.
    """
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    offsets = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator).tolist()
    padded = torch.nn.functional.pad(x, (max_shift,) * 4)
    return torch.stack([padded[k, :, max_shift - dy:max_shift - dy + h, max_shift - dx:max_shift - dx + w]
                        for k, (dy, dx) in enumerate(offsets)])


def _resume(model: nn.Module, optimizer: torch.optim.Optimizer,
            scratch: Path | None) -> tuple[int, list[dict[str, float]]]:
    path = scratch / CHECKPOINT if scratch is not None else None
    if path is None or not path.is_file():
        return 0, []
    try:
        state = torch.load(path, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
    except Exception:  # a checkpoint from another code version: start over rather than guess
        return 0, []
    return len(state["history"]), list(state["history"])


def _checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, history: list[dict[str, float]],
                scratch: Path | None) -> None:
    if scratch is None:
        return
    tmp = scratch / f".{CHECKPOINT}.{os.getpid()}"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "rng": torch.get_rng_state(), "history": history}, tmp)
    os.replace(tmp, scratch / CHECKPOINT)
