"""`dsetool board` and `dsetool board-run`: the bitstream built once per machine shape and board (a spy on the
build), and the host side run against a serial port whose far end is the UART machine in compiled simulation
(logits equal to the engine's, the alarm never raised on an unprotected point, an alarm the engine does not
raise counted as a disagreement), a device that answers for another machine, one that stays silent, and a
port that does not exist."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

import dsetool.board
import hw.board
from dsetool.cli import main
from dsetool.config import load_experiment
from dsetool.store import Store
from hw import flow, rtlsim
from hw import uart_protocol as protocol
from hw.uart_host import SimulatedSerial
from hw.uart_machine import UARTMachine, device_info

DIVIDER = 4
EXPERIMENT = {"name": "board", "model": {"arch": "mlp", "mlp_hidden": [16]},
              "data": {"name": "digits", "calib_size": 32, "max_train": 400}, "quant": {"bits": 4},
              "hw": {"rows": 4, "cols": 4},
              "train": {"pretrain": {"epochs": 1, "batch_size": 128}, "qat": {"epochs": 1, "batch_size": 128}}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The experiment file, a store holding its quantized model, and the point's machine."""
    root = tmp_path_factory.mktemp("board")
    path = root / "exp.yaml"
    path.write_text(yaml.safe_dump(EXPERIMENT, sort_keys=False))
    runs = root / "runs"
    point = load_experiment(path).points[0]
    return {"path": path, "runs": runs, "machine": dsetool.board.point_machine(Store(runs), point.config)}


@pytest.fixture(scope="module")
def compiled(rtl_builds: Path, setup: dict[str, Any]) -> rtlsim.CompiledModel:
    """The point's UART machine in compiled simulation."""
    return rtlsim.build(UARTMachine(setup["machine"].shape, DIVIDER), rtl_builds)


def invoke(setup: dict[str, Any], *args: str) -> tuple[Any, list[dict[str, Any]]]:
    result = CliRunner().invoke(main, [args[0], str(setup["path"]), "--json", "--runs", str(setup["runs"]), *args[1:]])
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return result, rows


def simulated(compiled: rtlsim.CompiledModel) -> Any:
    """Return a context manager factory: a session of `compiled` (a UART machine) as a serial port."""
    @contextmanager
    def port() -> Iterator[SimulatedSerial]:
        with compiled.open() as session:
            yield SimulatedSerial(session, DIVIDER)

    return port


def serve(monkeypatch: pytest.MonkeyPatch, port_of: Any) -> list[tuple[str, int]]:
    """Make `dsetool.board.open_port` yield `port_of()`; return the (device, baud) pairs it was asked for."""
    opened: list[tuple[str, int]] = []

    @contextmanager
    def fake(device: str, baud: int, timeout: float = 1.0) -> Iterator[Any]:
        opened.append((device, baud))
        with port_of() as port:
            yield port

    monkeypatch.setattr(dsetool.board, "open_port", fake)
    return opened


@pytest.mark.toolchain
def test_board_run_prints_the_simulated_boards_logits(setup: dict[str, Any], compiled: rtlsim.CompiledModel,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    opened = serve(monkeypatch, simulated(compiled))
    result, rows = invoke(setup, "board-run", "--port", "/dev/ttyUSB7", "--images", "3", "--baud", "1000000")
    assert result.exit_code == 0, result.output
    assert opened == [("/dev/ttyUSB7", 1_000_000)]
    assert [row["image"] for row in rows] == [0, 1, 2]
    assert all(row["agree"] and row["logits"] == row["expected"] for row in rows)
    assert all(row["prediction"] == row["logits"].index(max(row["logits"])) for row in rows)
    assert all(row["alarm"] is False and row["engine_alarm"] is False for row in rows)   # no range check
    assert "board-run: 3 images, 3 with the engine's logits and alarm" in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("image ")]
    assert len(lines) == 3 and not any("alarm" in line for line in lines)


