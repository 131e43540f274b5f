"""The majority voter and the TMR wrapper in simulation: single faults are outvoted, double faults are not."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import pytest
from amaranth.back import rtlil
from amaranth.hdl import Module, Shape, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st

from hw.pe import WSProcessingElement
from hw.tmr import MajorityVoter, TripleModular
from tests.hw.drivers import CombProbe


def majority(a: int, b: int, c: int) -> int:
    return (a & b) | (a & c) | (b & c)


def _ints(shape: Shape) -> st.SearchStrategy[int]:
    if shape.signed:
        return st.integers(-(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1)
    return st.integers(0, (1 << shape.width) - 1)


@pytest.fixture(scope="module")
def voter() -> tuple[MajorityVoter, CombProbe]:
    dut = MajorityVoter(signed(7))
    return dut, CombProbe(dut)


@settings(max_examples=100, deadline=None)
@given(triple=st.one_of(st.tuples(_ints(signed(7)), _ints(signed(7)), _ints(signed(7))),
                        _ints(signed(7)).map(lambda v: (v, v, v))))
def test_voter_is_bitwise_majority(voter: tuple[MajorityVoter, CombProbe], triple: tuple[int, int, int]) -> None:
    dut, probe = voter
    out, mismatch = probe(list(zip(dut.inputs, triple, strict=True)), [dut.out, dut.mismatch])
    assert (out, mismatch) == (majority(*triple), int(len(set(triple)) > 1))


class Toy(wiring.Component):
    """A tiny replica: out[0] = a + b, out[1] = a - b, each XORed with a fault mask a testbench sets.

    `faults[i]` is a plain signal outside the signature, so a fault can differ between replicas.
    """

    def __init__(self) -> None:
        super().__init__({"a": In(unsigned(4)), "b": In(unsigned(4)), "out": Out(signed(6)).array(2)})
        self.faults = [Signal(signed(6), name=f"fault_{i}") for i in range(2)]

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.d.comb += self.out[0].eq((self.a + self.b) ^ self.faults[0])
        m.d.comb += self.out[1].eq((self.a - self.b) ^ self.faults[1])
        return m


@pytest.fixture(scope="module")
def tmr() -> tuple[TripleModular, CombProbe]:
    dut = TripleModular(Toy)
    return dut, CombProbe(dut)


@settings(max_examples=100, deadline=None)
@given(a=_ints(unsigned(4)), b=_ints(unsigned(4)), masks=st.lists(st.tuples(_ints(signed(6)), _ints(signed(6))),
                                                                   min_size=3, max_size=3),
       faulty=st.sets(st.integers(0, 2), max_size=3))
def test_voted_outputs_flip_only_where_two_replicas_are_corrupted(
        tmr: tuple[TripleModular, CombProbe], a: int, b: int, masks: list[tuple[int, int]], faulty: set[int]) -> None:
    dut, probe = tmr
    masks = [mask if i in faulty else (0, 0) for i, mask in enumerate(masks)]
    faults = [(rep.faults[j], masks[i][j]) for i, rep in enumerate(dut.replicas) for j in range(2)]
    out0, out1, mismatch = probe([(dut.a, a), (dut.b, b), *faults], [*dut.out, dut.mismatch])
    clean = [_wrap(a + b), _wrap(a - b)]
    assert [out0, out1] == [_wrap(clean[j] ^ majority(*(mask[j] for mask in masks))) for j in range(2)]
    copies = [[_wrap(clean[j] ^ mask[j]) for j in range(2)] for mask in masks]
    assert mismatch == int(any(copy != copies[0] for copy in copies))


def _wrap(value: int, width: int = 6) -> int:
    half = 1 << (width - 1)
    return (value + half) % (1 << width) - half


@pytest.mark.parametrize("replica", [0, 1, 2])
def test_single_corrupted_replica_is_outvoted(tmr: tuple[TripleModular, CombProbe], replica: int) -> None:
    dut, probe = tmr
    faults = [(rep.faults[j], -1 if i == replica else 0) for i, rep in enumerate(dut.replicas) for j in range(2)]
    assert probe([(dut.a, 9), (dut.b, 3), *faults], [*dut.out, dut.mismatch]) == [12, 6, 1]


def test_single_replica_members_reach_the_first_replica_only() -> None:
    """A fault injector's port (`single`) drives `rep0` alone: the others see 0 on it, so the vote masks
    what it injects; the other inputs still reach all three."""
    dut = TripleModular(Toy, single=["b"])
    probe = CombProbe(dut)
    faults = [(rep.faults[j], 0) for rep in dut.replicas for j in range(2)]
    sums = [rep.out[0] for rep in dut.replicas]
    assert probe([(dut.a, 9), (dut.b, 3), *faults], [*dut.out, dut.mismatch, *sums]) == [9, 9, 1, 12, 9, 9]


def test_two_replicas_corrupted_on_one_bit_flip_it(tmr: tuple[TripleModular, CombProbe]) -> None:
    dut, probe = tmr
    masks = {0: 0b000100, 2: 0b100110}  # both flip bit 2; only replica 2 flips bits 1 and 5
    faults = [(rep.faults[0], masks.get(i, 0)) for i, rep in enumerate(dut.replicas)]
    assert probe([(dut.a, 9), (dut.b, 3), *faults], [dut.out[0], dut.mismatch]) == [12 ^ 0b100, 1]


def test_replicas_are_kept_as_separate_submodules() -> None:
    dut = TripleModular(Toy)
    assert dut.signature.members.keys() == {"a", "b", "out", "mismatch"}
    assert len({id(rep) for rep in dut.replicas}) == 3
    netlist = rtlil.convert(dut, name="top", emit_src=False)
    assert all(f"module \\top.rep{i}" in netlist for i in range(3))
    assert "module \\top.vote_out__1" in netlist


def test_tmr_pe_outvotes_a_corrupted_psum_register() -> None:
    """Three PEs under TMR: forcing one replica's psum register changes nothing downstream of the vote."""
    dut = TripleModular(lambda: WSProcessingElement(4, 4, 10))
    seen: list[tuple[int, int]] = []

    async def bench(ctx: Any) -> None:
        ctx.set(dut.w_in, -3)
        ctx.set(dut.w_load, 1)
        await ctx.tick()
        ctx.set(dut.w_load, 0)
        for act, psum in ((5, 7), (6, 100), (2, -40)):
            ctx.set(dut.act_in, act)
            ctx.set(dut.psum_in, psum)
            await ctx.tick()
            ctx.set(dut.replicas[1].psum_out, 0b1010101010)  # a fault in rep1's register after the edge
            seen.append((ctx.get(dut.psum_out), ctx.get(dut.mismatch)))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert seen == [(7 - 15, 1), (100 - 18, 1), (-40 - 6, 1)]


