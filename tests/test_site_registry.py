"""The fault-site and protection registries own their vocabularies: the config's choices, the engine's
site groups and checks, and the stage keys all come from them, and the keys they shape stay the same."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from dsetool.config import FaultConfig, HwConfig, RunConfig, _register_width
from dsetool.faults import apply, site_registry, sites
from dsetool.faults.network import EngineNetwork
from dsetool.faults.site_registry import PRE
from dsetool.faults.sites import SiteError, site_groups
from dsetool.protect import registry as protections
from dsetool.protect.bounds import profiled_bounds
from dsetool.protect.check import CHECK_MODES, RangeCheck, range_checks
from dsetool.protect.schemes import scheme
from dsetool.stages import STAGES, point_stages, stage_key
from dsetool.validate import field_spec
from hw.arrayconfig import PROTECTIONS as RTL_PROTECTIONS
from hw.arrayconfig import ArrayConfig
from tests.conftest import REPO
from tests.fixtures.engines import digits, exported_engine

ACC_BITS = 20
ARRAY = ArrayConfig(rows=4, cols=4, act_bits=4, weight_bits=4, acc_bits=ACC_BITS, dataflow="os")


@pytest.fixture(scope="module")
def lenet(tmp_path_factory: pytest.TempPathFactory) -> EngineNetwork:
    torch.set_num_threads(1)
    return EngineNetwork(exported_engine(tmp_path_factory.mktemp("lenet"), "lenet5", bits=4))


def point(site: str | tuple[str, ...] = "act", protection: str = "none", **hw: object) -> RunConfig:
    base = RunConfig()
    return dataclasses.replace(base, faults=dataclasses.replace(base.faults, site=site),
                               hw=dataclasses.replace(base.hw, protection=protection, **hw),
                               stages=("quantize", "range-restrict", "inject", "synth"))


def choices(cls: type, name: str) -> tuple[str, ...] | None:
    return field_spec(next(f for f in dataclasses.fields(cls) if f.name == name)).choices


def test_config_choices_and_help_come_from_the_registries():
    assert choices(FaultConfig, "site") == site_registry.NAMES
    assert choices(HwConfig, "protection") == protections.NAMES
    site_help = field_spec(next(f for f in dataclasses.fields(FaultConfig) if f.name == "site")).help
    assert all(f"{s.name}: {s.help}" in site_help for s in site_registry.REGISTRY.values())


def test_registries_import_no_heavy_library():
    """The config imports both registries, and a cached run decides on keys without torch."""
    code = ("import sys, dataclasses\nfrom dsetool.config import RunConfig\nfrom dsetool.stages import stage_key\n"
            "base = RunConfig()\n"
            "cfg = dataclasses.replace(base, faults=dataclasses.replace(base.faults, site=('act', 'pe.psum')),\n"
            "                          hw=dataclasses.replace(base.hw, protection='median3'))\n"
            "stage_key('inject', cfg)\n"
            "print('heavy=' + ','.join(m for m in ('torch', 'brevitas', 'amaranth') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip().splitlines()[-1] == "heavy="


def test_every_hook_has_a_group_builder_and_an_application():
    """`pre` faults go into the buffer before the op runs; every other hook is applied in the op's step."""
    assert set(sites.GROUP_BUILDERS) == set(site_registry.HOOKS)
    assert [hook for hook, _ in apply.STEP_HOOKS] == ["weight", "pe", "post"]
    assert set(site_registry.HOOKS) == {PRE} | {hook for hook, _ in apply.STEP_HOOKS}
    assert {s.hook for s in site_registry.REGISTRY.values()} == set(site_registry.HOOKS)


def test_an_entry_whose_hook_cannot_reach_its_register_is_refused():
    with pytest.raises(ValueError, match="cannot corrupt"):
        site_registry.FaultSite("pre.weights", "nonsense", site_registry.WEIGHTS, PRE)
    with pytest.raises(site_registry.UnknownSite, match="use one of act, weight"):
        site_registry.site("psum")


