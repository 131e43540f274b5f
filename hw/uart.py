"""A UART receiver and transmitter: 8 data bits, no parity, one stop bit (8N1), least significant bit first.

Both count `divider` clock cycles per bit (the clock frequency over the baud rate, rounded: 25 MHz at
115,200 baud is 217, 0.01 % off). The line idles high; a frame is a low start bit, the eight data bits and a
high stop bit. The receiver samples each bit at its middle, so it tolerates a baud mismatch of a few percent
and takes the next start bit from the middle of a stop bit on (back-to-back frames, no idle time needed).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

MIN_DIVIDER = 4   # the receiver waits divider // 2 - 1 cycles to the middle of the start bit


def check_divider(divider: int) -> int:
    """Return `divider` if it is a valid clock cycles per bit count, else raise ValueError."""
    if not isinstance(divider, int) or isinstance(divider, bool) or divider < MIN_DIVIDER:
        raise ValueError(f"UART divider must be an integer of at least {MIN_DIVIDER}, not {divider!r}")
    return divider


def divider_for(clock_hz: float, baud: int) -> int:
    """Return the clock cycles per bit closest to `clock_hz` / `baud`; raise ValueError when that misses the
    baud rate by more than 2 % (a receiver at the far end samples its last bit too close to an edge)."""
    divider = round(clock_hz / baud)
    if divider < MIN_DIVIDER or abs(clock_hz / divider - baud) > 0.02 * baud:
        raise ValueError(f"A {clock_hz / 1e6:g} MHz clock cannot make {baud} baud within 2 % "
                         f"(nearest divider {divider})")
    return divider


class UARTReceiver(wiring.Component):
    """Receive 8N1 frames from the `rx` pin into a one-byte stream.

    Parameters
    ----------
    divider : int
        Clock cycles per bit, at least `MIN_DIVIDER`.

    Members
    -------
    rx : In(1, init=1) : the line (asynchronous: synchronized inside, two flip-flops).
    data : Out(8); valid : Out(1); ready : In(1) : the received bytes. A byte stays on `data` with `valid`
        high until a cycle with `ready` high takes it, so a consumer has a whole frame time (10 bits) to
        take it before the next one arrives.
    framing_error : Out(1) : pulses for one cycle when a frame's stop bit is low; its byte is dropped.
    overrun : Out(1) : pulses for one cycle when a byte arrives while the previous one was not taken; the
        new byte replaces it.
    """

    def __init__(self, divider: int) -> None:
        self.divider = check_divider(divider)
        super().__init__({
            "rx": In(1, init=1), "data": Out(8), "valid": Out(1), "ready": In(1),
            "framing_error": Out(1), "overrun": Out(1),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        line = Signal(init=1)
        m.submodules.sync_rx = FFSynchronizer(self.rx, line, init=1)
        timer = Signal(range(self.divider))
        bit = Signal(range(8))
        shift = Signal(8)
        with m.If(self.valid & self.ready):
            m.d.sync += self.valid.eq(0)
        with m.If(timer != 0):
            m.d.sync += timer.eq(timer - 1)
        with m.FSM(name="rx"):
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += timer.eq(self.divider // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(self.divider - 1), bit.eq(0)]
                    with m.If(line):   # a glitch, not a start bit
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer == 0):
                    m.d.sync += [shift.eq(Cat(shift[1:], line)), bit.eq(bit + 1), timer.eq(self.divider - 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer == 0):
                    with m.If(line):
                        m.d.sync += [self.data.eq(shift), self.valid.eq(1)]
                        m.d.comb += self.overrun.eq(self.valid & ~self.ready)
                    with m.Else():
                        m.d.comb += self.framing_error.eq(1)
                    m.next = "IDLE"
        return m


class UARTTransmitter(wiring.Component):
    """Send a byte stream as 8N1 frames on the `tx` pin.

    Parameters
    ----------
    divider : int
        Clock cycles per bit, at least `MIN_DIVIDER`.

    Members
    -------
    data : In(8); valid : In(1); ready : Out(1) : the bytes to send; `ready` is high while no frame is
        being sent and on the last cycle of a stop bit, so a byte is taken on a cycle with `valid` and
        `ready` high and its start bit begins on the next cycle: frames follow each other without idle
        time while bytes are offered.
    tx : Out(1, init=1) : the line, driven straight from a flip-flop (no glitches).
    """

    def __init__(self, divider: int) -> None:
        self.divider = check_divider(divider)
        super().__init__({"data": In(8), "valid": In(1), "ready": Out(1), "tx": Out(1, init=1)})

    def elaborate(self, platform: object) -> Module:
        m = Module()
        frame = Signal(10, init=(1 << 10) - 1)   # the bits still to send, the one on the line first
        left = Signal(range(11))
        timer = Signal(range(self.divider))
        last_cycle = (left == 1) & (timer == 0)   # of the stop bit: the next frame may start on the next cycle
        m.d.comb += [self.tx.eq(frame[0]), self.ready.eq((left == 0) | last_cycle)]
        with m.If(self.valid & self.ready):
            m.d.sync += [frame.eq(Cat(0, self.data, 1)), left.eq(10), timer.eq(self.divider - 1)]
        with m.Elif(left != 0):
            m.d.sync += timer.eq(timer - 1)
            with m.If(timer == 0):
                m.d.sync += [frame.eq(Cat(frame[1:], 1)), left.eq(left - 1), timer.eq(self.divider - 1)]
        return m
