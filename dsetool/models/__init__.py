"""DNN models: architectures (`zoo`), quantizer presets (`quant`) and the integer / QONNX export (`export`).

Importing this package or `zoo` / `quant` does not import torch or Brevitas (about 5 s); the functions that
need them import them when called. The names below are re-exported lazily for the same reason.
"""

from __future__ import annotations

import importlib
from typing import Any

import dsetool.quiet  # noqa: F401  (every module here that imports Brevitas is imported after this)

_EXPORTS = {
    "ARCHITECTURES": "zoo", "input_size": "zoo", "weight_layer_names": "zoo", "build_model": "zoo",
    "load_float_weights": "zoo",
    "LayerBits": "quant", "QuantSpec": "quant",
    "calibrate_activations": "export", "export_integer": "export", "export_qonnx": "export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
