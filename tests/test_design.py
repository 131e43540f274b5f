"""The design object of a point: the engine and the generated RTL use the same widths for every shipped config
under float and po2 scales; the synth key follows what the RTL is built from; the unprotected baseline."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from fractions import Fraction
from functools import cache
from typing import Any

import pytest

from dsetool.config import RunConfig, load_experiment
from dsetool.design import PER_CHANNEL, PER_LAYER, SHIFT, Design, design_of, multiplier_bits_for
from dsetool.stages import stage_key
from hw.arrayconfig import required_acc_bits
from tests.conftest import REPO

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
SCALINGS = ("po2", "float")


def points(path: Any, scaling: str, *overrides: str) -> list[RunConfig]:
    """Return every design point of a shipped config, as the CLI loads them, at `scaling`."""
    return [p.config for p in load_experiment(path, [f"quant.scaling={scaling}", *overrides]).points]


def point(*overrides: str, path: Any = REPO / "configs" / "smoke.yaml") -> RunConfig:
    """Return the first design point of a shipped config with `overrides`, its axes dropped."""
    return load_experiment(path, ["sweep={}", "zip={}", *overrides]).points[0].config


def synth_key(cfg: RunConfig) -> str:
    return stage_key("synth", cfg)[0]


# -- the engine's width -------------------------------------------------------------------------------------

@cache
def exported(arch: str, data: str, mlp_hidden: tuple[int, ...], scaling: str) -> Any:
    """Return the integer model of an untrained quantized network (its scales are what matter here)."""
    import torch

    from dsetool.data import geometry_of
    from dsetool.engine.intmodel import parse_intmodel
    from dsetool.models.export import integer_model
    from dsetool.models.quant import QuantSpec
    from dsetool.models.zoo import build_model, input_size

    channels, native, classes = geometry_of(data, "data")
    side = input_size(arch, native)
    size = native if side is None else (side, side)
    torch.manual_seed(0)
    model = build_model(arch, in_channels=channels, num_classes=classes, image_size=size,
                        quant=QuantSpec(weight_bits=4, act_bits=4, scaling=scaling), mlp_hidden=mlp_hidden).eval()
    return parse_intmodel(*integer_model(model, arch=arch, input_shape=(channels, *size)))


def multiplier_width(engine: Any) -> int:
    """Return the widest requantization multiplier the engine's output stages use."""
    return max(m.bit_length() for stage in engine.output_stages.values() for m in stage.multiplier)


@pytest.mark.parametrize("scaling", SCALINGS)
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_the_engine_uses_the_designs_multiplier_width(path, scaling):
    from dsetool.engine import Engine

    cfg = points(path, scaling)[0]
    design = design_of(cfg)
    model = exported(cfg.model.arch, cfg.data.name, cfg.model.mlp_hidden, scaling)
    engine = design.engine(model)
    assert engine.multiplier_bits == design.multiplier_bits
    expected = cfg.hw.multiplier_bits if scaling == "float" else SHIFT   # no shipped network averages over 9
    assert design.multiplier_bits == expected == multiplier_width(engine)
    # the engine the stages built before the design object: the same output stages, so the same results
    assert constants(Engine(model, multiplier_bits=cfg.hw.multiplier_bits)) == constants(engine)


def constants(engine: Any) -> dict[int, tuple[Any, ...]]:
    return {index: (stage.multiplier, stage.shift) for index, stage in engine.output_stages.items()}


def test_a_po2_average_over_a_window_of_nine_takes_the_fixed_point_multiplier():
    from tests.test_engine_ops import Builder, residual_model

    design = design_of(point("quant.scaling=po2"))
    nine = residual_model().build()   # a 3x3 average pool: its quantizer's ratio is 2**-1 / 9 / 2**-1
    four = Builder((2, 4, 4), 8, 2.0**-6, scaling="po2").conv("conv1", 4, 3, padding=1).relu("relu1", 6, 2.0**-3) \
        .avgpool("pool", 2, 2).quant("q", 6, 2.0**-2).flatten().linear("fc", 3).build()
    for model, bits in ((nine, design.config.hw.multiplier_bits), (four, SHIFT)):
        passes = tuple(model.vector_passes())
        shaped = dataclasses.replace(design, vector_passes=passes,
                                     multiplier_bits=multiplier_bits_for(design.config, passes))
        assert shaped.multiplier_bits == bits == multiplier_width(shaped.engine(model))
    with pytest.raises(ValueError, match=r"^Quantizer 'q_pool' requantizes by a ratio that is no power of two"):
        dataclasses.replace(design, multiplier_bits=SHIFT).engine(nine)


