"""The weight-stationary processing element and its swappable multipliers."""

from __future__ import annotations

from typing import Protocol

from amaranth.hdl import Module, Mux, Shape, Signal, Value, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.arrayconfig import ArrayConfig


class Multiplier(Protocol):
    """Build `a * b` as logic: the seam where a DSP multiply or a LUT multiply is chosen."""

    def __call__(self, a: Value, b: Value) -> Value: ...


class DSPMultiplier:
    """Multiply with `*`, which Yosys maps to a DSP block."""

    def __call__(self, a: Value, b: Value) -> Value:
        return a * b


class LUTMultiplier:
    """Multiply by shift-and-add of partial products, so Yosys sees adders and muxes and no `$mul` cell.

    A two's complement `b` weighs its top bit -2^(w-1), so that partial product is subtracted.
    """

    def __call__(self, a: Value, b: Value) -> Value:
        top = len(b) - 1
        total: Value = Mux(b[0], a, 0)
        for i in range(1, len(b)):
            term = Mux(b[i], a << i, 0)
            total = total - term if i == top and b.shape().signed else total + term
        return total


MULTIPLIERS: dict[str, Multiplier] = {"dsp": DSPMultiplier(), "lut": LUTMultiplier()}


def _width(name: str, value: object, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"PE {name} must be an integer in {lo}..{hi}, not {value!r}")
    return value


class _ProcessingElement(wiring.Component):
    """Validated widths, the multiplier and the named registers shared by both PEs."""

    def __init__(self, act_bits: int, weight_bits: int, acc_bits: int, *, act_signed: bool = False,
                 multiplier: Multiplier | None = None, fault_masks: bool = False) -> None:
        if not isinstance(act_signed, bool):
            raise TypeError(f"PE act_signed must be a bool, not {act_signed!r}")
        self._act_shape: Shape = (signed if act_signed else unsigned)(_width("act_bits", act_bits, 2, 16))
        self._weight_bits = _width("weight_bits", weight_bits, 2, 16)
        self._acc_bits = _width("acc_bits", acc_bits, 2, 64)
        if multiplier is not None and not callable(multiplier):
            raise TypeError(f"PE multiplier must be callable as multiplier(a, b), not {multiplier!r}")
        self._multiplier: Multiplier = multiplier if multiplier is not None else DSPMultiplier()
        self.fault_masks = fault_masks
        super().__init__({
            "act_in": In(self._act_shape),
            "act_out": Out(self._act_shape),
            "w_in": In(signed(self._weight_bits)),
            "w_out": Out(signed(self._weight_bits)),
            **self._controls(),
            "psum_out": Out(signed(self._acc_bits)),
            **(self._fault_members() if fault_masks else {}),
        })

    def _controls(self) -> dict[str, object]:
        raise NotImplementedError

    def _fault_members(self) -> dict[str, object]:
        """The fault masks of a simulation build (`fault_masks`): bits flipped this cycle in the operand
        the PE multiplies (`fault_act`), its weight register (`fault_weight`) and the sum it latches
        (`fault_psum`); all zero but on a fault's cycle."""
        return {"fault_act": In(self._act_shape.width), "fault_weight": In(self._weight_bits),
                "fault_psum": In(self._acc_bits)}

    @classmethod
    def from_config(cls, config: ArrayConfig, acc_bits: int, *, fault_masks: bool = False) -> _ProcessingElement:
        """Return a PE with the config's operand widths, signedness and multiplier."""
        return cls(config.act_bits, config.weight_bits, acc_bits, act_signed=config.act_signed,
                   multiplier=MULTIPLIERS[config.multiplier], fault_masks=fault_masks)

    def _operand(self) -> Value:
        """Return the activation the PE multiplies and passes on: `act_in`, with `fault_act`'s bits flipped
        in a simulation build."""
        if not self.fault_masks:
            return self.act_in
        flipped = (self.act_in.as_unsigned() ^ self.fault_act)[:self._act_shape.width]
        return flipped.as_signed() if self._act_shape.signed else flipped

    def _sum(self, total: Value) -> Value:
        """Return the partial sum the PE latches: `total`, with `fault_psum`'s bits flipped in a simulation
        build (the register holds the flipped sum for one cycle, as a flipped flip-flop would)."""
        if not self.fault_masks:
            return total
        return (total.as_unsigned()[:self._acc_bits] ^ self.fault_psum).as_signed()

    @staticmethod
    def _flipped(register: Value, mask: Value) -> Value:
        return (register.as_unsigned() ^ mask).as_signed()

    @property
    def act_shape(self) -> Shape:
        return self._act_shape

    @property
    def weight_bits(self) -> int:
        return self._weight_bits

    @property
    def acc_bits(self) -> int:
        return self._acc_bits

    @property
    def act(self) -> Value:
        return self.act_out

    @property
    def weight(self) -> Value:
        return self.w_out

    @property
    def psum(self) -> Value:
        return self.psum_out


