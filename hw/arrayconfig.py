"""The one description of a systolic array that the RTL generator, the cycle model, the integer
engine's fault mapping and the report all read. Pure Python: importing it pulls in neither Amaranth
nor torch, so both sides of the project can share it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DATAFLOWS = ("ws", "os", "is")
PROTECTIONS = ("none", "clip", "zero")
MULTIPLIERS = ("dsp", "lut")


def _positive(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"Array {name} must be a positive integer, not {value!r}")


def _width(name: str, value: object, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"Array {name} must be an integer in {lo}..{hi}, not {value!r}")


def _one_of(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"Array {name} must be one of {', '.join(map(repr, choices))}, not {value!r}")


@dataclass(frozen=True)
class ArrayConfig:
    """A rows x cols systolic array of multiply-accumulate PEs.

    Weights are `weight_bits`-bit two's complement; activations are `act_bits` wide, unsigned by default
    (post-ReLU codes, as the quantized models produce them) or two's complement with `act_signed`. The
    registers hold exactly these widths, so a fault model can flip any of their bits. `acc_bits` = 0 lets
    `accumulator_bits(k)` size the accumulator from the reduction length.
    """

    rows: int = 8
    cols: int = 8
    act_bits: int = 8
    weight_bits: int = 8
    acc_bits: int = 0
    act_signed: bool = False
    dataflow: str = "ws"
    protection: str = "none"
    tmr: bool = False
    multiplier: str = "dsp"

    def __post_init__(self) -> None:
        _positive("rows", self.rows)
        _positive("cols", self.cols)
        _width("act_bits", self.act_bits, 2, 16)
        _width("weight_bits", self.weight_bits, 2, 16)
        _width("acc_bits", self.acc_bits, 0, 64)
        _one_of("dataflow", self.dataflow, DATAFLOWS)
        _one_of("protection", self.protection, PROTECTIONS)
        _one_of("multiplier", self.multiplier, MULTIPLIERS)

    def accumulator_bits(self, k: int) -> int:
        """Return the accumulator width: explicit, or just wide enough for k worst-case products."""
        if self.acc_bits:
            return self.acc_bits
        return required_acc_bits(k, self.act_bits, self.weight_bits, self.act_signed)


def required_acc_bits(k: int, act_bits: int, weight_bits: int, act_signed: bool = True) -> int:
    """Return the two's complement width that holds any sum of k products of the given operands.

    The largest product magnitude is 2^(a-1) * 2^(w-1) for signed operands (2^a - 1 times 2^(w-1) for an
    unsigned activation); a sum of k of them needs ceil(log2(k * max + 1)) magnitude bits plus a sign.
    """
    act_max = (1 << (act_bits - 1)) if act_signed else (1 << act_bits) - 1
    largest = k * act_max * (1 << (weight_bits - 1))
    return max(2, math.ceil(math.log2(largest + 1)) + 1)