@pytest.mark.slow
@pytest.mark.toolchain
def test_a_sed_point_runs_on_the_board_with_its_checks_and_alarm(rtl_builds: Path,
                                                                 setup: dict[str, Any], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """SED per channel where the layers read their inputs, bounds profiled on 32 calibration images, on
    the output-stationary machine (the weight-stationary one's alarm over the UART: `tests/hw/
    test_uart_machine.py`): the board's machine has the checks (in detect mode), and its alarm is the
    engine's on every image."""
    protected = {**EXPERIMENT, "hw": {**EXPERIMENT["hw"], "protection": "sed", "dataflow": "os"},
                 "protect": {"placement": "input", "granularity": "channel"}}
    path = tmp_path / "sed.yaml"
    path.write_text(yaml.safe_dump(protected, sort_keys=False))
    point = load_experiment(path).points[0]
    machine = dsetool.board.point_machine(Store(setup["runs"]), point.config)
    assert (machine.shape.check, machine.shape.input_check, machine.shape.array.dataflow) == ("detect", True, "os")
    compiled = rtlsim.build(UARTMachine(machine.shape, DIVIDER), rtl_builds)

    serve(monkeypatch, simulated(compiled))
    result = CliRunner().invoke(main, ["board-run", str(path), "--json", "--runs", str(setup["runs"]), "--port",
                                       "/dev/ttyUSB0", "--images", "12", "--baud", "1000000"])
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert result.exit_code == 0, result.output
    assert len(rows) == 12 and all(row["agree"] for row in rows)
    assert [row["alarm"] for row in rows] == [row["engine_alarm"] for row in rows]


@pytest.mark.toolchain
def test_an_alarm_the_engine_does_not_raise_is_a_disagreement(setup: dict[str, Any], compiled: rtlsim.CompiledModel,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's alarm (here said raised on image 1) against the board's: not the same, the run fails."""
    real = dsetool.board.test_images

    def raised_on_one(*args: Any) -> tuple[Any, Any, list[bool]]:
        codes, logits, alarms = real(*args)
        return codes, logits, [index == 1 for index in range(len(alarms))]

    serve(monkeypatch, simulated(compiled))
    monkeypatch.setattr(dsetool.board, "test_images", raised_on_one)
    result, rows = invoke(setup, "board-run", "--port", "/dev/ttyUSB7", "--images", "2", "--baud", "1000000")
    assert result.exit_code == 1, result.output
    assert [(row["agree"], row["alarm"], row["engine_alarm"]) for row in rows] == [(True, False, False),
                                                                                   (False, False, True)]
    assert rows[1]["logits"] == rows[1]["expected"]
    assert "(engine alarm: raised)" in result.stderr
    assert "board-run: 2 images, 1 with the engine's logits and alarm" in result.stderr
    assert "board-run: the board's logits or alarm differ from the engine's on 1 of 2 images" in result.output


def test_image_line_says_alarm_and_what_the_engine_says_where_it_differs() -> None:
    row = {"image": 3, "logits": [1, -2], "expected": [1, -2], "prediction": 0, "alarm": True, "engine_alarm": True}
    assert dsetool.board.image_line(row) == "image 3: [1, -2] class 0 alarm"
    assert dsetool.board.image_line({**row, "engine_alarm": False}) == \
        "image 3: [1, -2] class 0 alarm (engine alarm: not raised)"
    assert dsetool.board.image_line({**row, "alarm": False, "expected": [0, 5]}) == \
        "image 3: [1, -2] class 0 (engine: [0, 5]; engine alarm: raised)"


class Device:
    """A device model that answers INFO with `info` (of this host's protocol version unless it says otherwise;
    or nothing at all) and every other command with OK."""

    def __init__(self, info: protocol.Info | None) -> None:
        self.info, self.replies = info, bytearray()

    def write(self, data: bytes) -> int:
        if self.info is not None:
            self.replies += bytes([protocol.STATUS_OK]) + (self.info.encode() if data == protocol.INFO else b"")
        return len(data)

    def read(self, size: int) -> bytes:
        out = bytes(self.replies[:size])
        del self.replies[:size]
        return out


@contextmanager
def device(info: protocol.Info | None) -> Iterator[Device]:
    yield Device(info)


def test_a_board_built_for_another_machine_is_a_usage_error(setup: dict[str, Any],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    other = protocol.Info(code_bits=8, code_signed=False, acc_bits=25, num_classes=10, input_codes=4096)
    serve(monkeypatch, lambda: device(other))
    result, _ = invoke(setup, "board-run", "--port", "/dev/ttyUSB0")
    assert result.exit_code == 2
    assert "board-run: the board runs a different machine" in result.output and "dsetool board" in result.output
    assert "Traceback" not in result.output


def test_a_board_of_another_protocol_version_fails_with_both_versions(setup: dict[str, Any],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    old = dataclasses.replace(device_info(setup["machine"].shape), version=1)   # a bitstream without the alarm
    serve(monkeypatch, lambda: device(old))
    result, _ = invoke(setup, "board-run", "--port", "/dev/ttyUSB0")
    assert result.exit_code == 1
    assert "board-run: /dev/ttyUSB0: The device speaks protocol version 1, this host 2" in result.output


def test_a_silent_board_fails_with_the_port_named(setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    serve(monkeypatch, lambda: device(None))
    result, _ = invoke(setup, "board-run", "--port", "/dev/ttyUSB0")
    assert result.exit_code == 1
    assert "board-run: /dev/ttyUSB0: The device sent 0 of the 14 bytes of its INFO reply (timed out)" in result.output


def test_a_port_that_cannot_be_opened_is_a_usage_error(setup: dict[str, Any], tmp_path: Path) -> None:
    missing = str(tmp_path / "ttyNONE")
    result, _ = invoke(setup, "board-run", "--port", missing, "--images", "1")
    assert result.exit_code == 2
    assert f"board-run: cannot open serial port {missing!r}" in result.output


def test_bitstream_is_built_once_per_machine_shape_and_board(setup: dict[str, Any], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[tuple[str, int]] = []

    def fake_build(shape: Any, board: str, workdir: Path, *, baud: int, seed: int = 1) -> flow.BitstreamResult:
        builds.append((board, baud))
        (workdir / "top.bit").write_bytes(b"\xff\x00Part\x00\xff\xff\xff\xbd\xb3" + bytes(100))
        synth = flow.SynthResult("ecp5-board", "ok", resources={"LUT": 10, "FF": 5, "DSP": 1, "BRAM": 2},
                                 fmax_mhz=40.0, artifacts={"bitstream": workdir / "top.bit"})
        return flow.BitstreamResult(synth, 25.0, 110)

    monkeypatch.setattr(hw.board, "build", fake_build)
    monkeypatch.setattr(flow, "tool_fingerprint", lambda: {"yosys": "test"})
    runs = ["--runs", str(tmp_path / "runs")]
    first = CliRunner().invoke(main, ["board", str(setup["path"]), "--json", *runs])
    again = CliRunner().invoke(main, ["board", str(setup["path"]), "--json", *runs])
    assert first.exit_code == again.exit_code == 0, first.output + again.output
    one, two = (json.loads(r.stdout.splitlines()[-1]) for r in (first, again))
    assert builds == [("ulx3s-85f", 115_200)]
    assert (one["cached"], two["cached"]) == (False, True) and one["key"] == two["key"]
    assert Path(two["path"]).read_bytes()[:2] == b"\xff\x00" and two["metrics"]["bitstream_bytes"] == 110
    assert two["metrics"]["timing_met"] and "timing met" in again.stderr
    other = CliRunner().invoke(main, ["board", str(setup["path"]), "--json", *runs, "--baud", "1000000"])
    assert json.loads(other.stdout.splitlines()[-1])["key"] != one["key"] and len(builds) == 2


def test_bitstream_key_reads_the_machines_rtl_version(setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import dsetool.machine.build

    monkeypatch.setattr(flow, "tool_fingerprint", lambda: {"yosys": "test"})
    shape = setup["machine"].shape
    key = dsetool.board.bitstream_key(shape, "ulx3s-85f", 115_200)
    single = dataclasses.replace(shape, weight_buffers=1)
    single_key = dsetool.board.bitstream_key(single, "ulx3s-85f", 115_200)
    # the double-buffered machine's own part: its bitstreams are made again, the single-buffered one's kept
    monkeypatch.setattr(dsetool.machine.build, "OVERLAP_VERSION", dsetool.machine.build.OVERLAP_VERSION + 1)
    assert shape.weight_buffers == 2 and dsetool.board.bitstream_key(shape, "ulx3s-85f", 115_200) != key
    assert dsetool.board.bitstream_key(single, "ulx3s-85f", 115_200) == single_key
    monkeypatch.setattr(dsetool.machine.build, "MACHINE_VERSION", dsetool.machine.build.MACHINE_VERSION + 1)
    assert dsetool.board.bitstream_key(single, "ulx3s-85f", 115_200) != single_key


@pytest.mark.parametrize(("args", "message"), [
    (["--board", "orangecrab"], "board: Board must be one of 'ulx3s-85f', 'ulx3s-45f', 'ulx3s-25f', not 'orangecrab'"),
    (["--baud", "4000000"], "board: A 25 MHz clock cannot make 4000000 baud within 2 % (nearest divider 6)"),
    (["--set", "hw.rows=1"], "board: the accelerator needs at least 2 array rows (hw.rows)"),
    (["--set", "hw.protection=median3"], "board: the accelerator has no unit for median3"),
])
def test_boards_and_points_the_board_cannot_take_are_usage_errors(setup: dict[str, Any], args: list[str],
                                                                  message: str) -> None:
    result, _ = invoke(setup, "board", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_an_experiment_with_several_points_needs_one_picked(setup: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**EXPERIMENT, "sweep": {"quant.bits": [4, 8]}}))
    result = CliRunner().invoke(main, ["board", str(path), "--runs", str(tmp_path / "runs")])
    assert result.exit_code == 2
    assert "has 2 design points; pick one with --point (one of: quant.bits=4, quant.bits=8)" in result.output


def test_summary_says_when_the_board_clock_is_too_fast_for_the_design(tmp_path: Path) -> None:
    result = {"resources": {"LUT": 7060, "FF": 4092, "DSP": 16, "BRAM": 54}, "bitstream_bytes": 2052897,
              "fmax_mhz": 21.04, "clock_mhz": 25.0, "timing_met": False}
    built = dsetool.board.BoardBuild("ab" * 32, tmp_path, True, result)
    assert dsetool.board.build_summary("ulx3s-85f", built) == (
        f"board ulx3s-85f: {tmp_path / 'top.bit'} (2,052,897 bytes, cached); LUT 7,060, FF 4,092, DSP 16, BRAM 54; "
        "Fmax 21.0 MHz at a 25 MHz clock: timing NOT met")


def test_info_tells_apart_machines_that_take_the_same_codes(setup: dict[str, Any]) -> None:
    """Another weight buffering (or range check) loads other memory images into a machine that takes the
    same codes and gives as many logits: INFO's digest of the shape differs, so board-run refuses it."""
    shape = setup["machine"].shape
    ours, other = device_info(shape), device_info(dataclasses.replace(shape, weight_buffers=3 - shape.weight_buffers))
    assert dataclasses.replace(other, machine=ours.machine) == ours and other.machine != ours.machine
    assert protocol.Info.decode(ours.encode()) == ours
