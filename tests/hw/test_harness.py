"""The IO harness: its serial protocol in simulation, and a harnessed datapath placed on an iCE40 UP5K."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest
from amaranth.hdl import Module, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hw import flow
from hw.accelerator import build_datapath
from hw.arrayconfig import ArrayConfig
from hw.flow import needs_harness
from hw.harness import DESIGN_MODULE, IOHarness, split_resources
from tests.hw.test_flow import toolchain


class AddSub(wiring.Component):
    """Registered a + b and combinational a - b, over ports of odd widths (12 input bits, 12 output bits)."""

    def __init__(self) -> None:
        super().__init__({"a": In(signed(5)), "b": In(signed(7)), "sum": Out(signed(8)), "low": Out(4)})

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.sum.eq(self.a + self.b)
        m.d.comb += self.low.eq(self.a - self.b)
        return m


def _bits(value: int, width: int) -> list[int]:
    return [(value >> i) & 1 for i in range(width)]


def _signed(bits: list[int]) -> int:
    value = sum(bit << i for i, bit in enumerate(bits))
    return value - (1 << len(bits)) if bits[-1] else value


async def _exchange(ctx, dut: IOHarness, in_bits: list[int]) -> list[int]:
    """Shift `in_bits` in, apply them, let the design settle, capture and shift all output bits out."""
    ctx.set(dut.shift, 1)
    for bit in in_bits:
        ctx.set(dut.sin, bit)
        await ctx.tick()
    ctx.set(dut.shift, 0)
    ctx.set(dut.apply, 1)
    await ctx.tick()
    ctx.set(dut.apply, 0)
    await ctx.tick().repeat(2)  # the design's register, then the capture chain
    out = []
    ctx.set(dut.shift, 1)
    for _ in range(dut.out_bits):
        out.append(ctx.get(dut.sout))
        await ctx.tick()
    ctx.set(dut.shift, 0)
    return out


def test_shifted_inputs_reach_the_design_and_its_outputs_shift_out():
    dut = IOHarness(AddSub())
    assert (dut.in_bits, dut.out_bits) == (12, 12)
    cases = [(3, -7), (-16, 63), (15, -64), (-1, 0)]
    seen = []

    async def bench(ctx):
        for a, b in cases:
            seen.append(await _exchange(ctx, dut, _bits(a, 5) + _bits(b, 7)))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    for (a, b), out in zip(cases, seen, strict=True):
        assert (_signed(out[:8]), sum(bit << i for i, bit in enumerate(out[8:]))) == (a + b, (a - b) % 16)


def test_the_design_sees_old_inputs_until_apply():
    dut = IOHarness(AddSub())

    async def bench(ctx):
        await _exchange(ctx, dut, _bits(1, 5) + _bits(2, 7))
        ctx.set(dut.shift, 1)
        for bit in _bits(9, 5) + _bits(9, 7):
            ctx.set(dut.sin, bit)
            await ctx.tick()
        assert (ctx.get(dut.design.a), ctx.get(dut.design.b)) == (1, 2)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


class Sink(wiring.Component):
    def __init__(self) -> None:
        super().__init__({"a": In(3)})

    def elaborate(self, platform):
        return Module()


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")  # a constructor that raises leaves one
def test_a_design_without_outputs_is_refused():
    with pytest.raises(ValueError, match=r"^Harnessed design must have input and output port bits, not 3 in and "
                                         r"0 out$"):
        IOHarness(Sink())
    with pytest.raises(TypeError, match=r"^Harnessed design must be a wiring.Component, not 3$"):
        IOHarness(3)  # type: ignore[arg-type]
    gc.collect()


def test_only_targets_without_out_of_context_need_the_harness():
    assert [name for name, t in flow.TARGETS.items() if needs_harness(t)] == ["ice40-up5k"]


def test_split_puts_the_top_modules_own_cells_in_the_harness():
    stat = {"modules": {"\\top": {"num_cells_by_type": {"SB_DFFE": 7, "SB_LUT4": 2, "top.design": 1}},
                        "\\top.design": {"num_cells_by_type": {"SB_DFF": 5, "SB_LUT4": 9, "SB_MAC16": 1}}},
            "design": {"num_cells_by_type": {"SB_DFFE": 7, "SB_DFF": 5, "SB_LUT4": 11, "SB_MAC16": 1}}}
    design, harness = split_resources(stat, flow.ICE40)
    assert harness == {"LUT": 2, "FF": 7, "DSP": 0, "BRAM": 0}
    assert design == {"LUT": 9, "FF": 5, "DSP": 1, "BRAM": 0}


W4A4 = ArrayConfig(rows=2, cols=2, act_bits=4, weight_bits=4)


@toolchain
def test_harnessed_2x2_datapath_places_on_ice40_where_the_bare_one_does_not(tmp_path: Path):
    bare = flow.emit_rtlil(build_datapath(W4A4, k=16, multiplier_bits=1), tmp_path / "bare.il")
    refused = flow.synthesize(bare, tmp_path / "bare", "ice40-up5k")
    assert refused.status == "does_not_fit" and "SB_IO" in refused.message

    harness = IOHarness(build_datapath(W4A4, k=16, multiplier_bits=1))
    wrapped = flow.emit_rtlil(harness, tmp_path / "wrapped.il")
    result = flow.synthesize(wrapped, tmp_path / "wrapped", "ice40-up5k", keep_hierarchy=[DESIGN_MODULE])
    assert result.status == "ok", result.message
    assert result.fmax_mhz is not None and result.fmax_mhz > 0
    assert result.utilization["SB_IO"]["used"] == 6  # clk, rst, sin, shift, apply, sout
    design, own = split_resources(json.loads(result.artifacts["stat"].read_text()), flow.ICE40)
    assert {k: design[k] + own[k] for k in design} == result.resources
    # two chains over the inputs and one over the outputs, less the latch bits of inputs the datapath ignores
    assert 0 < own["FF"] <= 2 * harness.in_bits + harness.out_bits and 0 < own["LUT"] <= harness.out_bits
    assert design["FF"] == refused.resources["FF"]  # the kept datapath is synthesized as it is alone
