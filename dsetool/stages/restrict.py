"""Stage `range-restrict`: profile the bounds of the protected activation tensors of a quantized model.

Runs the bit-exact integer engine on the calibration split and writes `bounds.json` (people can read it;
the inject stage's protections and the hardware's range-check registers take their bounds from it). See
`dsetool.protect.bounds` for what is profiled and how the bounds are widened.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from dsetool.design import Design, design_of
from dsetool.engine import load_intmodel
from dsetool.protect.bounds import coverage, profiled_bounds
from dsetool.stages import StageContext, quant_stage
from dsetool.stages.common import prepare
from dsetool.store import Result

BOUNDS_FILE = "bounds.json"


def run(ctx: StageContext) -> Result:
    """Profile the bounds of this design point's quantized model and store them."""
    cfg = ctx.config
    design = design_of(cfg)
    p = design.protection
    splits, _ = prepare(cfg)
    engine = design.engine(load_intmodel(ctx.upstream[quant_stage(cfg)].path))
    ctx.reporter.note(f"range-restrict: {p.range} bounds per {p.granularity} on {len(splits.calib.y)} "
                      f"calibration images")
    bounds = profiled_bounds(engine, splits.calib.x, p.layers, p.granularity, p.range, p.factor, p.margin)
    (ctx.out / BOUNDS_FILE).write_text(json.dumps(bounds_document(design, bounds, len(splits.calib.y)), indent=2,
                                                  sort_keys=True))
    return Result({"protected_layers": len(bounds), "calibration_images": len(splits.calib.y),
                   "bound_coverage": coverage(bounds), "range": p.range, "granularity": p.granularity,
                   "weight_bits": cfg.quant.weight_bits, "act_bits": cfg.quant.act_bits})


def bounds_document(design: Design, bounds: Sequence[Any], images: int) -> dict[str, Any]:
    """Return the `bounds.json` document of profiled `bounds` (`dsetool.protect.bounds.profiled_bounds`)."""
    p = design.protection
    return {"granularity": p.granularity, "range": p.range, "factor": p.factor, "margin": p.margin,
            "calibration_images": images, "layers": {b.layer: b.to_json() for b in bounds}}


def read_bounds(ctx: StageContext, design: Design) -> dict[str, Any] | None:
    """Return the `bounds.json` document of the point's upstream range-restrict entry, or None when its
    protection reads no bounds (a stage that reads them lists range-restrict among its needs)."""
    if not design.protection.entry.reads_bounds:
        return None
    return bounds_of(ctx.upstream["range-restrict"])


def bounds_of(entry: Any) -> dict[str, Any]:
    """Return the `bounds.json` document of a range-restrict store entry."""
    return json.loads(entry.artifact(BOUNDS_FILE).read_text())
