"""Stage `synth`: generate the design point's array in Amaranth and synthesize it with Yosys/nextpnr.

Everything is read from the point's `dsetool.design.Design`. The result depends only on the array (its
shape, dataflow, widths, multiplier, and for weight-stationary the depth of its K accumulator: the
network's largest GEMM M), the output stage's requantization multiplier width (the one the engine's
campaigns use) and constant layout, the target, the clock constraint, the P&R seed and the tool versions,
so every model that runs on the same datapath shares one synthesis. The synthesized design is the whole
datapath (array + K accumulator + pipelined output stage + protection, with TMR if asked). The output
stage holds one constant set per layer: a per-channel design (`constants` in the metrics) is synthesized
with that stage for now, under its own key. Per-inference cycles and latency of a particular network are
derived from the entry by `derived_metrics` (closed-form cycles over the network's GEMMs, each plus the
datapath's `drain_cycles`, divided by the achieved Fmax).

Targets placed without an out-of-context mode (iCE40: every top-level port bit needs a pin, see
`hw.flow.needs_harness`) get the datapath wrapped in `hw.harness.IOHarness`, which puts it behind six
pins. The datapath stays its own module (kept apart in Yosys), so the netlist's cells split exactly:
`lut`, `ff`, `dsp` and `bram` are the datapath's alone, as on every other target, and `harness_lut`,
`harness_ff`, `harness_dsp`, `harness_bram` the harness's own (its shift registers and their muxes). The P&R
figures, `fmax_mhz` and `pins` (package IOs used), are of the wrapped design, the only one that can be
placed, and Fmax includes the paths from the harness's input register into the datapath and from the
datapath's outputs into the harness's capture chain. Other targets synthesize the bare datapath exactly as
before and report no harness keys.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from dsetool.design import Design, design_of
from dsetool.stages import StageContext
from dsetool.store import Result
from dsetool.validate import ConfigError

if TYPE_CHECKING:
    from hw.flow import SynthResult

RTLIL_FILE = "array.il"
VERILOG_FILE = "array.v"
CRITICAL_PATH_KEYS = ("from", "to", "ns", "routing_ns")  # where Fmax is lost: see hw.flow.parse_critical_path
DROPPED = ("synth.json",)  # the full netlist: large, and everything we report is in stat.json / pnr.json


def run(ctx: StageContext) -> Result:
    """Build the array, run the flow, keep the reports; a misfit or tool failure is a status, not an error."""
    from hw.accelerator import drain_cycles
    from hw.flow import emit_rtlil, emit_verilog, get_target, needs_harness, synthesize, tool_fingerprint
    from hw.harness import DESIGN_MODULE, IOHarness

    cfg = ctx.config
    design = design_of(cfg)
    if design.protection.rtl != design.protection.name:
        raise ConfigError(str(cfg.name), "hw.protection", f"the array has no RTL for {cfg.hw.protection} (it "
                                                          f"builds the range check: none, clip, zero)")
    array = design.array
    component = design.datapath()
    target = get_target(cfg.hw.target)
    harnessed = needs_harness(target)
    module = "top" if not harnessed else DESIGN_MODULE
    keep = ((DESIGN_MODULE,) if harnessed else ()) + ((f"{module}.rep*",) if array.tmr else ())
    rtlil = emit_rtlil(IOHarness(component) if harnessed else component, ctx.out / RTLIL_FILE)
    ctx.reporter.note(f"synth {array.rows}x{array.cols} {array.dataflow} W{array.weight_bits}A{array.act_bits} "
                      f"protection={array.protection} tmr={array.tmr} on {cfg.hw.target}"
                      + (" in an IO harness" if harnessed else ""))
    result = synthesize(rtlil, ctx.out, cfg.hw.target, seed=cfg.hw.pnr_seed, freq_mhz=cfg.hw.freq_mhz,
                        keep_hierarchy=keep, placer=cfg.hw.placer)
    resources, extra = _split(result, harnessed)
    if result.status == "ok":
        emit_verilog(rtlil, ctx.out / VERILOG_FILE)
    for name in DROPPED:
        (ctx.out / name).unlink(missing_ok=True)
    (ctx.out / "design.il").unlink(missing_ok=True)  # a copy of array.il made for the tools
    metrics = {"status": result.status, "message": result.message, "target": cfg.hw.target,
               "rows": array.rows, "cols": array.cols, "dataflow": array.dataflow, "act_bits": array.act_bits,
               "weight_bits": array.weight_bits, "acc_bits": array.acc_bits, "multiplier": array.multiplier,
               "protection": array.protection, "tmr": array.tmr, "drain_cycles": drain_cycles(component),
               "acc_depth": design.acc_depth, "multiplier_bits": design.multiplier_bits,
               "constants": design.constants,
               **{k.lower(): v for k, v in resources.items()}, "fmax_mhz": result.fmax_mhz,
               **{f"critical_path_{k}": result.critical_path.get(k) for k in CRITICAL_PATH_KEYS}, **extra,
               "placer": result.placer,
               "seconds_synth": result.seconds.get("synth"), "seconds_pnr": result.seconds.get("pnr")}
    return Result(metrics, extra={"tools": tool_fingerprint()})


def _split(result: SynthResult, harnessed: bool) -> tuple[dict[str, int], dict[str, Any]]:
    """Return the datapath's resources and, in an IO harness, the harness's own and the pins used."""
    from hw.flow import get_target
    from hw.harness import split_resources

    stat = result.artifacts.get("stat")
    if not harnessed or stat is None:
        return dict(result.resources), {}
    design, harness = split_resources(json.loads(stat.read_text()), get_target(result.target).family)
    pins = result.utilization.get("SB_IO", {}).get("used")
    return design, {**{f"harness_{k.lower()}": v for k, v in harness.items()}, "pins": pins}


def derived_metrics(design: Design, metrics: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return cycles and latency per inference of the design point's network on the synthesized datapath
    (the array's and the vector unit's cycles, `Design.inference_cycles`), and, given the unprotected
    baseline's metrics, the overhead of its protection in percent."""
    drain = metrics.get("drain_cycles", 0)
    array, vector = design.inference_cycles(drain if isinstance(drain, int) else 0)
    cycles = array + vector
    fmax = metrics.get("fmax_mhz")
    latency = cycles / fmax if isinstance(fmax, int | float) and fmax > 0 else None
    out: dict[str, Any] = {"cycles_per_inference": cycles, "array_cycles": array, "vector_cycles": vector,
                           "latency_us": latency}
    if base is not None:
        for name in ("lut", "ff", "dsp", "fmax_mhz"):
            mine, theirs = metrics.get(name), base.get(name)
            if isinstance(mine, int | float) and isinstance(theirs, int | float) and theirs:
                out[f"{name}_overhead_pct"] = 100.0 * (float(mine) - float(theirs)) / float(theirs)
            else:
                out[f"{name}_overhead_pct"] = None
    return out
