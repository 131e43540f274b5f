"""Print what each protection buys LeNet-5 on digits under activation and partial-sum faults.

Campaigns over QAT LeNet-5 at W8A8 and W4A4 (the training settings of `configs/lenet.yaml`, so the
models are shared with the main sweep through the store), every test image, 8x8 weight-stationary array:

1. Single-bit flips of the most significant bit of `act` and `pe.psum` registers, unprotected against
   the range check (`clip`, profiled bounds per layer and per channel): the critical-fault rate with
   95 % Wilson intervals; the claim holds when clip's interval lies entirely below none's.
2. The same faults against clip with the range modes of Ozen's ablation: per-layer profiled bounds, one
   global bound, 10x the global bound: the critical rate should rise in that order.
3. Accuracy under activation bit errors (BER 1e-6 .. 1e-2, every bit of every activation a layer reads,
   per inference) for none, clip and zero (per-channel bounds, on the column outputs and at the layer
   inputs), median3 and coarse TMR. (`pe.psum` bit errors count every
   partial-sum register bit of every cycle, a population hundreds of times larger: at BER 1e-4 most
   inferences already fail, so the BER parts use `act`.)

Run: `.venv/bin/python benchmarks/protection_evidence.py [--runs DIR] [--scale F]` (`--scale` multiplies
every campaign's size; 1 is the README's figures). Prints markdown tables and one PASS/FAIL line per claim.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
BERS = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2]
SCHEMES = [("none", False, "output"), ("clip", False, "output"), ("zero", False, "output"),
           ("clip", False, "input"), ("zero", False, "input"), ("median3", False, "output"), ("none", True, "output")]


def base_experiment(name: str) -> dict[str, Any]:
    """Return configs/lenet.yaml's design point, QAT, campaigns over every test image."""
    raw = yaml.safe_load((REPO / "configs" / "lenet.yaml").read_text())
    raw.pop("sweep", None)
    raw.pop("zip", None)   # the base point's 8x8 array
    raw["name"] = name
    raw["quant"]["method"] = "qat"
    raw["faults"] = {"model": "bitflip", "inputs": 0, "seed": 1, "shard_size": 4096, "batch_size": 256}
    return raw


def run(experiment: dict[str, Any], runs: Path, work: Path) -> list[dict[str, Any]]:
    """Run `dsetool inject` over an experiment's grid; return each point's axes and metrics."""
    path = work / f"{experiment['name']}.yaml"
    path.write_text(yaml.safe_dump(experiment, sort_keys=False))
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "dsetool.cli", "inject", str(path), "--json", "--runs", str(runs)],
                          cwd=REPO, check=True, capture_output=True, text=True)
    print(f"<!-- {experiment['name']}: {time.perf_counter() - began:.0f} s -->")
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def axis(row: dict[str, Any], key: str) -> Any:
    """Return a design point's value of a swept key (or its metrics' record of it)."""
    return row.get("axes", {}).get(key)


def pct(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.2f}"


def interval(metrics: dict[str, Any], name: str) -> str:
    low, high = metrics[f"{name}_ci"]
    return f"{pct(metrics[f'{name}_rate'])} [{pct(low)}, {pct(high)}]"


VARIANTS = [  # (hw.protection, protect.granularity, protect.range, protect.placement)
    ("none", "layer", "profiled", "output"), ("clip", "layer", "profiled", "output"),
    ("clip", "channel", "profiled", "output"), ("clip", "layer", "global", "output"),
    ("clip", "layer", "global10", "output"), ("clip", "layer", "profiled", "input"),
    ("clip", "channel", "profiled", "input")]


def variant_name(protection: str, granularity: str, mode: str, placement: str) -> str:
    if protection == "none":
        return "none"
    name = {"profiled": f"clip, profiled per {granularity}", "global": "clip, global bound",
            "global10": "clip, 10x global bound"}[mode]
    return name + (", at the input" if placement == "input" else "")


