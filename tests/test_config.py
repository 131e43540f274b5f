"""Experiment files: validation messages, overrides, sweep expansion, schema."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dsetool.config import load_experiment, schema
from dsetool.validate import ConfigError


def error_of(path, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_experiment(path, overrides)
    return str(info.value)


def test_defaults_give_one_point(write_experiment):
    exp = load_experiment(write_experiment({"name": "one"}))
    assert exp.name == "one"
    assert len(exp.points) == 1
    cfg = exp.points[0].config
    assert (cfg.data.name, cfg.model.arch, cfg.quant.weight_bits, cfg.quant.scaling) == ("digits", "lenet5", 8, "po2")


def test_wrong_type_names_file_key_expected_and_got(write_experiment):
    path = write_experiment({"quant": {"weight_bits": "eight"}})
    assert error_of(path) == f"{path}: quant.weight_bits: expected an integer in 2..16, got 'eight'"


def test_out_of_range_bits(write_experiment):
    message = error_of(write_experiment({"quant": {"act_bits": 17}}))
    assert "quant.act_bits: expected an integer in 2..16, got 17" in message


def test_bool_is_not_an_integer(write_experiment):
    assert "got True" in error_of(write_experiment({"seed": True}))


def test_unknown_key_did_you_mean(write_experiment):
    message = error_of(write_experiment({"quant": {"wieght_bits": 4}}))
    assert message.endswith("quant.wieght_bits: unknown key (did you mean 'weight_bits'?)")


def test_unknown_choice_did_you_mean(write_experiment):
    message = error_of(write_experiment({"data": {"name": "digit"}}))
    expected = ("data.name: expected one of digits, mnist, fashion-mnist, cifar10, folder, npz, got 'digit' (did you "
                "mean 'digits'?)")
    assert expected in message


@pytest.mark.parametrize("content, reason", [
    ("- a\n- b\n", "expected a mapping of settings at the top level, got a list"),
    ("", "got an empty file"),
    ("name: [unclosed\n", "not valid YAML"),
])
def test_not_a_mapping_or_not_yaml(write_experiment, content, reason):
    assert reason in error_of(write_experiment(content))


def test_missing_file(tmp_path):
    assert error_of(tmp_path / "nope.yaml").endswith("nope.yaml: no such file")


def test_alias_bomb_rejected_quickly(write_experiment):
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 10):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    assert "alias" in error_of(write_experiment("\n".join(lines) + "\n"))


def test_a_key_set_twice_names_the_key_and_both_lines(write_experiment):
    path = write_experiment("name: twice\nseed: 1\ndata:\n  name: digits\nseed: 2\n")
    assert error_of(path) == (f"{path}: seed: set twice, at line 2 and line 5 (YAML would silently keep the last; "
                              "keep one)")
    nested = write_experiment("train:\n  qat:\n    epochs: 1\n    lr: 0.1\n    epochs: 2\n", "nested.yaml")
    assert ": train.qat.epochs: set twice, at line 3 and line 5" in error_of(nested)
    swept = write_experiment("sweep:\n  quant.bits: [8]\n  quant.bits: [4]\n", "swept.yaml")
    assert ": sweep.quant.bits: set twice, at line 2 and line 3" in error_of(swept)


@pytest.mark.parametrize("text, where, what", [
    ("seed: !!int 3\n", ": seed: line ", "YAML tag tag:yaml.org,2002:int"),
    ("quant: !custom {bits: 4}\n", ": quant: line ", "YAML tag !custom"),
    ("sweep:\n  quant.bits: [8, !!str 4]\n", ": sweep.quant.bits[1]: line ", "YAML tag"),
    ("train:\n  pretrain: &opt {epochs: 3}\n  qat:\n    <<: *opt\n    lr: 0.1\n", ": train.qat: line ", "merge keys"),
    # keys compare as YAML loads them; values that load as nothing plain are one-line errors too
    ("data:\n  max_train: 1\n  max_train: 1.0\n", ": data.max_train: ", "set twice, at line 2 and line 3"),
    ("quant:\n  layers:\n    ~: {}\n    null: {}\n", ": quant.layers.None: ", "set twice"),
    ("? [1, 2]\n: x\n", ": <top level>: line ", "a key must be a plain name"),
    ("seed: 2001-02-30\n", ".yaml: ", "not a plain YAML value"),
])
def test_yaml_features_an_experiment_never_needs_name_their_key_and_line(write_experiment, text, where, what):
    message = error_of(write_experiment(text))
    assert where in message and what in message and "\n" not in message, message


def test_a_long_list_written_out_is_no_alias_bomb():
    from dsetool.yamlfile import MAX_EXPANDED_NODES, parse

    bers = ", ".join(f"{1e-6 * (1 + i / 30000):.9e}" for i in range(MAX_EXPANDED_NODES + 1000))
    data = parse(f"name: long\nsweep:\n  faults.ber: [{bers}]\n", "long.yaml", "")
    assert len(data["sweep"]["faults.ber"]) == MAX_EXPANDED_NODES + 1000


def test_set_values_follow_the_same_rules(write_experiment):
    path = write_experiment({"name": "ok"})
    assert ": seed: line 1: YAML tag" in error_of(path, ["seed=!!int 3"])
    assert "train.qat.epochs: set twice" in error_of(path, ["train.qat={epochs: 1, epochs: 2}"])


def test_small_anchors_are_fine(write_experiment):
    text = "name: anchors\ntrain:\n  pretrain: &opt {epochs: 3}\n  qat: *opt\n"
    assert load_experiment(write_experiment(text)).points[0].config.train.qat.epochs == 3


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".hidden", ""])
def test_experiment_name_cannot_be_a_path(write_experiment, name):
    assert ": name: expected letters" in error_of(write_experiment({"name": name}))


def test_set_override_and_missing_key(write_experiment):
    path = write_experiment({"name": "o"})
    exp = load_experiment(path, ["quant.bits=4", "train.qat.lr=0.01"])
    assert exp.points[0].config.quant.weight_bits == 4
    assert exp.points[0].config.train.qat.lr == 0.01
    assert error_of(path, ["quant.bitz=4"]) == "--set: quant.bitz: unknown key (did you mean 'bits'?)"
    assert "expected dotted.key=value" in error_of(path, ["quant.bits"])


def test_sweep_grid_product_and_zip(write_experiment):
    exp = load_experiment(write_experiment({
        "sweep": {"quant.bits": [8, 4], "quant.method": ["qat", "ptq"]},
        "zip": {"seed": [1, 2], "data.split_seed": [3, 4]},
    }))
    assert len(exp.points) == 8
    combos = {(p.config.quant.weight_bits, p.config.quant.method, p.config.seed, p.config.data.split_seed)
              for p in exp.points}
    assert (4, "ptq", 2, 4) in combos and (4, "ptq", 2, 3) not in combos
    assert exp.points[0].label == "quant.bits=8,quant.method=qat,seed=1,data.split_seed=3"


def test_sweep_values_are_validated_with_their_key(write_experiment):
    assert "quant.weight_bits: expected an integer in 2..16, got 99" in error_of(
        write_experiment({"sweep": {"quant.weight_bits": [8, 99]}}))
    assert "sweep.quant.bitz: unknown key" in error_of(write_experiment({"sweep": {"quant.bitz": [8]}}))
    assert "zip: expected lists of equal length" in error_of(
        write_experiment({"zip": {"seed": [1, 2], "data.split_seed": [1]}}))


def test_bits_shorthand_equals_explicit_widths(write_experiment):
    a = load_experiment(write_experiment({"quant": {"bits": 4}}, "a.yaml")).points[0].config
    b = load_experiment(write_experiment({"quant": {"weight_bits": 4, "act_bits": 4}}, "b.yaml")).points[0].config
    assert a == b


def test_per_layer_override_must_name_a_layer(write_experiment):
    ok = load_experiment(write_experiment({"quant": {"layers": {"conv1": {"weight_bits": 8}}}}, "ok.yaml"))
    assert ok.points[0].config.quant.layers["conv1"].weight_bits == 8
    message = error_of(write_experiment({"quant": {"layers": {"conv9": {"weight_bits": 8}}}}))
    assert re.search(r"quant\.layers\.conv9: lenet5 has no layer 'conv9'", message)


def test_schema_is_json_schema_with_constraints():
    s = schema()
    json.dumps(s)
    weight_bits = s["properties"]["quant"]["properties"]["weight_bits"]
    assert (weight_bits["type"], weight_bits["minimum"], weight_bits["maximum"]) == ("integer", 2, 16)
    assert s["properties"]["data"]["properties"]["name"]["enum"][0] == "digits"
    assert s["additionalProperties"] is False


@pytest.mark.parametrize("name", sorted(p.stem for p in (Path(__file__).parent.parent / "configs").glob("*.yaml")))
def test_shipped_experiments_are_valid(name):
    from tests.conftest import REPO

    exp = load_experiment(REPO / "configs" / f"{name}.yaml")
    assert exp.name == name and len(exp.points) >= 2


@pytest.mark.parametrize("faults, expected", [
    ({"site": "psum"}, "faults.site: expected one of act, weight, pe.act"),
    ({"site": ["act", "psum"]}, "faults.site[1]: expected one of act, weight, pe.act, pe.weight, pe.psum, "
                                "pe.shadow, out, got 'psum'"),
    ({"site": []}, "faults.site: expected at least one fault site, got an empty list"),
    ({"site": ["act", "pe.shadow"]}, "faults.site: pe.shadow is the output-stationary accelerator's shadow "
                                     "registers; hw.dataflow is 'ws'"),
    ({"site": ["act", "out", "act"]}, "faults.site: act is listed twice (each register counts once)"),
    ({"site": ["act", "weight"], "bits": [5], "layers": ["conv1"]}, "bit 5 is beyond the 4-bit weight register"),
    ({"bits": [99]}, "faults.bits[0]: expected an integer in 0..63, got 99"),
    ({"bits": [8]}, "faults.bits: bit 8 is beyond the 8-bit act register (bits 0..7)"),
    ({"site": "weight", "bits": [5], "layers": ["conv1"]}, "beyond the 4-bit weight register"),
    ({"ber": 0.0}, "faults.ber: expected a bit error rate in (0, 1), got 0.0"),
    ({"ber": 1.5}, "faults.ber: expected a number in [0, 1], got 1.5"),
    ({"layers": ["conv7"]}, "faults.layers: lenet5 has no layer 'conv7'"),
    ({"samples": "lots"}, "faults.samples: expected an integer in 1..100000000 or one of auto, got 'lots'"),
])
def test_bad_fault_specs(write_experiment, faults, expected):
    quant = {"weight_bits": 4} if "weight" in faults.get("site", ()) else {}
    assert expected in error_of(write_experiment({"faults": faults, "quant": quant}))


def test_fault_site_accepts_one_or_several(write_experiment):
    one = load_experiment(write_experiment({"faults": {"site": "pe.psum"}})).points[0].config
    several = load_experiment(write_experiment({"faults": {"site": ["act", "pe.psum"]}}, "b.yaml")).points[0].config
    assert (one.faults.sites, several.faults.sites) == (("pe.psum",), ("act", "pe.psum"))
    listed = load_experiment(write_experiment({"faults": {"site": ["pe.psum"]}}, "c.yaml")).points[0].config
    assert listed == one   # the same design point, so the same store key


def test_fault_bits_accept_selection_or_list(write_experiment):
    cfg = load_experiment(write_experiment({"faults": {"bits": [6, 7], "samples": 100}})).points[0].config
    assert cfg.faults.bits == (6, 7) and cfg.faults.samples == 100
    msb = load_experiment(write_experiment({"faults": {"bits": "msb"}}, "b.yaml")).points[0].config
    assert msb.faults.bits == "msb"
