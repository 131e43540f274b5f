"""The output stage of one array column: scale an accumulator to an activation code, as the engine does.

`Requantizer` computes, bit for bit, what `dsetool.engine.ops.fixed_point_requantize_int` computes:
clamp(round_half_even(relu(acc) * M / 2**s), qmin, qmax). M and s are input ports, not build-time constants,
so one array serves every layer: the driver loads each layer's (per-channel) constants into registers.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Shape, Value, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.pe import DSPMultiplier, Multiplier


def _width(name: str, value: object, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"Requantizer {name} must be an integer in {lo}..{hi}, not {value!r}")
    return value


def shift_round_half_even(value: Value, shift: Value, left_limit: int) -> Value:
    """Return round_half_even(value / 2**shift) as logic; a negative `shift` shifts left.

    `shift` is two's complement. Right shifts drop bits and round: +1 when the dropped bits exceed one half,
    or equal it and the kept value is odd (as `dsetool.engine.ops.shift_round_half_even`). Left shifts are
    capped at `left_limit` places: the caller clamps the result to a range that any nonzero value shifted
    that far already leaves, so the cap changes no clamped result and keeps the shifter narrow.
    """
    right = Mux(shift > 0, shift, 0)[:len(shift) - 1]
    kept = value >> right
    dropped = value - (kept << right)
    half = (Value.cast(1) << right) >> 1  # 2**(right-1), and 0 when right is 0
    up = (right != 0) & ((dropped > half) | ((dropped == half) & kept[0]))
    left_amount = -shift
    left = Mux(left_amount > left_limit, left_limit, left_amount)[:max(1, left_limit.bit_length())]
    return Mux(shift < 0, value << left, kept + up)


class Requantizer(wiring.Component):
    """Requantize one column's accumulator to an activation code; combinational (no register stage).

    out = clamp(round_half_even(relu(acc) * multiplier / 2**shift), qmin, qmax), where (qmin, qmax) is the
    full range of the output code: 0..2**out_bits - 1 with `relu` (the post-ReLU unsigned code), else the
    two's complement range of `out_bits` with no ReLU. A negative `shift` shifts left; for power-of-two
    scales the multiplier is 1. The stage has no register: the column's accumulator register feeds it and
    the consumer (activation buffer, range check) latches `out`, so it adds no cycle to the array's schedule.

    Parameters
    ----------
    acc_bits : int
        Accumulator width, 2..64 (two's complement).
    multiplier_bits : int
        Width of the unsigned multiplier M, 1..32.
    shift_bits : int
        Width of the two's complement shift s, 2..8 (s in -2**(shift_bits-1)..2**(shift_bits-1) - 1).
    out_bits : int
        Output code width, 2..32.
    relu : bool
        Apply ReLU and produce an unsigned code (default), or keep the sign and produce a signed code.
    multiplier : Multiplier
        Builds acc * M; `DSPMultiplier()` by default, `hw.pe.LUTMultiplier()` keeps it out of DSP blocks.

    Members
    -------
    acc : In(signed(acc_bits))
    multiplier : In(unsigned(multiplier_bits)), the layer's (channel's) M.
    shift : In(signed(shift_bits)), the layer's (channel's) s.
    out : Out(unsigned(out_bits)) with `relu`, else Out(signed(out_bits)).
    """

    def __init__(self, acc_bits: int, multiplier_bits: int, shift_bits: int, out_bits: int, *,
                 relu: bool = True, multiplier: Multiplier | None = None) -> None:
        self._acc_bits = _width("acc_bits", acc_bits, 2, 64)
        self._multiplier_bits = _width("multiplier_bits", multiplier_bits, 1, 32)
        self._shift_bits = _width("shift_bits", shift_bits, 2, 8)
        out_bits = _width("out_bits", out_bits, 2, 32)
        if not isinstance(relu, bool):
            raise TypeError(f"Requantizer relu must be a bool, not {relu!r}")
        if multiplier is not None and not callable(multiplier):
            raise TypeError(f"Requantizer multiplier must be callable as multiplier(a, b), not {multiplier!r}")
        self._relu = relu
        self._out_shape: Shape = unsigned(out_bits) if relu else signed(out_bits)
        self._multiply: Multiplier = multiplier if multiplier is not None else DSPMultiplier()
        super().__init__({
            "acc": In(signed(self._acc_bits)),
            "multiplier": In(unsigned(self._multiplier_bits)),
            "shift": In(signed(self._shift_bits)),
            "out": Out(self._out_shape),
        })

    @property
    def acc_bits(self) -> int:
        return self._acc_bits

    @property
    def multiplier_bits(self) -> int:
        return self._multiplier_bits

    @property
    def shift_bits(self) -> int:
        return self._shift_bits

    @property
    def out_shape(self) -> Shape:
        return self._out_shape

    @property
    def relu(self) -> bool:
        return self._relu

    @property
    def qrange(self) -> tuple[int, int]:
        """Return (qmin, qmax), the output code's range that `out` is clamped to."""
        shape = self._out_shape
        if shape.signed:
            return -(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1
        return 0, (1 << shape.width) - 1

    def elaborate(self, platform: object) -> Module:
        m = Module()
        # Past ReLU the accumulator is non-negative: dropping its sign bit keeps an unsigned multiply.
        source = Mux(self.acc < 0, 0, self.acc)[:self._acc_bits - 1] if self._relu else self.acc
        product = self._multiply(source, self.multiplier)
        # Any nonzero product shifted left out_bits places lies outside (qmin, qmax), so cap the shift there.
        scaled = shift_round_half_even(product, self.shift, self._out_shape.width)
        qmin, qmax = self.qrange
        m.d.comb += self.out.eq(Mux(scaled > qmax, qmax, Mux(scaled < qmin, qmin, scaled)))
        return m
