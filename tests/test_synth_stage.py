"""The synth stage: one synthesis per array, cached; misfits are a status; latency from the network."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import hw.flow
from dsetool.cli import main


def synth(tmp_path, write_experiment, hw_section, name="exp.yaml"):
    path = write_experiment({"name": "synth", "model": {"arch": "lenet5"}, "quant": {"bits": 4}, "hw": hw_section},
                            name)
    result = CliRunner().invoke(main, ["synth", str(path), "--json", "--runs", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.splitlines()[0])


@pytest.mark.slow
@pytest.mark.toolchain
def test_synth_small_array_then_cache_hit_runs_no_tool(tmp_path, write_experiment, monkeypatch):
    row = synth(tmp_path, write_experiment, {"rows": 2, "cols": 2, "target": "ecp5-25k"})
    m = row["metrics"]
    # one DSP per PE; po2 requantization is a shift and takes none
    assert (row["cached"], m["status"], m["rows"], m["dsp"]) == (False, "ok", 2, 2 * 2)
    assert m["lut"] > 0 and m["ff"] > 0 and m["fmax_mhz"] > 0
    assert m["placer"] == "heap"   # auto: a few hundred LUTs are placed faster by heap
    assert m["critical_path_ns"] == pytest.approx(1000 / m["fmax_mhz"], rel=1e-3)
    assert isinstance(m["critical_path_from"], str) and isinstance(m["critical_path_to"], str)
    from hw.cycles import VECTOR_PIPELINE, network_cycles

    lenet = [(784, 25, 6), (100, 150, 16), (1, 400, 120), (1, 120, 84), (1, 84, 10)]
    # every layer waits for the last codes of the previous one to leave the K accumulator (2 edges) and
    # the pipelined output stage (4); the accumulator holds conv1's 784 rows, in block RAM
    assert (m["drain_cycles"], m["acc_depth"]) == (6, 784) and m["bram"] > 0
    # then the vector unit's two max-pool passes, 2 lanes: 6 channels x 14x14 outputs x 4 reads, 16 x 5x5 x 4
    vector = (3 * 196 * 4 + VECTOR_PIPELINE) + (8 * 25 * 4 + VECTOR_PIPELINE)
    assert (m["array_cycles"], m["vector_cycles"]) == (network_cycles(lenet, 2, 2, "ws", drain=6), vector)
    assert m["cycles_per_inference"] == m["array_cycles"] + vector
    assert m["latency_us"] == pytest.approx(m["cycles_per_inference"] / m["fmax_mhz"])

    def no_tools(*args, **kwargs):
        raise AssertionError("a cached synthesis ran a tool")

    clip = synth(tmp_path, write_experiment, {"rows": 2, "cols": 2, "target": "ecp5-25k", "protection": "clip"},
                 "clip.yaml")["metrics"]
    assert clip["status"] == "ok" and clip["protection"] == "clip"
    assert clip["lut_overhead_pct"] == pytest.approx(100 * (clip["lut"] - m["lut"]) / m["lut"])

    monkeypatch.setattr(hw.flow, "run_tool", no_tools)
    again = synth(tmp_path, write_experiment, {"rows": 2, "cols": 2, "target": "ecp5-25k"})
    assert again["cached"] and again["key"] == row["key"]


@pytest.mark.slow
@pytest.mark.toolchain
def test_too_large_for_the_target_is_does_not_fit(tmp_path, write_experiment):
    m = synth(tmp_path, write_experiment, {"rows": 8, "cols": 8, "target": "ecp5-25k"})["metrics"]
    assert m["status"] == "does_not_fit" and "DSP 64/28" in m["message"]


@pytest.mark.slow
@pytest.mark.toolchain
def test_ice40_places_the_datapath_in_an_io_harness_reported_apart(tmp_path, write_experiment):
    m = synth(tmp_path, write_experiment, {"rows": 2, "cols": 2, "target": "ice40-up5k"})["metrics"]
    assert m["status"] == "ok", m["message"]
    assert m["fmax_mhz"] > 0 and m["pins"] == 6
    assert m["lut"] > 0 and m["ff"] > 0 and m["harness_lut"] > 0 and m["harness_ff"] > 0
    assert m["harness_ff"] < m["ff"]


def test_only_harnessed_targets_have_the_harness_in_their_key(write_experiment):
    from dsetool.config import load_experiment
    from dsetool.stages import stage_key
    from hw.flow import HARNESS_VERSION as VERSION

    def reads(target):
        path = write_experiment({"name": "k", "model": {"arch": "lenet5"}, "hw": {"target": target}}, f"{target}.yaml")
        return stage_key("synth", load_experiment(path).points[0].config)[1]["config"]

    assert reads("ice40-up5k")["io_harness"] == VERSION
    assert "io_harness" not in reads("ecp5-25k") and "io_harness" not in reads("xc7z020")


def test_the_placer_is_in_the_key_unless_it_is_heap(write_experiment):
    """`heap` was the only placer before `hw.placer` existed: its syntheses keep the keys they had."""
    from dsetool.config import load_experiment
    from dsetool.stages import stage_key

    def key(placer):
        hw = {"placer": placer} if placer else {}
        path = write_experiment({"name": "k", "model": {"arch": "lenet5"}, "hw": hw}, f"{placer}.yaml")
        return stage_key("synth", load_experiment(path).points[0].config)

    assert "placer" not in key("heap")[1]["config"] and key(None)[1]["config"]["placer"] == "auto"
    assert len({key(p)[0] for p in ("heap", "static", "auto")}) == 3 and key(None)[0] == key("auto")[0]
