"""Stage `pretrain`: the float baseline every bit width starts from (cached once, shared by all)."""

from __future__ import annotations

from dsetool.stages import StageContext
from dsetool.stages.common import HISTORY_FILE, new_model, prepare, save_model, write_json
from dsetool.store import Result
from dsetool.training import accuracy, train


def run(ctx: StageContext) -> Result:
    """Train the float network and record its validation and test accuracy."""
    cfg = ctx.config
    splits, device = prepare(cfg)
    model = new_model(cfg, splits, quantized=False)
    history = train(model, splits.train, splits.val, cfg.train.pretrain, seed=cfg.seed, device=device,
                    reporter=ctx.reporter, description=f"float {cfg.model.arch}", scratch=ctx.scratch)
    save_model(model, ctx.out)
    write_json(ctx.out / HISTORY_FILE, history)
    metrics = {
        "float_val_acc": accuracy(model, splits.val, device),
        "float_test_acc": accuracy(model, splits.test, device),
        "epochs": cfg.train.pretrain.epochs,
        "sec_per_epoch": _mean([h["seconds"] for h in history]),
    }
    return Result(metrics)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