class _Flagged(wiring.Component):
    def __init__(self) -> None:
        super().__init__({"mismatch": Out(1)})

    def elaborate(self, platform: object) -> Module:
        return Module()


@pytest.mark.parametrize(("call", "error", "pattern"), [
    (lambda: MajorityVoter("wide"), TypeError, r"^Voter shape must be a shape-castable object, not 'wide'$"),
    (lambda: MajorityVoter(0), ValueError, r"^Voter shape must be at least 1 bit wide, not 0$"),
    (lambda: TripleModular(Toy()), TypeError,
     r"^TMR factory must be callable, not <tests\.hw\.test_tmr\.Toy object at 0x[0-9a-f]+>$"),
    (lambda: TripleModular(lambda: 3), TypeError,
     r"^TMR factory must return a wiring\.Component, not 3$"),
    (lambda: TripleModular(Toy, voter="majority"), TypeError,  # type: ignore[arg-type]
     r"^TMR voter must be callable as voter\(shape\), not 'majority'$"),
    (lambda: TripleModular(iter([Toy(), Toy(), MajorityVoter(4)]).__next__), ValueError,
     r"^TMR replicas must share one signature, not Signature\(\{'a': .*\}\) and Signature\(\{'inputs': .*\}\)$"),
    (lambda: TripleModular(_Flagged), ValueError,
     r"^TMR replica signature must not have a 'mismatch' member, which TMR adds$"),
    (lambda: TripleModular(Toy, single=["out", "c"]), ValueError,
     r"^TMR single-replica members must be inputs of the replica, not \['c', 'out'\]$"),
    (lambda: TripleModular(Toy, single="b"), TypeError,
     r"^TMR single-replica members must be an iterable of names, not the string 'b'$"),
])
@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_constructor_errors(call: Callable[[], object], error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        call()
    gc.collect()
