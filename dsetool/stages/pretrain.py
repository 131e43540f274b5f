"""Stage `pretrain`: the float baseline every bit width starts from (cached once, shared by all)."""

from __future__ import annotations

from dsetool.config import RunConfig
from dsetool.regularize import activation_sparsity
from dsetool.sam import SHARPNESS_RHO, model_hessian_trace, model_sharpness
from dsetool.stages import StageContext
from dsetool.stages.common import HISTORY_FILE, new_model, prepare, save_model, write_json
from dsetool.store import Result
from dsetool.training import Objective, accuracy, train


def run(ctx: StageContext) -> Result:
    """Train the float network and record its validation and test accuracy."""
    cfg = ctx.config
    splits, device = prepare(cfg)
    model = new_model(cfg, splits, quantized=False)
    history = train(model, splits.train, splits.val, cfg.train.pretrain, seed=cfg.seed, device=device,
                    reporter=ctx.reporter, description=f"float {cfg.model.label}", scratch=ctx.scratch,
                    objective=objective(cfg, qat=False))
    save_model(model, ctx.out)
    write_json(ctx.out / HISTORY_FILE, history)
    sparsity = activation_sparsity(model, splits.test, device)
    metrics = {
        "float_val_acc": accuracy(model, splits.val, device),
        "float_test_acc": accuracy(model, splits.test, device),
        "float_act_sparsity": sparsity.pop("all"),
        "float_act_sparsity_by_layer": sparsity,
        "float_sharpness": model_sharpness(model, splits.val.x.to(device), splits.val.y.to(device), SHARPNESS_RHO),
        "float_hessian_trace": model_hessian_trace(model, splits.val.x.to(device), splits.val.y.to(device)),
        "epochs": cfg.train.pretrain.epochs,
        "sec_per_epoch": _mean([h["seconds"] for h in history]),
    }
    return Result(metrics)


def objective(cfg: RunConfig, qat: bool) -> Objective:
    """Return a training phase's penalties (every phase) and SAM radius (QAT only: SAQ)."""
    t = cfg.train
    return Objective(t.regularizer, t.alpha, t.act_l1, t.saq.rho if qat else 0.0)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
