"""Run a design point's network on an FPGA board: build the bitstream of its accelerator behind a UART
(`hw.board`), cached in the store by what it is built from, and talk to the board over a serial port
(`hw.uart_protocol`): load the program, weights and constants, send test images, read the logits and the
machine's alarm (a range check fired during the run).

The bitstream depends only on the machine's shape (layer shapes and widths), its RTL's version, the board
and the baud rate, not on the trained weights: a retrained model of the same design point runs on the same
bitstream.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsetool.store import Store, make_key

if TYPE_CHECKING:
    from dsetool.config import RunConfig
    from dsetool.engine import Engine
    from dsetool.machine.program import Program
    from dsetool.progress import Reporter
    from hw.machine_format import MachineImages, MachineShape
    from hw.uart_protocol import Port

STAGE = "board"   # the store's build cache this module keeps its bitstreams in
FORMAT = "2"      # of the cached build and its UART protocol (`hw.uart_protocol.VERSION`): part of every key
RESULT = "result.json"
PORT_TIMEOUT = 30.0   # seconds a reply may take: a LOAD chunk at 9600 baud, the largest network's run


class BoardError(Exception):
    """The design point, the board, the baud rate or the serial port cannot be used as asked."""


class BuildFailed(RuntimeError):
    """The tools failed on the board build, or the design does not fit the board's FPGA."""


@dataclass(frozen=True)
class PointMachine:
    """A design point's network compiled for the accelerator: the engine it must equal, its program, the
    machine's shape and the images the host loads."""

    engine: Engine
    program: Program
    shape: MachineShape
    images: MachineImages


@dataclass(frozen=True)
class BoardBuild:
    """A bitstream in the store's cache: where, under which key, whether it was there already, and the
    build's figures (`hw.flow.BitstreamResult.to_json`)."""

    key: str
    directory: Path
    cached: bool
    result: dict[str, Any]

    @property
    def bitstream(self) -> Path:
        return self.directory / "top.bit"


def check_point(cfg: RunConfig) -> Any:
    """Return the point's `Design`, or raise BoardError (the reason, without a command name) when the
    accelerator does not build it."""
    from dsetool.design import design_of

    design = design_of(cfg)
    if design.no_machine:
        raise BoardError(design.no_machine)
    return design


def point_machine(store: Store, cfg: RunConfig, reporter: Reporter | None = None) -> PointMachine:
    """Quantize the point's model (or take it from the store) and compile it for the accelerator; raise
    BoardError (the reason, without a command name) when the accelerator does not build the point."""
    from dsetool.engine import load_intmodel
    from dsetool.machine.build import checked_engine, design_machine
    from dsetool.machine.compiler import UnsupportedOp, compile_program
    from dsetool.stages import ensure, quant_stage
    from dsetool.stages.restrict import bounds_of

    design = check_point(cfg)
    entry, _ = ensure(store, quant_stage(cfg), cfg, reporter)
    bounds = None
    if design.protection.entry.reads_bounds:   # the range checks' bounds, profiled as for the campaigns
        bounds = bounds_of(ensure(store, "range-restrict", cfg, reporter)[0])
    # the engine with the point's checks placed as the campaigns place them: what the machine computes
    engine = checked_engine(design, load_intmodel(entry.path), bounds)
    try:
        program = compile_program(engine, design.array.rows, design.array.cols)
        shape, images = design_machine(design, program)   # the machine synth measures for the point
    except UnsupportedOp as error:
        raise BoardError(str(error)) from None
    return PointMachine(engine, program, shape, images)


def bitstream_key(shape: MachineShape, board: str, baud: int, seed: int = 1) -> str:
    """Return the cache key of a bitstream: the machine's shape and RTL version, the board, the baud rate,
    the placement seed and the tools."""
    from dsetool.machine.build import MACHINE_VERSION, part_versions
    from hw import flow

    parts = part_versions(shape.array.dataflow, shape.weight_buffers, shape.checked_read)
    return make_key(STAGE, {"format": FORMAT, "machine": MACHINE_VERSION, **parts, "shape": asdict(shape),
                            "board": board, "baud": baud, "seed": seed, "tools": flow.tool_fingerprint()})


