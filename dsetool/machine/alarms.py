"""What the accelerator's detector (`hw.machine.Machine`'s `alarm`) must say for an image: whether any
range check the engine evaluates finds a code outside its bounds, fault-free, as the machine checks them
(each check's codes before its correction: an output check's on its output stage's codes, an input
check's on the codes its weight layer reads).

The engine flags every code of a checked tensor; the machine only the codes it reads. They agree when
every layer reads its whole input (a 1 x 1 conv of stride 2 does not: a code it never reads can leave
its bounds unseen by the machine, and changes nothing the machine computes).
"""

from __future__ import annotations

import numpy as np
import torch

from dsetool.engine import Engine
from dsetool.engine.intmodel import INPUT
from dsetool.protect.check import RangeCheck


def engine_alarms(engine: Engine, x: torch.Tensor) -> np.ndarray:
    """Return, per image of x (B, ...), whether a range check of the engine (`checks`, `input_checks`)
    fired; only `RangeCheck`s count (other protections detect nothing)."""
    outputs = engine.run(x, keep=True)

    def value(index: int) -> torch.Tensor:
        return x if index == INPUT else outputs[index]

    fired = torch.zeros(len(x), dtype=torch.bool)
    for index, check in engine.checks.items():
        if isinstance(check, RangeCheck):
            unchecked = engine.step(index, *(value(i) for i in engine.model.inputs[index]), checked=False)
            fired |= check.outside(unchecked).reshape(len(x), -1).any(dim=1).cpu()
    for index, check in engine.input_checks.items():
        if isinstance(check, RangeCheck):
            read = value(engine.model.input_of(index))
            fired |= check.outside(read).reshape(len(x), -1).any(dim=1).cpu()
    return fired.numpy()