@pytest.mark.parametrize("name", site_registry.NAMES)
def test_every_site_builds_groups_whose_widths_the_config_checks(lenet: EngineNetwork, name: str):
    """Each site's groups carry its registry hook, and the width the config checks `faults.bits` against
    (from the site's register) is the width of the engine's register (None: the wide logits)."""
    kind = site_registry.site(name)
    model = lenet.engine.model
    groups = site_groups(model, name, [], lenet.acc_bits(), ARRAY)
    assert groups and all(g.site == name and g.hook == kind.hook for g in groups)
    assert all((g.tiling is not None) == kind.in_array for g in groups)
    four = dataclasses.replace(RunConfig().quant, weight_bits=4, act_bits=4)   # as the exported model
    cfg = dataclasses.replace(point(name, acc_bits=ACC_BITS), quant=four)
    layers = [model.ops[index].name for index in sites.weight_layer_ops(model)]
    for group in groups:
        expected = _register_width(cfg, layers, group.layer, name)
        assert group.width == (expected if expected is not None else lenet.acc_bits()[group.layer]), group


@pytest.mark.parametrize("name", [s.name for s in site_registry.REGISTRY.values() if s.in_array])
def test_a_site_in_the_array_needs_the_array(lenet: EngineNetwork, name: str):
    with pytest.raises(SiteError, match="needs an array"):
        site_groups(lenet.engine.model, name, [], lenet.acc_bits())


@pytest.mark.parametrize("name", site_registry.NAMES)
def test_the_array_enters_the_inject_key_exactly_for_sites_in_the_array(name: str):
    hw = stage_key("inject", point(name))[1]["config"]["hw"]
    assert ("array" in hw) == site_registry.site(name).in_array
    assert ("array" in stage_key("inject", point(("act", name)))[1]["config"]["hw"]) == (
        site_registry.site(name).in_array)


@pytest.mark.parametrize("arch, grouped", [("mobilenet", True), ("resnet20", False), ("lenet5", False)])
def test_grouped_convs_enter_the_pe_keys_of_networks_that_have_one(arch: str, grouped: bool,
                                                                   monkeypatch: pytest.MonkeyPatch):
    """A grouped conv's PE sites are the accelerator's GEMM over all its input channels (they were one
    GEMM per group): the inject key of a PE campaign says so for networks with a grouped conv, and the
    rtlsim key where it draws PE faults; every other network keeps its keys."""
    import hw.rtlsim

    monkeypatch.setattr(hw.rtlsim, "verilator_fingerprint", lambda: "verilator-cli 5.048")   # no toolchain needed
    monkeypatch.setattr(hw.rtlsim, "require_toolchain", lambda: None)
    cfg = point("pe.psum")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, arch=arch))
    assert ("grouped_convs" in stage_key("inject", cfg)[1]["config"]["hw"]) == grouped
    assert "grouped_convs" not in stage_key("inject", dataclasses.replace(cfg, faults=point("act").faults)
                                            )[1]["config"]["hw"]
    assert ("grouped_convs" in stage_key("rtlsim", cfg)[1]["config"]) == grouped


@pytest.mark.parametrize("site, overrides, both", [
    ("pe.weight", {}, True), (("act", "pe.weight"), {}, True), ("pe.act", {}, False), ("pe.psum", {}, False),
    ("pe.weight", {"weight_buffers": 1}, False), ("pe.weight", {"dataflow": "os"}, False),
    ("pe.weight", {"rows": 6, "cols": 4}, False)])
def test_both_weight_banks_enter_the_keys_that_draw_them(site, overrides: dict, both: bool,
                                                         monkeypatch: pytest.MonkeyPatch):
    """The double-buffered machine's `pe.weight` sites are both banks of each PE (they were the bank in use):
    the inject keys of its `pe.weight` campaigns say so, and its rtlsim keys where they draw PE faults;
    every other campaign keeps its key, so does an array whose sides do not divide (no machine tiling,
    one weight register modelled)."""
    import hw.rtlsim

    monkeypatch.setattr(hw.rtlsim, "verilator_fingerprint", lambda: "verilator-cli 5.048")   # no toolchain needed
    monkeypatch.setattr(hw.rtlsim, "require_toolchain", lambda: None)
    cfg = point(site, **overrides)
    assert ("weight_sites" in stage_key("inject", cfg)[1]["config"]["hw"]) == both
    drawn = not overrides   # the RTL check draws from every site of a double-buffered machine's array
    assert ("weight_sites" in stage_key("rtlsim", cfg)[1]["config"]) == drawn
    assert "weight_sites" not in stage_key("rtlsim", dataclasses.replace(
        cfg, hw=dataclasses.replace(cfg.hw, rtl_faults=0)))[1]["config"]


