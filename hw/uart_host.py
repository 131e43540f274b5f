"""The host side of `hw.uart_machine.UARTMachine` in compiled simulation: a serial port whose far end is the
simulated device, so `hw.uart_protocol`'s host functions (and `dsetool board-run`) run unchanged against
the RTL, a clock cycle per line sample, as `hw.machine_host` drives the bare machine."""

from __future__ import annotations

from hw.rtlsim import Session
from hw.uart_protocol import line_bits, line_frames

CHUNK_BITS = 64   # bit times simulated per round trip while waiting for a reply


class SimulatedSerial:
    """A `hw.uart_protocol.Port` wired to the `rx` and `tx` pins of a `UARTMachine` in `session`.

    `write` queues its bytes as line levels; `read` drives them onto `rx` (one level per cycle) while it
    samples `tx`, then lets the clock run until `size` bytes have arrived or `timeout_cycles` have passed
    since the last byte; like a serial port's read, it then returns what it has.
    """

    def __init__(self, session: Session, divider: int, timeout_cycles: int = 10_000_000) -> None:
        self.session, self.divider, self.timeout_cycles = session, divider, timeout_cycles
        self._pending: list[int] = []
        self._line: list[int] = []   # tx samples not decoded yet
        self._received = bytearray()

    def write(self, data: bytes) -> int:
        self._pending += line_bits(data, self.divider)
        return len(data)

    def read(self, size: int) -> bytes:
        if self._pending:
            self._sample(self.session.drive({"rx": self._pending}, ["tx"])[:, 0].tolist())
            self._pending = []
        waited = 0
        while len(self._received) < size and waited < self.timeout_cycles:
            cycles = CHUNK_BITS * self.divider
            before = len(self._received)
            self._sample(self.session.drive({}, ["tx"], cycles=cycles)[:, 0].tolist())
            waited = 0 if len(self._received) > before else waited + cycles
        out = bytes(self._received[:size])
        del self._received[:size]
        return out

    def _sample(self, levels: list[int]) -> None:
        self._line += levels
        frames, resume = line_frames(self._line, self.divider)
        self._received += bytes(frames)
        del self._line[:resume]