def test_the_shipped_networks_average_over_windows_of_powers_of_two():
    resnet = design_of(point(path=REPO / "configs" / "resnet20.yaml"))
    assert [(p.layer, p.divisor) for p in resnet.vector_passes if p.divisor > 1] == [("pool", 64)]
    assert design_of(point()).multiplier_bits == SHIFT


# -- the RTL's widths ---------------------------------------------------------------------------------------

def distinct_designs() -> list[Design]:
    """Return one design of every distinct datapath the shipped configs build, under both scalings."""
    found: dict[Any, Design] = {}
    for path in CONFIGS:
        for scaling in SCALINGS:
            for cfg in points(path, scaling):
                design = design_of(cfg)
                found.setdefault((design.array, design.acc_depth, design.multiplier_bits), design)
    return list(found.values())


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")   # built to be inspected, not elaborated
def test_the_datapath_is_built_with_the_designs_widths():
    from hw.accelerator import build_datapath

    designs = distinct_designs()
    assert {d.multiplier_bits for d in designs} == {SHIFT, 24}
    for design in designs:
        assert_widths(build_datapath(design.array, depth=design.acc_depth, multiplier_bits=design.multiplier_bits),
                      design)
    assert_widths(designs[-1].datapath(), designs[-1])   # what synth builds: the same call


def assert_widths(component: Any, design: Design) -> None:
    """Check every replica's accumulator, K-accumulator depth and requantizers against the design."""
    from hw.tmr import TripleModular

    for single in component.replicas if isinstance(component, TripleModular) else [component]:
        assert single.acc_bits == design.acc_bits
        assert single.stage.multiplier.shape().width == design.multiplier_bits
        assert [r.multiplier_bits for r in single.stage.requantizers] == [design.multiplier_bits] * design.array.cols
        assert {r.acc_bits for r in single.stage.requantizers} == {design.acc_bits}
        if design.array.dataflow == "ws":
            assert single.sums.depth == design.acc_depth


# -- the synth key ------------------------------------------------------------------------------------------

def test_the_synth_key_follows_the_multiplier_width_not_a_constant_layout_the_datapath_ignores():
    po2, flt = point("quant.scaling=po2"), point("quant.scaling=float")
    narrow = point("quant.scaling=float", "hw.multiplier_bits=16")
    channel_scales = point("quant.weight_granularity=per_channel")
    clip = point("hw.protection=clip")
    channel_bounds = point("hw.protection=clip", "protect.granularity=channel")
    widths = [design_of(c).multiplier_bits for c in (po2, flt, narrow)]
    layouts = [design_of(c).constants for c in (po2, channel_scales, clip, channel_bounds)]
    assert (widths, layouts) == ([SHIFT, 24, 16], [PER_LAYER, PER_CHANNEL, PER_LAYER, PER_CHANNEL])
    keys = [synth_key(c) for c in (po2, flt, narrow, clip)]
    assert len(set(keys)) == len(keys)
    # the synthesized datapath holds one constant set per layer: a per-channel layout builds the same netlist
    assert synth_key(channel_scales) == synth_key(po2) and synth_key(channel_bounds) == synth_key(clip)
    # bounds are per channel only where the array has a range check
    assert design_of(point("protect.granularity=channel")).constants == PER_LAYER
    assert synth_key(point("protect.granularity=channel")) == synth_key(po2)


