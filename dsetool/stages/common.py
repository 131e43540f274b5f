"""Pieces shared by the torch-side stage implementations (imported only when a stage computes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

import dsetool.quiet  # noqa: F401  (before Brevitas is imported)
from dsetool.config import RunConfig, qonnx_info
from dsetool.data import DataSplits, geometry_of, load_dataset
from dsetool.models.fold import folded_state
from dsetool.models.quant import LayerBits, QuantSpec
from dsetool.models.zoo import build_model, input_size, load_float_weights
from dsetool.training import pick_device, seed_everything
from dsetool.validate import ConfigError

MODEL_FILE = "model.pt"
HISTORY_FILE = "history.json"


def prepare(cfg: RunConfig, threads: int | None = None) -> tuple[DataSplits, torch.device]:
    """Seed torch, pick the device and load the design point's data at the model's input size.

    Torch runs on `train.threads` threads unless the stage asks otherwise: a model-making stage must not
    depend on the machine or on how many tasks share it (`--jobs`), since its result is cached by key."""
    seed_everything(cfg.seed, cfg.train.threads if threads is None else threads)
    native = geometry_of(cfg.data.name, cfg.data.root)[1]
    splits = load_dataset(
        cfg.data.name, root=cfg.data.root, download=cfg.data.download,
        image_size=image_side(cfg, native),
        val_fraction=cfg.data.val_fraction,
        test_fraction=cfg.data.test_fraction, calib_size=cfg.data.calib_size,
        max_train=cfg.data.max_train, split_seed=cfg.data.split_seed,
    )
    return splits, pick_device(cfg.device)


def image_side(cfg: RunConfig, native: tuple[int, int]) -> int | None:
    """Return the side the images are resized to: an imported model's input, a built-in CNN's 32, or None
    (native size) for the mlp and factory networks."""
    if cfg.model.qonnx:
        return int(qonnx_info(cfg).input_shape[1])
    return None if cfg.model.factory else input_size(cfg.model.arch, native)


def quant_spec(cfg: RunConfig) -> QuantSpec:
    """Translate the experiment's quant section into the model zoo's QuantSpec."""
    q = cfg.quant
    per_layer = {
        name: LayerBits(layer.weight_bits or q.weight_bits, layer.act_bits or q.act_bits)
        for name, layer in q.layers.items()
    }
    return QuantSpec(weight_bits=q.weight_bits, act_bits=q.act_bits, per_layer=per_layer,
                     scaling=q.scaling, weight_granularity=q.weight_granularity,
                     relu_unsigned=q.relu_unsigned)


def new_model(cfg: RunConfig, splits: DataSplits, quantized: bool,
              float_state: dict[str, Any] | None = None) -> torch.nn.Module:
    """Build the design point's network, float or quantized, with fixed initial weights.

    With `float_state` (the float baseline's weights) the quantized network starts from them: a built-in
    one takes the weight layers of the float model with its batch norms folded in (`models.fold`), a
    factory network is quantized from the float model itself (Brevitas merges the norms)."""
    torch.manual_seed(cfg.seed)
    if cfg.model.factory:
        from dsetool.models.factory import FactoryError, build_float, quantize, source_file

        try:
            model = build_float(cfg.model.factory, splits.in_channels, splits.num_classes, splits.image_size)
            if float_state is not None:
                model.load_state_dict(float_state)
            return quantize(model, quant_spec(cfg), source_file(cfg.model.factory),
                            (splits.in_channels, *splits.image_size)) if quantized else model
        except FactoryError as error:
            raise ConfigError(str(cfg.name), "model.factory", str(error)) from None
    float_model = build_model(cfg.model.arch, in_channels=splits.in_channels, num_classes=splits.num_classes,
                              image_size=splits.image_size, mlp_hidden=cfg.model.mlp_hidden)
    if not quantized:
        if float_state is not None:
            float_model.load_state_dict(float_state)
        return float_model
    model = build_model(cfg.model.arch, in_channels=splits.in_channels, num_classes=splits.num_classes,
                        image_size=splits.image_size, quant=quant_spec(cfg), mlp_hidden=cfg.model.mlp_hidden)
    if float_state is not None:
        float_model.load_state_dict(float_state)
        load_float_weights(model, folded_state(float_model))
    return model


def save_model(model: torch.nn.Module, out: Path) -> None:
    """Write the weights as a plain state dict (loads with `torch.load(weights_only=True)`)."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    torch.save(state, out / MODEL_FILE)


def load_state(path: Path) -> dict[str, Any]:
    """Load a state dict written by `save_model`, refusing pickled code."""
    return torch.load(path, weights_only=True, map_location="cpu")


def write_json(path: Path, payload: Any) -> None:
    """Write a human-readable JSON artifact."""
    path.write_text(json.dumps(payload, indent=2, sort_keys=True))
