"""The array a design point runs on, as the shared `hw.arrayconfig.ArrayConfig` (torch-free).

Operand widths are the widest the network needs (per-layer overrides included); with `hw.acc_bits: 0`
the accumulator is sized for the network's longest dot product, so one synthesized array serves every
layer, and two models with the same widths and longest reduction share one synthesis.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

from dsetool.config import RunConfig, factory_info, qonnx_info
from dsetool.data import geometry_of
from dsetool.gemm import Gemm, VectorPass, array_gemms
from dsetool.models.shapes import network_shapes
from dsetool.protect import registry as protections
from hw.arrayconfig import ArrayConfig


class _DatapathWork(Protocol):
    """What a network puts on the datapath (`models.shapes.NetworkShapes`, and the factory's and QONNX
    model's infos)."""

    @property
    def gemms(self) -> Sequence[Gemm]: ...

    @property
    def vector_passes(self) -> Sequence[VectorPass]: ...


def network_gemms(cfg: RunConfig) -> list[Gemm]:
    """Return the GEMM of every weight layer of the design point's network."""
    return list(_network(cfg).gemms)


def network_vector_passes(cfg: RunConfig) -> list[VectorPass]:
    """Return the vector-unit pass of every post-GEMM op of the design point's network that has one
    (`dsetool.gemm.vector_pass`)."""
    return list(_network(cfg).vector_passes)


def _network(cfg: RunConfig) -> _DatapathWork:
    """Return what the design point's network puts on the datapath."""
    if cfg.model.qonnx:
        return qonnx_info(cfg)
    if cfg.model.factory:
        return factory_info(cfg)
    channels, native, classes = geometry_of(cfg.data.name, cfg.data.root)
    return network_shapes(cfg.model.arch, channels, native, classes, cfg.model.mlp_hidden)


def array_config(cfg: RunConfig) -> ArrayConfig:
    """Return the array of a design point."""
    q = cfg.quant
    act_bits = max([q.act_bits, *(layer.act_bits or 0 for layer in q.layers.values())])
    weight_bits = max([q.weight_bits, *(layer.weight_bits or 0 for layer in q.layers.values())])
    base = ArrayConfig(rows=cfg.hw.rows, cols=cfg.hw.cols, act_bits=act_bits, weight_bits=weight_bits,
                       acc_bits=cfg.hw.acc_bits, act_signed=not q.relu_unsigned, dataflow=cfg.hw.dataflow,
                       multiplier=cfg.hw.multiplier, protection=rtl_protection(cfg), tmr=cfg.hw.tmr)
    longest = max(g.k for g in network_gemms(cfg))
    return dataclasses.replace(base, acc_bits=base.accumulator_bits(longest))


def rtl_protection(cfg: RunConfig) -> str:
    """Return the protection unit the array is built with: the design point's when the RTL builds it
    (`Protection.rtl`: the range check's clip or zero), else `none` (the engine-only protections: sed,
    median, afd), which the synth stage refuses (`dsetool.stages.synth`)."""
    return cfg.hw.protection if protections.REGISTRY[cfg.hw.protection].rtl else protections.NONE


def accumulator_depth(cfg: RunConfig) -> int:
    """Return the output rows a weight-stationary array's K accumulator must hold: the network's largest
    GEMM M, so every layer runs without splitting its rows (0 for output-stationary: it sums K in place)."""
    return max(g.m for g in network_gemms(cfg)) if cfg.hw.dataflow == "ws" else 0


def inference_cycles(cfg: RunConfig, drain: int) -> tuple[int, int]:
    """Return the cycles of one inference on the design point's datapath (closed form): the array's (every
    weight layer's GEMM tiled onto it, each plus the output stage's `drain`) and the vector unit's (every
    post-GEMM op's pass, one lane per array column), run one after the other (`hw.cycles`)."""
    from hw.cycles import network_cycles, vector_cycles

    array = network_cycles(array_gemms(network_gemms(cfg)), cfg.hw.rows, cfg.hw.cols, cfg.hw.dataflow, drain)
    vector = sum(vector_cycles(p.channels, p.positions, p.window, cfg.hw.cols) for p in network_vector_passes(cfg))
    return array, vector


def baseline(cfg: RunConfig) -> RunConfig:
    """Return the design point without protection or TMR: what their overhead is measured against."""
    return dataclasses.replace(cfg, hw=dataclasses.replace(cfg.hw, protection=protections.NONE, tmr=False))


def protected(cfg: RunConfig) -> bool:
    """Tell whether the design point has a protection or TMR, so that `baseline` is another point."""
    return protections.REGISTRY[cfg.hw.protection].protects or cfg.hw.tmr