@pytest.mark.parametrize("site, overrides, shadow", [
    ("pe.shadow", {"dataflow": "os"}, True), (("act", "pe.shadow"), {"dataflow": "os"}, True),
    ("pe.psum", {"dataflow": "os"}, False), ("pe.psum", {}, False)])
def test_the_shadows_last_drain_enters_the_keys_that_draw_it(site, overrides: dict, shadow: bool,
                                                            monkeypatch: pytest.MonkeyPatch):
    """The output-stationary machine's `pe.shadow` sites run a cycle past the streaming timeline, to the
    last drain (they ended with it): the inject keys of its `pe.shadow` campaigns say so, and its rtlsim
    keys where they draw PE faults; every other key stays."""
    import hw.rtlsim

    monkeypatch.setattr(hw.rtlsim, "verilator_fingerprint", lambda: "verilator-cli 5.048")   # no toolchain needed
    monkeypatch.setattr(hw.rtlsim, "require_toolchain", lambda: None)
    cfg = point(site, **overrides)
    assert ("shadow_sites" in stage_key("inject", cfg)[1]["config"]["hw"]) == shadow
    streaming = cfg.hw.dataflow == "os"   # the RTL check draws from every site of the machine's array
    assert ("shadow_sites" in stage_key("rtlsim", cfg)[1]["config"]) == streaming
    assert "shadow_sites" not in stage_key("rtlsim", dataclasses.replace(
        cfg, hw=dataclasses.replace(cfg.hw, rtl_faults=0)))[1]["config"]


def _bounds(network: EngineNetwork) -> dict:
    found = profiled_bounds(network.engine, digits().calib.x[:32], (), "layer", "profiled", 1.0, 0.0)
    return {"layers": {b.layer: b.to_json() for b in found}}


@pytest.mark.parametrize("name", protections.NAMES)
def test_every_protection_builds_its_engine_check_or_is_none(lenet: EngineNetwork, name: str):
    """The registry's builder gives the checks the protection modules make for that name."""
    protection = protections.REGISTRY[name]
    model = lenet.engine.model
    if not protection.protects:
        assert name == protections.NONE and protection.build is None
        return
    assert protection.build is not None
    cfg = point(protection=name, cols=4)
    bounds = _bounds(lenet) if protection.reads_bounds else None
    built = protection.build(model, protections.check_settings(cfg, bounds))
    assert built
    if protection.reads_bounds:
        assert bounds is not None
        channels = {index: op.out_shape[0] for index, op in enumerate(model.ops)}
        expected = range_checks(bounds, CHECK_MODES[name], channels)
        assert built.keys() == expected.keys()
        for index, check in built.items():
            assert isinstance(check, RangeCheck)
            assert check.mode == expected[index].mode
            assert np.array_equal(check.lo, expected[index].lo) and np.array_equal(check.hi, expected[index].hi)
    else:
        p = cfg.protect
        assert set(built.values()) == {scheme(name, chunk=4, gamma=p.gamma, gates=p.gates, action=p.afd_action)}


def test_a_range_check_without_bounds_is_refused(lenet: EngineNetwork):
    build = protections.REGISTRY["clip"].build
    assert build is not None
    with pytest.raises(ValueError, match="profiled bounds"):
        build(lenet.engine.model, protections.check_settings(RunConfig()))