class WSProcessingElement(_ProcessingElement):
    """One weight-stationary multiply-accumulate cell.

    Each clock, the activation on `act_in` is latched into the `act` register (passed right) and
    `psum_in + act_in * weight` into the `psum` register (passed down), both wrapping at their widths.
    While `w_load` is high the `weight` register latches `w_in` instead of holding (a column of PEs
    chains `w_out` to the next `w_in`, so weights shift down one row per load cycle).

    Parameters
    ----------
    act_bits, weight_bits, acc_bits : int
        Register widths: activation 2..16, weight 2..16 (two's complement), partial sum 2..64 (two's complement).
    act_signed : bool
        Activations are two's complement rather than unsigned.
    multiplier : Multiplier
        Builds the product; `DSPMultiplier()` by default, `LUTMultiplier()` keeps it out of DSP blocks.

    Members
    -------
    act_in : In(act shape)
    act_out : Out(act shape), the `act` register.
    w_in : In(signed(weight_bits))
    w_out : Out(signed(weight_bits)), the `weight` register.
    w_load : In(1)
    psum_in : In(signed(acc_bits))
    psum_out : Out(signed(acc_bits)), the `psum` register.

    `act`, `weight` and `psum` name the three registers, for testbenches and fault injection.

    With `fault_masks` (a simulation build), `fault_act` flips bits of the activation multiplied and
    passed on this cycle, `fault_psum` of the sum latched this cycle, and `fault_weight` of the weight
    register, for this cycle's product and from the next on (until a load overwrites it).
    """

    def _controls(self) -> dict[str, object]:
        return {"w_load": In(1), "psum_in": In(signed(self._acc_bits))}

    def elaborate(self, platform: object) -> Module:
        m = Module()
        act = self._operand()
        weight = self.w_out
        if self.fault_masks:
            weight = self._flipped(self.w_out, self.fault_weight)
            with m.If(self.fault_weight.any()):
                m.d.sync += self.w_out.eq(weight)
        m.d.sync += self.act_out.eq(act)
        m.d.sync += self.psum_out.eq(self._sum(self.psum_in + self._multiplier(act, weight)))
        with m.If(self.w_load):
            m.d.sync += self.w_out.eq(self.w_in)
        return m


class OSProcessingElement(_ProcessingElement):
    """One output-stationary multiply-accumulate cell.

    Each clock the activation on `act_in` is latched into the `act` register (passed right), the weight on
    `w_in` into the `weight` register (passed down), and `psum + act_in * w_in` into the `psum` register,
    which stays in place; with `start` high the old `psum` is dropped (the sum restarts at the product).

    Parameters are those of `WSProcessingElement`.

    Members
    -------
    act_in : In(act shape)
    act_out : Out(act shape), the `act` register.
    w_in : In(signed(weight_bits))
    w_out : Out(signed(weight_bits)), the `weight` register.
    start : In(1)
    psum_out : Out(signed(acc_bits)), the `psum` register (the output this PE accumulates).
    """

    def _controls(self) -> dict[str, object]:
        return {"start": In(1)}

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.d.sync += self.act_out.eq(self.act_in)
        m.d.sync += self.w_out.eq(self.w_in)
        product = self._multiplier(self.act_in, self.w_in)
        m.d.sync += self.psum_out.eq(Mux(self.start, 0, self.psum_out) + product)
        return m


