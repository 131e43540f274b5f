"""The synth stage: the accelerator that runs the network (or the datapath alone), one synthesis per
machine shape, cached; misfits are a status; cycles and latency from the network's schedule."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import hw.flow
from dsetool.cli import main

MLP = {"model": {"arch": "mlp", "mlp_hidden": [16]}, "data": {"name": "digits", "calib_size": 32},
       "train": {"pretrain": {"epochs": 2, "batch_size": 64}, "qat": {"epochs": 1, "batch_size": 64}}}


def synth(tmp_path, write_experiment, hw_section, name="exp.yaml", experiment=None, command="synth"):
    """Run `command` on a one-point experiment (LeNet-5 W4 unless `experiment` says otherwise); return its row."""
    body = experiment or {"model": {"arch": "lenet5"}, "quant": {"bits": 4}}
    path = write_experiment({"name": "synth", **body, "hw": hw_section}, name)
    result = CliRunner().invoke(main, [command, str(path), "--json", "--runs", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.splitlines()[0])


def synth_key(write_experiment, experiment, name="k.yaml"):
    from dsetool.config import load_experiment
    from dsetool.stages import stage_key

    path = write_experiment({"name": "k", **experiment}, name)
    return stage_key("synth", load_experiment(path).points[0].config)


@pytest.mark.slow
@pytest.mark.toolchain
def test_the_accelerator_is_synthesized_with_its_datapath_share_and_the_cycles_rtlsim_measures(
        tmp_path, write_experiment):
    """The whole machine for the point's network: its array, accumulator and output stage are a share of
    it; its cycles per inference are exactly what the trained model measures in RTL simulation, and its
    shape is the one the simulation builds (one synthesis serves every trained model)."""
    mlp = {**MLP, "quant": {"bits": 4}}
    hw_section = {"rows": 4, "cols": 4, "target": "ecp5-25k", "rtl_images": 2}
    m = synth(tmp_path, write_experiment, hw_section, experiment=mlp)["metrics"]
    assert (m["scope"], m["status"]) == ("machine", "ok"), m["message"]
    assert m["dsp"] == m["datapath_dsp"] == 16
    assert 0 < m["datapath_lut"] < m["lut"] and 0 < m["datapath_ff"] < m["ff"]
    assert m["latency_us"] == pytest.approx(m["cycles_per_inference"] / m["fmax_mhz"])
    r = synth(tmp_path, write_experiment, hw_section, experiment=mlp, command="rtlsim")["metrics"]
    assert (r["status"], r["rtl_agreement"]) == ("ok", 1.0)
    assert r["rtl_cycles"] == m["cycles_per_inference"]
    for name in ("lanes", "lane_bits", "acc_bits", "buffer_words", "weight_words", "const_words", "bounds_words",
                 "instructions"):
        assert r[name] == m[name], name


def test_one_accelerator_synthesis_serves_every_trained_model_of_a_network(write_experiment):
    """The machine's shape follows the network and the widths, never weight values: the quantization
    method, the scales' granularity and the seed share a synthesis; another network, width or array
    does not; `hw.synth: datapath` keys the datapath exactly as before the accelerator existed."""
    lenet = {"model": {"arch": "lenet5"}, "quant": {"bits": 4}}
    key, inputs = synth_key(write_experiment, lenet)
    assert inputs["config"]["machine"]["network"]["arch"] == "lenet5"
    same = [{**lenet, "quant": {"bits": 4, "method": "ptq"}}, {**lenet, "seed": 3},
            {**lenet, "quant": {"bits": 4, "weight_granularity": "per_channel"}}]
    assert {synth_key(write_experiment, e, f"s{i}.yaml")[0] for i, e in enumerate(same)} == {key}
    other = [{**lenet, "model": {"arch": "alexnet32"}}, {**lenet, "quant": {"bits": 8}},
             {**lenet, "hw": {"rows": 4, "cols": 4}}, {**lenet, "hw": {"protection": "clip"}},
             {**lenet, "hw": {"weight_buffers": 1}}]
    assert len({key} | {synth_key(write_experiment, e, f"o{i}.yaml")[0] for i, e in enumerate(other)}) == 6
    datapath = synth_key(write_experiment, {**lenet, "hw": {"synth": "datapath"}}, "d.yaml")[1]["config"]
    assert "machine" not in datapath and datapath == {k: v for k, v in inputs["config"].items() if k != "machine"}
    one_buffer = {**lenet, "hw": {"synth": "datapath", "weight_buffers": 1}}   # the datapath has no weight banks
    assert synth_key(write_experiment, one_buffer, "d1.yaml")[1]["config"] == datapath
    # the datapath's range check where the layers read their inputs is another synthesis; unprotected,
    # the placement places nothing
    placed = {place: synth_key(write_experiment, {**lenet, "hw": {"synth": "datapath", "protection": "clip"},
                                                  "protect": {"placement": place}}, f"p{place}.yaml")
              for place in ("output", "input")}
    assert placed["input"][0] != placed["output"][0] and placed["input"][1]["config"]["placement"] == "input"
    assert "placement" not in placed["output"][1]["config"]
    bare = synth_key(write_experiment, {**lenet, "hw": {"synth": "datapath"}, "protect": {"placement": "input"}},
                     "b.yaml")[1]["config"]
    assert bare == datapath
    # where the accelerator is not built (sides that do not divide) the datapath's key is as it was; the
    # output-stationary one streams its weights: its key does not read hw.weight_buffers; TMR and range
    # checks at the inputs or flagging only (sed) are built, and keyed
    assert "machine" not in synth_key(write_experiment, {**lenet, "hw": {"rows": 3, "cols": 4}}, "n.yaml")[1]["config"]
    streaming = [synth_key(write_experiment, {**lenet, "hw": {"dataflow": "os", "weight_buffers": b}}, f"os{b}.yaml")
                 for b in (1, 2)]
    assert streaming[0][0] == streaming[1][0] != key and streaming[0][1]["config"]["machine"]["weight_buffers"] == 1
    assert streaming[0][1]["config"]["machine"]["stream"] == 1 and "stream" not in inputs["config"]["machine"]
    checked = [{"hw": {"tmr": True}}, {"hw": {"protection": "sed"}}, {"hw": {"protection": "clip"}},
               {"hw": {"protection": "clip"}, "protect": {"placement": "input"}}]
    keys = {synth_key(write_experiment, {**lenet, **e}, f"c{i}.yaml")[0] for i, e in enumerate(checked)}
    assert len(keys | {key}) == 5
    # a network the compiler refuses falls back to the datapath under the machine's key: with the check
    # at the inputs that datapath checks its inputs, and the key says so
    at_inputs = synth_key(write_experiment, {**lenet, **checked[-1]}, "ci.yaml")[1]["config"]["machine"]["checks"]
    assert at_inputs["datapath"] == "input"
    assert "datapath" not in synth_key(write_experiment, {**lenet, **checked[2]}, "co.yaml")[1]["config"]["machine"][
        "checks"]


@pytest.mark.slow
@pytest.mark.toolchain
def test_synth_small_array_then_cache_hit_runs_no_tool(tmp_path, write_experiment, monkeypatch):
    row = synth(tmp_path, write_experiment, {"rows": 2, "cols": 2, "target": "ecp5-25k", "synth": "datapath"})
    m = row["metrics"]
    assert (m["scope"], m["scope_reason"]) == ("datapath", "hw.synth: datapath")
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

    clip = synth(tmp_path, write_experiment, {"rows": 2, "cols": 2, "target": "ecp5-25k", "protection": "clip",
                                              "synth": "datapath"}, "clip.yaml")["metrics"]
    assert clip["status"] == "ok" and clip["protection"] == "clip"
    assert clip["lut_overhead_pct"] == pytest.approx(100 * (clip["lut"] - m["lut"]) / m["lut"])

    monkeypatch.setattr(hw.flow, "run_tool", no_tools)
    again = synth(tmp_path, write_experiment, {"rows": 2, "cols": 2, "target": "ecp5-25k", "synth": "datapath"})
    assert again["cached"] and again["key"] == row["key"]


@pytest.mark.slow
@pytest.mark.toolchain
def test_too_large_for_the_target_is_does_not_fit_naming_the_resource_without_place_and_route(
        tmp_path, write_experiment, monkeypatch):
    """Yosys's counts already exceed the device: the DSPs of an 8x8 array on a 25k ECP5, LeNet-5's weight
    and activation memories in an iCE40's block RAM; nextpnr never runs."""
    real = hw.flow.run_tool

    def no_pnr(args, *rest, **kwargs):
        assert "nextpnr" not in str(args[0]), "a design that cannot fit was placed"
        return real(args, *rest, **kwargs)

    monkeypatch.setattr(hw.flow, "run_tool", no_pnr)
    m = synth(tmp_path, write_experiment, {"rows": 8, "cols": 8, "target": "ecp5-25k"})["metrics"]
    assert (m["scope"], m["status"]) == ("machine", "does_not_fit") and "DSP 64/28" in m["message"]
    m = synth(tmp_path, write_experiment, {"rows": 2, "cols": 2, "target": "ice40-up5k"}, "ice.yaml")["metrics"]
    assert (m["scope"], m["status"]) == ("machine", "does_not_fit") and "BRAM" in m["message"]


