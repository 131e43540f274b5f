"""Terminal tables: the synth table shows an IO harness's cells, and an accelerator's datapath share, only
when some design point has one; a campaign row names its protection."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from dsetool import tables
from dsetool.store import Entry


def synth_entry(key: str, **metrics: object) -> Entry:
    base = {"rows": 2, "cols": 2, "dataflow": "ws", "weight_bits": 4, "act_bits": 4, "status": "ok", "lut": 416,
            "ff": 167, "dsp": 0, "fmax_mhz": 44.6, "protection": "none", "tmr": False}
    return Entry("synth", key * 8, Path("."), {"metrics": {**base, **metrics}})


@pytest.mark.parametrize("harness", [True, False])
def test_harness_column_only_when_a_point_has_one(capsys: pytest.CaptureFixture[str], harness: bool) -> None:
    extra = {"target": "ice40-up5k", "harness_lut": 10, "harness_ff": 75} if harness else {"target": "ecp5-25k"}
    point = SimpleNamespace(axes={"hw.target": extra["target"]})
    tables.results_table("t", [(point, synth_entry("a", **extra), False)])  # type: ignore[list-item]
    err = capsys.readouterr().err
    assert ("harness" in err) == harness
    assert ("10/75" in err) == harness and "416" in err


@pytest.mark.parametrize("machine", [True, False])
def test_datapath_share_column_only_when_an_accelerator_was_synthesized(capsys: pytest.CaptureFixture[str],
                                                                       machine: bool) -> None:
    extra = {"scope": "machine", "datapath_lut": 123, "datapath_ff": 45} if machine else {"scope": "datapath"}
    tables.results_table("t", [(SimpleNamespace(axes={}), synth_entry("a", **extra), False)])  # type: ignore[list-item]
    err = capsys.readouterr().err
    assert ("datapath" in err) == machine and ("123/45" in err) == machine


@pytest.mark.parametrize("protection", ["none", "clip"])
def test_campaign_row_names_its_protection(capsys: pytest.CaptureFixture[str], protection: str) -> None:
    metrics = {"site": "pe.psum", "fault_model": "bitflip", "protection": protection, "faulty_inferences": 10}
    entry = Entry("inject", "b" * 8, Path("."), {"metrics": metrics})
    tables.results_table("t", [(SimpleNamespace(axes={}), entry, False)])  # type: ignore[list-item]
    assert ("pe.psum bitflip, clip" in capsys.readouterr().err) == (protection == "clip")
