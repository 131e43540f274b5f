"""Profiled activation bounds: the range of codes each protected tensor takes on the calibration split.

A protected tensor is the output of a requantizer: a weight layer's requantized output, what the array's
output stage writes back and the next layer reads, where the paper's range check sits (every layer but
the logits one, unless the experiment names fewer), and in graph networks also the requantized sum of a
residual add or of an average pool (named after their quantizer, e.g. `layer1.0.relu`). Bounds are integer
codes at the tensor's own scale, one pair per tensor or per output channel (axis 1), found by running the
integer engine on the calibration images.

Then, in this order: the range mode (Ozen's ablation) picks `profiled` (each tensor its own), `global`
(one real-valued range over all protected tensors, expressed in each tensor's codes) or `global10` (ten
times the global range); `factor` scales each bound in the direction that widens the range (SED's 1.1);
`margin` adds that many codes beyond each bound; finally the bounds are clamped to the codes the tensor
can hold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dsetool.engine import Engine
from dsetool.engine.intmodel import IntModel, QuantAct, WeightOp

PROFILE_CHUNK = 256   # calibration images per engine run: bounds the memory of the kept outputs
GLOBAL10 = 10.0       # the `global10` mode's multiple of the global range
ROUNDING = 9          # decimals kept of a widened bound before rounding it outwards to a code


@dataclass(frozen=True)
class Bounds:
    """The bounds of one protected tensor: the output codes of op `op` (index `op_index`), layer `layer`."""

    layer: str
    op: str
    op_index: int
    scale: float
    qmin: int
    qmax: int
    lo: tuple[int, ...]        # per channel, or a single value for the whole tensor
    hi: tuple[int, ...]
    seen_lo: tuple[int, ...]   # as profiled, before the range mode, factor and margin
    seen_hi: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        """Return the bounds as the JSON artifact stores them."""
        return {"op": self.op, "op_index": self.op_index, "scale": self.scale, "qmin": self.qmin, "qmax": self.qmax,
                "lo": list(self.lo), "hi": list(self.hi), "seen_lo": list(self.seen_lo), "seen_hi": list(self.seen_hi)}


def protected_ops(model: IntModel, layers: Sequence[str]) -> list[tuple[str, int]]:
    """Return (name, index of its output-stage op) for every protected tensor, in network order: the
    chosen layers, or all requantized outputs when `layers` is empty. The name is the weight layer whose
    accumulators the stage requantizes, else the quantizer's own (after an add or a pool)."""
    found = []
    for index, op in enumerate(model.ops):
        if not isinstance(op, QuantAct) or op.kind == "quant_input":
            continue
        source = model.producer(index)
        assert source is not None   # the loader checked: only quant_input reads the images
        name = model.ops[source].name if isinstance(model.ops[source], WeightOp) else op.name
        if not layers or name in layers:
            found.append((name, index))
    return found


def profile(engine: Engine, images: torch.Tensor, ops: Sequence[int], per_channel: bool
            ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Return the smallest and largest code of each op's output over the images (per channel: axis 1)."""
    seen: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for begin in range(0, len(images), PROFILE_CHUNK):
        outputs = engine.run(images[begin:begin + PROFILE_CHUNK], keep=True)
        for index in ops:
            codes = outputs[index].reshape(outputs[index].shape[0], outputs[index].shape[1], -1).to(torch.int64)
            axes = (0, 2) if per_channel else (0, 1, 2)
            lo, hi = codes.amin(dim=axes).reshape(-1).numpy(), codes.amax(dim=axes).reshape(-1).numpy()
            if index in seen:
                lo, hi = np.minimum(seen[index][0], lo), np.maximum(seen[index][1], hi)
            seen[index] = (lo, hi)
    return seen


def widened(lo: np.ndarray, hi: np.ndarray, factor: float, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Return the bounds scaled by `factor` where that widens the range, then `margin` codes further out,
    rounded outwards to codes."""
    lo = np.minimum(lo * factor, lo / factor) - margin
    hi = np.maximum(hi * factor, hi / factor) + margin
    # 100 x 1.1 is 110.00000000000001 in floats: round away the representation error before the outward step
    return np.floor(np.round(lo, ROUNDING)).astype(np.int64), np.ceil(np.round(hi, ROUNDING)).astype(np.int64)


def profiled_bounds(engine: Engine, images: torch.Tensor, layers: Sequence[str], granularity: str, mode: str,
                    factor: float, margin: float) -> list[Bounds]:
    """Profile the protected tensors on `images` and return their bounds (see the module docstring)."""
    model = engine.model
    chosen = protected_ops(model, layers)
    seen = profile(engine, images, [index for _, index in chosen], granularity == "channel")
    scales = {index: _op(model, index).scale for _, index in chosen}
    lows, highs = {i: seen[i][0].astype(np.float64) for _, i in chosen}, {i: seen[i][1].astype(np.float64)
                                                                          for _, i in chosen}
    if mode != "profiled":
        real_lo = min(float(lows[i].min()) * scales[i] for i in lows)
        real_hi = max(float(highs[i].max()) * scales[i] for i in highs)
        if mode == "global10":
            real_lo, real_hi = min(real_lo * GLOBAL10, real_lo / GLOBAL10), max(real_hi * GLOBAL10, real_hi / GLOBAL10)
        lows = {i: np.array([real_lo / scales[i]]) for i in lows}
        highs = {i: np.array([real_hi / scales[i]]) for i in highs}
    out = []
    for layer, index in chosen:
        op = _op(model, index)
        qmin, qmax = op.qrange
        lo, hi = widened(lows[index], highs[index], factor, margin)
        out.append(Bounds(layer, op.name, index, op.scale, qmin, qmax, _codes(np.clip(lo, qmin, qmax)),
                          _codes(np.clip(hi, qmin, qmax)), _codes(seen[index][0]), _codes(seen[index][1])))
    return out


def _op(model: IntModel, index: int) -> QuantAct:
    op = model.ops[index]
    assert isinstance(op, QuantAct)
    return op


def _codes(values: np.ndarray) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def coverage(bounds: Sequence[Bounds]) -> float:
    """Return the mean share of each tensor's code range its bounds admit (1.0: the check never fires)."""
    shares = [(h - lo + 1) / (b.qmax - b.qmin + 1) for b in bounds for lo, h in zip(b.lo, b.hi, strict=True)]
    return math.fsum(shares) / len(shares) if shares else float("nan")
