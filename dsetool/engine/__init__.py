"""The bit-exact integer engine: the quantized network as the systolic array and its output stage run it.

`load_intmodel` reads the integer export (`dsetool.models.export.export_integer`) into a validated
`IntModel`; `Engine` executes it on integer codes (float tensors of exact integers, GEMMs on float32 or
float64 BLAS, proved exact below 2**24 or 2**53). Under `po2` scaling the engine equals Brevitas bit for
bit; under `float` scaling it uses the hardware's fixed-point multiplier, one LSB from Brevitas's float32
rounding on rare ties.

Importing this package imports torch but never Brevitas or Amaranth.
"""

from dsetool.engine.executor import (
    DEFAULT_MULTIPLIER_BITS,
    Engine,
    GemmLayer,
    RegisterWidths,
    Requantizer,
)
from dsetool.engine.intmodel import (
    Add,
    AvgPool2d,
    Concat,
    Conv2d,
    Flatten,
    IntModel,
    Linear,
    MaxPool2d,
    Op,
    QuantAct,
    WeightOp,
    load_intmodel,
    parse_intmodel,
)

__all__ = [
    "Add", "AvgPool2d", "Concat", "DEFAULT_MULTIPLIER_BITS", "Conv2d", "Engine", "Flatten", "GemmLayer", "IntModel",
    "Linear", "MaxPool2d", "Op", "QuantAct", "RegisterWidths", "Requantizer", "WeightOp", "load_intmodel",
    "parse_intmodel",
]
