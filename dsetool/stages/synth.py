"""Stage `synth`: generate the design point's array in Amaranth and synthesize it with Yosys/nextpnr.

The result depends only on the array (its shape, dataflow, widths, multiplier), the target, the clock
constraint, the P&R seed and the tool versions, so every model that runs on the same array shares one
synthesis. Per-inference cycles and latency of a particular network are derived from the entry by
`derived_metrics` (closed-form cycles over the network's GEMMs divided by the achieved Fmax).
"""

from __future__ import annotations

from typing import Any

from dsetool.arrays import array_config, network_cycles
from dsetool.config import RunConfig
from dsetool.stages import StageContext
from dsetool.store import Result

RTLIL_FILE = "array.il"
VERILOG_FILE = "array.v"
DROPPED = ("synth.json",)  # the full netlist: large, and everything we report is in stat.json / pnr.json


def run(ctx: StageContext) -> Result:
    """Build the array, run the flow, keep the reports; a misfit or tool failure is a status, not an error."""
    from hw.array import OSArray, WSArray
    from hw.flow import emit_rtlil, emit_verilog, synthesize, tool_fingerprint

    cfg = ctx.config
    array = array_config(cfg)
    component = (WSArray if array.dataflow == "ws" else OSArray)(array)
    rtlil = emit_rtlil(component, ctx.out / RTLIL_FILE)
    ctx.reporter.note(f"synth {array.rows}x{array.cols} {array.dataflow} W{array.weight_bits}A{array.act_bits} "
                      f"on {cfg.hw.target}")
    result = synthesize(rtlil, ctx.out, cfg.hw.target, seed=cfg.hw.pnr_seed, freq_mhz=cfg.hw.freq_mhz)
    if result.status == "ok":
        emit_verilog(rtlil, ctx.out / VERILOG_FILE)
    for name in DROPPED:
        (ctx.out / name).unlink(missing_ok=True)
    (ctx.out / "design.il").unlink(missing_ok=True)  # a copy of array.il made for the tools
    metrics = {"status": result.status, "message": result.message, "target": cfg.hw.target,
               "rows": array.rows, "cols": array.cols, "dataflow": array.dataflow, "act_bits": array.act_bits,
               "weight_bits": array.weight_bits, "acc_bits": array.acc_bits, "multiplier": array.multiplier,
               **{k.lower(): v for k, v in result.resources.items()}, "fmax_mhz": result.fmax_mhz,
               "seconds_synth": result.seconds.get("synth"), "seconds_pnr": result.seconds.get("pnr")}
    return Result(metrics, extra={"tools": tool_fingerprint()})


def derived_metrics(cfg: RunConfig, metrics: dict[str, Any]) -> dict[str, Any]:
    """Return cycles and latency per inference of the design point's network on the synthesized array."""
    cycles = network_cycles(cfg)
    fmax = metrics.get("fmax_mhz")
    latency = cycles / fmax if isinstance(fmax, int | float) and fmax > 0 else None
    return {"cycles_per_inference": cycles, "latency_us": latency}
