"""The accelerator on a development board: the UART machine (`hw.uart_machine`) on the board's clock, its
serial lines on the USB-serial bridge's pins, and a bitstream built in context (`hw.flow.build_bitstream`).

Boards come from `amaranth-boards`; `BOARDS` lists the ones set up here, each the platform class that knows
the pins and the clock, and the nextpnr device flags of its FPGA. The bitstream holds no weights: the host
loads the program, weights and constants over the UART (`hw.uart_protocol`), so one bitstream serves every
trained model of a machine shape. LED 0 shows the machine busy, LED 1 an error waiting for the next status.

Design-space sweeps keep synthesizing out of context (`hw.flow.synthesize`); this is for one chosen point.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amaranth.hdl import Elaboratable, Module
from amaranth.lib import io

from hw import flow
from hw.machine_format import MachineShape
from hw.uart import divider_for
from hw.uart_machine import UARTMachine

DEFAULT_BAUD = 115_200


@dataclass(frozen=True)
class Board:
    """A board: its `amaranth-boards` platform class (``module:Class``) and its FPGA's nextpnr flags."""

    name: str
    platform: str
    device_args: tuple[str, ...]

    def make_platform(self) -> Any:
        """Return the board's platform, set to render only the netlist and the pin constraints (the tools
        run through `hw.flow`, not through the platform's build script)."""
        module, _, name = self.platform.partition(":")
        base = getattr(importlib.import_module(module), name)
        # Amaranth's Trellis templates also render a debug Verilog (by running Yosys) and build scripts;
        # the netlist and the LPF are all the flow reads, and no tool may run outside `hw.flow`.
        templates = {path: text for path, text in base._trellis_file_templates.items()
                     if path.endswith((".il", ".lpf"))}
        return type(f"{name}Files", (base,), {"file_templates": templates})()


BOARDS: dict[str, Board] = {b.name: b for b in (
    Board("ulx3s-85f", "amaranth_boards.ulx3s:ULX3S_85F_Platform", ("--85k", "--package", "CABGA381", "--speed", "6")),
    Board("ulx3s-45f", "amaranth_boards.ulx3s:ULX3S_45F_Platform", ("--45k", "--package", "CABGA381", "--speed", "6")),
    Board("ulx3s-25f", "amaranth_boards.ulx3s:ULX3S_25F_Platform", ("--25k", "--package", "CABGA381", "--speed", "6")),
)}


def get_board(name: str) -> Board:
    """Return the board called `name`, or raise ValueError listing the known ones."""
    if name not in BOARDS:
        raise ValueError(f"Board must be one of {', '.join(map(repr, BOARDS))}, not {name!r}")
    return BOARDS[name]


def clock_hz(board: str) -> float:
    """Return the frequency of `board`'s default clock, which the accelerator runs on."""
    return float(get_board(board).make_platform().default_clk_constraint.frequency)


class BoardTop(Elaboratable):
    """The top level on the board: a `UARTMachine` at `baud` on the platform's default clock, its lines on
    UART 0, its busy and error flags on LEDs 0 and 1. Raises ValueError when the clock cannot make the baud
    rate (`hw.uart.divider_for`)."""

    def __init__(self, shape: MachineShape, clock_hz: float, baud: int = DEFAULT_BAUD) -> None:
        self.shape, self.baud = shape, baud
        self.divider = divider_for(clock_hz, baud)

    def elaborate(self, platform: Any) -> Module:
        m = Module()
        m.submodules.accelerator = device = UARTMachine(self.shape, self.divider)
        uart = platform.request("uart", 0, dir="-")
        m.submodules.rx_buffer = rx = io.Buffer("i", uart.rx)
        m.submodules.tx_buffer = tx = io.Buffer("o", uart.tx)
        m.submodules.busy_led = busy = io.Buffer("o", platform.request("led", 0, dir="-"))
        m.submodules.error_led = error = io.Buffer("o", platform.request("led", 1, dir="-"))
        m.d.comb += [device.rx.eq(rx.i), tx.o.eq(device.tx), busy.o.eq(device.busy), error.o.eq(device.error)]
        return m


def board_files(shape: MachineShape, board: str, workdir: Path, baud: int = DEFAULT_BAUD) -> tuple[Path, Path, float]:
    """Write the board design's netlist (``top.il``) and pin constraints (``top.lpf``) into `workdir`; return
    their paths and the board clock in Hz."""
    platform = get_board(board).make_platform()
    clock_hz = float(platform.default_clk_constraint.frequency)
    plan = platform.prepare(BoardTop(shape, clock_hz, baud), name="top", emit_src=False)
    workdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ("top.il", "top.lpf"):
        text = plan.files[name]
        (workdir / name).write_text(text if isinstance(text, str) else text.decode())
        paths.append(workdir / name)
    return paths[0], paths[1], clock_hz


def build(shape: MachineShape, board: str, workdir: Path, *, baud: int = DEFAULT_BAUD, seed: int = 1,
          timeout: float = flow.DEFAULT_TIMEOUT) -> flow.BitstreamResult:
    """Build the bitstream of the UART machine of `shape` for `board` in `workdir` (``top.bit``)."""
    workdir = Path(workdir)
    rtlil_path, lpf_path, clock_hz = board_files(shape, board, workdir / "design", baud)
    return flow.build_bitstream(rtlil_path, lpf_path, workdir, get_board(board).device_args,
                                clock_mhz=clock_hz / 1e6, seed=seed, timeout=timeout)
