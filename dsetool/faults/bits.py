"""Bit-level faults on integer codes held in registers of a given width (two's complement when signed).

Values arrive as int64 codes, torch tensors or numpy arrays alike (only operators are used; widths and
signedness may be per element). A register of width w holds the low w bits of the two's complement
pattern; flipping bit w-1 of a signed register turns 5 into 5 - 2^(w-1) (e.g. 5 -> -123 at 8 bits),
exactly as the hardware does, not the sign-magnitude shortcut of some fault injectors.
"""

from __future__ import annotations

from typing import TypeVar, cast

import numpy as np
import torch

MODELS = ("bitflip", "stuck0", "stuck1", "zero")

Codes = TypeVar("Codes", torch.Tensor, np.ndarray)
Width = int | np.ndarray
Signed = bool | np.ndarray


def to_pattern(values: Codes, width: Width) -> Codes:
    """Return the w-bit register pattern (0 .. 2^w - 1) of integer codes."""
    return cast(Codes, values & ((1 << width) - 1))


def from_pattern(pattern: Codes, width: Width, signed: Signed) -> Codes:
    """Read a w-bit pattern back as a signed (two's complement) or unsigned integer."""
    if isinstance(signed, np.ndarray):
        flag: int | np.ndarray = signed.astype(np.int64)
    elif not signed:
        return pattern
    else:
        flag = 1   # a plain int: numpy's bool scalars would turn torch integers into floats
    return cast(Codes, pattern - ((pattern >> (width - 1)) & 1) * flag * (1 << width))


def with_masks(values: Codes, masks: Codes, model: str, width: Width, signed: Signed) -> Codes:
    """Return the register contents after the fault model acts on the bits set in each element's mask.

    `bitflip` inverts them, `stuck0`/`stuck1` force them, `zero` clears the whole register (masks
    ignored). Element-wise; values, masks, widths and signedness broadcast together.
    """
    if model == "zero":
        return values * 0
    pattern = to_pattern(values, width)
    if model == "bitflip":
        pattern = pattern ^ masks
    elif model == "stuck1":
        pattern = pattern | masks
    elif model == "stuck0":
        pattern = pattern & ~masks
    else:
        raise ValueError(f"Fault model must be one of {', '.join(MODELS)}, not {model!r}")
    return from_pattern(pattern, width, signed)


def apply_fault(values: Codes, bits: Codes, model: str, width: Width, signed: Signed) -> Codes:
    """Apply one fault per element: `bits` gives the bit position of each element's fault."""
    wide = bits.astype(np.int64) if isinstance(bits, np.ndarray) else bits.to(torch.int64)  # 1 << 7 in int8 overflows
    return with_masks(values, 1 << wide, model, width, signed)


def flip_mask(values: Codes, mask: Codes, width: Width, signed: Signed) -> Codes:
    """XOR each element's register pattern with a multi-bit mask (BER faults: several bits at once)."""
    return with_masks(values, mask, "bitflip", width, signed)
