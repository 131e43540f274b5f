"""Gather what the store holds for each design point of an experiment into one row per point.

Nothing is computed here: each stage a sweep would run at a point (`point_stages`) is looked up by its key,
and a missing entry leaves its cells blank. So a report can be written while a sweep is still running, and
writing it never starts a training, a campaign or a tool.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dsetool.config import Experiment, Point, RunConfig
from dsetool.protect import registry as protections
from dsetool.report.columns import axis_column
from dsetool.store import Entry, Store

if TYPE_CHECKING:
    from dsetool.design import Design


@dataclass(frozen=True)
class PointResults:
    """The store entries found for one design point (stage -> entry), and its unprotected design's synthesis."""

    point_id: int
    point: Point
    entries: Mapping[str, Entry]
    baseline_synth: Mapping[str, Any] | None

    def metrics(self, stage: str) -> dict[str, Any]:
        """Return a stage's metrics at this point, empty when the store has no entry."""
        entry = self.entries.get(stage)
        return entry.metrics if entry is not None else {}


Lookup = Callable[[str, RunConfig], "Entry | None"]


def find(store: Store, exp: Experiment) -> list[PointResults]:
    """Look up every stage of every design point in the store (no computation)."""
    lookup = _cached_lookup(store)
    return [_find_point(lookup, number, point) for number, point in enumerate(exp.points, start=1)]


def _cached_lookup(store: Store) -> Lookup:
    """Return a (stage, config) -> entry lookup that verifies each entry once: points share their upstream
    entries (one float model under a whole grid), and verifying means hashing every artifact."""
    from dsetool.stages import stage_key

    seen: dict[tuple[str, str], Entry | None] = {}

    def lookup(stage: str, cfg: RunConfig) -> Entry | None:
        key = stage_key(stage, cfg)[0]
        if (stage, key) not in seen:
            seen[stage, key] = store.get(stage, key)
        return seen[stage, key]

    return lookup


def _find_point(lookup: Lookup, number: int, point: Point) -> PointResults:
    from dsetool.design import design_of
    from dsetool.stages import point_stages

    cfg = point.config
    entries = {stage: entry for stage in point_stages(cfg) if (entry := lookup(stage, cfg)) is not None}
    # The same array without protection or TMR (the point's own when unprotected): what overhead is against.
    base = lookup("synth", design_of(cfg).baseline().config) if "synth" in entries else None
    return PointResults(number, point, entries, base.metrics if base is not None else None)


def has_results(found: Sequence[PointResults]) -> bool:
    """Tell whether any design point has any entry in the store."""
    return any(p.entries for p in found)


def rows(found: Sequence[PointResults]) -> list[dict[str, Any]]:
    """Return one flat row per design point, keyed by the names of `dsetool.report.columns`."""
    return [row(p) for p in found]


def row(p: PointResults) -> dict[str, Any]:
    """Return the row of one design point."""
    from dsetool.design import design_of

    cfg = p.point.config
    design = design_of(cfg)
    out: dict[str, Any] = {"point_id": p.point_id, "point": p.point.label}
    out.update({axis_column(k): _cell(v) for k, v in p.point.axes.items()})
    return {**out, **identity(design), **accuracy(p), **reliability(cfg, p.metrics("inject")),
            **hardware(design, p.metrics("synth"), p.baseline_synth), **keys(p)}


def _cell(value: Any) -> Any:
    """Make an axis value fit a table cell (lists, e.g. several fault sites, become `a+b`)."""
    return "+".join(map(str, value)) if isinstance(value, list | tuple) else value


def identity(design: Design) -> dict[str, Any]:
    """Return what the design point is: network, data, bit widths, method, protection, array."""
    cfg, array = design.config, design.array
    hw = cfg.hw
    return {"model": cfg.model.label, "dataset": cfg.data.name, "weight_bits": array.weight_bits,
            "act_bits": array.act_bits, "method": cfg.quant.method, "protection": hw.protection, "tmr": hw.tmr,
            "protection_label": protection_label(hw.protection, hw.tmr),
            "array": f"{hw.rows}x{hw.cols} {hw.dataflow}", "multiplier": hw.multiplier, "target": hw.target}


def protection_label(protection: str, tmr: bool) -> str:
    """Name a protection with TMR in one word: none, clip, tmr, clip+tmr."""
    if tmr:
        return "tmr" if protection == protections.NONE else f"{protection}+tmr"
    return protection


