"""The pipelined output stage of a row of array columns: requantize, range-check, register.

`OutputStage` takes one row of C accumulators per cycle (the array's de-skewed output row) and returns their
activation codes `LATENCY` clock edges later, one row per cycle at full rate. Every step sits between
registers, so none of them is on the array's critical path:

    acc --> [product] --> [base, up] --> [code] --> range check --> [out, detected]
            '----------- Requantizer, 3 registers -------'          1 register

The range check (`hw.protect`) is alone between the requantizer's code register and the output register;
without protection that register simply delays the code, so every protection has the same latency and
the unprotected stage is a fair baseline. The layer's constants (multiplier, shift, bounds) are held in
registers loaded from their ports every cycle, so no port feeds the pipeline's logic directly.
"""

from __future__ import annotations

from amaranth.hdl import Module, Shape, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.pe import DSPMultiplier, Multiplier
from hw.protect import RangeCheckRow, RangeMode
from hw.requant import PIPELINE_STAGES, Requantizer

LATENCY = PIPELINE_STAGES + 1  # the requantizer's registers and the output register
SHIFT_BITS = 6


class OutputStage(wiring.Component):
    """Requantize and (optionally) range-check C accumulators per cycle, pipelined with latency `LATENCY`.

    When `valid` is high before clock edge t, `out_valid` is high after edge t + LATENCY - 1 (that is,
    `LATENCY` edges later counting edge t) and `out[c]` holds the code of `acc[c]`: the `Requantizer` code
    with the constants held in the layer registers, corrected by the range check when there is one, with
    `detected[c]` set when the code was outside [lo, hi]. Constants are read through one register: set them
    a cycle before the first value and hold them while values are in flight.

    Parameters
    ----------
    acc_bits : int
        Accumulator width (two's complement).
    cols : int
        Number of columns, at least 1.
    act_shape : shape-castable
        The output code's shape: unsigned (post-ReLU codes, ReLU applied) or signed (no ReLU).
    multiplier_bits : int
        Width of the requantization multiplier M.
    check : RangeMode or None
        The range check's correction (`hw.protect.MODES`), or None for no range check.
    multiplier : Multiplier
        Builds acc * M; `DSPMultiplier()` by default.

    Members
    -------
    valid : In(1)
    acc : In(signed(acc_bits)).array(cols)
    multiplier : In(unsigned(multiplier_bits)), shift : In(signed(6)) : the layer's requantization constants.
    lo, hi : In(act shape) : the layer's profiled bounds (ignored without a range check).
    out_valid : Out(1)
    out : Out(act shape).array(cols), registered.
    detected : Out(1).array(cols), registered; always 0 without a range check.
    """

    def __init__(self, acc_bits: int, cols: int, act_shape: object, multiplier_bits: int, *,
                 check: RangeMode | None = None, multiplier: Multiplier | None = None) -> None:
        if not isinstance(cols, int) or isinstance(cols, bool) or cols < 1:
            raise ValueError(f"Output stage cols must be a positive integer, not {cols!r}")
        act = Shape.cast(act_shape)
        self.requantizers = [Requantizer(acc_bits, multiplier_bits, SHIFT_BITS, act.width, relu=not act.signed,
                                         multiplier=multiplier or DSPMultiplier(), pipelined=True)
                             for _ in range(cols)]
        self.check = None if check is None else RangeCheckRow(act, cols, mode=check)
        super().__init__({
            "valid": In(1), "acc": In(signed(acc_bits)).array(cols),
            "multiplier": In(unsigned(multiplier_bits)), "shift": In(signed(SHIFT_BITS)),
            "lo": In(act), "hi": In(act),
            "out_valid": Out(1), "out": Out(act).array(cols), "detected": Out(1).array(cols),
        })

    @property
    def latency(self) -> int:
        """Return the clock edges from a row on `acc` to its codes on `out` (`LATENCY`)."""
        return LATENCY

    def elaborate(self, platform: object) -> Module:
        m = Module()
        layer = {name: Signal.like(getattr(self, name), name=f"layer_{name}")
                 for name in ("multiplier", "shift", "lo", "hi")}
        m.d.sync += [reg.eq(getattr(self, name)) for name, reg in layer.items()]
        codes = []
        for c, stage in enumerate(self.requantizers):
            m.submodules[f"requant_{c}"] = stage
            m.d.comb += [stage.acc.eq(self.acc[c]), stage.multiplier.eq(layer["multiplier"]),
                         stage.shift.eq(layer["shift"])]
            codes.append(stage.out)
        if self.check is not None:
            m.submodules.check = check = self.check
            m.d.comb += [check.lo.eq(layer["lo"]), check.hi.eq(layer["hi"])]
            m.d.comb += [check.value[c].eq(code) for c, code in enumerate(codes)]
            codes = list(check.out)
            m.d.sync += [self.detected[c].eq(flag) for c, flag in enumerate(check.detected)]
        m.d.sync += [self.out[c].eq(code) for c, code in enumerate(codes)]
        valid = self.valid
        for i in range(LATENCY):
            delayed = Signal(name=f"valid_{i}")
            m.d.sync += delayed.eq(valid)
            valid = delayed
        m.d.comb += self.out_valid.eq(valid)
        return m
