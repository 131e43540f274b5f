"""The accelerator behind its UART (`hw.uart_machine`), in compiled simulation at 4 clocks per bit: the bytes
of `hw.uart_protocol` on the rx pin load a tiny network and run images whose logits, decoded from the tx
pin, equal the integer engine's, and whose alarm byte is the engine's range checks' (never raised without
one, raised where a tight SED check fires); errors come back as status flags, a silent device as a timeout."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dsetool.engine import Engine
from dsetool.machine.alarms import engine_alarms
from dsetool.machine.compiler import compile_program
from dsetool.machine.encode import input_codes, machine_of
from hw import rtlsim
from hw import uart_protocol as protocol
from hw.machine_format import load_beats
from hw.uart_host import SimulatedSerial
from hw.uart_machine import UARTMachine, device_info
from tests.fixtures.engines import digits, factory_engine
from tests.fixtures.range_checks import checked_engine

pytestmark = pytest.mark.toolchain   # Yosys and Verilator build the simulation

DIVIDER = 4
TINY_CNN = "tests.fixtures.tiny_cnn:make"   # signed 5-bit codes, 14-bit logits: two bytes, negative ones too


@pytest.fixture(scope="module")
def tiny(rtl_builds: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    engine = factory_engine(tmp_path_factory.mktemp("tiny"), TINY_CNN, bits=4, size=12)
    program = compile_program(engine, 4, 4)
    shape, images = machine_of(program)
    compiled = rtlsim.build(UARTMachine(shape, DIVIDER), rtl_builds)
    return {"engine": engine, "program": program, "shape": shape, "images": images, "compiled": compiled}


def test_logits_over_the_uart_equal_the_engines(tiny: dict[str, Any]) -> None:
    engine: Engine = tiny["engine"]
    x = digits(12).test.x[:2]
    expected = engine.logits(x).numpy()
    with tiny["compiled"].open() as session:
        port = SimulatedSerial(session, DIVIDER)
        device = protocol.info(port)
        assert device == device_info(tiny["shape"])
        protocol.load(port, load_beats(tiny["shape"], tiny["images"]), chunk=100)   # split over LOAD commands
        runs = [protocol.infer(port, input_codes(tiny["program"], codes), device)
                for codes in engine.quantize_input(x).numpy()]
    np.testing.assert_array_equal(np.array([logits for logits, _ in runs]), expected)
    assert (expected < 0).any() and (expected > 127).any()   # the high byte carries the sign or the value
    assert [alarm for _, alarm in runs] == [False, False]    # no range check: the detector never fires


def test_the_alarm_over_the_uart_is_the_sed_checks(rtl_builds: Path, tiny: dict[str, Any], tmp_path: Path) -> None:
    """Detect-mode (SED) checks at the output stages, per channel, bounded by what the first two images
    give: the alarm byte of each RUN is what the engine's checks say, raised on some later images and not on
    others (so `start` clears it), and the logits are the checked engine's."""
    x = digits(12).test.x[:6]
    engine = checked_engine(tiny["engine"], x[:2], "detect", "channel", "output", inset=0)
    program = compile_program(engine, 4, 4)
    shape, images = machine_of(program)
    assert shape.check == "detect"
    compiled = rtlsim.build(UARTMachine(shape, DIVIDER), rtl_builds)
    with compiled.open() as session:
        port = SimulatedSerial(session, DIVIDER)
        device = protocol.info(port)
        protocol.load(port, load_beats(shape, images))
        runs = [protocol.infer(port, input_codes(program, codes), device)
                for codes in engine.quantize_input(x).numpy()]
    np.testing.assert_array_equal(np.array([logits for logits, _ in runs]), engine.logits(x).numpy())
    expected = engine_alarms(engine, x).tolist()
    assert [alarm for _, alarm in runs] == expected
    assert any(expected) and False in expected[expected.index(True):]   # raised, then cleared by a later run


def test_an_unknown_command_is_answered_with_its_flag_once(tiny: dict[str, Any]) -> None:
    with tiny["compiled"].open() as session:
        port = SimulatedSerial(session, DIVIDER)
        port.write(b"X")
        assert port.read(1) == bytes([protocol.STATUS_OK | protocol.BAD_COMMAND])
        assert session.get("error") == 0   # reported, so cleared
        port.write(protocol.load_command([]))
        assert port.read(1) == bytes([protocol.STATUS_OK])


def test_bytes_sent_during_a_run_are_reported_as_an_overrun(tiny: dict[str, Any]) -> None:
    device = device_info(tiny["shape"])
    with tiny["compiled"].open() as session:
        port = SimulatedSerial(session, DIVIDER)
        port.write(protocol.RUN + protocol.INFO * 2)   # the host does not wait for the RUN reply
        reply = port.read(protocol.run_reply_bytes(device))
        assert reply[-1] == 0   # the alarm byte
        protocol.check_status(reply[0])
        with pytest.raises(protocol.LinkError, match=r"^The device reports overrun \(status 0x82\)$"):
            protocol.info(port)


def test_a_device_that_stays_silent_times_out(tiny: dict[str, Any]) -> None:
    with tiny["compiled"].open() as session:
        port = SimulatedSerial(session, DIVIDER, timeout_cycles=4000)
        port.write(protocol.LOAD + (2).to_bytes(4, "little") + bytes(4))   # one of two beats: INFO is payload
        with pytest.raises(protocol.LinkError, match=r"^The device sent 0 of the 14 bytes of its INFO reply"):
            protocol.info(port)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")   # a constructor that raises leaves one
def test_uart_machine_refuses_a_divider_below_4(tiny: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"^UART divider must be an integer of at least 4, not 2$"):
        UARTMachine(tiny["shape"], 2)
    gc.collect()
