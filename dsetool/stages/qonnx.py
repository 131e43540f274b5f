"""Stage `import-qonnx`: a model quantized elsewhere (`model.qonnx`), imported as the integer model.

No training: the QONNX file is read into the integer export (`dsetool.models.qonnx_import`), validated by
the loader, and measured on the data set with the integer engine. Range profiling, fault campaigns and
synthesis then read it as they read a trained model's export.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from dsetool.config import RunConfig
from dsetool.design import design_of
from dsetool.engine import Engine, load_intmodel
from dsetool.engine.intmodel import IntModel
from dsetool.models.qonnx_import import QonnxError, import_qonnx
from dsetool.stages import StageContext
from dsetool.stages.common import prepare
from dsetool.store import Result
from dsetool.validate import ConfigError

BATCH = 256


def run(ctx: StageContext) -> Result:
    """Import the design point's QONNX model and record its accuracy on the engine."""
    cfg = ctx.config
    splits, _ = prepare(cfg)
    engine = design_of(cfg).engine(write_imported(cfg, ctx.out))
    ctx.reporter.note(f"import-qonnx {cfg.model.label}: {len(engine.model.ops)} ops, "
                      f"{len(engine.weight_layers)} weight layers")
    return Result({"quant_val_acc": _accuracy(engine, splits.val.x, splits.val.y),
                   "quant_test_acc": _accuracy(engine, splits.test.x, splits.test.y),
                   "float_val_acc": None, "float_test_acc": None, "weight_bits": cfg.quant.weight_bits,
                   "act_bits": cfg.quant.act_bits, "qonnx": "imported"})


def write_imported(cfg: RunConfig, out: Path) -> IntModel:
    """Import the point's QONNX model into the integer export in `out`; return it."""
    try:
        config, arrays = import_qonnx(cfg.model.qonnx, arch=cfg.model.label)
    except QonnxError as error:
        raise ConfigError(str(cfg.name), "model.qonnx", str(error)) from None
    np.savez(out / "intmodel.npz", **arrays)  # type: ignore[arg-type]
    (out / "intmodel.json").write_text(json.dumps(config, indent=1) + "\n")
    return load_intmodel(out)


def _accuracy(engine: Engine, x: torch.Tensor, y: torch.Tensor) -> float | None:
    if not len(y):
        return None
    correct = sum(int((engine.top1(engine.run(x[i:i + BATCH])) == y[i:i + BATCH]).sum())
                  for i in range(0, len(y), BATCH))
    return correct / len(y)
