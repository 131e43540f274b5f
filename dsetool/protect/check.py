"""The range check on a requantized tensor (the paper's protection and its Ranger-style variant).

`clip` replaces a code outside [lo, hi] by the nearer bound; `zero` replaces it by 0; `detect` (a
symptom-based error detector, SED: Li et al., [Ozen] §6.4) leaves it and only flags it. Bounds are codes
per output channel (a per-layer bound is the same pair for every channel), as profiled by
`dsetool.protect.bounds`. The hardware applies it to each column output after requantization
(`hw.protect`); the engine applies it right after the output stage that produces the tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dsetool.engine.intmodel import PASSTHROUGH, IntModel, WeightOp

Check = Callable[[torch.Tensor], torch.Tensor]   # a protection: codes in, checked codes out
MODES = ("clip", "zero", "detect")
CHECK_MODES = {"clip": "clip", "zero": "zero", "sed": "detect"}   # `hw.protection` -> mode


@dataclass(frozen=True)
class RangeCheck:
    """Bounds of one tensor's codes, per output channel, and what happens to a code outside them."""

    mode: str
    lo: np.ndarray   # (channels,) int64
    hi: np.ndarray

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"Range check mode must be one of {', '.join(MODES)}, not {self.mode!r}")

    def outside(self, codes: torch.Tensor) -> torch.Tensor:
        """Return where the codes (B, C, ...) or flattened (B, C*H*W) leave their channel's bounds."""
        lo, hi = (self._laid_out(v, codes) for v in (self.lo, self.hi))
        return (codes < lo) | (codes > hi)

    def __call__(self, codes: torch.Tensor) -> torch.Tensor:
        """Return the checked codes (a new tensor; `detect`: the codes themselves)."""
        if self.mode == "detect":
            return codes
        if self.mode == "clip":
            lo, hi = (self._laid_out(v, codes) for v in (self.lo, self.hi))
            return torch.minimum(torch.maximum(codes, lo), hi)
        return torch.where(self.outside(codes), torch.zeros((), dtype=codes.dtype), codes)

    def _laid_out(self, values: np.ndarray, codes: torch.Tensor) -> torch.Tensor:
        per_image = codes.shape[1:]
        tensor = torch.as_tensor(values, dtype=codes.dtype, device=codes.device)
        if len(per_image) == 3:
            return tensor.reshape(-1, 1, 1)
        return tensor.repeat_interleave(per_image[0] // len(values))   # flattened: channel-major


def acted(check: Check, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Return where a protection acted on codes (`after` = `check(before)`): a range check wherever a code
    left its bounds (clipped, zeroed or flagged), any other protection wherever it changed a code."""
    if isinstance(check, RangeCheck):
        return check.outside(before)
    return before != after


def at_inputs(model: IntModel, checks: Mapping[int, Check]) -> dict[int, Check]:
    """Return protections keyed by the output op they follow as protections of the weight ops that read
    those outputs (`Engine(input_checks=...)`): the check then also meets faults in the input buffer.
    A layer reading a concatenation checks each input's channels with that input's protection
    (`_by_channels`)."""
    moved: dict[int, Check] = {}
    for index, op in enumerate(model.ops):
        parts = model.quantizers_read(index) if isinstance(op, WeightOp) else ()
        found = [(model.ops[quantizer], channels, checks.get(quantizer)) for quantizer, channels in parts]
        only = found[0][2] if len(found) == 1 else None
        if only is not None:
            moved[index] = only
        elif len(found) > 1 and any(check is not None for _, _, check in found):
            moved[index] = _by_channels(found)
    return moved


def _by_channels(parts: Sequence[tuple[Any, int, Check | None]]) -> Check:
    """Return one protection of a concatenation's channels from its inputs' (quantizer, channels, check):
    range checks of one mode (or none: the quantizer's full range, never acted on) as one range check of
    their bounds side by side, which the sparse fault path follows; else each check on its channels."""
    ranges = [check for _, _, check in parts if check is not None]
    modes = {check.mode for check in ranges if isinstance(check, RangeCheck)}
    if len(modes) == 1 and all(isinstance(check, RangeCheck) for check in ranges):
        lo, hi = [], []
        for quantizer, channels, check in parts:
            if isinstance(check, RangeCheck):
                lo.append(check.lo)
                hi.append(check.hi)
            else:
                low, high = quantizer.qrange
                lo.append(np.full(channels, low, dtype=np.int64))
                hi.append(np.full(channels, high, dtype=np.int64))
        return RangeCheck(modes.pop(), np.concatenate(lo), np.concatenate(hi))
    return ChannelChecks(tuple((channels, check) for _, channels, check in parts))


@dataclass(frozen=True)
class ChannelChecks:
    """Protections of consecutive channel ranges of one tensor (a concatenation's inputs), each applied to
    its own channels; None leaves a range as it is."""

    parts: tuple[tuple[int, Check | None], ...]

    def __call__(self, codes: torch.Tensor) -> torch.Tensor:
        planes = codes.shape[1] // sum(channels for channels, _ in self.parts) if codes.dim() == 2 else 1
        pieces, first = [], 0
        for channels, check in self.parts:
            piece = codes[:, first:first + channels * planes]
            pieces.append(piece if check is None else check(piece))
            first += channels * planes
        return torch.cat(pieces, dim=1)


def placed(model: IntModel, checks: Mapping[int, Check], placement: str) -> dict[str, dict[int, Check]]:
    """Return the `Engine` keyword arguments that place the protections: `output` after the output stages;
    `input` where the weight layers read them (`at_inputs`), and, for a protected tensor that another op
    reads too (an add or a pool in a graph network; max pools and flattens pass the codes on), also after
    its output stage, so no reader goes unprotected."""
    if placement == "output":
        return {"checks": dict(checks)}
    return {"input_checks": at_inputs(model, checks),
            "checks": {index: check for index, check in checks.items() if _read_by_other_ops(model, index)}}


def _read_by_other_ops(model: IntModel, index: int) -> bool:
    """Say whether an op other than a weight layer reads op `index`'s output (through max pools and
    flattens)."""
    pending = list(model.consumers(index))
    while pending:
        reader = pending.pop()
        if model.ops[reader].kind in PASSTHROUGH:
            pending.extend(model.consumers(reader))
        elif not isinstance(model.ops[reader], WeightOp):
            return True
    return False


def range_checks(bounds: Mapping[str, Any], mode: str, channels: Mapping[int, int]) -> dict[int, RangeCheck]:
    """Return the range check of every protected tensor in a `bounds.json` document, by output-stage op
    index; `channels[op]` is that tensor's channel count (per-layer bounds are repeated over it)."""
    checks = {}
    for entry in bounds["layers"].values():
        op = int(entry["op_index"])
        checks[op] = RangeCheck(mode, _per_channel(entry["lo"], channels[op]), _per_channel(entry["hi"], channels[op]))
    return checks


def _per_channel(values: Sequence[int], channels: int) -> np.ndarray:
    array = np.asarray(values, dtype=np.int64)
    return np.repeat(array, channels) if len(array) == 1 else array
