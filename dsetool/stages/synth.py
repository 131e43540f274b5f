"""Stage `synth`: generate the design point's accelerator in Amaranth and synthesize it with Yosys/nextpnr.

What is synthesized (`scope` in the metrics):

- `machine`: the whole accelerator that runs the network (`hw.machine.Machine`: memories, sequencer,
  array, K accumulator with bias (output-stationary: the shadow sums' drain, `hw.machine_stream`),
  per-channel output stage with the range check, vector unit, host port),
  whenever the design point has one (`Design.unbuilt` is empty, and the compiler takes the network). Its
  shape comes from the network's untrained skeleton (`dsetool.stages.skeleton`) and the
  design's widths, never from weight values, so one synthesis serves every trained model of the point
  (QAT and PTQ, per-tensor and per-channel scales: the constants are per output channel in any case),
  and the key reads the network's identity instead of a model. Its datapath (`top.datapath`: array, K
  accumulator, column stage; with TMR three of them behind voters) is kept apart in Yosys, so
  `datapath_lut`, `datapath_ff`, `datapath_dsp` and `datapath_bram` are its share of the machine exactly.
  The range checks are placed as the campaigns place them (`protect.placement`: the column outputs, or
  the buffer's read path into the array), SED's only flags (the machine's `alarm`).
  `cycles_per_inference` is the machine's schedule for the network (`program_cycles`, which equals what
  its compiled RTL simulation measures, stage `rtlsim`); latency is that over the achieved Fmax.
- `datapath`: with `hw.synth: datapath`, or where the point has no accelerator (one row, sides that do
  not divide one another, a filter protection: `Design.no_machine`), the datapath alone (array + K
  accumulator + pipelined output stage with one constant set per layer + the range check, at the column
  outputs or, `protect.placement: input`, on the array's inputs; triplicated with TMR), under the keys it
  had before the accelerator existed (a check on the inputs adds `placement` to them). A network the
  machine compiler refuses (an op without a unit, a model whose biases need wider accumulators than the
  design's) falls back to the datapath too, under the accelerator's key (`scope_reason` says why); its
  cycles are the closed-form count over the network's GEMMs and post-GEMM passes (`Design.inference_cycles`).

A netlist that Yosys already counts beyond the target's LUTs, FFs, DSPs or block RAMs is
`status: does_not_fit` naming the resource, without place and route (`hw.flow.synthesize`).

Targets placed without an out-of-context mode (iCE40: every top-level port bit needs a pin, see
`hw.flow.needs_harness`) get the design wrapped in `hw.harness.IOHarness`, which puts it behind six
pins. The design stays its own module (kept apart in Yosys), so the netlist's cells split exactly:
`lut`, `ff`, `dsp` and `bram` are the design's alone, as on every other target, and `harness_lut`,
`harness_ff`, `harness_dsp`, `harness_bram` the harness's own. The P&R figures, `fmax_mhz` and `pins`
(package IOs used), are of the wrapped design, the only one that can be placed.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dsetool.design import PER_CHANNEL, Design, design_of
from dsetool.stages import StageContext
from dsetool.store import Result
from dsetool.validate import ConfigError

if TYPE_CHECKING:
    from amaranth.lib import wiring

    from hw.flow import SynthResult

RTLIL_FILE = "array.il"
VERILOG_FILE = "array.v"
CRITICAL_PATH_KEYS = ("from", "to", "ns", "routing_ns")  # where Fmax is lost: see hw.flow.parse_critical_path
DROPPED = ("synth.json",)  # the full netlist: large, and everything we report is in stat.json / pnr.json
MACHINE, DATAPATH = "machine", "datapath"
# the machine's datapath (array, K accumulator, column stage: `hw.machine_datapath`), its own submodules
# flattened into it, and with TMR its three replicas, kept apart so that Yosys cannot merge them
DATAPATH_MODULES = ("datapath", "datapath.rep*")
SKELETON_DIR = "skeleton"


@dataclass
class _Build:
    """What is synthesized: the component, its scope, the submodules Yosys keeps apart (names or globs
    below the design's module) and the scope's own metrics."""

    component: wiring.Component
    scope: str
    keep: tuple[str, ...]
    metrics: dict[str, Any] = field(default_factory=dict)


def run(ctx: StageContext) -> Result:
    """Build the accelerator (or the datapath), run the flow, keep the reports; a misfit or tool failure
    is a status, not an error."""
    from hw.flow import emit_rtlil, emit_verilog, get_target, needs_harness, synthesize, tool_fingerprint
    from hw.harness import DESIGN_MODULE, IOHarness

    cfg = ctx.config
    design = design_of(cfg)
    datapath_only = design.protection.rtl != design.protection.name   # sed: the accelerator's, not the datapath's
    if design.unbuilt and datapath_only:
        raise ConfigError(str(cfg.name), "hw.protection", f"the datapath has no RTL for {cfg.hw.protection} (it "
                                                          f"builds the range check: none, clip, zero)")
    array = design.array
    build = _machine(ctx, design)
    if isinstance(build, str) and datapath_only:
        return Result({"status": "not_built", "message": build, "target": cfg.hw.target, "scope": MACHINE})
    if isinstance(build, str):
        build = _datapath(design, build)
    target = get_target(cfg.hw.target)
    harnessed = needs_harness(target)
    module = "top" if not harnessed else DESIGN_MODULE
    keep = ((DESIGN_MODULE,) if harnessed else ()) + tuple(f"{module}.{glob}" for glob in build.keep)
    rtlil = emit_rtlil(IOHarness(build.component) if harnessed else build.component, ctx.out / RTLIL_FILE)
    ctx.reporter.note(f"synth {build.scope} {array.rows}x{array.cols} {array.dataflow} W{array.weight_bits}"
                      f"A{array.act_bits} protection={array.protection} tmr={array.tmr} on {cfg.hw.target}"
                      + (" in an IO harness" if harnessed else ""))
    result = synthesize(rtlil, ctx.out, cfg.hw.target, seed=cfg.hw.pnr_seed, freq_mhz=cfg.hw.freq_mhz,
                        keep_hierarchy=keep, placer=cfg.hw.placer)
    resources, extra = _split(result, harnessed)
    if build.scope == MACHINE:
        extra |= _datapath_share(result, module)
    if result.status == "ok":
        emit_verilog(rtlil, ctx.out / VERILOG_FILE)
    for name in DROPPED:
        (ctx.out / name).unlink(missing_ok=True)
    (ctx.out / "design.il").unlink(missing_ok=True)  # a copy of array.il made for the tools
    metrics = {"status": result.status, "message": result.message, "target": cfg.hw.target,
               "scope": build.scope, "rows": array.rows, "cols": array.cols, "dataflow": array.dataflow,
               "act_bits": array.act_bits, "weight_bits": array.weight_bits, "acc_bits": array.acc_bits,
               "multiplier": array.multiplier, "protection": array.protection, "tmr": array.tmr,
               "acc_depth": design.acc_depth, "multiplier_bits": design.multiplier_bits,
               "constants": design.constants, **build.metrics,
               **{k.lower(): v for k, v in resources.items()}, "fmax_mhz": result.fmax_mhz,
               **{f"critical_path_{k}": result.critical_path.get(k) for k in CRITICAL_PATH_KEYS}, **extra,
               "placer": result.placer,
               "seconds_synth": result.seconds.get("synth"), "seconds_pnr": result.seconds.get("pnr")}
    return Result(metrics, extra={"tools": tool_fingerprint()})


def _machine(ctx: StageContext, design: Design) -> _Build | str:
    """Return the design point's accelerator, built from its network's skeleton, or why there is none."""
    if design.unbuilt:
        return design.unbuilt
    from dsetool.machine.build import checked_engine, design_machine
    from dsetool.machine.compiler import UnsupportedOp, compile_program
    from dsetool.machine.program import program_cycles
    from dsetool.stages.skeleton import skeleton_bounds, skeleton_model
    from hw.machine import Machine

    model, calib = skeleton_model(ctx.config, ctx.scratch / SKELETON_DIR)
    try:
        program = compile_program(checked_engine(design, model, skeleton_bounds(design, model, calib)),
                                  design.array.rows, design.array.cols)
        shape, _ = design_machine(design, program)
    except UnsupportedOp as refused:
        return str(refused)
    protection = design.protection   # the array's `protection` is the datapath's unit: none for sed
    metrics = {"protection": protection.name, "placement": protection.placement if protection.entry.protects else None,
               "constants": PER_CHANNEL, "acc_bits": shape.array.acc_bits, "lanes": shape.lanes,
               "lane_bits": shape.array.act_bits,
               "cycles_per_inference": program_cycles(program, shape.weight_buffers, shape.array.dataflow),
               "weight_buffers": shape.weight_buffers, "instructions": len(program.instructions),
               "buffer_words": shape.buffer_words, "weight_words": shape.weight_words,
               "const_words": shape.const_words, "bounds_words": shape.bounds_words}
    return _Build(Machine(shape), MACHINE, DATAPATH_MODULES, metrics)


def _datapath(design: Design, reason: str) -> _Build:
    """Return the design point's datapath alone (`reason`: why its accelerator is not built)."""
    from hw.accelerator import drain_cycles

    component = design.datapath()
    keep = ("rep*",) if design.array.tmr else ()
    return _Build(component, DATAPATH, keep, {"scope_reason": reason, "drain_cycles": drain_cycles(component),
                                               "placement": design.datapath_placement
                                               if design.array.protection != "none" else None})


def _datapath_share(result: SynthResult, module: str) -> dict[str, Any]:
    """Return the resources of the machine's array, accumulator and output stage (`datapath_*`), from the
    Yosys statistics of the modules kept apart."""
    from hw.flow import count_resources, get_target, parse_stat

    stat = result.artifacts.get("stat")
    if stat is None:
        return {}
    modules = json.loads(stat.read_text()).get("modules", {})
    globs = [f"{module}.{name}" for name in DATAPATH_MODULES]
    kept = {name: section for name, section in modules.items()
            if any(fnmatch.fnmatchcase(name.lstrip("\\"), glob) for glob in globs)}
    cells = parse_stat({"modules": kept})
    return {f"datapath_{k.lower()}": v for k, v in count_resources(cells, get_target(result.target).family).items()}


def _split(result: SynthResult, harnessed: bool) -> tuple[dict[str, int], dict[str, Any]]:
    """Return the design's resources and, in an IO harness, the harness's own and the pins used."""
    from hw.flow import get_target
    from hw.harness import split_resources

    stat = result.artifacts.get("stat")
    if not harnessed or stat is None:
        return dict(result.resources), {}
    design, harness = split_resources(json.loads(stat.read_text()), get_target(result.target).family)
    pins = result.utilization.get("SB_IO", {}).get("used")
    return design, {**{f"harness_{k.lower()}": v for k, v in harness.items()}, "pins": pins}


def derived_metrics(design: Design, metrics: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return cycles and latency per inference of the design point's network and, given the unprotected
    baseline's metrics (built the same way, `Design.baseline`), the overhead of its protection in percent.

    The accelerator's cycles are its schedule for the network (in the synth entry); a datapath's are the
    closed form (the array's GEMMs, each plus the output stage's drain, then the vector passes)."""
    if metrics.get("scope") == MACHINE:
        cycles = metrics.get("cycles_per_inference")
        out: dict[str, Any] = {"cycles_per_inference": cycles}
    else:
        drain = metrics.get("drain_cycles", 0)
        array, vector = design.inference_cycles(drain if isinstance(drain, int) else 0)
        cycles = array + vector
        out = {"cycles_per_inference": cycles, "array_cycles": array, "vector_cycles": vector}
    fmax = metrics.get("fmax_mhz")
    out["latency_us"] = None
    if isinstance(cycles, int) and isinstance(fmax, int | float) and fmax > 0:
        out["latency_us"] = cycles / fmax
    if base is not None:
        same = base.get("scope", DATAPATH) == metrics.get("scope", DATAPATH)
        for name in ("lut", "ff", "dsp", "bram", "fmax_mhz"):
            mine, theirs = metrics.get(name), base.get(name)
            if same and isinstance(mine, int | float) and isinstance(theirs, int | float) and theirs:
                out[f"{name}_overhead_pct"] = 100.0 * (float(mine) - float(theirs)) / float(theirs)
            else:
                out[f"{name}_overhead_pct"] = None
    return out
