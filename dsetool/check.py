"""The CI regression gate: compare an experiment's results with a baseline `results.csv`, metric by metric.

Each checked metric has a direction and a tolerance in its own unit, chosen so that a gate that passes
today passes tomorrow on the same code: accuracies may drop by an absolute amount; fault rates and the
accuracy that faults cost (paired with the golden run of the same inferences) may rise to the top of the
baseline's 95 % interval plus an absolute amount (a campaign's estimate moves within its interval when
nothing is wrong); area and latency may grow by a percentage (synthesis is deterministic for fixed tool
versions and seed, latency follows the placer's Fmax). A design point or a metric the baseline has and
the new results lack is a regression too: the gate must not pass because a stage silently stopped
producing a number.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr


@dataclass(frozen=True)
class Rule:
    """How one metric may move: `kind` is higher (absolute drop allowed), rate (may rise to the top of the
    baseline's interval, column `top`, plus the tolerance) or growth (relative increase in %)."""

    metric: str
    kind: str
    tolerance: float
    top: str = ""

    @property
    def interval_top(self) -> str:
        """Return the column holding the top of the baseline's interval of a `rate` metric."""
        return self.top or self.metric.replace("_rate", "_ci_hi")


# Accuracies of a trained model depend on the CPU's float kernels (the order of float sums), so the same
# seed trains slightly different weights on another machine: the test-split accuracies may drop by 2
# points before the gate fails (the spread measured between thread counts and seeds is in the README's
# "Reproducibility"). What faults cost is checked as the paired accuracy drop, against the top of the
# baseline's interval, as the fault rates are: a campaign's estimate moves within its interval.
DEFAULT_RULES: tuple[Rule, ...] = (
    Rule("float_acc", "higher", 0.02),
    Rule("quant_acc", "higher", 0.02),
    Rule("accuracy_drop", "rate", 0.0, top="accuracy_drop_ci_hi"),
    Rule("sdc_rate", "rate", 0.0),
    Rule("critical_rate", "rate", 0.0),
    Rule("lut", "growth", 0.0),
    Rule("ff", "growth", 0.0),
    Rule("dsp", "growth", 0.0),
    Rule("bram", "growth", 0.0),
    Rule("latency_us", "growth", 5.0),
)
UNITS = {"higher": "absolute", "rate": "absolute, above the baseline's 95 % interval", "growth": "%"}


@dataclass(frozen=True)
class Finding:
    """One checked (design point, metric): the values, the allowed limit and whether it regressed."""

    point: str
    metric: str
    baseline: float | None
    current: float | None
    limit: float | None
    regressed: bool
    reason: str

    @property
    def delta(self) -> float | None:
        """Return current minus baseline (None when either is missing)."""
        if self.baseline is None or self.current is None:
            return None
        return self.current - self.baseline


def parse_tolerances(items: Iterable[str], source: str = "--tolerance") -> dict[str, float]:
    """Parse `metric=value` overrides (a trailing % is allowed for growth metrics); raise ValueError."""
    known = {rule.metric: rule for rule in DEFAULT_RULES}
    out: dict[str, float] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or name not in known:
            raise ValueError(f"{source} {item!r}: expected metric=value with a metric among {', '.join(known)}")
        text = text.strip()
        if text.endswith("%"):
            if known[name].kind != "growth":
                raise ValueError(f"{source} {item!r}: {name} takes an absolute tolerance, not a percentage")
            text = text[:-1]
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{source} {item!r}: {text!r} is not a number") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{source} {item!r}: the tolerance must be a finite number >= 0")
        out[name] = value
    return out


def rules_with(overrides: Mapping[str, float]) -> tuple[Rule, ...]:
    """Return the default rules with the given tolerances replaced."""
    return tuple(dataclasses.replace(r, tolerance=overrides.get(r.metric, r.tolerance)) for r in DEFAULT_RULES)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def compare(baseline: Sequence[Mapping[str, Any]], current: Sequence[Mapping[str, Any]],
            rules: Sequence[Rule] = DEFAULT_RULES) -> list[Finding]:
    """Check every metric the baseline has at every baseline design point against the current rows."""
    now = {str(row["point"]): row for row in current}
    findings = []
    for old in baseline:
        point = str(old["point"])
        new = now.get(point)
        for rule in rules:
            before = _number(old.get(rule.metric))
            if before is None or (rule.kind == "rate" and _number(old.get(rule.interval_top)) is None):
                continue   # the baseline has nothing to hold this point to (or no interval to hold it within)
            after = _number(new.get(rule.metric)) if new is not None else None
            findings.append(_judge(point, rule, before, after, old, new is None))
    return findings


def _judge(point: str, rule: Rule, before: float, after: float | None, old: Mapping[str, Any],
           point_missing: bool) -> Finding:
    if rule.kind == "higher":
        limit = before - rule.tolerance
        ok = after is not None and after >= limit
        why = f"dropped below {limit:.4g}"
    elif rule.kind == "rate":
        top = _number(old.get(rule.interval_top))
        limit = (top if top is not None else before) + rule.tolerance   # compare() skips a missing top
        ok = after is not None and after <= limit
        why = f"rose above {limit:.4g} (the baseline's interval top + {rule.tolerance:g})"
    else:
        limit = before * (1 + rule.tolerance / 100)
        ok = after is not None and after <= limit
        why = f"grew more than {rule.tolerance:g} % (limit {limit:.4g})"
    if after is None:
        why = "design point missing" if point_missing else "metric missing"
    return Finding(point, rule.metric, before, after, limit, not ok, "" if ok else why)


def read_baseline(path: Path) -> list[dict[str, Any]]:
    """Read a `results.csv` written by `dsetool report`; raise ValueError when it is not one."""
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the baseline ({type(exc).__name__}: {exc})") from None
    if "point" not in frame.columns:
        raise ValueError(f"{path}: column 'point' missing: not a results.csv written by dsetool report")
    frame = frame.astype(object).where(frame.notna(), None)
    return [dict(row) for row in frame.to_dict(orient="records")]


def write_junit(findings: Sequence[Finding], path: Path, suite: str) -> None:
    """Write one JUnit test case per checked (point, metric); regressions are failures."""
    failures = sum(f.regressed for f in findings)
    lines = ['<?xml version="1.0" encoding="utf-8"?>',
             f'<testsuite name={quoteattr(suite)} tests="{len(findings)}" failures="{failures}">']
    for f in findings:
        head = f"  <testcase classname={quoteattr(f'{suite}.{f.point}')} name={quoteattr(f.metric)}"
        if not f.regressed:
            lines.append(head + "/>")
            continue
        message = f"{f.metric} at {f.point}: {f.reason} (baseline {f.baseline}, now {f.current})"
        lines += [head + ">", f"    <failure message={quoteattr(message)}/>", "  </testcase>"]
    lines.append("</testsuite>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
