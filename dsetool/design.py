"""One design object per design point: the array and every width and constant layout that the integer
engine, the RTL, the cycle model and the report must share.

`design_of(cfg)` derives it once; the stages read it instead of deriving widths on their own: the engine
is built by `Design.engine` and the datapath by `Design.datapath`, both with `multiplier_bits`, so the
campaigns, the bounds and the synthesized output stage compute the same requantization. Torch- and
Amaranth-free at import (deciding a synth cache hit reads it).

Operand widths are the widest the network needs (per-layer overrides included); with `hw.acc_bits: 0`
the accumulator is sized for the network's longest dot product, so one synthesized array serves every
layer (a datapath synthesis is shared by every network with the same widths and longest reduction, an
accelerator's by every trained model of one network: see stage synth).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Protocol

from dsetool.config import RunConfig, factory_info, qonnx_info
from dsetool.data import geometry_of
from dsetool.gemm import Gemm, VectorPass, array_gemms
from dsetool.models.shapes import network_shapes
from dsetool.protect import registry as protections
from hw.arrayconfig import ArrayConfig
from hw.cycles import DEFAULT_WEIGHT_BUFFERS

if TYPE_CHECKING:
    from amaranth.lib import wiring

    from dsetool.engine import Engine
    from dsetool.engine.intmodel import IntModel

SHIFT = 1   # the multiplier width of an output stage that only shifts (M = 1)
PER_LAYER, PER_CHANNEL = "per_layer", "per_channel"   # the layouts of the output stage's constants
DATAPATH = "datapath"   # `hw.synth` when only the datapath is synthesized


class _DatapathWork(Protocol):
    """What a network puts on the datapath (`models.shapes.NetworkShapes`, and the factory's and QONNX
    model's infos)."""

    @property
    def gemms(self) -> Sequence[Gemm]: ...

    @property
    def vector_passes(self) -> Sequence[VectorPass]: ...


@dataclass(frozen=True)
class ProtectionSpec:
    """The design point's protection as the engine's campaign runs it and the RTL builds it.

    `name` is `hw.protection`, `tmr` whether the datapath is triplicated; `placement` where a check sits
    (`protect.placement`); `granularity`, `range`, `margin` and `factor` how stage range-restrict profiles
    its bounds; `scheme` what the engine's checks are built from (`registry.CheckSettings`, without bounds:
    the campaign adds the profiled ones).
    """

    name: str
    tmr: bool
    placement: str
    granularity: str
    range: str
    margin: float
    factor: float
    scheme: protections.CheckSettings

    @property
    def layers(self) -> tuple[str, ...]:
        """Return the protected weight layers (`protect.layers`; empty: every one whose output feeds another)."""
        return self.scheme.layers

    @property
    def entry(self) -> protections.Protection:
        """Return the registry entry of the protection."""
        return protections.REGISTRY[self.name]

    @property
    def rtl(self) -> str:
        """Return the protection unit the array is built with: the point's when the RTL builds it (the
        range check's clip or zero), else `none` (sed, median, afd: engine-only, refused by synth)."""
        return self.name if self.entry.rtl else protections.NONE

    @property
    def channel_bounds(self) -> bool:
        """Tell whether the array's range check holds a bound pair per output channel."""
        return self.rtl != protections.NONE and self.granularity == "channel"

    def bounds_key(self) -> dict[str, Any]:
        """Return the bounds' settings as stage range-restrict's key holds them."""
        return {"layers": list(self.layers), "granularity": self.granularity, "range": self.range,
                "margin": self.margin, "factor": self.factor}


def protection_of(cfg: RunConfig) -> ProtectionSpec:
    """Return the protection of design point `cfg` (cheap: no network is derived)."""
    p = cfg.protect
    return ProtectionSpec(cfg.hw.protection, cfg.hw.tmr, p.placement, p.granularity, p.range, p.margin, p.factor,
                          protections.check_settings(cfg))


BIAS_HEADROOM = 1     # bits: a bias as large as the worst-case dot product still fits the accelerator's sums


@dataclass(frozen=True)
class Design:
    """What a design point's network runs on, derived once from its config (`design_of`).

    `array`: the shared `ArrayConfig`, accumulator width resolved (`acc_bits`). `acc_depth`: the output
    rows a weight-stationary K accumulator holds (the largest GEMM M; 0 for output-stationary).
    `multiplier_bits`: the requantization multiplier of the output stage, for the RTL and the engine
    alike: `hw.multiplier_bits` (fixed point M * 2**-s) under float scales, and under po2 scales 1 (a
    pure shift) unless a quantizer divides by a window that is no power of two (an average pool's: then
    the fixed-point multiplier, as the engine's `po2_constants`). `constants`: "per_channel" when weight
    scales or the range check's bounds are per output channel, else "per_layer". `bias`: the layers add
    a bias to their accumulators (every weight layer of the integer export carries one, zeros when the
    float layer has none, and the engine adds it). `protection`: see `ProtectionSpec`. `gemms` and
    `vector_passes`: what the network puts on the array and on the vector unit. `weight_buffers`: the
    accelerator's weight registers per PE (`hw.weight_buffers`; 1 for an output-stationary one, whose
    weights stream). `config` is the point.
    """

    config: RunConfig = field(compare=False, repr=False)
    array: ArrayConfig
    acc_depth: int
    multiplier_bits: int
    constants: str
    bias: bool
    protection: ProtectionSpec
    gemms: tuple[Gemm, ...]
    vector_passes: tuple[VectorPass, ...]
    weight_buffers: int = DEFAULT_WEIGHT_BUFFERS

    @property
    def acc_bits(self) -> int:
        """Return the accumulator width of the array and its output stage."""
        return self.array.acc_bits

    @property
    def machine_array(self) -> ArrayConfig:
        """Return the array as the accelerator that runs the network builds it (`dsetool.machine.build`),
        whose PE registers the `pe.*` fault sites are: its accumulators start each sum at the bias, so
        they are `BIAS_HEADROOM` bits wider than the dot products' worst case, unless `hw.acc_bits` fixes
        them."""
        if self.config.hw.acc_bits:
            return dataclasses.replace(self.array, acc_bits=self.config.hw.acc_bits)
        return dataclasses.replace(self.array, acc_bits=self.array.acc_bits + BIAS_HEADROOM)

    @property
    def protected(self) -> bool:
        """Tell whether the point has a protection or TMR, so that `baseline` is another point."""
        return self.protection.entry.protects or self.protection.tmr

    @property
    def unbuilt(self) -> str:
        """Return why synth builds the point's datapath alone instead of its accelerator (`hw.synth`, or
        `no_machine`), or "" when it builds the accelerator."""
        return "hw.synth: datapath" if self.config.hw.synth == DATAPATH else self.no_machine

    @property
    def no_machine(self) -> str:
        """Return why the point has no accelerator (`hw.machine`), or "" when it has one (the machine
        compiler may still refuse the network's ops)."""
        protection, array = self.protection, self.array
        if array.rows < 2:
            return "the accelerator needs at least 2 array rows (hw.rows)"
        if array.dataflow not in ("ws", "os"):
            return "the accelerator is built weight- or output-stationary (hw.dataflow: ws or os)"
        if max(array.rows, array.cols) % min(array.rows, array.cols):
            return "the accelerator needs array rows and cols that divide one another (hw.rows, hw.cols)"
        if protection.entry.protects and not protection.entry.reads_bounds:
            return f"the accelerator has no unit for {protection.name}; it builds range checks (clip, zero, sed)"
        return ""

    def baseline(self) -> Design:
        """Return the design without protection or TMR: what their overhead is measured against, built
        the same way (a point synthesized as a datapath is measured against the unprotected datapath)."""
        hw = dataclasses.replace(self.config.hw, protection=protections.NONE, tmr=False)
        if self.unbuilt:
            hw = dataclasses.replace(hw, synth=DATAPATH)
        return design_of(dataclasses.replace(self.config, hw=hw))

    def inference_cycles(self, drain: int) -> tuple[int, int]:
        """Return the cycles of one inference on the datapath (closed form): the array's (every weight
        layer's GEMM tiled onto it, each plus the output stage's `drain`) and the vector unit's (every
        post-GEMM op's pass, one lane per array column), run one after the other (`hw.cycles`)."""
        from hw.cycles import network_cycles, vector_cycles

        a = self.array
        array = network_cycles(array_gemms(self.gemms), a.rows, a.cols, a.dataflow, drain)
        vector = sum(vector_cycles(p.channels, p.positions, p.window, a.cols) for p in self.vector_passes)
        return array, vector

    @property
    def datapath_placement(self) -> str:
        """Return where the datapath's range check sits: `protect.placement` when the array builds one
        (`ArrayConfig.protection`), else "output" (nothing to place)."""
        return self.protection.placement if self.array.protection != "none" else "output"

    @property
    def machine_checks_inputs(self) -> bool:
        """Return whether the accelerator checks the codes its array reads: a range check placed on the
        layers' inputs (`protect.placement` input; one whose layers leave every GEMM out is counted too,
        which only costs a key of its own)."""
        return self.protection.entry.protects and self.protection.placement == "input"

    def datapath(self) -> wiring.Component:
        """Return the synthesizable datapath of the design (`hw.accelerator.build_datapath`), its range
        check where the campaigns place it."""
        from hw.accelerator import build_datapath

        return build_datapath(self.array, depth=self.acc_depth, multiplier_bits=self.multiplier_bits,
                              placement=self.datapath_placement)

    def engine(self, model: IntModel, checks: Mapping[int, Any] | None = None,
               input_checks: Mapping[int, Any] | None = None) -> Engine:
        """Return the integer engine of `model` with the design's output stage; raise ValueError when the
        model requantizes by a ratio that stage cannot compute (a shift-only stage meets one that is no
        power of two), so the engine never runs what the RTL would not."""
        from dsetool.engine import Engine

        engine = Engine(model, multiplier_bits=self.multiplier_bits, checks=checks, input_checks=input_checks)
        if self.multiplier_bits == SHIFT:
            for index, stage in engine.output_stages.items():
                constants = zip(stage.multiplier, stage.shift, stage.ratios, strict=True)
                if any(Fraction(m) / Fraction(2) ** s != ratio for m, s, ratio in constants):
                    raise ValueError(f"Quantizer {model.ops[index].name!r} requantizes by a ratio that is no power "
                                     f"of two, which the design's shift-only output stage cannot compute")
        return engine


def design_of(cfg: RunConfig) -> Design:
    """Return the design of point `cfg`."""
    network = _network(cfg)
    gemms, passes = tuple(network.gemms), tuple(network.vector_passes)
    protection = protection_of(cfg)
    array = _array(cfg, protection, max(g.k for g in gemms))
    channel_scales = cfg.quant.weight_granularity == "per_channel"
    return Design(config=cfg, array=array,
                  acc_depth=max(g.m for g in gemms) if array.dataflow == "ws" else 0,
                  multiplier_bits=multiplier_bits_for(cfg, passes),
                  constants=PER_CHANNEL if channel_scales or protection.channel_bounds else PER_LAYER,
                  bias=True, protection=protection, gemms=gemms, vector_passes=passes,
                  weight_buffers=cfg.hw.weight_buffers if array.dataflow == "ws" else 1)


def _network(cfg: RunConfig) -> _DatapathWork:
    """Return what the point's network puts on the datapath."""
    if cfg.model.qonnx:
        return qonnx_info(cfg)
    if cfg.model.factory:
        return factory_info(cfg)
    channels, native, classes = geometry_of(cfg.data.name, cfg.data.root)
    return network_shapes(cfg.model.arch, channels, native, classes, cfg.model.mlp_hidden)


def _array(cfg: RunConfig, protection: ProtectionSpec, longest: int) -> ArrayConfig:
    """Return the array: the widest operands of any layer, the accumulator for the longest dot product."""
    q, hw = cfg.quant, cfg.hw
    act_bits = max([q.act_bits, *(layer.act_bits or 0 for layer in q.layers.values())])
    weight_bits = max([q.weight_bits, *(layer.weight_bits or 0 for layer in q.layers.values())])
    base = ArrayConfig(rows=hw.rows, cols=hw.cols, act_bits=act_bits, weight_bits=weight_bits, acc_bits=hw.acc_bits,
                       act_signed=not q.relu_unsigned, dataflow=hw.dataflow, multiplier=hw.multiplier,
                       protection=protection.rtl, tmr=protection.tmr)
    return dataclasses.replace(base, acc_bits=base.accumulator_bits(longest))


def multiplier_bits_for(cfg: RunConfig, passes: tuple[VectorPass, ...]) -> int:
    """Return the output stage's multiplier width: a shift when every requantization ratio is a power of
    two (po2 scales, and no quantizer averaging over another window), else `hw.multiplier_bits`. A pool
    whose sums are the logits counts too, though nothing requantizes them: the passes do not say so."""
    shifts = cfg.quant.scaling == "po2" and all(p.divisor & (p.divisor - 1) == 0 for p in passes)
    return SHIFT if shifts else cfg.hw.multiplier_bits
