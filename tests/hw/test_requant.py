"""The requantizer in simulation against the engine's integer output stage (`dsetool.engine.ops`), bit for bit."""

from __future__ import annotations

import gc
import re
from collections.abc import Callable
from fractions import Fraction

import pytest
import torch
from amaranth.back import rtlil
from amaranth.hdl import Module, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dsetool.engine import ops
from hw.pe import LUTMultiplier
from hw.requant import PIPELINE_STAGES, Requantizer, decode_shift, shift_and_round_bit
from tests.hw.drivers import CombProbe


def _unsigned8() -> Requantizer:
    return Requantizer(16, 8, 6, 8)


def _signed6() -> Requantizer:
    return Requantizer(14, 6, 6, 6, relu=False, multiplier=LUTMultiplier())


@pytest.fixture(scope="module")
def unsigned8() -> tuple[Requantizer, CombProbe]:
    dut = _unsigned8()
    return dut, CombProbe(dut)


@pytest.fixture(scope="module")
def signed6() -> tuple[Requantizer, CombProbe]:
    dut = _signed6()
    return dut, CombProbe(dut)


@pytest.fixture(scope="module", params=["unsigned8", "signed6"])
def requant(request: pytest.FixtureRequest) -> tuple[Requantizer, CombProbe]:
    return request.getfixturevalue(request.param)


def _run(requant: tuple[Requantizer, CombProbe], acc: int, multiplier: int, shift: int) -> int:
    dut, probe = requant
    (out,) = probe([(dut.acc, acc), (dut.multiplier, multiplier), (dut.shift, shift)], [dut.out])
    return int(out)


def _engine(dut: Requantizer, acc: int, multiplier: int, shift: int) -> int:
    """Return the engine's code: fixed_point_requantize_int, or without ReLU its shift-round-clamp core."""
    qmin, qmax = dut.qrange
    value = torch.tensor([acc], dtype=torch.int64)
    if dut.relu:
        return int(ops.fixed_point_requantize_int(value, multiplier, shift, qmin, qmax)[0])
    return int(ops.shift_round_half_even(value * multiplier, shift).clamp(qmin, qmax)[0])


def _port_range(bits: int, signed: bool) -> st.SearchStrategy[int]:
    return st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else st.integers(0, (1 << bits) - 1)


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_matches_engine_fixed_point(requant: tuple[Requantizer, CombProbe], data: st.DataObject) -> None:
    dut = requant[0]
    acc = data.draw(_port_range(dut.acc_bits, True), label="acc")
    multiplier = data.draw(_port_range(dut.multiplier_bits, False), label="multiplier")
    shift = data.draw(st.one_of(_port_range(dut.shift_bits, True), st.integers(-3, 12)), label="shift")
    assert _run(requant, acc, multiplier, shift) == _engine(dut, acc, multiplier, shift)


@pytest.fixture(scope="module")
def shift_only() -> tuple[Requantizer, CombProbe]:
    dut = Requantizer(8, 1, 8, 4, relu=False)
    return dut, CombProbe(dut)


@settings(max_examples=60, deadline=None)
@given(acc=st.integers(-128, 127), shift=st.integers(-8, 127))
def test_a_shift_field_wider_than_the_value_is_capped_exactly(shift_only: tuple[Requantizer, CombProbe], acc: int,
                                                              shift: int) -> None:
    """An 8-bit shift field over an 8-bit accumulator (a pure shift, M = 1): every right shift up to 127
    places gives the engine's code, though the shifter spans only the value's width plus one."""
    assert _run(shift_only, acc, 1, shift) == _engine(shift_only[0], acc, 1, shift)


@pytest.mark.parametrize(("acc", "multiplier", "shift", "expected"), [
    (3, 1, 1, 2), (5, 1, 1, 2), (6, 1, 2, 2), (10, 1, 2, 2), (11, 1, 2, 3), (7, 3, 1, 10), (9, 3, 1, 14),
    (-7, 3, 0, 0), (1, 1, -7, 128), (1, 1, -8, 255), (2, 1, -32, 255), (255, 255, 0, 255),
    (1 << 14, 255, 31, 0), ((1 << 15) - 1, 255, 23, 1), (0, 255, -32, 0), (1, 1, -9, 255), (1, 1, -32, 255),
])
def test_ties_round_to_even_and_codes_saturate(unsigned8: tuple[Requantizer, CombProbe], acc: int, multiplier: int,
                                               shift: int, expected: int) -> None:
    assert _run(unsigned8, acc, multiplier, shift) == expected == _engine(unsigned8[0], acc, multiplier, shift)


@pytest.mark.parametrize(("acc", "multiplier", "shift", "expected"), [
    (-5, 1, 1, -2), (-7, 1, 1, -4), (-3, 1, 1, -2), (-1, 1, -5, -32), (-1, 1, -6, -32), (-1, 1, -32, -32),
    (1, 1, -4, 16), (1, 1, -5, 31), (1, 1, -32, 31), (-(1 << 13), 63, 31, 0), (-(1 << 13), 63, 14, -32),
])
def test_signed_output_rounds_and_saturates_both_ways(signed6: tuple[Requantizer, CombProbe], acc: int,
                                                      multiplier: int, shift: int, expected: int) -> None:
    assert _run(signed6, acc, multiplier, shift) == expected == _engine(signed6[0], acc, multiplier, shift)


