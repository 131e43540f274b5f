"""Fmax over place-and-route seeds: each design's seeds side by side, mean and best against the unprotected."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from dsetool.report import seeds

AXES = ("hw.pnr_seed", "hw.protection", "faults.site")


def results(rows):
    table = pd.DataFrame(rows, columns=["axis_hw_pnr_seed", "axis_hw_protection", "axis_faults_site", "fmax_mhz",
                                        "fmax_overhead_pct", "synth_key"])
    return SimpleNamespace(table=table, axes=AXES)


def row(seed, protection, fmax, base, site="act"):
    return (seed, protection, site, fmax, 100 * (fmax / base - 1), f"{protection}-{seed}")


UNPROTECTED = {1: 86.5, 2: 85.0, 3: 85.6}


def test_each_design_gets_its_seeds_mean_and_best_against_the_unprotected_ones():
    rows = [row(s, "none", f, f) for s, f in UNPROTECTED.items()]
    rows += [row(s, "clip", f, UNPROTECTED[s]) for s, f in {1: 83.5, 2: 83.5, 3: 87.7}.items()]
    rows += [row(s, "clip", f, UNPROTECTED[s], site="pe.psum") for s, f in {1: 83.5, 2: 83.5, 3: 87.7}.items()]
    none, clip = seeds.seed_rows(results(rows))        # the fault axis does not make a design of its own
    assert none.design == "protection=none" and none.overhead == (0.0, 0.0, 0.0) and none.best_overhead == 0.0
    assert clip.seeds == ("1", "2", "3") and clip.fmax == (83.5, 83.5, 87.7)
    assert clip.mean == pytest.approx(84.9) and clip.best == 87.7
    assert clip.mean_overhead == pytest.approx(100 * (84.9 / (257.1 / 3) - 1))
    assert clip.best_overhead == pytest.approx(100 * (87.7 / 86.5 - 1))
    table = seeds.markdown([none, clip])
    assert "| protection=clip | 83.5 (1) / 83.5 (2) / 87.7 (3) | 84.9 | 87.7 | -3.5 / -1.8 / +2.5 | -0.9 | +1.4 |" \
        in table


def test_no_table_without_several_seeds():
    assert seeds.seed_rows(results([row(1, "none", 86.5, 86.5), row(1, "clip", 83.5, 86.5)])) == []
    unplaced = [row(1, "none", 86.5, 86.5), (2, "none", "act", None, None, None)]
    assert seeds.seed_rows(results(unplaced)) == []      # a seed whose place and route failed is not a spread