def critical_rates(runs: Path, work: Path, scale: float) -> list[str]:
    """Parts 1 and 2: single MSB flips, none against clip with each kind of bound."""
    experiment = base_experiment("evidence-critical")
    experiment["faults"].update(bits="msb", samples=int(20000 * scale))
    experiment["sweep"] = {"quant.bits": [8, 4], "faults.site": ["act", "pe.psum"]}
    experiment["zip"] = {key: [v[i] for v in VARIANTS] for i, key in enumerate(
        ("hw.protection", "protect.granularity", "protect.range", "protect.placement"))}
    rows = run(experiment, runs, work)
    print("\n### 1. Single MSB flips: critical-fault rate by protection and bound\n")
    print("| W/A | site | protection | n | SDC % [95% CI] | critical % [95% CI] | detected % | masked by |")
    print("|---|---|---|---|---|---|---|---|")
    found: dict[tuple[int, str, str], dict[str, Any]] = {}
    for row in rows:
        m = row["metrics"]
        bits, site = axis(row, "quant.bits"), axis(row, "faults.site")
        name = variant_name(*(axis(row, key) for key in ("hw.protection", "protect.granularity", "protect.range",
                                                           "protect.placement")))
        found[(bits, site, name)] = m
        shares = ", ".join(f"{step} {100 * v['share']:.1f}%" for step, v in m["masked_by"].items())
        print(f"| {bits}/{bits} | {site} | {name} | {m['faulty_inferences']} | {interval(m, 'sdc')} | "
              f"{interval(m, 'critical')} | {pct(m.get('detected_rate'))} | {shares} |")
    verdicts = []
    for bits in (8, 4):
        for site in ("act", "pe.psum"):
            none = found[(bits, site, "none")]
            for granularity in ("layer", "channel"):
                for placement in ("output", "input"):
                    name = variant_name("clip", granularity, "profiled", placement)
                    clip = found[(bits, site, name)]
                    ok = clip["critical_ci"][1] < none["critical_ci"][0]
                    verdicts.append(f"{'PASS' if ok else 'FAIL'}: W{bits}A{bits} {site}: {name}: critical "
                                    f"{interval(clip, 'critical')} entirely below none's {interval(none, 'critical')}")
            modes = [found[(bits, site, variant_name("clip", "layer", mode, "output"))]["critical_rate"]
                     for mode in ("profiled", "global", "global10")]
            ok = modes[0] < modes[1] < modes[2]
            verdicts.append(f"{'PASS' if ok else 'FAIL'}: W{bits}A{bits} {site}: critical % per-layer {pct(modes[0])} "
                            f"< global {pct(modes[1])} < 10x global {pct(modes[2])}")
    return verdicts


def accuracy_vs_ber(runs: Path, work: Path, scale: float) -> None:
    """Part 3: accuracy under faults per protection and BER."""
    experiment = base_experiment("evidence-ber")
    experiment["faults"].update(site="act", samples=int(1000 * scale))
    experiment["protect"] = {"granularity": "channel"}
    experiment["sweep"] = {"quant.bits": [8, 4], "faults.ber": BERS}
    experiment["zip"] = {key: [v[i] for v in SCHEMES] for i, key in enumerate(
        ("hw.protection", "hw.tmr", "protect.placement"))}
    rows = run(experiment, runs, work)
    print("\n### 3. Accuracy under activation bit errors (%; range checks with per-channel bounds)\n")
    for bits in (8, 4):
        print(f"\nW{bits}A{bits}\n")
        print("| protection | clean | " + " | ".join(f"BER {b:g}" for b in BERS) + " |")
        print("|---|---|" + "---|" * len(BERS))
        for protection, tmr, placement in SCHEMES:
            cells = {axis(r, "faults.ber"): r["metrics"] for r in rows if axis(r, "quant.bits") == bits
                     and axis(r, "hw.protection") == protection and axis(r, "hw.tmr") == tmr
                     and axis(r, "protect.placement") == placement}
            first = next(iter(cells.values()))
            clean = first.get("clean_accuracy_protected", first["golden_accuracy"])
            name = "TMR" if tmr else protection + (" at the input" if placement == "input" else "")
            print(f"| {name} | {pct(clean)} | " + " | ".join(pct(cells[b]["accuracy_under_faults"]) for b in BERS)
                  + " |")
    n = int(1000 * scale)
    print(f"\n{n} faulty inferences per cell: a rate's 95 % interval is at most +-{100 * 1.96 * 0.5 / n**0.5:.1f} "
          "points.")


def main() -> None:
    """Run the three parts and print the tables and the verdicts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=REPO / "runs", help="store directory (default: runs)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every campaign's size")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        verdicts = critical_rates(args.runs, Path(work), args.scale)
        accuracy_vs_ber(args.runs, Path(work), args.scale)
    print("\n" + "\n".join(verdicts))


if __name__ == "__main__":
    main()
