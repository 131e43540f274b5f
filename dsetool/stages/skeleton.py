"""The design point's network as an integer model with untrained weights: what stage `synth` builds the
accelerator from, before (and whatever) any model is trained.

The accelerator's shape (its memories' depths, its instruction fields, its lanes) follows from the
network's layers, their shapes and the design's widths, never from weight values (`hw.machine_format`):
so the quantized network with its seeded initial weights, calibrated on a few images and exported,
compiles into a program of the same shape as every trained model of the point (QAT or PTQ, any epoch),
and one synthesis serves them all; range-check bounds profiled on the skeleton check the tensors the
trained model's bounds check. An imported QONNX model is its own skeleton. Needs torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsetool.config import RunConfig
from dsetool.design import Design
from dsetool.engine.intmodel import IntModel, load_intmodel

if TYPE_CHECKING:
    import torch

CALIB_IMAGES = 64   # enough to give every activation quantizer a scale


def skeleton_model(cfg: RunConfig, workdir: Path) -> tuple[IntModel, torch.Tensor]:
    """Export the point's quantized network with untrained weights into `workdir`; return its integer model
    and the calibration images it was calibrated on (a QONNX model is its own skeleton)."""
    from dsetool.stages.common import prepare

    workdir.mkdir(parents=True, exist_ok=True)
    splits, _ = prepare(cfg)
    calib = splits.calib.x[:CALIB_IMAGES]
    if cfg.model.qonnx:
        from dsetool.stages.qonnx import write_imported

        return write_imported(cfg, workdir), calib
    from dsetool.models.export import calibrate_activations, export_integer
    from dsetool.stages.common import new_model

    model = new_model(cfg, splits, quantized=True)
    calibrate_activations(model, [calib])
    model.eval()
    export_integer(model, workdir, arch=cfg.model.label, input_shape=(splits.in_channels, *splits.image_size))
    return load_intmodel(workdir), calib


def skeleton_bounds(design: Design, model: IntModel, calib: torch.Tensor) -> dict[str, Any] | None:
    """Return range-check bounds profiled on the skeleton when the design's protection reads bounds: they
    check the tensors a trained model's bounds check (which ones follows `protect.*`, not the values), so
    the machine built from the skeleton has every unit the trained model's needs."""
    if not design.protection.entry.reads_bounds:
        return None
    from dsetool.protect.bounds import profiled_bounds
    from dsetool.stages.restrict import bounds_document

    p = design.protection
    bounds = profiled_bounds(design.engine(model), calib, p.layers, p.granularity, p.range, p.factor, p.margin)
    return bounds_document(design, bounds, len(calib))
