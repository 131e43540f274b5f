"""Run Yosys and nextpnr on Amaranth designs: the one module of the project that starts external tools.

Every tool call goes through `run_tool`, inside a work directory and with relative file names, because the
YoWASP (WebAssembly) builds of the tools see only their working directory, not the host's /tmp.
`synthesize` turns an RTLIL netlist into a `SynthResult`: resources from Yosys `stat -json`, utilization and
Fmax from the nextpnr report. A design that does not fit the device is a result (`does_not_fit`), and so is a
tool that fails (`tool_error`); neither raises.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

STATUSES = ("ok", "does_not_fit", "tool_error")
DEFAULT_TIMEOUT = 3600.0

RTLIL = "design.il"
SCRIPT = "synth.ys"
NETLIST = "synth.json"
STAT = "stat.json"
REPORT = "pnr.json"
SYNTH_LOG = "yosys.log"
PNR_LOG = "nextpnr.log"


class ToolNotFound(FileNotFoundError):
    """No native build and no YoWASP build of a tool could be found."""


@functools.cache
def find_tool(name: str) -> str:
    """Return the command that runs tool `name` (``yosys``, ``nextpnr-ecp5``, ``nextpnr-ice40``).

    Looks, in order, at the environment variable named like the tool (``YOSYS``, ``NEXTPNR_ECP5``), a native
    build on PATH, the YoWASP console script next to the running Python, and the YoWASP script on PATH.
    """
    override = os.environ.get(name.upper().replace("-", "_"))
    if override:
        return override
    native = shutil.which(name)
    if native:
        return native
    beside = Path(sys.executable).parent / f"yowasp-{name}"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    on_path = shutil.which(f"yowasp-{name}")
    if on_path:
        return on_path
    raise ToolNotFound(f"Tool {name!r} not found: install it on PATH or `pip install yowasp-{name}`")


def run_tool(args: Sequence[str], cwd: Path, log_path: Path, timeout: float,
             env: Mapping[str, str] | None = None) -> int:
    """Run one tool in `cwd` (with environment `env`, default this process's), writing its stdout and stderr
    to `log_path`; return its exit code.

    File names in `args` must be relative to `cwd`. A tool that runs longer than `timeout` seconds is killed;
    the log then ends with an ``ERROR: ... timed out`` line and the exit code is -1.
    """
    with open(log_path, "wb") as log:
        try:
            return subprocess.run(list(args), cwd=cwd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout,
                                  env=None if env is None else dict(env)).returncode
        except subprocess.TimeoutExpired:
            log.write(f"\nERROR: {Path(args[0]).name} timed out after {timeout:g} s\n".encode())
            return -1


def _version(name: str) -> str:
    flag = "-V" if name == "yosys" else "--version"
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "version.log"
        run_tool([find_tool(name), flag], Path(tmp), log, timeout=600.0)
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    # YoWASP prints "Preparing to run ..." before the version while it compiles the wasm for the first time.
    found = [line for line in lines if line and not line.startswith("Preparing to run")]
    return found[0] if found else "unknown"


@functools.cache
def tool_versions() -> dict[str, str]:
    """Return the version line of yosys, nextpnr-ecp5 and nextpnr-ice40 (asked once per process)."""
    return {name: _version(name) for name in ("yosys", "nextpnr-ecp5", "nextpnr-ice40")}


@functools.cache
def tool_fingerprint() -> dict[str, str]:
    """Return which build and version of each tool would run, cheaply (it goes into cache keys).

    A YoWASP tool is identified by its package version, read from the installed metadata without starting
    it; a native or overridden tool by its version line.
    """
    out = {}
    for name in ("yosys", "nextpnr-ecp5", "nextpnr-ice40"):
        try:
            command = find_tool(name)
        except ToolNotFound:
            out[name] = "absent"
            continue
        if Path(command).name == f"yowasp-{name}":
            out[name] = f"yowasp-{name} {metadata.version(f'yowasp-{name}')}"
        else:
            out[name] = _version(name)
    return out


def emit_rtlil(component: Any, path: Path) -> Path:
    """Write the RTLIL of an Amaranth component (top module ``top``) to `path` and return `path`.

    Source locations are left out, so the bytes depend only on the design, not on where the code lives.
    """
    from amaranth.back import rtlil

    path.write_text(rtlil.convert(component, name="top", emit_src=False))
    return path


READABLE_PASSES = "proc -nomux -norom; memory_collect"  # processes stay `always` blocks, as written


def emit_verilog(rtlil_path: Path, verilog_path: Path, *, passes: str = READABLE_PASSES,
                 timeout: float = 600.0) -> Path:
    """Write Verilog next to `rtlil_path`, converted by Yosys through `passes`; return `verilog_path`.

    The default passes keep the netlist for people to read; `hw.rtlsim` asks for ones that make it faster
    to simulate. `verilog_path` must be in the same directory as `rtlil_path`. Raises `RuntimeError` if
    Yosys fails.
    """
    workdir = rtlil_path.parent
    if verilog_path.parent.resolve() != workdir.resolve():
        raise ValueError(f"Verilog path must be beside {rtlil_path}, not {verilog_path}")
    script = f"read_rtlil {rtlil_path.name}; {passes}"
    script += f"; write_verilog -norename {verilog_path.name}"
    log = workdir / f"{verilog_path.stem}.log"
    if run_tool([find_tool("yosys"), "-q", "-p", script], workdir, log, timeout) != 0:
        raise RuntimeError(f"Yosys could not write {verilog_path}: {_first_error(log)}")
    return verilog_path


@dataclass(frozen=True)
class Family:
    """An FPGA family: its Yosys synthesis command and how its cells count as LUT, FF, DSP and BRAM.

    `resources` maps a resource to {cell type pattern (fnmatch): weight}; an ECP5 CCU2C carry cell fills the
    two LUT4 sites of a slice half, so it counts as two LUTs.
    """

    name: str
    synth: str
    resources: Mapping[str, Mapping[str, int]]
    nextpnr: str | None = None


ECP5 = Family(
    "ecp5",
    "synth_ecp5",
    {"LUT": {"LUT4": 1, "CCU2C": 2}, "FF": {"TRELLIS_FF": 1}, "DSP": {"MULT18X18D": 1}, "BRAM": {"DP16KD": 1}},
    "nextpnr-ecp5",
)
ICE40 = Family(
    "ice40",
    "synth_ice40 -dsp",
    {"LUT": {"SB_LUT4": 1}, "FF": {"SB_DFF*": 1}, "DSP": {"SB_MAC16": 1}, "BRAM": {"SB_RAM40_4K": 1}},
    "nextpnr-ice40",
)
XILINX = Family(
    "xilinx",
    "synth_xilinx -flatten -noiopad",
    {"LUT": {"LUT[1-6]": 1}, "FF": {"FD*": 1}, "DSP": {"DSP48E1": 1}, "BRAM": {"RAMB*": 1}},
)


@dataclass(frozen=True)
class Target:
    """A device to synthesize for; without `nextpnr_args` the flow stops after Yosys (area only)."""

    name: str
    family: Family
    nextpnr_args: tuple[str, ...] = ()
    note: str = ""
    capacity: tuple[tuple[str, int], ...] = ()  # (resource, count on the device), as `count_resources` counts


_ICE40_NOTE = (
    "nextpnr-ice40 has no out-of-context mode, so every top-level port bit takes a pin: "
    "wrap the design in an IO harness"
)
TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("ecp5-25k", ECP5, ("--25k", "--package", "CABGA381", "--out-of-context"),
               capacity=(("LUT", 24288), ("FF", 24288), ("DSP", 28), ("BRAM", 56))),
        Target("ecp5-45k", ECP5, ("--45k", "--package", "CABGA381", "--out-of-context"),
               capacity=(("LUT", 43848), ("FF", 43848), ("DSP", 72), ("BRAM", 108))),
        Target("ecp5-85k", ECP5, ("--85k", "--package", "CABGA381", "--out-of-context"),
               capacity=(("LUT", 83640), ("FF", 83640), ("DSP", 156), ("BRAM", 208))),
        Target("ice40-up5k", ICE40, ("--up5k", "--package", "sg48"), _ICE40_NOTE,
               capacity=(("LUT", 5280), ("FF", 5280), ("DSP", 8), ("BRAM", 30))),
        Target("xc7z020", XILINX, capacity=(("LUT", 53200), ("FF", 106400), ("DSP", 220))),
    )
}


PLACERS = ("auto", "heap", "static")
# `auto` places a netlist of at least this many LUTs with nextpnr's electrostatic placer (`static`), smaller
# ones with its analytic default (`heap`). `benchmarks/placer_bars.py` (ECP5-45k W8A8 weight-stationary
# arrays, seeds 1-3, YoWASP nextpnr 0.11.1): an 8x8 with DSP multipliers (4,784-5,032 LUTs) places and routes
# in 109-189 s with `static` against 183-438 s with `heap`, mean Fmax 80.5 against 77.5 MHz; a 4x4 (about
# 2,000 LUTs) in 58-95 s against 35-52 s: `static` spreads filler cells over the whole device first, which a
# small design does not pay back.
STATIC_PLACER_MIN_LUTS = 4000


def pick_placer(placer: str, resources: Mapping[str, int]) -> str:
    """Return the nextpnr placer to run: `placer` itself, or for ``auto`` the faster one for this netlist."""
    if placer not in PLACERS:
        raise ValueError(f"placer must be one of {', '.join(PLACERS)}, not {placer!r}")
    if placer != "auto":
        return placer
    return "static" if resources.get("LUT", 0) >= STATIC_PLACER_MIN_LUTS else "heap"


HARNESS_VERSION = "1"  # of `hw.harness.IOHarness`: in the synth stage's key on targets that need it


def needs_harness(target: Target) -> bool:
    """Return whether `target` is placed and routed with every top-level port bit on a pin (no out-of-context)."""
    return target.family.nextpnr is not None and "--out-of-context" not in target.nextpnr_args


def get_target(name: str) -> Target:
    """Return the target called `name`, or raise ValueError listing the known ones."""
    if name not in TARGETS:
        raise ValueError(f"Target must be one of {', '.join(map(repr, TARGETS))}, not {name!r}")
    return TARGETS[name]


@dataclass(frozen=True)
class SynthResult:
    """What one synthesis (and, where the target has it, place-and-route) run produced.

    `resources` holds LUT, FF, DSP and BRAM counted from the Yosys netlist, `cells` every cell type Yosys
    reports; `utilization` is nextpnr's {bel type: {"used", "available"}} and `fmax_mhz` the achieved
    frequency of the slowest clock (None without P&R or without a clock), `critical_path` where that
    clock's slowest path runs (`parse_critical_path`; empty without P&R). `artifacts` names the files
    written in the work directory; `seconds` the wall time of each tool; `message` is empty when ok.
    """

    target: str
    status: str
    message: str = ""
    resources: Mapping[str, int] = field(default_factory=dict)
    cells: Mapping[str, int] = field(default_factory=dict)
    utilization: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    fmax_mhz: float | None = None
    clock: str | None = None
    critical_path: Mapping[str, Any] = field(default_factory=dict)
    artifacts: Mapping[str, Path] = field(default_factory=dict)
    seconds: Mapping[str, float] = field(default_factory=dict)
    placer: str | None = None   # the nextpnr placer that ran (None without place and route)

    def to_json(self) -> dict[str, Any]:
        """Return the result as plain JSON data, artifact paths as strings."""
        return {
            "target": self.target,
            "status": self.status,
            "message": self.message,
            "resources": dict(self.resources),
            "cells": dict(self.cells),
            "utilization": {k: dict(v) for k, v in self.utilization.items()},
            "fmax_mhz": self.fmax_mhz,
            "clock": self.clock,
            "critical_path": dict(self.critical_path),
            "artifacts": {k: str(v) for k, v in self.artifacts.items()},
            "seconds": dict(self.seconds),
            "placer": self.placer,
        }


def count_resources(cells: Mapping[str, int], family: Family) -> dict[str, int]:
    """Return LUT, FF, DSP and BRAM counts of a cell-type histogram for `family`."""

    def count(weights: Mapping[str, int]) -> int:
        return sum(n * w for cell, n in cells.items() for pat, w in weights.items() if fnmatch.fnmatchcase(cell, pat))

    return {resource: count(weights) for resource, weights in family.resources.items()}


def parse_stat(stat: Mapping[str, Any]) -> dict[str, int]:
    """Return the cell-type histogram of the whole design from Yosys `stat -json` output.

    The ``design`` section totals the hierarchy (a kept submodule counts once per instance); instances of
    the design's own modules and Yosys bookkeeping cells (``$scopeinfo``) are left out.
    """
    modules = {name.lstrip("\\") for name in stat.get("modules", {})}
    sections = [stat["design"]] if "design" in stat else list(stat.get("modules", {}).values())
    cells: dict[str, int] = {}
    for section in sections:
        for cell, n in section.get("num_cells_by_type", {}).items():
            if cell not in modules and cell != "$scopeinfo":
                cells[cell] = cells.get(cell, 0) + int(n)
    return dict(sorted(cells.items()))


def parse_fmax(report: Mapping[str, Any]) -> tuple[str | None, float | None]:
    """Return (clock, achieved MHz) of the slowest clock in a nextpnr report, or (None, None) without one."""
    clocks = {name: float(v["achieved"]) for name, v in report.get("fmax", {}).items()}
    if not clocks:
        return None, None
    clock = min(clocks, key=clocks.__getitem__)
    return clock, clocks[clock]


def instance_of(cell: str) -> str:
    """Return the instance path a flattened nextpnr cell belongs to ("" at the top level).

    Yosys names a flattened cell by its instance path and its own name joined with dots
    (``array.pe_2_7.psum_out_TRELLIS_FF_Q_7``), so everything before the last dot is the instance.
    """
    return cell.rpartition(".")[0]


def parse_critical_path(report: Mapping[str, Any], clock: str | None) -> dict[str, Any]:
    """Return where the slowest register-to-register path of `clock` starts and ends, and what it spends.

    Fmax alone cannot tell a protection that lengthens the critical path from placement luck: if the
    range check's registers are neither end of the path, its Fmax difference is the placer's. Returns
    ``from``/``to`` (instance paths of the launching and capturing cells), ``ns`` (the path's delay),
    ``logic_ns`` (clock-to-out, cells and setup) and ``routing_ns``; empty when the report has no path
    for the clock.
    """
    if clock is None:
        return {}
    for path in report.get("critical_paths", []):
        steps = path.get("path", [])
        edges = [str(path.get(end, "")).split()[-1:] for end in ("from", "to")]  # "posedge clk"
        if not steps or edges != [[clock], [clock]]:
            continue
        routing = sum(float(s["delay"]) for s in steps if s.get("type") == "routing")
        total = sum(float(s["delay"]) for s in steps)
        return {"from": instance_of(steps[0]["from"]["cell"]), "to": instance_of(steps[-1]["to"]["cell"]),
                "ns": total, "logic_ns": total - routing, "routing_ns": routing}
    return {}


_NO_BELS = re.compile(r"no BELs remaining to implement cell type '([^']+)'")
_OVERUSED = re.compile(r"^Info:\s+(\S+):\s+(\d+)/\s*(\d+)\s+(\d+)%", re.MULTILINE)
_NO_PLACEMENT = re.compile(r"Unable to find legal placement|utili[sz]ation limit|Failed to route")


def misfit(log_text: str) -> str | None:
    """Return which resource ran out, from a nextpnr log, or None when the log does not show a misfit."""
    over = [f"{bel} {used}/{avail} ({pct}%)" for bel, used, avail, pct in _OVERUSED.findall(log_text) if int(pct) > 100]
    if over:
        return ", ".join(over)
    bels = _NO_BELS.search(log_text)
    if bels:
        return f"no {bels.group(1)} left"
    congested = _NO_PLACEMENT.search(log_text)
    return f"placement or routing failed ({congested.group(0)})" if congested else None


def _first_error(log: Path) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    for line in text.splitlines():
        if "ERROR" in line:
            return line.strip()
    tail = [line.strip() for line in text.splitlines() if line.strip()]
    return tail[-1] if tail else f"no output in {log.name}"


def yosys_script(target: Target, keep_hierarchy: Sequence[str] = ()) -> str:
    """Return the Yosys script for `target`; `keep_hierarchy` names modules (globs) that must not be merged."""
    keep = [f"setattr -mod -set keep_hierarchy 1 {' '.join(keep_hierarchy)}"] if keep_hierarchy else []
    lines = [
        f"read_rtlil {RTLIL}",
        *keep,
        f"{target.family.synth} -top top -json {NETLIST}",
        f"tee -q -o {STAT} stat -json",
    ]
    return "\n".join(lines) + "\n"


def _stage_input(rtlil_path: Path, workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    staged = workdir / RTLIL
    if rtlil_path.resolve() != staged.resolve():
        shutil.copyfile(rtlil_path, staged)
    for stale in (NETLIST, STAT, REPORT, SYNTH_LOG, PNR_LOG):
        (workdir / stale).unlink(missing_ok=True)


def _timed(args: Sequence[str], workdir: Path, log: str, timeout: float, seconds: dict[str, float], key: str) -> int:
    start = time.monotonic()
    code = run_tool(args, workdir, workdir / log, timeout)
    seconds[key] = round(time.monotonic() - start, 3)
    return code


def synthesize(
    rtlil_path: Path,
    workdir: Path,
    target: str,
    *,
    seed: int = 1,
    freq_mhz: float = 100.0,
    keep_hierarchy: Sequence[str] = (),
    placer: str = "auto",
    timeout: float = DEFAULT_TIMEOUT,
) -> SynthResult:
    """Synthesize `rtlil_path` (top module ``top``) for `target` in `workdir`, then place and route it.

    The netlist is copied to ``workdir/design.il``; Yosys writes ``synth.json`` and ``stat.json``, nextpnr
    (out of context, timing failures allowed) ``pnr.json``, each tool its log. `keep_hierarchy` lists module
    globs (``top.rep*`` for TMR replicas) that Yosys must keep apart; `placer` the nextpnr placer
    (`pick_placer`). Raises ValueError for an unknown target or placer and ToolNotFound without tools;
    every tool failure is returned as a status instead.
    """
    spec = get_target(target)
    pick_placer(placer, {})   # refuse an unknown placer before running anything
    workdir = Path(workdir)
    _stage_input(Path(rtlil_path), workdir)
    (workdir / SCRIPT).write_text(yosys_script(spec, keep_hierarchy))
    artifacts = {"rtlil": workdir / RTLIL, "script": workdir / SCRIPT, "synth_log": workdir / SYNTH_LOG}
    seconds: dict[str, float] = {}

    code = _timed([find_tool("yosys"), "-s", SCRIPT], workdir, SYNTH_LOG, timeout, seconds, "synth")
    if code != 0 or not (workdir / NETLIST).exists() or not (workdir / STAT).exists():
        message = f"yosys failed (exit {code}): {_first_error(workdir / SYNTH_LOG)}"
        return SynthResult(target, "tool_error", message, artifacts=artifacts, seconds=seconds)
    artifacts.update(netlist=workdir / NETLIST, stat=workdir / STAT)
    cells = parse_stat(json.loads((workdir / STAT).read_text()))
    area = SynthResult(target, "ok", resources=count_resources(cells, spec.family), cells=cells)
    over = [f"{kind} {area.resources[kind]}/{available} ({100 * area.resources[kind] // available}%)"
            for kind, available in spec.capacity if area.resources.get(kind, 0) > available]
    if over:  # no placer packs more LUT4s, FFs or multipliers than the device has: skip a P&R that must fail
        message = f"does not fit {spec.name}: {', '.join(over)} in the Yosys netlist"
        return replace(area, status="does_not_fit", message=message, artifacts=artifacts, seconds=seconds)
    if spec.family.nextpnr is None:
        return replace(area, artifacts=artifacts, seconds=seconds)
    area = replace(area, placer=pick_placer(placer, area.resources))
    return _place_and_route(spec, workdir, seed, freq_mhz, timeout, area, artifacts, seconds)


def _place_and_route(
    spec: Target,
    workdir: Path,
    seed: int,
    freq_mhz: float,
    timeout: float,
    area: SynthResult,
    artifacts: dict[str, Path],
    seconds: dict[str, float],
) -> SynthResult:
    assert spec.family.nextpnr is not None
    args = [find_tool(spec.family.nextpnr), *spec.nextpnr_args, "--json", NETLIST, "--freq", f"{freq_mhz:g}"]
    args += ["--timing-allow-fail", "--seed", str(seed), "--placer", str(area.placer), "--report", REPORT]
    return _finish_pnr(spec, workdir, args, timeout, area, artifacts, seconds)


# ---- in-context builds for a board: pins from a constraint file, a bitstream at the end

BITSTREAM = "top.bit"
LPF = "top.lpf"
TEXTCFG = "top.config"
PACK_LOG = "ecppack.log"
# ecppack's .bit: a comment block (0xFF 0x00, text, 0x00 0xFF), then the preamble with the ECP5 sync word.
ECP5_COMMENT_START = b"\xff\x00"
ECP5_PREAMBLE = b"\xff\xff\xbd\xb3"


@dataclass(frozen=True)
class BitstreamResult:
    """What an in-context ECP5 build produced (`build_bitstream`): as `SynthResult`, plus the clock the
    constraints ask for (`clock_mhz`), whether place and route met it, and the bitstream's size."""

    synth: SynthResult
    clock_mhz: float | None = None
    bitstream_bytes: int = 0

    @property
    def status(self) -> str:
        return self.synth.status

    @property
    def bitstream(self) -> Path | None:
        return self.synth.artifacts.get("bitstream")

    @property
    def timing_met(self) -> bool | None:
        if self.synth.fmax_mhz is None or self.clock_mhz is None:
            return None
        return self.synth.fmax_mhz >= self.clock_mhz

    def to_json(self) -> dict[str, Any]:
        return {**self.synth.to_json(), "clock_mhz": self.clock_mhz, "timing_met": self.timing_met,
                "bitstream_bytes": self.bitstream_bytes}


def is_ecp5_bitstream(data: bytes) -> bool:
    """Return whether `data` starts as an ecppack .bit file does: a comment block, then the preamble."""
    end = data.find(b"\x00\xff", len(ECP5_COMMENT_START))
    return data.startswith(ECP5_COMMENT_START) and end >= 0 and data[end + 2:end + 6] == ECP5_PREAMBLE


def build_bitstream(
    rtlil_path: Path,
    lpf_path: Path,
    workdir: Path,
    device_args: Sequence[str],
    *,
    clock_mhz: float | None = None,
    seed: int = 1,
    timeout: float = DEFAULT_TIMEOUT,
) -> BitstreamResult:
    """Synthesize `rtlil_path` (top module ``top``, its ports the board's pins) for an ECP5, place and route it
    with the pin and clock constraints of `lpf_path`, and pack the bitstream ``workdir/top.bit``.

    Unlike `synthesize` this is an in-context build: nextpnr places every top-level port on the pin the LPF
    names (`device_args` say which device, package and speed grade: ``--85k --package CABGA381 --speed 6``),
    takes the clock frequencies from the LPF, and `ecppack` turns its text configuration into the .bit.
    Timing failures are allowed (`BitstreamResult.timing_met` against `clock_mhz` tells). Statuses as for
    `synthesize`; a bitstream that `ecppack` does not write or that lacks the ECP5 preamble is a tool error.
    """
    spec = Target("ecp5-board", ECP5, tuple(device_args))
    workdir = Path(workdir)
    _stage_input(Path(rtlil_path), workdir)
    if Path(lpf_path).resolve() != (workdir / LPF).resolve():
        shutil.copyfile(lpf_path, workdir / LPF)
    for stale in (TEXTCFG, BITSTREAM, PACK_LOG):
        (workdir / stale).unlink(missing_ok=True)
    (workdir / SCRIPT).write_text(yosys_script(spec))
    artifacts = {"rtlil": workdir / RTLIL, "lpf": workdir / LPF, "script": workdir / SCRIPT,
                 "synth_log": workdir / SYNTH_LOG}
    seconds: dict[str, float] = {}
    code = _timed([find_tool("yosys"), "-s", SCRIPT], workdir, SYNTH_LOG, timeout, seconds, "synth")
    if code != 0 or not (workdir / NETLIST).exists() or not (workdir / STAT).exists():
        message = f"yosys failed (exit {code}): {_first_error(workdir / SYNTH_LOG)}"
        return BitstreamResult(SynthResult(spec.name, "tool_error", message, artifacts=artifacts, seconds=seconds),
                               clock_mhz)
    artifacts.update(netlist=workdir / NETLIST, stat=workdir / STAT)
    cells = parse_stat(json.loads((workdir / STAT).read_text()))
    area = SynthResult(spec.name, "ok", resources=count_resources(cells, ECP5), cells=cells,
                       placer=pick_placer("auto", count_resources(cells, ECP5)))
    args = [find_tool("nextpnr-ecp5"), *device_args, "--json", NETLIST, "--lpf", LPF, "--textcfg", TEXTCFG]
    args += ["--timing-allow-fail", "--seed", str(seed), "--placer", str(area.placer), "--report", REPORT]
    placed = _finish_pnr(spec, workdir, args, timeout, area, artifacts, seconds)
    if placed.status != "ok":
        return BitstreamResult(placed, clock_mhz)
    code = _timed([find_tool("ecppack"), "--input", TEXTCFG, "--bit", BITSTREAM], workdir, PACK_LOG, timeout,
                  seconds, "pack")
    bit = workdir / BITSTREAM
    if code != 0 or not bit.exists() or not is_ecp5_bitstream(bit.read_bytes()[:4096]):
        message = f"ecppack failed (exit {code}): {_first_error(workdir / PACK_LOG)}"
        return BitstreamResult(replace(placed, status="tool_error", message=message), clock_mhz)
    artifacts.update(textcfg=workdir / TEXTCFG, bitstream=bit)
    return BitstreamResult(replace(placed, artifacts=artifacts, seconds=seconds), clock_mhz, bit.stat().st_size)


def _finish_pnr(spec: Target, workdir: Path, args: list[str], timeout: float, area: SynthResult,
                artifacts: dict[str, Path], seconds: dict[str, float]) -> SynthResult:
    """Run nextpnr with `args` (out of context, or pinned for a board) and read its report; a failure or a
    misfit is a status."""
    assert spec.family.nextpnr is not None
    code = _timed(args, workdir, PNR_LOG, timeout, seconds, "pnr")
    artifacts["pnr_log"] = workdir / PNR_LOG
    if code != 0 or not (workdir / REPORT).exists():
        short = misfit((workdir / PNR_LOG).read_text(errors="replace"))
        if short is None:
            message = f"{spec.family.nextpnr} failed (exit {code}): {_first_error(workdir / PNR_LOG)}"
            return replace(area, status="tool_error", message=message, artifacts=artifacts, seconds=seconds)
        message = f"does not fit {spec.name}: {short}"
        if spec.note and "SB_IO" in short:
            message += f" ({spec.note})"
        return replace(area, status="does_not_fit", message=message, artifacts=artifacts, seconds=seconds)
    artifacts["report"] = workdir / REPORT
    report = json.loads((workdir / REPORT).read_text())
    used = {bel: {"used": int(u["used"]), "available": int(u["available"])} for bel, u in report["utilization"].items()}
    clock, fmax = parse_fmax(report)
    return replace(area, utilization=used, fmax_mhz=fmax, clock=clock,
                   critical_path=parse_critical_path(report, clock), artifacts=artifacts, seconds=seconds)
