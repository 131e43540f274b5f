"""The accelerator a design point builds (where `Design.unbuilt` is empty): its shape from the design.

Stage `synth` builds it from the network's untrained skeleton (`dsetool.stages.skeleton`) and stage
`rtlsim` from the trained model; both go through `design_machine`, so they build the same machine: the
accumulators are the design's (`machine_acc_bits`), not the tightest a particular model's biases allow,
and the range-check unit is the design's protection, whichever layers a model's bounds check.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from dsetool.design import Design
from dsetool.protect import registry as protections

if TYPE_CHECKING:
    from dsetool.machine.program import Program
    from hw.machine_format import MachineImages, MachineShape

MACHINE_VERSION = 1   # in synth's key: raise it when the generated accelerator changes
BIAS_HEADROOM = 1   # bits: a bias as large as the worst-case dot product still fits


def machine_acc_bits(design: Design) -> int:
    """Return the accelerator's accumulator width: `hw.acc_bits` when set, else the array's (the longest
    dot product's worst case) plus room for a bias, which the accumulator adds as its first sum."""
    if design.config.hw.acc_bits:
        return design.config.hw.acc_bits
    return design.acc_bits + BIAS_HEADROOM


def check_unit(design: Design) -> str:
    """Return the range-check unit the design's accelerator is built with ("none", "clip", "zero")."""
    protection = design.protection
    return protection.rtl if protection.entry.protects else protections.NONE


def design_machine(design: Design, program: Program) -> tuple[MachineShape, MachineImages]:
    """Return the design's machine for `program` and the images that load it; raise
    `dsetool.machine.compiler.UnsupportedOp` when the program needs wider accumulators than the design
    has (a model whose biases exceed the headroom) or asks for another range-check unit."""
    from dsetool.machine.compiler import UnsupportedOp
    from dsetool.machine.encode import machine_of

    shape, images = machine_of(program, multiplier=design.array.multiplier,
                               multiplier_bits=design.multiplier_bits, acc_bits=machine_acc_bits(design))
    unit = check_unit(design)
    if shape.check not in (protections.NONE, unit):
        raise UnsupportedOp(f"the program checks with {shape.check}; the design's unit is {unit}")
    return dataclasses.replace(shape, check=unit), images
