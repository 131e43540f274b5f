"""Bit-level faults on integer codes held in registers of a given width (two's complement when signed).

Values arrive as int64 tensors of codes. A register of width w holds the low w bits of the two's
complement pattern; flipping bit w-1 of a signed register turns 5 into 5 - 2^(w-1) (e.g. 5 -> -123 at
8 bits), exactly as the hardware does, not the sign-magnitude shortcut of some fault injectors.
"""

from __future__ import annotations

import torch

MODELS = ("bitflip", "stuck0", "stuck1", "zero")


def to_pattern(values: torch.Tensor, width: int) -> torch.Tensor:
    """Return the w-bit register pattern (0 .. 2^w - 1) of integer codes."""
    return torch.remainder(values, 1 << width)


def from_pattern(pattern: torch.Tensor, width: int, signed: bool) -> torch.Tensor:
    """Read a w-bit pattern back as a signed (two's complement) or unsigned integer."""
    if not signed:
        return pattern
    return torch.where(pattern >= (1 << (width - 1)), pattern - (1 << width), pattern)


def apply_fault(values: torch.Tensor, bits: torch.Tensor, model: str, width: int, signed: bool) -> torch.Tensor:
    """Apply one fault per element: `bits` gives the bit position of each element's fault.

    `bitflip` inverts the bit, `stuck0`/`stuck1` force it, `zero` clears the whole register (bits
    ignored). All element-wise and vectorized; values and bits broadcast together.
    """
    if model == "zero":
        return torch.zeros_like(values)
    pattern = to_pattern(values, width)
    mask = torch.bitwise_left_shift(torch.ones_like(bits), bits)
    if model == "bitflip":
        pattern = torch.bitwise_xor(pattern, mask)
    elif model == "stuck1":
        pattern = torch.bitwise_or(pattern, mask)
    elif model == "stuck0":
        pattern = torch.bitwise_and(pattern, torch.bitwise_not(mask))
    else:
        raise ValueError(f"Fault model must be one of {', '.join(MODELS)}, not {model!r}")
    return from_pattern(pattern, width, signed)


def flip_mask(values: torch.Tensor, mask: torch.Tensor, width: int, signed: bool) -> torch.Tensor:
    """XOR each element's register pattern with a multi-bit mask (BER faults: several bits at once)."""
    return from_pattern(torch.bitwise_xor(to_pattern(values, width), mask), width, signed)