@pytest.mark.parametrize("setting", [
    "faults.site=weight", "faults.model=stuck1", "faults.ber=0.001", "faults.seed=3", "faults.margin=0.05",
    "faults.inputs=64", "seed=5", "protect.margin=2", "protect.range=global", "protect.factor=1.1",
    "protect.gamma=4", "quant.method=ptq", "train.qat.epochs=1", "data.calib_size=64"])
def test_campaign_settings_leave_the_design_and_the_synth_key_alone(setting):
    base = point("hw.protection=clip")
    changed = point("hw.protection=clip", setting)
    assert hardware(design_of(changed)) == hardware(design_of(base)) and synth_key(changed) == synth_key(base)


def hardware(design: Design) -> tuple[Any, ...]:
    """Return what a design says of the hardware (its protection's settings are the campaign's too)."""
    return design.array, design.acc_depth, design.multiplier_bits, design.constants, design.bias


def test_a_shift_only_per_layer_datapath_keeps_the_key_po2_points_had():
    inputs = stage_key("synth", point())[1]["config"]
    assert inputs["scaling"] == "po2" and "multiplier_bits" not in inputs
    inputs = stage_key("synth", point("quant.scaling=float"))[1]["config"]
    assert inputs["multiplier_bits"] == 24 and "scaling" not in inputs and "constants" not in inputs


# -- the baseline and the protection ------------------------------------------------------------------------

def test_the_baseline_is_the_same_design_unprotected():
    cfg = point("hw.protection=clip", "hw.tmr=true", "protect.granularity=channel", "protect.placement=input",
                "protect.margin=3")
    design = design_of(cfg)
    assert design.protected and design.array.protection == "clip" and design.array.tmr
    assert (design.protection.placement, design.protection.granularity, design.protection.margin) == \
        ("input", "channel", 3.0)
    base = design.baseline()
    assert not base.protected and base.config.hw.protection == "none" and not base.config.hw.tmr
    assert base.array == dataclasses.replace(design.array, protection="none", tmr=False)
    assert (base.multiplier_bits, base.acc_depth, base.gemms) == (design.multiplier_bits, design.acc_depth,
                                                                  design.gemms)
    assert (design.constants, base.constants) == (PER_CHANNEL, PER_LAYER)   # no range check, no bounds
    plain = design_of(point())
    assert not plain.protected and plain.baseline() == plain and plain.baseline().config == plain.config


def test_engine_only_protections_build_no_range_check():
    median = design_of(point("hw.protection=median3", "hw.cols=4"))
    assert median.protected and median.array.protection == "none" and median.protection.rtl == "none"
    assert median.protection.scheme.chunk == 4   # the median window is cut at the array's width
    sed = design_of(point("hw.protection=sed", "protect.granularity=channel"))
    assert sed.constants == PER_LAYER and sed.protection.entry.reads_bounds


def test_bias_and_accumulator():
    design = design_of(point("hw.dataflow=os"))
    assert design.bias and design.acc_depth == 0
    assert design.no_machine == "" and design.weight_buffers == 1   # its weights stream: no banks to double
    a = design.array   # sized for the longest dot product of the network's operands, independently derived
    assert design.acc_bits == required_acc_bits(max(g.k for g in design.gemms), a.act_bits, a.weight_bits,
                                                a.act_signed)
    ws = design_of(point())
    assert ws.acc_depth == max(g.m for g in ws.gemms)


def test_the_design_is_derived_without_torch_or_amaranth():
    code = ("import sys; from dsetool.config import load_experiment; from dsetool.design import design_of; "
            f"design_of(load_experiment({str(REPO / 'configs' / 'lenet.yaml')!r}).points[0].config); "
            "print(sorted(m for m in ('torch', 'amaranth', 'brevitas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_ratios_of_powers_of_two_are_shifts():
    """The rule the design applies to a pass's divisor is the engine's (`po2_constants`)."""
    from dsetool.engine.executor import po2_constants

    for divisor in (1, 2, 4, 9, 49, 64):
        constants = po2_constants([Fraction(1, divisor)], 24)
        assert (constants[0][0] == 1) == (divisor & (divisor - 1) == 0)
