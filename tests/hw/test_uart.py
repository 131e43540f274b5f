"""The UART (`hw.uart`) in Amaranth's simulator at 4 and 5 clocks per bit: frames on the line as the 8N1
model of `hw.uart_protocol` has them, a byte stream round trip through transmitter and receiver, framing
errors, overruns and glitches."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

from hw.uart import UARTReceiver, UARTTransmitter, divider_for
from hw.uart_protocol import line_bits, line_bytes

STREAM = [0x00, 0xFF, 0x55, 0xAA, 0x01, 0x80, 0x3C, 0x7E]


def run(dut: Any, bench: Any) -> None:
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


async def drive_line(ctx: Any, rx: Any, levels: list[int]) -> None:
    for level in levels:
        ctx.set(rx, level)
        await ctx.tick()


@pytest.mark.parametrize("divider", [4, 5])
def test_transmitter_sends_8n1_frames_back_to_back(divider: int) -> None:
    dut = UARTTransmitter(divider)
    line: list[int] = []

    async def bench(ctx: Any) -> None:
        assert ctx.get(dut.tx) == 1   # idle high from reset
        for byte in STREAM:
            ctx.set(dut.valid, 1)
            ctx.set(dut.data, byte)
            while not ctx.get(dut.ready):
                line.append(ctx.get(dut.tx))
                await ctx.tick()
            line.append(ctx.get(dut.tx))
            await ctx.tick()
        ctx.set(dut.valid, 0)
        for _ in range(11 * divider):
            line.append(ctx.get(dut.tx))
            await ctx.tick()

    run(dut, bench)
    assert line_bytes(line, divider) == STREAM
    first = line.index(0)
    assert line[first:first + 10 * divider * len(STREAM)] == line_bits(STREAM, divider)   # no idle between


@pytest.mark.parametrize(("divider", "gap"), [(4, 0), (5, 3)])
def test_receiver_takes_every_byte_of_a_line(divider: int, gap: int) -> None:
    dut = UARTReceiver(divider)
    got: list[int] = []

    async def bench(ctx: Any) -> None:
        ctx.set(dut.ready, 1)
        for level in [1] * 7 + line_bits(STREAM, divider, gap) + [1] * 3 * divider:
            ctx.set(dut.rx, level)
            if ctx.get(dut.valid):
                got.append(ctx.get(dut.data))
            assert not ctx.get(dut.framing_error) and not ctx.get(dut.overrun)
            await ctx.tick()

    run(dut, bench)
    assert got == STREAM


def test_byte_stream_round_trip_through_transmitter_and_receiver() -> None:
    m = Module()
    m.submodules.tx = tx = UARTTransmitter(4)
    m.submodules.rx = rx = UARTReceiver(4)
    m.d.comb += rx.rx.eq(tx.tx)
    data = list(range(256))
    got: list[int] = []

    async def bench(ctx: Any) -> None:
        ctx.set(rx.ready, 1)
        pending = list(data)
        for _ in range(len(data) * 10 * 4 + 100):
            ctx.set(tx.valid, bool(pending))
            ctx.set(tx.data, pending[0] if pending else 0)
            if ctx.get(rx.valid):
                got.append(ctx.get(rx.data))
            if pending and ctx.get(tx.ready):
                pending.pop(0)
            await ctx.tick()

    run(m, bench)
    assert got == data


def test_a_low_stop_bit_is_a_framing_error_and_drops_the_byte() -> None:
    dut = UARTReceiver(4)
    bad = line_bits([0x5A], 4)
    bad[-4:] = [0] * 4   # the stop bit
    events: list[str] = []

    async def bench(ctx: Any) -> None:
        ctx.set(dut.ready, 1)
        for level in bad + [1] * 12 + line_bits([0x33], 4) + [1] * 12:
            ctx.set(dut.rx, level)
            if ctx.get(dut.framing_error):
                events.append("framing")
            if ctx.get(dut.valid):
                events.append(hex(ctx.get(dut.data)))
            await ctx.tick()

    run(dut, bench)
    assert events == ["framing", "0x33"]


def test_a_byte_not_taken_in_time_is_overrun_by_the_next() -> None:
    dut = UARTReceiver(4)
    overruns: list[int] = []

    async def bench(ctx: Any) -> None:
        for level in line_bits([0x11, 0x22], 4) + [1] * 8:
            ctx.set(dut.rx, level)
            overruns.append(ctx.get(dut.overrun))
            await ctx.tick()
        assert ctx.get(dut.valid) and ctx.get(dut.data) == 0x22
        ctx.set(dut.ready, 1)
        await ctx.tick()
        assert not ctx.get(dut.valid)

    run(dut, bench)
    assert sum(overruns) == 1


def test_a_glitch_shorter_than_half_a_bit_is_no_start_bit() -> None:
    dut = UARTReceiver(8)
    seen: list[int] = []

    async def bench(ctx: Any) -> None:
        ctx.set(dut.ready, 1)
        for level in [1] * 4 + [0, 0] + [1] * 20 + line_bits([0x96], 8) + [1] * 8:
            ctx.set(dut.rx, level)
            if ctx.get(dut.valid):
                seen.append(ctx.get(dut.data))
            assert not ctx.get(dut.framing_error)
            await ctx.tick()

    run(dut, bench)
    assert seen == [0x96]


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")   # a constructor that raises leaves one
@pytest.mark.parametrize("component", [UARTReceiver, UARTTransmitter])
@pytest.mark.parametrize("divider", [3, 0, 4.0, True])
def test_divider_must_be_an_integer_of_at_least_4(component: Any, divider: Any) -> None:
    with pytest.raises(ValueError, match=rf"^UART divider must be an integer of at least 4, not {divider!r}$"):
        component(divider)
    gc.collect()   # the half-built component warns when collected: here, under the filter


def test_divider_for_a_clock_and_baud_rate() -> None:
    assert divider_for(25e6, 115_200) == 217
    assert divider_for(25e6, 1_000_000) == 25
    with pytest.raises(ValueError, match=r"^A 25 MHz clock cannot make 3000000 baud within 2 % \(nearest divider 8\)$"):
        divider_for(25e6, 3_000_000)