def build_bitstream(store: Store, shape: MachineShape, board: str, baud: int, *, seed: int = 1) -> BoardBuild:
    """Return the bitstream of the UART machine of `shape` for `board` at `baud`: from the store's cache, or
    built (`hw.board.build`) in a directory beside it and renamed into place once it is complete. A build
    whose tools fail or whose design does not fit raises BuildFailed and caches nothing; an unknown board or a
    baud rate its clock cannot make raises BoardError."""
    from hw import board as boards
    from hw.uart import divider_for

    try:
        divider_for(boards.clock_hz(board), baud)
    except ValueError as error:
        raise BoardError(f"board: {error}") from None
    key = bitstream_key(shape, board, baud, seed)
    cache = store.cache_dir(STAGE)
    target = cache / key
    if (target / RESULT).is_file():
        return BoardBuild(key, target, True, json.loads((target / RESULT).read_text()))
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=cache))
    try:
        result = boards.build(shape, board, staging, baud=baud, seed=seed)
        if result.status != "ok":
            raise BuildFailed(f"board: the {board} build failed ({result.status}): {result.synth.message}")
        payload = {**result.to_json(), "board": board, "baud": baud}
        payload.pop("artifacts")
        (staging / RESULT).write_text(json.dumps(payload, indent=2, sort_keys=True))
        if not target.exists():
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BoardBuild(key, target, False, json.loads((target / RESULT).read_text()))


@contextmanager
def open_port(device: str, baud: int, timeout: float = PORT_TIMEOUT) -> Iterator[Port]:
    """Open serial port `device` at `baud` (8N1) with pyserial; raise BoardError when it cannot be opened."""
    import serial

    try:
        port = serial.Serial(device, baud, timeout=timeout)
    except (serial.SerialException, ValueError) as error:
        raise BoardError(f"board-run: cannot open serial port {device!r}: {error}") from None
    try:
        port.reset_input_buffer()
        yield port
    finally:
        port.close()


def run_images(port: Port, machine: PointMachine, codes: Sequence[Sequence[int]]) -> list[tuple[list[int], bool]]:
    """Check that the board runs this machine, load its program, weights and constants, and return the logits
    of each image's input codes (`dsetool.machine.encode.input_codes`) and whether the machine's alarm was
    raised on it."""
    from hw import uart_protocol as protocol
    from hw.machine_format import load_beats
    from hw.uart_machine import device_info

    device = protocol.info(port)
    expected = device_info(machine.shape)
    if device != expected:
        raise BoardError(f"board-run: the board runs a different machine ({device}, this point needs {expected}): "
                         "build its bitstream with `dsetool board` and program the board")
    protocol.load(port, load_beats(machine.shape, machine.images))
    return [protocol.infer(port, image, device) for image in codes]


def test_images(machine: PointMachine, cfg: RunConfig, count: int
                ) -> tuple[list[list[int]], list[list[int]], list[bool]]:
    """Return the input codes of the point's first `count` test images, the engine's logits for them and
    whether one of the engine's range checks fires on each (`dsetool.machine.alarms`; never without one)."""
    from dsetool.machine.alarms import engine_alarms
    from dsetool.machine.encode import input_codes
    from dsetool.stages.common import prepare

    splits, _ = prepare(cfg, cfg.threads)
    x = splits.test.x[:count]
    images = machine.engine.quantize_input(x).numpy()
    codes = [[int(c) for c in input_codes(machine.program, image)] for image in images]
    logits = [[int(v) for v in row] for row in machine.engine.logits(x).numpy()]
    alarms = [bool(a) for a in engine_alarms(machine.engine, x)] if machine.shape.check != "none" \
        else [False] * len(codes)
    return codes, logits, alarms


def build_summary(board: str, built: BoardBuild) -> str:
    """Return one line on a bitstream: where, how large, the resources, Fmax against the board clock."""
    r = built.result
    used = ", ".join(f"{kind} {r['resources'][kind]:,}" for kind in ("LUT", "FF", "DSP", "BRAM"))
    cached = ", cached" if built.cached else ""
    if r["fmax_mhz"] is None:
        timing = "Fmax not reported"
    else:
        met = "met" if r["timing_met"] else "NOT met"
        timing = f"Fmax {r['fmax_mhz']:.1f} MHz at a {r['clock_mhz']:g} MHz clock: timing {met}"
    return f"board {board}: {built.bitstream} ({r['bitstream_bytes']:,} bytes{cached}); {used}; {timing}"


def image_line(row: dict[str, Any]) -> str:
    """Return one line on an image run on the board: its logits, class, `alarm` when the machine raised it,
    and the engine's logits and alarm where they differ."""
    alarm = " alarm" if row["alarm"] else ""
    differs = []
    if row["logits"] != row["expected"]:
        differs.append(f"engine: {row['expected']}")
    if row["alarm"] != row["engine_alarm"]:
        differs.append(f"engine alarm: {'raised' if row['engine_alarm'] else 'not raised'}")
    return f"image {row['image']}: {row['logits']} class {row['prediction']}{alarm}" + \
        (f" ({'; '.join(differs)})" if differs else "")