def accuracy(p: PointResults) -> dict[str, Any]:
    """Return float and quantized test accuracy from whichever stage recorded them (campaign first), and the
    quantized model's activation sparsity and sharpness."""
    from dsetool.stages import quant_stage

    quantized = p.metrics(quant_stage(p.point.config))
    sources = [p.metrics("inject"), quantized, p.metrics("pretrain")]
    return {"float_acc": _first(sources, "float_test_acc"), "quant_acc": _first(sources[:2], "quant_test_acc"),
            **{name: _first([quantized], name) for name in ("act_sparsity", "sharpness", "hessian_trace")}}


def _first(sources: Sequence[Mapping[str, Any]], name: str) -> Any:
    return next((m[name] for m in sources if _number(m.get(name))), None)


def scenario(cfg: RunConfig) -> str:
    """Name a fault campaign by what it does (not how it is sized), e.g. `act bitflip ber=1e-04`."""
    f = cfg.faults
    rate = f"ber={f.ber:g}" if f.ber is not None else f"{f.faults_per_inference}/inference"
    parts = ["+".join(f.sites), f.model, rate]
    if f.bits != "all":
        parts.append(f"bits={f.bits if isinstance(f.bits, str) else ','.join(map(str, f.bits))}")
    if f.layers:
        parts.append(f"layers={','.join(f.layers)}")
    return " ".join(parts)


def reliability(cfg: RunConfig, m: Mapping[str, Any]) -> dict[str, Any]:
    """Return the campaign's paired accuracies and outcome rates with their 95 % bounds."""
    f = cfg.faults
    out: dict[str, Any] = {"fault_scenario": scenario(cfg), "fault_site": "+".join(f.sites), "fault_model": f.model,
                           "ber": f.ber, "faults_per_inference": None if f.ber is not None else f.faults_per_inference}
    for name in ("faulty_inferences", "stop_reason", "golden_accuracy", "accuracy_under_faults", "accuracy_drop"):
        out[name] = m.get(name)
    out["accuracy_ci_lo"], out["accuracy_ci_hi"] = _bounds(m.get("accuracy_ci"))
    out["accuracy_drop_ci_lo"], out["accuracy_drop_ci_hi"] = _bounds(m.get("accuracy_drop_ci"))
    for name in ("masked", "sdc", "critical"):
        low, high = _bounds(m.get(f"{name}_ci"))
        out.update({f"{name}_rate": m.get(f"{name}_rate"), f"{name}_ci_lo": low, f"{name}_ci_hi": high})
    for name in ("detected_rate", "sdc_detected_rate", "changed_rate", "golden_agreement"):
        out[name] = m.get(name)
    return out


def _bounds(ci: Any) -> tuple[Any, Any]:
    return (ci[0], ci[1]) if isinstance(ci, list | tuple) and len(ci) == 2 else (None, None)


def hardware(design: Design, m: Mapping[str, Any], base: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return area, Fmax, cycles, latency and the protection's overhead (blank without a synthesis)."""
    from dsetool.stages.synth import derived_metrics

    out: dict[str, Any] = {"synth_status": m.get("status"), "synth_scope": m.get("scope", "datapath" if m else None)}
    out.update({name: m.get(name) for name in ("lut", "ff", "dsp", "bram", "datapath_lut", "datapath_ff", "fmax_mhz")})
    derived = derived_metrics(design, dict(m), dict(base) if base is not None else None) if m else {}
    out["cycles"] = derived.get("cycles_per_inference")
    out["latency_us"] = derived.get("latency_us")
    for name in ("lut", "ff", "dsp", "bram"):
        out[f"{name}_overhead_pct"] = derived.get(f"{name}_overhead_pct")
    out["fmax_overhead_pct"] = derived.get("fmax_mhz_overhead_pct")
    return out


def keys(p: PointResults) -> dict[str, Any]:
    """Return the store keys the row was read from (to find the artifacts behind a number)."""
    from dsetool.stages import quant_stage

    quant = p.entries.get(quant_stage(p.point.config))
    return {"quant_key": quant.key if quant else None,
            **{f"{stage}_key": (e.key if (e := p.entries.get(stage)) else None) for stage in ("inject", "synth")}}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
