"""The array a design point runs on, as the shared `hw.arrayconfig.ArrayConfig` (torch-free).

Operand widths are the widest the network needs (per-layer overrides included); with `hw.acc_bits: 0`
the accumulator is sized for the network's longest dot product, so one synthesized array serves every
layer, and two models with the same widths and longest reduction share one synthesis.
"""

from __future__ import annotations

import dataclasses

from dsetool.config import RunConfig, factory_info, qonnx_info
from dsetool.data import geometry_of
from dsetool.gemm import Gemm, array_gemms
from dsetool.models.shapes import gemm_shapes
from dsetool.protect import registry as protections
from hw.arrayconfig import ArrayConfig


def network_gemms(cfg: RunConfig) -> list[Gemm]:
    """Return the GEMM of every weight layer of the design point's network."""
    if cfg.model.qonnx:
        return list(qonnx_info(cfg).gemms)
    if cfg.model.factory:
        return list(factory_info(cfg).gemms)
    channels, native, classes = geometry_of(cfg.data.name, cfg.data.root)
    return gemm_shapes(cfg.model.arch, channels, native, classes, cfg.model.mlp_hidden)


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


def network_cycles(cfg: RunConfig) -> int:
    """Return the array cycles of one inference (closed form, every layer's GEMM tiled onto the array)."""
    from hw.cycles import network_cycles as cycles

    return cycles(array_gemms(network_gemms(cfg)), cfg.hw.rows, cfg.hw.cols, cfg.hw.dataflow)


def baseline(cfg: RunConfig) -> RunConfig:
    """Return the design point without protection or TMR: what their overhead is measured against."""
    return dataclasses.replace(cfg, hw=dataclasses.replace(cfg.hw, protection=protections.NONE, tmr=False))


def protected(cfg: RunConfig) -> bool:
    """Tell whether the design point has a protection or TMR, so that `baseline` is another point."""
    return protections.REGISTRY[cfg.hw.protection].protects or cfg.hw.tmr
