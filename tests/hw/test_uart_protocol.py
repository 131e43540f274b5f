"""The byte protocol of the UART machine (`hw.uart_protocol`): counted little-endian payloads, two's complement
codes and logits, the RUN reply's alarm byte, status bytes, the INFO record and its version, and the 8N1 line
model the simulations use."""

from __future__ import annotations

import pytest

from hw import uart_protocol as protocol


def test_line_model_round_trips_and_leaves_a_cut_frame() -> None:
    data = bytes(range(256))
    assert protocol.line_bytes(protocol.line_bits(data, 5, gap=2), 5) == list(data)
    levels = protocol.line_bits(b"\x42", 4)
    assert protocol.line_frames(levels[:-3], 4) == ([], 0)   # cut off before its stop bit's middle


def test_protocol_encodes_counted_little_endian_payloads() -> None:
    info = protocol.Info(code_bits=5, code_signed=True, acc_bits=14, num_classes=3, input_codes=2)
    assert protocol.image_command([-16, 15], info) == b"I\x02\x00\x00\x00\xf0\x0f"
    assert protocol.load_command([0x01020304]) == b"L\x01\x00\x00\x00\x04\x03\x02\x01"
    assert protocol.Info.decode(info.encode()) == info
    assert protocol.decode_logits(b"\xff\xff\x00\x01\x02\x00", info) == [-1, 256, 2]
    with pytest.raises(ValueError, match=r"^Input code 16 is not a 5-bit signed code$"):
        protocol.image_command([16], info)
    with pytest.raises(protocol.LinkError, match=r"^Expected a status byte \(0x80-0x87\), got 0x41$"):
        protocol.check_status(0x41)


class Loopback:
    """A port whose device answers every request from a script of replies."""

    def __init__(self, replies: bytes) -> None:
        self.sent, self.replies = bytearray(), bytearray(replies)

    def write(self, data: bytes) -> int:
        self.sent += data
        return len(data)

    def read(self, size: int) -> bytes:
        out = bytes(self.replies[:size])
        del self.replies[:size]
        return out


LOGITS = (-5).to_bytes(4, "little", signed=True) + (70000).to_bytes(4, "little")


@pytest.mark.parametrize(("alarm", "raised"), [(b"\x00", False), (b"\x01", True)])
def test_host_sends_image_then_run_and_decodes_the_logits_and_alarm(alarm: bytes, raised: bool) -> None:
    info = protocol.Info(code_bits=8, code_signed=False, acc_bits=25, num_classes=2, input_codes=3)
    port = Loopback(b"\x80" + b"\x80" + LOGITS + alarm)
    assert protocol.infer(port, [1, 2, 255], info) == ([-5, 70000], raised)
    assert bytes(port.sent) == b"I\x03\x00\x00\x00\x01\x02\xffR"
    assert not port.replies


def test_host_refuses_an_alarm_byte_other_than_0_or_1() -> None:
    info = protocol.Info(code_bits=8, code_signed=False, acc_bits=25, num_classes=2, input_codes=3)
    with pytest.raises(protocol.LinkError, match=r"^A RUN reply's alarm byte is 0x00 or 0x01, not 0x02$"):
        protocol.infer(Loopback(b"\x80" + b"\x80" + LOGITS + b"\x02"), [1, 2, 255], info)


def test_a_run_reply_without_its_alarm_byte_times_out() -> None:
    info = protocol.Info(code_bits=8, code_signed=False, acc_bits=25, num_classes=2, input_codes=3)
    with pytest.raises(protocol.LinkError, match=r"^The device sent 9 of the 10 bytes of its RUN reply \(timed out\)$"):
        protocol.infer(Loopback(b"\x80" + b"\x80" + LOGITS), [1, 2, 255], info)   # a version 1 device


def test_host_splits_a_load_into_chunks_and_checks_each_status() -> None:
    port = Loopback(b"\x80\x81")
    with pytest.raises(protocol.LinkError, match=r"^The device reports framing error \(status 0x81\)$"):
        protocol.load(port, list(range(5)), chunk=3)
    assert bytes(port.sent) == protocol.load_command([0, 1, 2]) + protocol.load_command([3, 4])


def test_host_refuses_a_device_of_another_protocol_version() -> None:
    assert protocol.VERSION == 2   # the RUN reply carries the alarm
    info = protocol.Info(code_bits=8, code_signed=False, acc_bits=25, num_classes=10, input_codes=4, version=1)
    with pytest.raises(protocol.LinkError, match=r"^The device speaks protocol version 1, this host 2$"):
        protocol.info(Loopback(b"\x80" + info.encode()))
    current = protocol.Info(code_bits=8, code_signed=False, acc_bits=25, num_classes=10, input_codes=4)
    assert protocol.info(Loopback(b"\x80" + current.encode())) == current
