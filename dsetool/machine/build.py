"""The accelerator a design point builds (where `Design.no_machine` is empty): the engine it must equal,
with the point's range checks placed where the machine places them, and its shape from the design.

Stage `synth` builds it from the network's untrained skeleton (`dsetool.stages.skeleton`, with bounds
profiled on the skeleton itself) and stages `rtlsim` and `board` from the trained model (with the bounds of
stage range-restrict); all go through `checked_engine` and `design_machine`, so they build the same
machine: the accumulators are the design's (`machine_acc_bits`), not the tightest a particular model's
biases allow, and which tensors are checked, and where, follows `protect.*`, not bound values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dsetool.design import Design

if TYPE_CHECKING:
    from dsetool.engine import Engine
    from dsetool.engine.intmodel import IntModel
    from dsetool.machine.program import Program
    from hw.machine_format import MachineImages, MachineShape

MACHINE_VERSION = 5   # in synth's key: raise it when what every generated accelerator shares changes
STREAM_VERSION = 1    # the output-stationary machine's own (`hw.machine_stream`), in its keys beside it
OVERLAP_VERSION = 1   # the double-buffered weight-stationary machine's own (`Machine._overlap`), likewise
CHECKED_READ_VERSION = 1   # its read path when it checks the codes it reads (`Machine._read_path`, staged)


def part_versions(dataflow: str, weight_buffers: int, input_check: bool) -> dict[str, int]:
    """Return the versions of the parts only some machines build, for the keys of what the machine makes
    (synth, rtlsim, bitstreams): a change to one kind of machine then remakes only that kind's results.
    `input_check`: the machine checks the codes its array reads (`protect.placement` input)."""
    if dataflow == "os":
        return {"stream": STREAM_VERSION}
    if weight_buffers != 2:
        return {}
    return {"overlap": OVERLAP_VERSION, **({"checked_read": CHECKED_READ_VERSION} if input_check else {})}


def machine_acc_bits(design: Design) -> int:
    """Return the accelerator's accumulator width: `hw.acc_bits` when set, else the array's (the longest
    dot product's worst case) plus room for a bias, which the accumulator adds as its first sum
    (`Design.machine_array`)."""
    return design.machine_array.acc_bits


def checked_engine(design: Design, model: IntModel, bounds: Mapping[str, Any] | None) -> Engine:
    """Return the engine of `model` with the design's range checks (from `bounds`, a `bounds.json`
    document) placed as `protect.placement` says: what the machine must compute, bit for bit."""
    entry = design.protection.entry
    if not entry.protects:
        return design.engine(model)
    from dsetool.protect.check import placed

    assert entry.build is not None
    checks = entry.build(model, dataclasses.replace(design.protection.scheme, bounds=bounds))
    where = placed(model, checks, design.protection.placement)
    return design.engine(model, checks=where.get("checks"), input_checks=where.get("input_checks"))


def design_machine(design: Design, program: Program) -> tuple[MachineShape, MachineImages]:
    """Return the design's machine for `program` and the images that load it; raise
    `dsetool.machine.compiler.UnsupportedOp` when the program needs wider accumulators than the design
    has (a model whose biases exceed the headroom)."""
    from dsetool.machine.encode import machine_of

    return machine_of(program, multiplier=design.array.multiplier, multiplier_bits=design.multiplier_bits,
                      acc_bits=machine_acc_bits(design), tmr=design.protection.tmr,
                      weight_buffers=design.weight_buffers, dataflow=design.array.dataflow)
