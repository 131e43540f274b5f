"""Terminal tables of results (rich, on stderr so stdout stays machine-readable)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from dsetool.protect import registry as protections

if TYPE_CHECKING:
    from dsetool.check import Finding
    from dsetool.config import Point
    from dsetool.store import Entry

Column = tuple[str, Callable[[dict[str, Any]], str]]


def _rate_ci(name: str) -> Callable[[dict[str, Any]], str]:
    def show(m: dict[str, Any]) -> str:
        low, high = m.get(f"{name}_ci", (None, None))
        if not isinstance(m.get(f"{name}_rate"), float) or low is None:
            return "-"
        return f"{100 * m[f'{name}_rate']:.2f} [{100 * low:.2f}-{100 * high:.2f}]"
    return show


def _interval(name: str) -> Callable[[dict[str, Any]], str]:
    """Show a figure with its interval in percentage points (e.g. the paired accuracy drop)."""
    def show(m: dict[str, Any]) -> str:
        bounds = m.get(f"{name}_ci")
        if not isinstance(m.get(name), float) or not bounds:
            return "-"
        return f"{100 * m[name]:.2f} [{100 * bounds[0]:.2f}, {100 * bounds[1]:.2f}]"
    return show


def _acted(m: dict[str, Any]) -> str:
    """Show what a protection did: a detector's detections, or how often a filter or vote changed a value."""
    shown = [f"{_pct(m[name])} {word}" for name, word in (("detected_rate", "det"), ("changed_rate", "chg"))
             if isinstance(m.get(name), int | float)]
    return ", ".join(shown) or "-"


def _metric_pct(name: str) -> Callable[[dict[str, Any]], str]:
    return lambda m: _pct(m.get(name))


MODEL_COLUMNS: list[Column] = [
    ("W/A", lambda m: f"{m.get('weight_bits', '-')}/{m.get('act_bits', '-')}"),
    ("float %", _metric_pct("float_test_acc")),
    ("val %", _metric_pct("quant_val_acc")),
    ("test %", _metric_pct("quant_test_acc")),
]
# Intervals are 95 %; "clean" is the fault-free accuracy of the same inferences as "faulty" (paired).
CAMPAIGN_COLUMNS: list[Column] = [
    ("W/A", lambda m: f"{m.get('weight_bits', '-')}/{m.get('act_bits', '-')}"),
    ("test %", _metric_pct("quant_test_acc")),
    ("faults", lambda m: f"{m.get('site', '-')} {m.get('fault_model', '')}"
                         + (f", {m['protection']}" if m.get("protection", protections.NONE) != protections.NONE else "")
                         + (", TMR" if m.get("tmr") else "")),
    ("n", lambda m: str(m.get("faulty_inferences", "-"))),
    ("masked %", _metric_pct("masked_rate")),
    ("SDC % [CI]", _rate_ci("sdc")),
    ("critical % [CI]", _rate_ci("critical")),
    ("clean %", _metric_pct("golden_accuracy")),
    ("faulty %", _metric_pct("accuracy_under_faults")),
    ("drop pp [CI]", _interval("accuracy_drop")),
    ("det/chg %", _acted),
]

BOUNDS_COLUMNS: list[Column] = [
    ("W/A", lambda m: f"{m.get('weight_bits', '-')}/{m.get('act_bits', '-')}"),
    ("bounds", lambda m: f"{m.get('range', '-')} per {m.get('granularity', '-')}"),
    ("protected layers", lambda m: str(m.get("protected_layers", "-"))),
    ("calibration images", lambda m: str(m.get("calibration_images", "-"))),
    ("codes admitted %", _metric_pct("bound_coverage")),
]


def _pct(value: Any) -> str:
    return f"{100 * value:.2f}" if isinstance(value, int | float) else "-"


def _console() -> Any:
    """Return a stderr console; wide when not a terminal, so logs keep whole tables."""
    import sys

    from rich.console import Console

    return Console(stderr=True, width=None if sys.stderr.isatty() else 160)


SYNTH_COLUMNS: list[Column] = [
    ("array", lambda m: f"{m.get('rows')}x{m.get('cols')} {m.get('dataflow')} "
              f"W{m.get('weight_bits')}A{m.get('act_bits')}"),
    ("target", lambda m: str(m.get("target", "-"))),
    ("status", lambda m: str(m.get("status", "-"))),
    ("LUT", lambda m: str(m.get("lut", "-"))),
    ("FF", lambda m: str(m.get("ff", "-"))),
    ("DSP", lambda m: str(m.get("dsp", "-"))),
    ("BRAM", lambda m: str(m.get("bram", "-"))),
    ("Fmax MHz", lambda m: f"{m['fmax_mhz']:.1f}" if isinstance(m.get("fmax_mhz"), float) else "-"),
    ("cycles", lambda m: str(m.get("cycles_per_inference", "-"))),
    ("latency us", lambda m: f"{m['latency_us']:.1f}" if isinstance(m.get("latency_us"), float) else "-"),
    ("protection", lambda m: f"{m.get('protection', '-')}{' +TMR' if m.get('tmr') else ''}"),
    ("LUT/FF/Fmax overhead %", lambda m: " / ".join(
        f"{m[k]:+.1f}" if isinstance(m.get(k), float) else "-"
        for k in ("lut_overhead_pct", "ff_overhead_pct", "fmax_mhz_overhead_pct"))),
]
# Targets without an out-of-context flow (ice40) place the datapath behind an IO harness whose cells
# are reported apart; the column appears only when some row has one.
HARNESS_COLUMN: Column = ("IO harness LUT/FF", lambda m: f"{m['harness_lut']}/{m['harness_ff']}"
                          if "harness_lut" in m else "-")
