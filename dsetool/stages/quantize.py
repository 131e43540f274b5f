"""Stages `train-qat` and `ptq`: the quantized model of a design point, plus its integer export.

Both start from the cached float model. QAT calibrates the activation quantizers on the calibration
split, then fine-tunes with Brevitas's straight-through estimators; PTQ only calibrates. Each writes
the weights, the framework-neutral integer export (the contract of the integer engine and the
hardware stage) and a QONNX model for FINN users.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from dsetool.data import DataSplits
from dsetool.models.export import calibrate_activations, export_integer, export_qonnx
from dsetool.regularize import activation_sparsity
from dsetool.sam import SHARPNESS_RHO, model_hessian_trace, model_sharpness
from dsetool.stages import StageContext
from dsetool.stages.common import (
    HISTORY_FILE,
    MODEL_FILE,
    load_state,
    new_model,
    prepare,
    save_model,
    write_json,
)
from dsetool.stages.pretrain import objective
from dsetool.store import Result
from dsetool.training import accuracy, train

CALIB_BATCH = 64
QONNX_FILE = "model.qonnx.onnx"


def run_qat(ctx: StageContext) -> Result:
    """Calibrate, then fine-tune the quantized network with QAT."""
    cfg = ctx.config
    splits, device = prepare(cfg)
    model = _from_float(ctx, splits)
    calibrate_activations(model, _calib_batches(splits), method="maxabs")
    history = train(model, splits.train, splits.val, cfg.train.qat, seed=cfg.seed, device=device,
                    reporter=ctx.reporter, description=_label(ctx, "qat"), scratch=ctx.scratch,
                    objective=objective(cfg, qat=True))
    write_json(ctx.out / HISTORY_FILE, history)
    seconds = [h["seconds"] for h in history]
    return _finish(ctx, model, splits, device,
                   {"epochs": cfg.train.qat.epochs, "sec_per_epoch": sum(seconds) / len(seconds) if seconds else None})


def run_ptq(ctx: StageContext) -> Result:
    """Quantize the float network without fine-tuning: activation ranges from the calibration split."""
    cfg = ctx.config
    splits, device = prepare(cfg)
    model = _from_float(ctx, splits)
    ctx.reporter.note(f"{_label(ctx, 'ptq')}: calibrating on {len(splits.calib.y)} images "
                      f"({cfg.ptq.calibration})")
    calibrate_activations(model, _calib_batches(splits), method=cfg.ptq.calibration,
                          percentile=cfg.ptq.percentile)
    return _finish(ctx, model, splits, device, {"calibration": cfg.ptq.calibration})


def _label(ctx: StageContext, method: str) -> str:
    q = ctx.config.quant
    return f"{method} {ctx.config.model.label} W{q.weight_bits}A{q.act_bits}"


def _from_float(ctx: StageContext, splits: DataSplits) -> torch.nn.Module:
    """Return the quantized network starting from the float baseline's weights (`common.new_model`)."""
    state = load_state(ctx.upstream["pretrain"].artifact(MODEL_FILE))
    return new_model(ctx.config, splits, quantized=True, float_state=state)


def _calib_batches(splits: DataSplits) -> Iterator[torch.Tensor]:
    x = splits.calib.x
    return (x[i:i + CALIB_BATCH] for i in range(0, len(x), CALIB_BATCH))


def _finish(ctx: StageContext, model: torch.nn.Module, splits: DataSplits, device: torch.device,
            extra: dict[str, object]) -> Result:
    model.eval()
    save_model(model, ctx.out)
    model.cpu()
    shape = (splits.in_channels, *splits.image_size)
    export_integer(model, ctx.out, arch=ctx.config.model.label, input_shape=shape)
    qonnx = "ok"
    try:
        export_qonnx(model, ctx.out / QONNX_FILE, input_shape=shape)
    except RuntimeError as exc:
        qonnx = f"failed: {exc}"
        ctx.reporter.note(f"{_label(ctx, ctx.config.quant.method)}: QONNX export {qonnx}")
    upstream = ctx.upstream["pretrain"].metrics
    sparsity = activation_sparsity(model, splits.test, torch.device("cpu"))
    metrics = {
        "float_val_acc": upstream.get("float_val_acc"),
        "float_test_acc": upstream.get("float_test_acc"),
        "quant_val_acc": accuracy(model, splits.val, torch.device("cpu")),
        "quant_test_acc": accuracy(model, splits.test, torch.device("cpu")),
        "weight_bits": ctx.config.quant.weight_bits,
        "act_bits": ctx.config.quant.act_bits,
        "qonnx": qonnx,
        "act_sparsity": sparsity.pop("all"),
        "act_sparsity_by_layer": sparsity,
        "sharpness": model_sharpness(model, splits.val.x, splits.val.y, SHARPNESS_RHO),
        "hessian_trace": model_hessian_trace(model, splits.val.x, splits.val.y),
        **extra,
    }
    return Result(metrics)
