"""The range-check unit: on a column's output after requantization, catch a value outside the layer's
profiled bounds and correct it (DESIGN §5, protection `clip` and `zero`), or only flag it (`sed`).

What to do with an out-of-range value is a swappable part (`RangeMode`): `ClipToBounds` replaces it by the
nearer bound (the paper's unit), `ZeroOutOfRange` by 0 (Ranger-style), `FlagOnly` leaves it (a symptom-based
error detector: only the `detected` flag says anything). The bounds are input ports loaded per layer, so one
unit serves every layer. `MODES` are the array's (`hw.arrayconfig.PROTECTIONS`); `MACHINE_MODES` what
`hw.machine.Machine` builds, by the engine's check mode (`dsetool.protect.check.MODES`).
"""

from __future__ import annotations

from typing import Protocol

from amaranth.hdl import Module, Mux, Shape, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out


class RangeMode(Protocol):
    """Build the corrected value from the checked value, its bounds and which side it left them on."""

    def __call__(self, value: Value, lo: Value, hi: Value, below: Value, above: Value) -> Value: ...


class ClipToBounds:
    """Replace a value below `lo` by `lo` and one above `hi` by `hi` (the paper's clip)."""

    def __call__(self, value: Value, lo: Value, hi: Value, below: Value, above: Value) -> Value:
        return Mux(below, lo, Mux(above, hi, value))


class ZeroOutOfRange:
    """Replace any out-of-range value by 0, whether or not 0 lies within the bounds (Ranger)."""

    def __call__(self, value: Value, lo: Value, hi: Value, below: Value, above: Value) -> Value:
        return Mux(below | above, 0, value)


class FlagOnly:
    """Leave every value as it is: the check only raises `detected` (SED)."""

    def __call__(self, value: Value, lo: Value, hi: Value, below: Value, above: Value) -> Value:
        return value


MODES: dict[str, RangeMode] = {"clip": ClipToBounds(), "zero": ZeroOutOfRange()}  # ArrayConfig.protection
MACHINE_MODES: dict[str, RangeMode] = {**MODES, "detect": FlagOnly()}   # MachineShape.check


def _shape(what: str, shape: object) -> Shape:
    try:
        cast = Shape.cast(shape)
    except TypeError:
        raise TypeError(f"{what} shape must be a shape-castable object, not {shape!r}") from None
    if cast.width < 1:
        raise ValueError(f"{what} shape must be at least 1 bit wide, not {shape!r}")
    return cast


def _mode(what: str, mode: RangeMode | None) -> RangeMode:
    if mode is not None and not callable(mode):
        raise TypeError(f"{what} mode must be callable as mode(value, lo, hi, below, above), not {mode!r}")
    return mode if mode is not None else ClipToBounds()


class RangeCheck(wiring.Component):
    """Check one value against [lo, hi] and correct it when outside; combinational.

    `detected` is 1 exactly when `value` < `lo` or `value` > `hi`; `out` is then the mode's correction, else
    `value` unchanged. Values equal to a bound are in range. With `lo` > `hi` every value is detected (and
    clipping gives `lo` to values below `lo`, `hi` to the rest): loading lo <= hi is the driver's job.

    Parameters
    ----------
    shape : shape-castable
        Shape of the checked code (the requantizer's output shape), e.g. `unsigned(8)`.
    mode : RangeMode
        The correction; `ClipToBounds()` by default, `ZeroOutOfRange()` for Ranger-style zeroing.

    Members
    -------
    value : In(shape)
    lo : In(shape), the layer's lower bound.
    hi : In(shape), the layer's upper bound.
    out : Out(shape), the corrected value.
    detected : Out(1)
    """

    def __init__(self, shape: object, *, mode: RangeMode | None = None) -> None:
        self._shape = _shape("Range check", shape)
        self._mode = _mode("Range check", mode)
        super().__init__({
            "value": In(self._shape),
            "lo": In(self._shape),
            "hi": In(self._shape),
            "out": Out(self._shape),
            "detected": Out(1),
        })

    @property
    def shape(self) -> Shape:
        return self._shape

    @property
    def mode(self) -> RangeMode:
        return self._mode

    def elaborate(self, platform: object) -> Module:
        m = Module()
        below, above = self.value < self.lo, self.value > self.hi
        m.d.comb += self.out.eq(self._mode(self.value, self.lo, self.hi, below, above))
        m.d.comb += self.detected.eq(below | above)
        return m


class RangeCheckRow(wiring.Component):
    """Check the C column outputs of the array against one per-layer bound pair; combinational.

    Column c behaves as a `RangeCheck` (submodule `check_c`) on `value[c]`, giving `out[c]` and `detected[c]`.

    Parameters
    ----------
    shape : shape-castable
        Shape of each column's code.
    cols : int
        Number of columns, at least 1.
    mode : RangeMode
        As for `RangeCheck`; every column uses the same one.

    Members
    -------
    value : In(shape).array(cols)
    lo : In(shape)
    hi : In(shape)
    out : Out(shape).array(cols)
    detected : Out(1).array(cols)

    `checks[c]` is column c's `RangeCheck`.
    """

    def __init__(self, shape: object, cols: int, *, mode: RangeMode | None = None) -> None:
        shape = _shape("Range check row", shape)
        if not isinstance(cols, int) or isinstance(cols, bool) or cols < 1:
            raise ValueError(f"Range check row cols must be a positive integer, not {cols!r}")
        mode = _mode("Range check row", mode)
        self.checks = [RangeCheck(shape, mode=mode) for _ in range(cols)]
        super().__init__({
            "value": In(shape).array(cols),
            "lo": In(shape),
            "hi": In(shape),
            "out": Out(shape).array(cols),
            "detected": Out(1).array(cols),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        for c, check in enumerate(self.checks):
            m.submodules[f"check_{c}"] = check
            m.d.comb += [
                check.value.eq(self.value[c]),
                check.lo.eq(self.lo),
                check.hi.eq(self.hi),
                self.out[c].eq(check.out),
                self.detected[c].eq(check.detected),
            ]
        return m