@pytest.mark.parametrize("name", protections.NAMES)
def test_stage_keys_and_stages_follow_the_protection_registry(name: str):
    protection = protections.REGISTRY[name]
    cfg = point(protection=name)
    hw = stage_key("inject", cfg)[1]["config"]["hw"]
    assert ("placement" in hw) == protection.protects
    assert ("scheme" in hw) == protection.reads_scheme
    assert ("range-restrict" in STAGES["inject"].needs(cfg)) == protection.reads_bounds
    assert ("range-restrict" in point_stages(cfg)) == protection.reads_bounds
    # the accelerator builds every range check (sed too); a datapath only the registry's RTL ones
    assert ("synth" in point_stages(cfg)) == (protection.rtl or protection.reads_bounds)
    datapath = dataclasses.replace(cfg, hw=dataclasses.replace(cfg.hw, synth="datapath"))
    assert ("synth" in point_stages(datapath)) == protection.rtl


def test_the_rtl_builds_exactly_the_registry_protections_it_says():
    """`hw` cannot import the registry: its own list must agree with the entries marked `rtl`."""
    assert protections.RTL_PROTECTIONS == RTL_PROTECTIONS


# Keys computed before the registries existed: site and protection names must keep shaping them the same.
# The PE sites' keys moved on purpose when their K order, columns and timeline became the accelerator's
# (`machine_k_order`, `machine_lead`, `LayerTiling.period`: the key reads `k_order` and `weight_buffers`),
# and again when the RTL check made their sums wrap with the bias (`site_registry.PE_MODEL`) and their
# accumulators as wide as the accelerator builds them (`Design.machine_array`); the shadow sites' when they
# came to run to the last drain (`LayerTiling.site_shape`).
PINNED_INJECT = {
    ('act', 'none'): "024621b346d012cb136d483089b9b90e9d621bde7eb05f75972a92fa27cf9d01",
    ('weight', 'none'): "42772eb7607f61d51821c957bffa0a0b712d306bc7c29811a4ab3bd01a789044",
    ('out', 'none'): "dbb3ae713ec7cbc029f2ce4cc5ff608e0d45b166fd4aa8172d3ba0b8a8f7bed6",
    ('pe.act', 'none'): "2ead1ca14c46c7fdd7351d57680fb69fecce2ec4b018cf45ad1114a2ac37b850",
    ('pe.weight', 'none'): "d6fafdab9dc56c9e05ce8dd4079276fe8d19a97db7402434196ec5eef9042a94",
    ('pe.psum', 'none'): "f2db03479f7f3cf516d0a0fc5832ddbe0c6103a693264657dd6261ac89cb41bb",
    ('pe.shadow', 'none'): "6948658e8afc7da749759d94a10cc0e11b996bfac8bc97499efd26e30bfa2649",
    (('act', 'pe.psum'), 'none'): "2cf81055d5b274eb75bb5ab8045c5b154dc7e8a779381db17a53b0914af20b44",
    ('act', 'clip'): "50fa9ff12af71aa4533e6a7528f8a7f5dbff64993b3c7a4a74c34bbab993ed1d",
    ('act', 'zero'): "35f23b8a1cd34dcad95c69ddbfa1740f1fcba308730d6e82fa6d8c308ffca971",
    ('act', 'sed'): "e16aeee40e549cee055c9a01fdcecd440b58918fc8b476d88a61a4ac25866833",
    ('act', 'median3'): "b3dd02a5dc42f3b739c3253c7295a08ce08b27d0576d04c8c01109465881d31b",
    ('act', 'median5'): "b4fda55d0349e3d548bddad6b3e16645bf0406af73d3502c393e054258259e75",
    ('pe.weight', 'afd'): "279b702c8a027cba37a1089bb8c988b41a90dbc69616498dab37acf7c5d148ac",
}


@pytest.mark.parametrize("site, protection", list(PINNED_INJECT))
def test_inject_keys_of_every_site_and_protection_are_pinned(site, protection):
    key, inputs = stage_key("inject", point(site, protection, cols=4, dataflow="os"))
    assert key == PINNED_INJECT[site, protection], json.dumps(inputs)


def test_pinned_keys_cover_every_site_and_protection():
    assert {s for s, _ in PINNED_INJECT if isinstance(s, str)} == set(site_registry.NAMES)
    assert {p for _, p in PINNED_INJECT} == set(protections.NAMES)