@pytest.mark.slow
@pytest.mark.toolchain
def test_ice40_places_the_datapath_in_an_io_harness_reported_apart(tmp_path, write_experiment):
    m = synth(tmp_path, write_experiment, {"rows": 2, "cols": 2, "target": "ice40-up5k", "synth": "datapath"}
              )["metrics"]
    assert m["status"] == "ok", m["message"]
    assert m["fmax_mhz"] > 0 and m["pins"] == 6
    assert m["lut"] > 0 and m["ff"] > 0 and m["harness_lut"] > 0 and m["harness_ff"] > 0
    assert m["harness_ff"] < m["ff"]


def test_only_harnessed_targets_have_the_harness_in_their_key(write_experiment):
    from hw.flow import HARNESS_VERSION as VERSION

    def reads(target):
        return synth_key(write_experiment, {"model": {"arch": "lenet5"}, "hw": {"target": target}},
                         f"{target}.yaml")[1]["config"]

    assert reads("ice40-up5k")["io_harness"] == VERSION
    assert "io_harness" not in reads("ecp5-25k") and "io_harness" not in reads("xc7z020")


def test_the_placer_is_in_the_key_unless_it_is_heap(write_experiment):
    """`heap` was the only placer before `hw.placer` existed: its syntheses keep the keys they had."""

    def key(placer):
        hw = {"placer": placer} if placer else {}
        return synth_key(write_experiment, {"model": {"arch": "lenet5"}, "hw": hw}, f"{placer}.yaml")

    assert "placer" not in key("heap")[1]["config"] and key(None)[1]["config"]["placer"] == "auto"
    assert len({key(p)[0] for p in ("heap", "static", "auto")}) == 3 and key(None)[0] == key("auto")[0]
