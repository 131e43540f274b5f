"""The design point's network as an integer model with untrained weights: what stage `synth` builds the
accelerator from, before (and whatever) any model is trained.

The accelerator's shape (its memories' depths, its instruction fields, its lanes) follows from the
network's layers, their shapes and the design's widths, never from weight values (`hw.machine_format`):
so the quantized network with its seeded initial weights, calibrated on a few images and exported,
compiles into a program of the same shape as every trained model of the point (QAT or PTQ, any epoch),
and one synthesis serves them all. An imported QONNX model is its own skeleton. Needs torch.
"""

from __future__ import annotations

from pathlib import Path

from dsetool.config import RunConfig
from dsetool.engine.intmodel import IntModel, load_intmodel

CALIB_IMAGES = 64   # enough to give every activation quantizer a scale


def skeleton_model(cfg: RunConfig, workdir: Path) -> IntModel:
    """Export the point's quantized network with untrained weights into `workdir`; return its integer model."""
    workdir.mkdir(parents=True, exist_ok=True)
    if cfg.model.qonnx:
        from dsetool.stages.qonnx import write_imported

        return write_imported(cfg, workdir)
    from dsetool.models.export import calibrate_activations, export_integer
    from dsetool.stages.common import new_model, prepare

    splits, _ = prepare(cfg)
    model = new_model(cfg, splits, quantized=True)
    calibrate_activations(model, [splits.calib.x[:CALIB_IMAGES]])
    model.eval()
    export_integer(model, workdir, arch=cfg.model.label, input_shape=(splits.in_channels, *splits.image_size))
    return load_intmodel(workdir)
