"""The byte protocol of `hw.uart_machine.UARTMachine` (the accelerator on a UART), in plain Python: the host
script, the tests and the hardware's reply constants all come from here. No torch, no amaranth.

Request and reply, one at a time: the host sends a command and reads its whole reply before the next one
(the device buffers one byte while it is busy, not a command). Numbers are little-endian.

    INFO   '?'                          -> status, info (`INFO_BYTES`: see `Info`)
    LOAD   'L' n:u32 beat*n (u32 each)  -> status     (n beats of `hw.machine_format.load_beats`; a load
                                                       may be split over several LOAD commands)
    IMAGE  'I' n:u32 code*n             -> status     (each code in ceil(code bits / 8) bytes, two's
                                                       complement; one image per RUN)
    RUN    'R'                          -> status, logit*num_classes, alarm (each logit in
                                                       ceil(acc bits / 8) bytes, two's complement; the alarm
                                                       one byte: 0x01 if a range check fired during the
                                                       run, else 0x00)

The status byte is `STATUS_OK` (0x80) with a flag for each error seen since the last status: a frame with a
low stop bit (`FRAMING`), a byte that arrived before the device took the one before (`OVERRUN`), a byte
that is no command (`BAD_COMMAND`, answered with a status alone).

Version 2 added the RUN reply's alarm byte (the machine's detector, `hw.machine.Machine`'s `alarm`) and
INFO's digest of the machine's shape (two machines that take the same codes may load different memory
images: another range check, another weight buffering); INFO's version byte lets the host refuse a device
of another version.

`line_bits` and `line_bytes` model the 8N1 line itself, a sample per clock cycle, for simulations.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

INFO, LOAD, IMAGE, RUN = b"?", b"L", b"I", b"R"
STATUS_OK = 0x80
FRAMING, OVERRUN, BAD_COMMAND = 0x01, 0x02, 0x04
FLAGS = {FRAMING: "framing error", OVERRUN: "overrun", BAD_COMMAND: "unknown command"}
VERSION = 2
INFO_BYTES = 13
MAX_COUNT = (1 << 32) - 1


class LinkError(RuntimeError):
    """The device answered something the protocol does not allow, too little, or reported an error."""


def byte_count(bits: int) -> int:
    """Return the bytes a `bits`-wide number takes on the link."""
    return -(-bits // 8)


@dataclass(frozen=True)
class Info:
    """What the machine on the board was built for: the protocol version, the input codes' width and
    signedness, the logits' width, their number, the codes one image takes, and a digest of the machine's
    shape (its memories' layouts, range checks and weight banks: what the load stream must fit)."""

    code_bits: int
    code_signed: bool
    acc_bits: int
    num_classes: int
    input_codes: int
    version: int = VERSION
    machine: int = 0   # 32 bits of a digest of the machine's shape (`hw.uart_machine.machine_digest`)

    def encode(self) -> bytes:
        """Return the INFO reply's bytes after the status (what the hardware sends)."""
        return bytes([self.version, self.code_bits | (self.code_signed << 7), self.acc_bits]) + \
            self.num_classes.to_bytes(2, "little") + self.input_codes.to_bytes(4, "little") + \
            self.machine.to_bytes(4, "little")

    @classmethod
    def decode(cls, data: bytes) -> Info:
        if len(data) != INFO_BYTES:
            raise LinkError(f"An INFO reply has {INFO_BYTES} bytes after its status, not {len(data)}")
        return cls(code_bits=data[1] & 0x7F, code_signed=bool(data[1] & 0x80), acc_bits=data[2],
                   num_classes=int.from_bytes(data[3:5], "little"), input_codes=int.from_bytes(data[5:9], "little"),
                   version=data[0], machine=int.from_bytes(data[9:13], "little"))


def _counted(command: bytes, items: Sequence[int], width: int, signed: bool) -> bytes:
    if len(items) > MAX_COUNT:
        raise ValueError(f"A command carries at most {MAX_COUNT} items, not {len(items)}")
    low, high = (-(1 << (8 * width - 1)), 1 << (8 * width - 1)) if signed else (0, 1 << (8 * width))
    body = bytearray(command + len(items).to_bytes(4, "little"))
    for item in items:
        if not low <= item < high:
            raise ValueError(f"Value {item} does not fit {width} byte(s)")
        body += int(item).to_bytes(width, "little", signed=signed)
    return bytes(body)


def load_command(beats: Sequence[int]) -> bytes:
    """Return a LOAD command carrying `beats` (32-bit words)."""
    return _counted(LOAD, beats, 4, signed=False)


def image_command(codes: Sequence[int], info: Info) -> bytes:
    """Return an IMAGE command carrying one image's input codes, each checked against the code width."""
    low, high = (-(1 << (info.code_bits - 1)), 1 << (info.code_bits - 1)) if info.code_signed \
        else (0, 1 << info.code_bits)
    bad = [code for code in codes if not low <= code < high]
    if bad:
        kind = "signed" if info.code_signed else "unsigned"
        raise ValueError(f"Input code {bad[0]} is not a {info.code_bits}-bit {kind} code")
    return _counted(IMAGE, [int(code) for code in codes], byte_count(info.code_bits), info.code_signed)


def check_status(byte: int) -> None:
    """Raise LinkError unless `byte` is a status without error flags."""
    if byte & ~0x07 != STATUS_OK:
        raise LinkError(f"Expected a status byte (0x80-0x87), got {byte:#04x}")
    errors = [name for flag, name in FLAGS.items() if byte & flag]
    if errors:
        raise LinkError(f"The device reports {', '.join(errors)} (status {byte:#04x})")


def decode_logits(data: bytes, info: Info) -> list[int]:
    """Return the logits of a RUN reply's bytes after its status."""
    width = byte_count(info.acc_bits)
    if len(data) != width * info.num_classes:
        raise LinkError(f"A RUN reply has {width * info.num_classes} bytes of logits, not {len(data)}")
    return [int.from_bytes(data[i:i + width], "little", signed=True) for i in range(0, len(data), width)]


def decode_alarm(byte: int) -> bool:
    """Return the alarm of a RUN reply's last byte: 0x01 raised, 0x00 not."""
    if byte not in (0, 1):
        raise LinkError(f"A RUN reply's alarm byte is 0x00 or 0x01, not {byte:#04x}")
    return bool(byte)


class Port(Protocol):
    """A serial port as the host uses it (pyserial's `Serial` is one): `read` returns at most n bytes,
    fewer after its timeout."""

    def write(self, data: bytes) -> int | None: ...

    def read(self, size: int) -> bytes: ...


def _reply(port: Port, size: int, what: str) -> bytes:
    data = port.read(size)
    if len(data) != size:
        raise LinkError(f"The device sent {len(data)} of the {size} bytes of its {what} reply (timed out)")
    return data


def info(port: Port) -> Info:
    """Ask the device what it was built for."""
    port.write(INFO)
    data = _reply(port, 1 + INFO_BYTES, "INFO")
    check_status(data[0])
    found = Info.decode(data[1:])
    if found.version != VERSION:
        raise LinkError(f"The device speaks protocol version {found.version}, this host {VERSION}")
    return found


def load(port: Port, beats: Sequence[int], chunk: int = 4096) -> None:
    """Send the load stream, `chunk` beats per LOAD command."""
    for start in range(0, len(beats), chunk):
        port.write(load_command(beats[start:start + chunk]))
        check_status(_reply(port, 1, "LOAD")[0])


def infer(port: Port, codes: Sequence[int], device: Info) -> tuple[list[int], bool]:
    """Send one image's input codes, run the network and return its logits and whether the machine's
    alarm was raised during the run."""
    if len(codes) != device.input_codes:
        raise ValueError(f"The device's input takes {device.input_codes} codes, not {len(codes)}")
    port.write(image_command(codes, device))
    check_status(_reply(port, 1, "IMAGE")[0])
    port.write(RUN)
    data = _reply(port, run_reply_bytes(device), "RUN")
    check_status(data[0])
    return decode_logits(data[1:-1], device), decode_alarm(data[-1])


def run_reply_bytes(device: Info) -> int:
    """Return the bytes of a RUN reply: the status, the logits and the alarm."""
    return 1 + byte_count(device.acc_bits) * device.num_classes + 1


def line_bits(data: Iterable[int], divider: int, gap: int = 0) -> list[int]:
    """Return the 8N1 line levels, one per clock cycle, that send `data` at `divider` cycles per bit, with
    `gap` idle cycles after each frame."""
    levels: list[int] = []
    for byte in data:
        for bit in (0, *((byte >> i) & 1 for i in range(8)), 1):
            levels += [bit] * divider
        levels += [1] * gap
    return levels


def line_bytes(levels: Sequence[int], divider: int) -> list[int]:
    """Return the bytes of the 8N1 frames on a line sampled once per clock cycle; raise LinkError for a
    frame whose stop bit is low. A frame cut off by the end of the samples is left out."""
    return line_frames(levels, divider)[0]


def line_frames(levels: Sequence[int], divider: int) -> tuple[list[int], int]:
    """Return the bytes of the complete frames on a sampled line, and the index of the first sample after
    the last one (where decoding the next samples must resume)."""
    out: list[int] = []
    i = resume = 0
    while i < len(levels):
        if levels[i]:
            i += 1
            resume = i
            continue
        middle = i + divider // 2
        if middle + 9 * divider >= len(levels):
            break
        bits = [levels[middle + k * divider] for k in range(10)]
        if bits[9] != 1:
            raise LinkError(f"The frame starting at cycle {i} has a low stop bit")
        out.append(sum(bit << k for k, bit in enumerate(bits[1:9])))
        i = resume = middle + 9 * divider
    return out, resume
