"""The accelerator on a board (`hw.board`): the ULX3S pin and clock constraints around the UART machine, the
boards and baud rates it refuses, and (slow) a whole in-context build to an ECP5 bitstream
(`hw.flow.build_bitstream`)."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from dsetool.machine.compiler import compile_program
from dsetool.machine.encode import machine_of
from hw import board, flow
from hw.machine_format import MachineShape
from tests.fixtures.engines import factory_engine

TINY_CNN = "tests.fixtures.tiny_cnn:make"


@pytest.fixture(scope="module")
def tiny_shape(tmp_path_factory: pytest.TempPathFactory) -> MachineShape:
    engine = factory_engine(tmp_path_factory.mktemp("tiny"), TINY_CNN, bits=4, size=12)
    return machine_of(compile_program(engine, 4, 4))[0]


def test_constraints_put_the_uart_on_the_ftdi_pins_and_the_25_mhz_clock(tiny_shape: MachineShape,
                                                                         tmp_path: Path) -> None:
    rtlil_path, lpf_path, clock_hz = board.board_files(tiny_shape, "ulx3s-85f", tmp_path)
    lpf = lpf_path.read_text()
    assert clock_hz == 25e6
    for port, site in (("clk25_0__io", "G2"), ("uart_0__rx__io", "M1"), ("uart_0__tx__io", "L4"),
                       ("led_0__io", "B2"), ("led_1__io", "C2")):
        assert f'LOCATE COMP "{port}" SITE "{site}";' in lpf
    assert 'FREQUENCY PORT "clk25_0__io" 25000000.0 HZ;' in lpf
    rtlil = rtlil_path.read_text()
    assert "module \\top\n" in rtlil and "\\clk25_0__io" in rtlil and "\\uart_0__tx__io" in rtlil


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")   # built to be inspected, not elaborated
def test_the_board_design_divides_the_clock_for_the_baud_rate(tiny_shape: MachineShape) -> None:
    assert board.BoardTop(tiny_shape, 25e6, 115_200).divider == 217
    assert board.BoardTop(tiny_shape, 25e6, 1_000_000).divider == 25
    with pytest.raises(ValueError, match=r"^A 25 MHz clock cannot make 4000000 baud within 2 %"):
        board.BoardTop(tiny_shape, 25e6, 4_000_000)
    gc.collect()   # the components warn when collected: here, under the filter


def test_unknown_boards_are_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"^Board must be one of 'ulx3s-85f', 'ulx3s-45f', 'ulx3s-25f', "
                                         r"not 'orangecrab'$"):
        board.get_board("orangecrab")


def test_bitstream_check_wants_the_comment_block_then_the_sync_word() -> None:
    good = b"\xff\x00Part: LFE5U-85F-6CABGA381\x00\xff" + b"\xff\xff\xbd\xb3" + bytes(8)
    assert flow.is_ecp5_bitstream(good)
    assert not flow.is_ecp5_bitstream(good.replace(b"\xbd\xb3", b"\xbd\xb4"))
    assert not flow.is_ecp5_bitstream(good[2:])


@pytest.mark.slow
@pytest.mark.toolchain
def test_tiny_network_builds_to_an_ecp5_bitstream(tiny_shape: MachineShape, tmp_path: Path) -> None:
    result = board.build(tiny_shape, "ulx3s-25f", tmp_path)
    assert result.status == "ok", result.synth.message
    bit = tmp_path / "top.bit"
    data = bit.read_bytes()
    assert result.bitstream == bit and result.bitstream_bytes == len(data) > 100_000
    assert data[:2] == b"\xff\x00" and b"LFE5U-25F" in data[:64] and b"\xff\xff\xbd\xb3" in data[:64]
    assert result.synth.resources["DSP"] > 0
    assert result.synth.utilization["TRELLIS_IO"]["used"] == 5   # the clock, rx, tx and two LEDs
    assert result.clock_mhz == 25.0 and result.timing_met   # the tiny machine closes timing at the board clock
    assert set(result.synth.seconds) == {"synth", "pnr", "pack"}