class WSDoubleBufferPE(_ProcessingElement):
    """A weight-stationary cell with two weight registers (banks), for a machine that loads the next
    tile's weights while the current tile streams (`hw.array.WSDoubleBufferArray`).

    Each clock the activation on `act_in` is latched into the `act` register and its bank-select bit
    `sel_in` into `sel_out` (both passed right), and `psum_in + act_in * bank[sel_in]` into the `psum`
    register (passed down). While `w_load` is high, `w_in` is latched into the bank `w_bank` names (the
    other bank holds, so activations that name it are undisturbed).

    Members
    -------
    act_in, act_out, psum_in, psum_out : as `WSProcessingElement`.
    w_in : In(signed(weight_bits)) : the column's weight bus (broadcast to every row).
    w_out : Out(signed(weight_bits)) : bank 0. w_alt : Out(signed(weight_bits)) : bank 1.
    w_load : In(1) : this PE's row is being loaded. w_bank : In(1) : which bank it loads.
    sel_in : In(1); sel_out : Out(1) : the bank the activation on `act_in` multiplies with, registered.

    With `fault_masks`, as `WSProcessingElement`'s, and `fault_bank` says which bank `fault_weight` flips.
    """

    def _controls(self) -> dict[str, object]:
        return {"w_load": In(1), "w_bank": In(1), "sel_in": In(1), "sel_out": Out(1),
                "w_alt": Out(signed(self._weight_bits)), "psum_in": In(signed(self._acc_bits))}

    def _fault_members(self) -> dict[str, object]:
        return {**super()._fault_members(), "fault_bank": In(1)}

    def elaborate(self, platform: object) -> Module:
        m = Module()
        act = self._operand()
        banks = [self.w_out, self.w_alt]
        if self.fault_masks:
            for index, bank in enumerate(banks):
                hit = self.fault_weight.any() & (self.fault_bank == index)
                banks[index] = Mux(hit, self._flipped(bank, self.fault_weight), bank)
                with m.If(hit):
                    m.d.sync += bank.eq(banks[index])
        m.d.sync += [self.act_out.eq(act), self.sel_out.eq(self.sel_in)]
        weight = Mux(self.sel_in, banks[1], banks[0])
        m.d.sync += self.psum_out.eq(self._sum(self.psum_in + self._multiplier(act, weight)))
        with m.If(self.w_load & ~self.w_bank):
            m.d.sync += self.w_out.eq(self.w_in)
        with m.If(self.w_load & self.w_bank):
            m.d.sync += self.w_alt.eq(self.w_in)
        return m


class OSStreamPE(_ProcessingElement):
    """An output-stationary cell for tiles that stream back to back (the accelerator's,
    `hw.array.OSStreamArray`): each activation carries two flags, `first` (the tile's first product)
    and `last` (its last), passed right with it, so every cell switches tiles exactly when the new
    tile's wavefront reaches it.

    Each clock the activation, its flags and the weight are latched and passed on (act and flags right,
    weight down) and `total` = (0 if `first_in` else `psum`) + act_in * w_in goes into `psum`; with
    `last_in` it also goes into `shadow`, which holds the finished tile's sum while the next tile
    accumulates in `psum` (until the next tile's last product).

    Members
    -------
    act_in, act_out, w_in, w_out, psum_out : as `OSProcessingElement`.
    first_in, last_in : In(1); first_out, last_out : Out(1) : the flags of the activation on `act_in`,
        registered.
    shadow : Out(signed(acc_bits)) : the last finished tile's sum.

    With `fault_masks`: `fault_act` and `fault_weight` flip bits of the operands multiplied (and passed
    on) this cycle, `fault_psum` of the running sum latched this cycle (not of the shadow's copy), and
    `fault_shadow` of the shadow register, for this cycle's reads and from the next on (unless this
    cycle latches a new sum).
    """

    def _controls(self) -> dict[str, object]:
        return {"first_in": In(1), "first_out": Out(1), "last_in": In(1), "last_out": Out(1),
                "shadow": Out(signed(self._acc_bits))}

    def _fault_members(self) -> dict[str, object]:
        return {**super()._fault_members(), "fault_shadow": In(self._acc_bits)}

    def elaborate(self, platform: object) -> Module:
        m = Module()
        act = self._operand()
        weight = self._flipped(self.w_in, self.fault_weight) if self.fault_masks else self.w_in
        m.d.sync += [self.act_out.eq(act), self.w_out.eq(weight),
                     self.first_out.eq(self.first_in), self.last_out.eq(self.last_in)]
        total = Mux(self.first_in, 0, self.psum_out) + self._multiplier(act, weight)
        m.d.sync += self.psum_out.eq(self._sum(total))
        shadow = self.shadow
        if self.fault_masks:   # the register behind `shadow`, read through the flip
            shadow = Signal(signed(self._acc_bits), name="shadow_held")
            flipped = self._flipped(shadow, self.fault_shadow)
            m.d.comb += self.shadow.eq(flipped)
            with m.If(self.fault_shadow.any()):
                m.d.sync += shadow.eq(flipped)
        with m.If(self.last_in):
            m.d.sync += shadow.eq(total)
        return m
