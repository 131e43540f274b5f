"""The output stage of one array column: scale an accumulator to an activation code, as the engine does.

`Requantizer` computes, bit for bit, what `dsetool.engine.ops.fixed_point_requantize_int` computes:
clamp(round_half_even(relu(acc) * M / 2**s), qmin, qmax). M and s are input ports, not build-time constants,
so one array serves every layer: the driver loads each layer's (per-channel) constants into registers.
Combinational for checking it against the engine, or pipelined (`PIPELINE_STAGES` registers: product,
shifted value, code) so that it stays off the array's critical path.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Shape, Signal, Value, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.pe import DSPMultiplier, Multiplier

PIPELINE_STAGES = 3  # registers of a pipelined Requantizer: after the multiply, the shift and the clamp


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
    base, up = shift_and_round_bit(value, decode_shift(shift, left_limit))
    return base + up


def decode_shift(shift: Value, left_limit: int) -> dict[str, Value]:
    """Return the controls of the shifter for a two's complement `shift`: whether it shifts left (`neg`), the
    right shift (`right`, 0 for a left one), the place of the rounding's half bit (`below` = right - 1, only
    read when right > 0) and the left shift capped at `left_limit` (`left`)."""
    right = Mux(shift > 0, shift, 0)[:len(shift) - 1]
    left_amount = -shift
    return {
        "neg": shift < 0,
        "right": right,
        "below": (right - 1)[:len(right)],
        "left": Mux(left_amount > left_limit, left_limit, left_amount)[:max(1, left_limit.bit_length())],
    }


def shift_and_round_bit(value: Value, shift: dict[str, Value], *, thermometer: bool = False
                        ) -> tuple[Value, Value]:
    """Return (base, up) with round_half_even(value / 2**shift) = base + up, given `decode_shift(shift)`.

    Split so that a pipeline can register the shifter's output before the +1 (and the clamp) of the rounding.
    The dropped bits are value mod 2**right: their top bit (the "half") is the value's bit right - 1, sign
    extended past its width, and they exceed one half when any bit below it (the "sticky" bits) is set.

    The sticky bits' mask is (1 << below) - 1, 2**len(below) bits wide before synthesis trims it; with
    `thermometer` it is built from len(value) comparisons instead (bit i set when i < below; the bits past
    the value's width are its sign, which its top bit already holds), the same results. A compiled
    simulation computes the wide shift literally in every cycle, so the accelerator, simulated whole,
    uses the thermometer; the datapath keeps the shift, so its netlists stay the ones measured.
    """
    right, below = shift["right"], shift["below"]
    kept = value >> right
    half_bit = (value >> below)[0]
    if thermometer:
        mask = Cat(*(below > i for i in range(len(value))))
        sticky = (value.as_unsigned() & mask) != 0
    else:
        sticky = (value & ((Value.cast(1) << below) - 1)) != 0
    up = (right != 0) & half_bit & (sticky | kept[0])
    return Mux(shift["neg"], value << shift["left"], kept), Mux(shift["neg"], 0, up)


def _stage(m: Module, value: Value, name: str, registered: bool) -> Value:
    """Return `value` through a register named `name` when `registered`, else unchanged."""
    if not registered:
        return value
    reg = Signal(value.shape(), name=name)
    m.d.sync += reg.eq(value)
    return reg


class Requantizer(wiring.Component):
    """Requantize one column's accumulator to an activation code; combinational, or pipelined.

    out = clamp(round_half_even(relu(acc) * multiplier / 2**shift), qmin, qmax), where (qmin, qmax) is the
    full range of the output code: 0..2**out_bits - 1 with `relu` (the post-ReLU unsigned code), else the
    two's complement range of `out_bits` with no ReLU. A negative `shift` shifts left; for power-of-two
    scales the multiplier is 1.

    Combinational by default (`latency` 0): `out` follows `acc` in the same cycle. With `pipelined`,
    `latency` is `PIPELINE_STAGES` (3): the `out` register holds the code of the `acc` presented 3 clock
    edges earlier, through a register after the multiply (`product`, and the decoded `shift` beside it), one
    after the shifter (`base`, `up`) and the code itself. `multiplier` and `shift` are sampled on the same
    edge as `acc`, so each value is scaled by the constants presented with it. A new `acc` may enter every
    cycle.

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
    pipelined : bool
        Register the multiply, the shift and the code (latency 3), or not (latency 0, the default).

    Members
    -------
    acc : In(signed(acc_bits))
    multiplier : In(unsigned(multiplier_bits)), the layer's (channel's) M.
    shift : In(signed(shift_bits)), the layer's (channel's) s.
    out : Out(unsigned(out_bits)) with `relu`, else Out(signed(out_bits)).
    """

    def __init__(self, acc_bits: int, multiplier_bits: int, shift_bits: int, out_bits: int, *,
                 relu: bool = True, multiplier: Multiplier | None = None, pipelined: bool = False) -> None:
        self._acc_bits = _width("acc_bits", acc_bits, 2, 64)
        self._multiplier_bits = _width("multiplier_bits", multiplier_bits, 1, 32)
        self._shift_bits = _width("shift_bits", shift_bits, 2, 8)
        out_bits = _width("out_bits", out_bits, 2, 32)
        if not isinstance(relu, bool):
            raise TypeError(f"Requantizer relu must be a bool, not {relu!r}")
        if not isinstance(pipelined, bool):
            raise TypeError(f"Requantizer pipelined must be a bool, not {pipelined!r}")
        if multiplier is not None and not callable(multiplier):
            raise TypeError(f"Requantizer multiplier must be callable as multiplier(a, b), not {multiplier!r}")
        self._relu = relu
        self._pipelined = pipelined
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
    def latency(self) -> int:
        """Return the clock edges from `acc` to `out`: `PIPELINE_STAGES` when pipelined, else 0."""
        return PIPELINE_STAGES if self._pipelined else 0

    @property
    def qrange(self) -> tuple[int, int]:
        """Return (qmin, qmax), the output code's range that `out` is clamped to."""
        shape = self._out_shape
        if shape.signed:
            return -(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1
        return 0, (1 << shape.width) - 1

    def elaborate(self, platform: object) -> Module:
        m = Module()
        piped = self._pipelined
        # Past ReLU the accumulator is non-negative: dropping its sign bit keeps an unsigned multiply.
        source = Mux(self.acc < 0, 0, self.acc)[:self._acc_bits - 1] if self._relu else self.acc
        product = _stage(m, self._multiply(source, self.multiplier), "product", piped)
        # Any nonzero product shifted left out_bits places lies outside (qmin, qmax), so cap the shift there.
        # The shift is decoded beside the multiply, so only the shifter itself follows the product register.
        controls = decode_shift(self.shift, self._out_shape.width)
        controls = {name: _stage(m, value, f"shift_{name}", piped) for name, value in controls.items()}
        base, up = shift_and_round_bit(product, controls)
        base, up = _stage(m, base, "base", piped), _stage(m, up, "up", piped)
        # Clamp base + up by comparing base alone (the +1 moves it past a bound only from the bound itself),
        # so the comparators run beside the narrow adder instead of after a full-width one.
        qmin, qmax = self.qrange
        above = (base > qmax) | ((base == qmax) & up)
        below = (base < qmin) & ~((base == qmin - 1) & up)
        code = (base + up)[:self._out_shape.width]
        code = Mux(above, qmax, Mux(below, qmin, code))
        if piped:
            m.d.sync += self.out.eq(code)
        else:
            m.d.comb += self.out.eq(code)
        return m
