"""The accelerator's output stage: per-column constants, per-layer clamp, optional range check.

`ColumnStage` is `hw.output_stage.OutputStage` grown for a machine that runs whole networks: every
column has its own requantization multiplier and shift and its own range-check bounds (output channels
of one N slice, from the constant memory, so per-channel scales and bounds are real), and the clamp
range, ReLU and whether the check acts are per-layer ports (a signed quant_identity and an unsigned
quant_relu can follow each other). It computes, bit for bit, what the engine's output stage does
(`dsetool.engine.ops.fixed_point_requantize_int`, then `dsetool.protect.check.RangeCheck`):

    acc -> [product, shift controls] -> [base, up] -> [code] -> [checked code] = out

`LATENCY` (4) edges from `acc` to `out`, one row per cycle. The constants are sampled with the row
(register them outside and change them only between N slices).
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Shape, Signal, Value, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.pe import DSPMultiplier, Multiplier
from hw.protect import RangeMode
from hw.requant import decode_shift, shift_and_round_bit

LATENCY = 4


def _register(m: Module, value: Value, name: str) -> Signal:
    reg = Signal(value.shape(), name=name)
    m.d.sync += reg.eq(value)
    return reg


class ColumnStage(wiring.Component):
    """Requantize, clamp and check `cols` accumulators per cycle, pipelined (`LATENCY` edges).

    Parameters
    ----------
    acc_bits : int
        Accumulator width (two's complement).
    cols : int
        Columns, at least 1.
    code_shape : shape-castable
        The codes' register shape (the activation buffer's lanes): unsigned or signed.
    multiplier_bits, shift_bits : int
        Widths of the unsigned multiplier M and the two's complement shift s.
    check : RangeMode or None
        The range check's correction (`hw.protect.MACHINE_MODES`: clip, zero, or only flag), or None: no
        range-check logic at all.
    multiplier : Multiplier
        Builds acc * M; `DSPMultiplier()` by default.

    Members
    -------
    valid : In(1); acc : In(signed(acc_bits)).array(cols)
    multiplier : In(unsigned(multiplier_bits)).array(cols); shift : In(signed(shift_bits)).array(cols)
    lo, hi : In(code shape).array(cols) : each column's bounds (used when `check_on`).
    relu, check_on : In(1); qmin, qmax : In(signed(code width + 1)) : the layer's settings.
    out_valid : Out(1); out : Out(code shape).array(cols); detected : Out(1).array(cols) : with `out`,
        whether the column's code left its bounds (when `check_on`).
    """

    def __init__(self, acc_bits: int, cols: int, code_shape: object, multiplier_bits: int, shift_bits: int, *,
                 check: RangeMode | None = None, multiplier: Multiplier | None = None) -> None:
        if not isinstance(cols, int) or isinstance(cols, bool) or cols < 1:
            raise ValueError(f"Column stage cols must be a positive integer, not {cols!r}")
        self.code_shape = Shape.cast(code_shape)
        self.acc_bits, self.cols, self.check = acc_bits, cols, check
        self._multiply: Multiplier = multiplier or DSPMultiplier()
        wide = signed(self.code_shape.width + 1)
        super().__init__({
            "valid": In(1), "acc": In(signed(acc_bits)).array(cols),
            "multiplier": In(unsigned(multiplier_bits)).array(cols), "shift": In(signed(shift_bits)).array(cols),
            "lo": In(self.code_shape).array(cols), "hi": In(self.code_shape).array(cols),
            "relu": In(1), "check_on": In(1), "qmin": In(wide), "qmax": In(wide),
            "out_valid": Out(1), "out": Out(self.code_shape).array(cols), "detected": Out(1).array(cols),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        valid: Value = self.valid
        for i in range(LATENCY):
            valid = _register(m, valid, f"valid_{i}")
        m.d.comb += self.out_valid.eq(valid)
        for c in range(self.cols):
            self._column(m, c)
        return m

    def _column(self, m: Module, c: int) -> None:
        width = self.code_shape.width
        source = Mux(self.relu & (self.acc[c] < 0), 0, self.acc[c])
        if len(self.multiplier[c]) == 1:   # power-of-two scales: M is 0 or 1, a pure shift follows; no DSP
            scaled: Value = Mux(self.multiplier[c], source, 0)
        else:
            scaled = self._multiply(source, self.multiplier[c])
        product = _register(m, scaled, f"product_{c}")
        controls = {name: _register(m, value, f"shift_{name}_{c}")
                    for name, value in decode_shift(self.shift[c], width + 1).items()}
        lo, hi = _register(m, self.lo[c], f"lo_{c}"), _register(m, self.hi[c], f"hi_{c}")
        base, up = shift_and_round_bit(product, controls, thermometer=True)   # fast in compiled simulation
        base, up = _register(m, base, f"base_{c}"), _register(m, up, f"up_{c}")
        lo, hi = _register(m, lo, f"lo2_{c}"), _register(m, hi, f"hi2_{c}")
        # As in hw.requant: compare base alone, the +1 moves it past a bound only from the bound itself.
        above = (base > self.qmax) | ((base == self.qmax) & up)
        below = (base < self.qmin) & ~((base == self.qmin - 1) & up)
        code = Signal(self.code_shape, name=f"code_{c}")
        m.d.sync += code.eq(Mux(above, self.qmax, Mux(below, self.qmin, (base + up)[:width])))
        lo, hi = _register(m, lo, f"lo3_{c}"), _register(m, hi, f"hi3_{c}")
        if self.check is None:
            m.d.sync += self.out[c].eq(code)
            return
        is_below, is_above = (code < lo) & self.check_on, (code > hi) & self.check_on
        m.d.sync += self.out[c].eq(self.check(code, lo, hi, is_below, is_above))
        m.d.sync += self.detected[c].eq(is_below | is_above)
