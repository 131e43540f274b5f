"""The accelerator (`hw.machine.Machine`) behind a UART: what goes on a board, where the host is a serial port.

`hw.machine_host` drives the machine's host port in simulation; this is the same port driven by the byte
protocol of `hw.uart_protocol` (request, whole reply, next request). The command decoder forwards each LOAD
beat and IMAGE code to the machine's streams as soon as its last byte arrives; the machine is idle then (a
RUN's reply ends only after its last logit), so its streams take a word on the cycle it is offered, and the
receiver holds a byte a whole frame long: at any divider no byte is lost. A RUN's reply ends with the
machine's `alarm` (a range check fired during the run) as one byte after the last logit. A host that sends
before a reply is complete gets `OVERRUN` in the next status.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw import uart_protocol as protocol
from hw.machine import Machine
from hw.machine_format import BEAT, MachineShape
from hw.uart import UARTReceiver, UARTTransmitter, check_divider

THEN_COMMAND, THEN_LOGITS, THEN_INFO = 0, 1, 2   # what follows a status byte


@dataclass(frozen=True)
class _Registers:
    """The protocol's state besides the FSM: the word being gathered or sent (`index`: its byte), the
    payload items left (`count`), where they go (`image`), the logits left, what follows the status, the
    error flags not reported yet, and the strobes that report them (`report`) or raise one (`bad`)."""

    word: Signal
    index: Signal
    count: Signal
    image: Signal
    logits: Signal
    then: Signal
    flags: Signal
    report: Signal
    bad: Signal


def machine_digest(shape: MachineShape) -> int:
    """Return 32 bits of a sha256 of the machine's shape (its memories' layouts, checks, weight banks), so
    a host can tell two machines apart that take the same codes and give the same logits."""
    text = json.dumps(dataclasses.asdict(shape), sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def device_info(shape: MachineShape) -> protocol.Info:
    """Return what a machine of this shape answers to INFO."""
    code = shape.code_shape
    return protocol.Info(code_bits=code.width, code_signed=code.signed, acc_bits=shape.array.acc_bits,
                         num_classes=shape.num_classes, input_codes=shape.input_words * shape.lanes,
                         machine=machine_digest(shape))


class UARTMachine(wiring.Component):
    """A `Machine` whose host port speaks `hw.uart_protocol` over an 8N1 UART.

    Parameters
    ----------
    shape : MachineShape
        The machine to build.
    divider : int
        Clock cycles per bit (`hw.uart.divider_for`), at least `hw.uart.MIN_DIVIDER`.

    Members
    -------
    rx : In(1, init=1) : the line from the host.
    tx : Out(1, init=1) : the line to the host.
    busy : Out(1) : the machine is running a network or sending its logits.
    error : Out(1) : an error flag is waiting to be reported in the next status byte.
    """

    def __init__(self, shape: MachineShape, divider: int) -> None:
        self.shape = shape
        self.divider = check_divider(divider)
        self.info = device_info(shape)
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "busy": Out(1), "error": Out(1)})

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.machine = machine = Machine(self.shape)
        m.submodules.receiver = rx = UARTReceiver(self.divider)
        m.submodules.transmitter = tx = UARTTransmitter(self.divider)
        m.d.comb += [rx.rx.eq(self.rx), self.tx.eq(tx.tx), self.busy.eq(machine.busy)]
        acc_bytes = protocol.byte_count(self.info.acc_bits)
        r = _Registers(word=Signal(8 * max(4, acc_bytes)), index=Signal(range(max(4, acc_bytes, protocol.INFO_BYTES))),
                       count=Signal(32), image=Signal(), logits=Signal(range(self.info.num_classes + 1)),
                       then=Signal(2), flags=Signal(3), report=Signal(), bad=Signal())
        m.d.sync += r.flags.eq(Mux(r.report, 0, r.flags) | Cat(rx.framing_error, rx.overrun, r.bad))
        m.d.comb += self.error.eq(r.flags != 0)
        m.d.comb += [machine.load_data.eq(r.word[:BEAT]), machine.in_data.eq(r.word[:self.info.code_bits])]
        with m.FSM(name="uart"):
            self._requests(m, r, rx, machine)
            self._replies(m, r, tx, machine)
        return m

    def _requests(self, m: Module, r: _Registers, rx: UARTReceiver, machine: Machine) -> None:
        """Add the states that take a command and its payload, forwarding each beat or code to the machine."""
        code_bytes = protocol.byte_count(self.info.code_bits)
        with m.State("COMMAND"):
            m.d.comb += rx.ready.eq(1)
            with m.If(rx.valid):
                m.d.sync += [r.index.eq(0), r.then.eq(THEN_COMMAND)]
                m.next = "STATUS"
                with m.Switch(rx.data):
                    with m.Case(protocol.LOAD[0], protocol.IMAGE[0]):
                        m.d.sync += r.image.eq(rx.data == protocol.IMAGE[0])
                        m.next = "COUNT"
                    with m.Case(protocol.RUN[0]):
                        m.d.comb += machine.start.eq(1)
                        m.d.sync += [r.then.eq(THEN_LOGITS), r.logits.eq(self.info.num_classes)]
                    with m.Case(protocol.INFO[0]):
                        m.d.sync += r.then.eq(THEN_INFO)
                    with m.Default():
                        m.d.comb += r.bad.eq(1)
        with m.State("COUNT"):
            m.d.comb += rx.ready.eq(1)
            counted = Cat(r.count[8:], rx.data)   # little-endian: each byte enters at the top
            with m.If(rx.valid):
                m.d.sync += [r.count.eq(counted), r.index.eq(r.index + 1)]
                with m.If(r.index == 3):
                    m.d.sync += r.index.eq(0)
                    with m.If(counted == 0):
                        m.next = "STATUS"
                    with m.Else():
                        m.next = "GATHER"
        with m.State("GATHER"):
            m.d.comb += rx.ready.eq(1)
            with m.If(rx.valid):
                m.d.sync += [r.word.word_select(r.index, 8).eq(rx.data), r.index.eq(r.index + 1)]
                with m.If(r.index == Mux(r.image, code_bytes - 1, BEAT // 8 - 1)):
                    m.d.sync += r.index.eq(0)
                    m.next = "PUSH"
        with m.State("PUSH"):
            m.d.comb += [machine.in_valid.eq(r.image), machine.load_valid.eq(~r.image)]
            with m.If(Mux(r.image, machine.in_ready, machine.load_ready)):
                m.d.sync += r.count.eq(r.count - 1)
                with m.If(r.count == 1):
                    m.next = "STATUS"
                with m.Else():
                    m.next = "GATHER"

    def _replies(self, m: Module, r: _Registers, tx: UARTTransmitter, machine: Machine) -> None:
        """Add the states that send the status byte, then a RUN's logits and alarm, or the INFO bytes."""
        acc_bytes = protocol.byte_count(self.info.acc_bits)
        info = self.info.encode()
        with m.State("STATUS"):
            m.d.comb += [tx.valid.eq(1), tx.data.eq(protocol.STATUS_OK | r.flags)]
            with m.If(tx.ready):
                m.d.comb += r.report.eq(1)
                with m.Switch(r.then):
                    with m.Case(THEN_COMMAND):
                        m.next = "COMMAND"
                    with m.Case(THEN_LOGITS):
                        m.next = "LOGIT"
                    with m.Default():
                        m.next = "INFO"
        with m.State("LOGIT"):
            m.d.comb += machine.out_ready.eq(1)
            with m.If(machine.out_valid):
                m.d.sync += [r.word.eq(machine.out_data), r.index.eq(0), r.logits.eq(r.logits - 1)]
                m.next = "SEND"
        with m.State("SEND"):
            m.d.comb += [tx.valid.eq(1), tx.data.eq(r.word.word_select(r.index, 8))]
            with m.If(tx.ready):
                m.d.sync += r.index.eq(r.index + 1)
                with m.If(r.index == acc_bytes - 1):
                    with m.If(r.logits == 0):
                        m.next = "ALARM"
                    with m.Else():
                        m.next = "LOGIT"
        with m.State("ALARM"):   # the detector is valid with the logits and holds until the next start
            m.d.comb += [tx.valid.eq(1), tx.data.eq(machine.alarm)]
            with m.If(tx.ready):
                m.next = "COMMAND"
        with m.State("INFO"):
            rom = Const(int.from_bytes(info, "little"), 8 * len(info))
            m.d.comb += [tx.valid.eq(1), tx.data.eq(rom.word_select(r.index, 8))]
            with m.If(tx.ready):
                m.d.sync += r.index.eq(r.index + 1)
                with m.If(r.index == len(info) - 1):
                    m.next = "COMMAND"
