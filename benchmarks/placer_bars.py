"""Print nextpnr's two placers side by side: place-and-route seconds and Fmax of the same netlists and seeds.

Run on an idle machine: `.venv/bin/python benchmarks/placer_bars.py [--runs DIR] [--jobs N]`. It sweeps
configs/hw-seeds.yaml's W8A8 weight-stationary ECP5-45k arrays (4x4 and 8x8: unprotected, clip, zero; the
4x4 with TMR) over seeds 1-3 with `hw.placer` heap and static, synthesis only, into the store `--runs`
(default `runs/`, where `dsetool sweep configs/hw-seeds.yaml` already left the heap results: those are
cache hits and their seconds are the ones measured when they were made). Tens of minutes for what is new.
The figures justify `hw.flow.STATIC_PLACER_MIN_LUTS`, the size from which `placer: auto` picks static.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NAME = "placer-bars"
OVERRIDES = (f"name={NAME}", "stages=[synth]", "sweep={hw.pnr_seed: [1, 2, 3], hw.placer: [heap, static]}")


def synth_metrics(runs: Path) -> list[dict]:
    """Return the axes and synth metrics of every point of the benchmark's experiment."""
    index = json.loads((runs / "experiments" / NAME / "index.json").read_text())
    rows = []
    for point in index["points"].values():
        key = point["keys"]["synth"]
        manifest = json.loads((runs / "synth" / key[:2] / key / "manifest.json").read_text())
        rows.append({**point["axes"], **manifest["metrics"]})
    return rows


def main() -> None:
    """Run the sweep, then print one line per design and seed and the means per array size."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=Path, default=REPO / "runs")
    parser.add_argument("--jobs", default="auto")
    args = parser.parse_args()
    command = [sys.executable, "-m", "dsetool.cli", "sweep", "configs/hw-seeds.yaml", "--runs", str(args.runs),
               "--jobs", str(args.jobs)]
    for item in OVERRIDES:
        command += ["--set", item]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"sweep failed ({done.returncode}):\n{done.stderr[-3000:]}")
    rows = [r for r in synth_metrics(args.runs) if r["status"] == "ok"]
    pairs: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        design = (f"{row['rows']}x{row['cols']}", row["protection"], "tmr" if row["tmr"] else "", row["hw.pnr_seed"])
        pairs.setdefault(design, {})[row["hw.placer"]] = row
    print("array  protection  seed   LUT    heap s  static s   heap MHz  static MHz")
    by_size: dict[str, list[tuple[dict, dict]]] = {}
    for (size, protection, tmr, seed), both in sorted(pairs.items()):
        if set(both) != {"heap", "static"}:
            continue
        heap, static = both["heap"], both["static"]
        by_size.setdefault(size + (" tmr" if tmr else ""), []).append((heap, static))
        print(f"{size:6} {protection + (' tmr' if tmr else ''):11} {seed:4} {heap['lut']:6} {heap['seconds_pnr']:8.0f} "
              f"{static['seconds_pnr']:9.0f} {heap['fmax_mhz']:10.1f} {static['fmax_mhz']:11.1f}")
    for size, runs in sorted(by_size.items()):
        heap_s = [h["seconds_pnr"] for h, _ in runs]
        static_s = [s["seconds_pnr"] for _, s in runs]
        print(f"{size} ({len(runs)} runs): place and route heap {min(heap_s):.0f}-{max(heap_s):.0f} s, static "
              f"{min(static_s):.0f}-{max(static_s):.0f} s; mean Fmax heap "
              f"{statistics.mean(h['fmax_mhz'] for h, _ in runs):.1f}, static "
              f"{statistics.mean(s['fmax_mhz'] for _, s in runs):.1f} MHz")


if __name__ == "__main__":
    main()