@settings(max_examples=40, deadline=None)
@given(acc=st.integers(-(1 << 15), (1 << 15) - 1), numerator=st.integers(1, 1 << 10),
       exponent=st.integers(0, 20))
@example(acc=(1 << 15) - 1, numerator=1 << 10, exponent=0)  # M * 2**-s = 1024 needs a left shift
def test_executor_constants_give_the_float_engine_codes(unsigned8: tuple[Requantizer, CombProbe], acc: int,
                                                        numerator: int, exponent: int) -> None:
    """(M, s) from `fixed_point_multiplier`, as the executor loads them, give the codes of `ops.requantize`."""
    multiplier, shift = ops.fixed_point_multiplier(Fraction(numerator, 1 << exponent), 8)
    dut, probe = unsigned8
    factor = multiplier * 2.0**-shift
    expected = ops.requantize(torch.tensor([float(acc)], dtype=torch.float64), factor, *dut.qrange)
    assert _run((dut, probe), acc, multiplier, shift) == int(expected[0])


def test_lut_multiplier_leaves_no_mul_cell() -> None:
    assert "$mul" not in rtlil.convert(_signed6(), name="top", emit_src=False)
    assert "$mul" in rtlil.convert(_unsigned8(), name="top", emit_src=False)


def test_latency_is_zero_unless_pipelined(unsigned8: tuple[Requantizer, CombProbe]) -> None:
    assert unsigned8[0].latency == 0
    piped = Requantizer(16, 8, 6, 8, pipelined=True)
    assert piped.latency == PIPELINE_STAGES == 3
    assert all(f"\\{name}" in rtlil.convert(piped, name="top", emit_src=False) for name in ("product", "base", "up"))


def test_ports_and_ranges(unsigned8: tuple[Requantizer, CombProbe], signed6: tuple[Requantizer, CombProbe]) -> None:
    relu, signed = unsigned8[0], signed6[0]
    assert relu.acc.shape().signed and not relu.multiplier.shape().signed and relu.shift.shape().signed
    assert (relu.qrange, relu.out.shape().signed) == ((0, 255), False)
    assert (signed.qrange, signed.out.shape().signed) == ((-32, 31), True)


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda: Requantizer(1, 8, 6, 8), ValueError, "Requantizer acc_bits must be an integer in 2..64, not 1"),
    (lambda: Requantizer(16, 0, 6, 8), ValueError, "Requantizer multiplier_bits must be an integer in 1..32, not 0"),
    (lambda: Requantizer(16, 8, 9, 8), ValueError, "Requantizer shift_bits must be an integer in 2..8, not 9"),
    (lambda: Requantizer(16, 8, 6, True), ValueError,
     "Requantizer out_bits must be an integer in 2..32, not True"),
    (lambda: Requantizer(16, 8, 6, 8, relu=1), TypeError,  # type: ignore[arg-type]
     "Requantizer relu must be a bool, not 1"),
    (lambda: Requantizer(16, 8, 6, 8, multiplier="lut"), TypeError,  # type: ignore[arg-type]
     "Requantizer multiplier must be callable as multiplier(a, b), not 'lut'"),
    (lambda: Requantizer(16, 8, 6, 8, pipelined=3), TypeError,  # type: ignore[arg-type]
     "Requantizer pipelined must be a bool, not 3"),
])
@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_constructor_errors(call: Callable[[], object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        call()
    gc.collect()


class _BothMasks(wiring.Component):
    """The rounding shifter with the sticky mask made by a shift and by a thermometer, side by side."""

    def __init__(self) -> None:
        super().__init__({"value": In(signed(7)), "shift": In(signed(8)), "shifted": Out(signed(16)).array(2),
                          "up": Out(1).array(2)})

    def elaborate(self, platform: object) -> Module:
        m = Module()
        controls = decode_shift(self.shift, 8)
        for i, thermometer in enumerate((False, True)):
            base, up = shift_and_round_bit(self.value, controls, thermometer=thermometer)
            m.d.comb += [self.shifted[i].eq(base), self.up[i].eq(up)]
        return m


@pytest.fixture(scope="module")
def both_masks() -> tuple[_BothMasks, CombProbe]:
    dut = _BothMasks()
    return dut, CombProbe(dut)


@settings(max_examples=150, deadline=None)
@given(value=st.integers(-64, 63), shift=st.integers(-128, 127))
def test_the_thermometer_mask_rounds_as_the_shifted_one(both_masks: tuple[_BothMasks, CombProbe], value: int,
                                                        shift: int) -> None:
    dut, probe = both_masks
    wide, narrow, wide_up, narrow_up = probe([(dut.value, value), (dut.shift, shift)],
                                             [dut.shifted[0], dut.shifted[1], dut.up[0], dut.up[1]])
    assert (wide, wide_up) == (narrow, narrow_up)
