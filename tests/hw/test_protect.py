"""The range-check unit and row in simulation against a plain-Python statement of clip and zero."""

from __future__ import annotations

import gc
import re
from collections.abc import Callable

import pytest
from amaranth.back import rtlil
from amaranth.hdl import Mux, Shape, Value, signed, unsigned
from hypothesis import given, settings
from hypothesis import strategies as st

from hw.arrayconfig import PROTECTIONS
from hw.protect import MODES, ClipToBounds, RangeCheck, RangeCheckRow, ZeroOutOfRange
from tests.hw.drivers import CombProbe

SHAPES = {"u8": unsigned(8), "s5": signed(5)}


def expected(mode: str, value: int, lo: int, hi: int) -> tuple[int, int]:
    """Return (out, detected) as the protection is specified (DESIGN §5)."""
    if lo <= value <= hi:
        return value, 0
    return (lo if value < lo else hi) if mode == "clip" else 0, 1


def _range(shape: Shape) -> tuple[int, int]:
    if shape.signed:
        return -(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1
    return 0, (1 << shape.width) - 1


@st.composite
def case(draw: st.DrawFn, shape: Shape, count: int = 1) -> tuple[list[int], int, int]:
    """Draw bounds lo <= hi (often equal) and values that favour the bounds and their neighbours."""
    low, high = _range(shape)
    lo = draw(st.integers(low, high))
    hi = draw(st.one_of(st.just(lo), st.integers(lo, high)))
    near = [v for v in (lo - 1, lo, hi, hi + 1) if low <= v <= high]
    values = draw(st.lists(st.one_of(st.integers(low, high), st.sampled_from(near)), min_size=count, max_size=count))
    return values, lo, hi


@pytest.fixture(scope="module", params=[(m, s) for m in MODES for s in SHAPES], ids="-".join)
def check(request: pytest.FixtureRequest) -> tuple[str, RangeCheck, CombProbe]:
    mode, shape = request.param
    dut = RangeCheck(SHAPES[shape], mode=MODES[mode])
    return mode, dut, CombProbe(dut)


def _run(check: tuple[str, RangeCheck, CombProbe], value: int, lo: int, hi: int) -> tuple[int, int]:
    _, dut, probe = check
    out, detected = probe([(dut.value, value), (dut.lo, lo), (dut.hi, hi)], [dut.out, dut.detected])
    return int(out), int(detected)


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_range_check_matches_spec(check: tuple[str, RangeCheck, CombProbe], data: st.DataObject) -> None:
    mode, dut, _ = check
    (value,), lo, hi = data.draw(case(dut.shape))
    assert _run(check, value, lo, hi) == expected(mode, value, lo, hi)


@pytest.mark.parametrize(("lo", "hi"), [(3, 3), (-16, 15), (-16, -16), (15, 15), (-4, 6), (0, 0)])
def test_bounds_are_inclusive(check: tuple[str, RangeCheck, CombProbe], lo: int, hi: int) -> None:
    mode, dut, _ = check
    low, high = _range(dut.shape)
    lo, hi = max(low, min(lo, high)), max(low, min(hi, high))
    for value in sorted({low, lo - 1, lo, hi, hi + 1, high} & set(range(low, high + 1))):
        assert _run(check, value, lo, hi) == expected(mode, value, lo, hi), value


def test_zero_mode_zeroes_even_when_zero_is_out_of_range() -> None:
    dut = RangeCheck(unsigned(4), mode=ZeroOutOfRange())
    assert _run(("zero", dut, CombProbe(dut)), 2, 5, 9) == (0, 1)


def test_modes_cover_the_configurable_protections() -> None:
    assert set(MODES) == set(PROTECTIONS) - {"none"}
    assert isinstance(MODES["clip"], ClipToBounds) and isinstance(MODES["zero"], ZeroOutOfRange)
    default = RangeCheck(unsigned(4))
    assert isinstance(default.mode, ClipToBounds)  # the paper's unit by default
    rtlil.convert(default, name="top", emit_src=False)


def test_injected_mode_builds_the_correction() -> None:
    def saturate_high(value: Value, lo: Value, hi: Value, below: Value, above: Value) -> Value:
        return Mux(below | above, hi, value)

    dut = RangeCheck(unsigned(4), mode=saturate_high)
    probe = CombProbe(dut)
    assert [_run(("custom", dut, probe), v, 4, 9) for v in (2, 4, 12)] == [(9, 1), (4, 0), (9, 1)]


@pytest.fixture(scope="module", params=list(MODES))
def row(request: pytest.FixtureRequest) -> tuple[str, RangeCheckRow, CombProbe]:
    dut = RangeCheckRow(signed(5), 3, mode=MODES[request.param])
    return request.param, dut, CombProbe(dut)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_row_checks_every_column_against_shared_bounds(row: tuple[str, RangeCheckRow, CombProbe],
                                                       data: st.DataObject) -> None:
    mode, dut, probe = row
    values, lo, hi = data.draw(case(signed(5), count=3))
    inputs = [(dut.lo, lo), (dut.hi, hi), *zip(dut.value, values, strict=True)]
    got = probe(inputs, [*dut.out, *dut.detected])
    want = [expected(mode, v, lo, hi) for v in values]
    assert [int(x) for x in got] == [out for out, _ in want] + [det for _, det in want]


def test_row_keeps_one_check_per_column() -> None:
    dut = RangeCheckRow(unsigned(8), 4, mode=ZeroOutOfRange())
    assert len(dut.checks) == 4 and all(isinstance(c.mode, ZeroOutOfRange) for c in dut.checks)
    assert (len(dut.value), len(dut.out), len(dut.detected)) == (4, 4, 4)
    netlist = rtlil.convert(dut, name="top", emit_src=False)
    assert all(f"top.check_{c}" in netlist for c in range(4))


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda: RangeCheck("u8"), TypeError, "Range check shape must be a shape-castable object, not 'u8'"),
    (lambda: RangeCheck(0), ValueError, "Range check shape must be at least 1 bit wide, not 0"),
    (lambda: RangeCheck(unsigned(8), mode="clip"), TypeError,  # type: ignore[arg-type]
     "Range check mode must be callable as mode(value, lo, hi, below, above), not 'clip'"),
    (lambda: RangeCheckRow(unsigned(8), 0), ValueError, "Range check row cols must be a positive integer, not 0"),
    (lambda: RangeCheckRow(unsigned(8), 2.0), ValueError,  # type: ignore[arg-type]
     "Range check row cols must be a positive integer, not 2.0"),
    (lambda: RangeCheckRow(None, 2), TypeError, "Range check row shape must be a shape-castable object, not None"),
    (lambda: RangeCheckRow(signed(4), 2, mode=3), TypeError,  # type: ignore[arg-type]
     "Range check row mode must be callable as mode(value, lo, hi, below, above), not 3"),
])
@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_constructor_errors(call: Callable[[], object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        call()
    gc.collect()