# A synthesized accelerator (scope machine) reports its array, accumulator and output stage apart.
DATAPATH_COLUMN: Column = ("datapath LUT/FF", lambda m: f"{m['datapath_lut']}/{m['datapath_ff']}"
                           if "datapath_lut" in m else "-")
RTLSIM_COLUMNS: list[Column] = [
    ("W/A", lambda m: f"{m.get('weight_bits', '-')}/{m.get('act_bits', '-')}"),
    ("status", lambda m: str(m.get("status", "-"))),
    ("agreement %", _metric_pct("rtl_agreement")),
    ("images", lambda m: str(m.get("rtl_images", "-"))),
    ("faults agree %", _metric_pct("rtl_fault_agreement")),
    ("cycles (RTL)", lambda m: str(m.get("rtl_cycles", "-"))),
    ("cycles (model)", lambda m: str(m.get("model_cycles", "-"))),
    ("sim Mcycles/s", lambda m: f"{m['sim_cycles_per_second'] / 1e6:.2f}"
                                if isinstance(m.get("sim_cycles_per_second"), float) else "-"),
    ("why not built", lambda m: str(m.get("message") or "-")),
]
STAGE_COLUMNS = {"inject": CAMPAIGN_COLUMNS, "synth": SYNTH_COLUMNS, "range-restrict": BOUNDS_COLUMNS,
                 "rtlsim": RTLSIM_COLUMNS}


def results_table(experiment: str, rows: Sequence[tuple[Point, Entry, bool]]) -> None:
    """Print one row per design point: its axis values, the stage's headline metrics, cache status."""
    from rich.table import Table

    axes = list(dict.fromkeys(key for point, _, _ in rows for key in point.axes))
    columns = next((STAGE_COLUMNS[e.stage] for _, e, _ in rows if e.stage in STAGE_COLUMNS), MODEL_COLUMNS)
    if any("harness_lut" in entry.metrics for _, entry, _ in rows):
        columns = [*columns, HARNESS_COLUMN]
    if any("datapath_lut" in entry.metrics for _, entry, _ in rows):
        columns = [*columns, DATAPATH_COLUMN]
    stages = sorted({entry.stage for _, entry, _ in rows})
    table = Table(title=f"{experiment}: {len(rows)} results ({', '.join(stages)})")
    for key in axes:
        table.add_column(key.rsplit(".", 1)[-1])
    for title, _ in columns:
        table.add_column(title, justify="right" if "%" in title or title == "n" else "left")
    table.add_column("key")
    table.add_column("cached")
    for point, entry, cached in rows:
        table.add_row(*(str(point.axes.get(key, "")) for key in axes),
                      *(show(entry.metrics) for _, show in columns), entry.key[:8], "yes" if cached else "no")
    _console().print(table)


def entries_table(entries: Iterable[Entry]) -> None:
    """Print the store's entries with their headline metrics."""
    from rich.table import Table

    table = Table(title="runs store")
    for column in ("stage", "key", "created", "seconds", "headline"):
        table.add_column(column)
    for entry in entries:
        m = entry.metrics
        headline = "  ".join(f"{k}={_pct(m[k])}%" for k in ("float_test_acc", "quant_test_acc") if k in m)
        table.add_row(entry.stage, entry.key[:12], str(entry.manifest.get("created", "")),
                      str(entry.manifest.get("seconds", "")), headline)
    _console().print(table)


def check_table(experiment: str, findings: Sequence[Finding]) -> None:
    """Print what regressed (point, metric, baseline, now, limit, why) and a one-line tally of the rest."""
    from rich.table import Table

    bad = [f for f in findings if f.regressed]
    console = _console()
    if bad:
        table = Table(title=f"{experiment}: {len(bad)} regressions")
        for column in ("point", "metric", "baseline", "now", "change", "limit", "why"):
            table.add_column(column)
        for f in bad:
            table.add_row(f.point, f.metric, _num(f.baseline), _num(f.current), _num(f.delta, signed=True),
                          _num(f.limit), f.reason)
        console.print(table)
    console.print(f"check {experiment}: {len(findings) - len(bad)} of {len(findings)} checks within tolerance",
                  highlight=False)


def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.4g}" if signed else f"{value:.4g}"
