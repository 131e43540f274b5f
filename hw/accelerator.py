"""The synthesizable accelerator datapath: the array, its per-column output stage and its protection.

`Datapath` is what the synth stage builds: a weight-stationary array whose de-skewed column outputs go
through the output stage (requantize + ReLU, `hw.requant`) and, with `protection` "clip" or "zero", the
paper's range check (`hw.protect`) before the output register. `build_datapath` adds TMR (three
replicas named rep0..rep2 and bitwise voters, `hw.tmr`) when the config asks for it. The unprotected
datapath is the baseline every protection's overhead is measured against, on the same target and seed.
"""

from __future__ import annotations

import dataclasses

from amaranth.hdl import Module, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.array import WSArray
from hw.arrayconfig import ArrayConfig
from hw.protect import MODES, RangeCheckRow
from hw.requant import Requantizer
from hw.tmr import TripleModular

MULTIPLIER_BITS = 16  # the fixed-point multiplier of float scales; power-of-two scales need none (1 bit)
SHIFT_BITS = 6


class Datapath(wiring.Component):
    """A weight-stationary array with an output stage and an optional range check on every column.

    Parameters
    ----------
    config : ArrayConfig
        The array; `protection` selects the range check ("none", "clip", "zero"); `tmr` must be False
        (use `build_datapath`). Output codes are `act_bits` wide, like the activations they become.
    k : int, optional
        The reduction length the accumulator must hold, required when `config.acc_bits` is 0.
    multiplier_bits : int
        Width of the requantization multiplier M: 16 for float scales; 1 for power-of-two scales, whose
        output stage is a pure shift (M = 1), so no DSP is spent on it.

    Members
    -------
    w_load, w, a_valid, a : the array's inputs (see `hw.array.WSArray`).
    multiplier : In(unsigned(multiplier_bits)), shift : In(signed(6)) : the layer's requantization constants.
    lo, hi : In(act shape) : the layer's profiled bounds (ignored without protection).
    out_valid : Out(1); out : Out(act shape).array(cols), registered; detected : Out(1).array(cols).
    """

    def __init__(self, config: ArrayConfig, *, k: int | None = None, multiplier_bits: int = MULTIPLIER_BITS) -> None:
        if config.tmr:
            raise ValueError("Datapath builds one replica; use build_datapath for TMR")
        self._config = config
        self.array = WSArray(dataclasses.replace(config, protection="none"), k=k)
        act = signed(config.act_bits) if config.act_signed else unsigned(config.act_bits)
        self._act = act
        self._multiplier_bits = multiplier_bits
        super().__init__({
            "w_load": In(1), "w": In(signed(config.weight_bits)).array(config.cols),
            "a_valid": In(1), "a": In(act).array(config.rows),
            "multiplier": In(unsigned(multiplier_bits)), "shift": In(signed(SHIFT_BITS)),
            "lo": In(act), "hi": In(act),
            "out_valid": Out(1), "out": Out(act).array(config.cols), "detected": Out(1).array(config.cols),
        })

    @property
    def config(self) -> ArrayConfig:
        return self._config

    @property
    def acc_bits(self) -> int:
        return self.array.acc_bits

    def elaborate(self, platform: object) -> Module:
        m = Module()
        cfg = self._config
        m.submodules.array = array = self.array
        m.d.comb += [array.w_load.eq(self.w_load), array.a_valid.eq(self.a_valid)]
        m.d.comb += [array.w[c].eq(self.w[c]) for c in range(cfg.cols)]
        m.d.comb += [array.a[r].eq(self.a[r]) for r in range(cfg.rows)]
        codes = []
        for c in range(cfg.cols):
            stage = Requantizer(array.acc_bits, self._multiplier_bits, SHIFT_BITS, cfg.act_bits,
                                relu=not cfg.act_signed)
            m.submodules[f"requant_{c}"] = stage
            m.d.comb += [stage.acc.eq(array.out[c]), stage.multiplier.eq(self.multiplier),
                         stage.shift.eq(self.shift)]
            codes.append(stage.out)
        if cfg.protection != "none":
            m.submodules.check = check = RangeCheckRow(self._act, cfg.cols, mode=MODES[cfg.protection])
            m.d.comb += [check.lo.eq(self.lo), check.hi.eq(self.hi)]
            m.d.comb += [check.value[c].eq(codes[c]) for c in range(cfg.cols)]
            codes = [check.out[c] for c in range(cfg.cols)]
            m.d.sync += [self.detected[c].eq(check.detected[c]) for c in range(cfg.cols)]
        m.d.sync += [self.out[c].eq(codes[c]) for c in range(cfg.cols)]
        m.d.sync += self.out_valid.eq(array.out_valid)
        return m


def build_datapath(config: ArrayConfig, *, k: int | None = None,
                   multiplier_bits: int = MULTIPLIER_BITS) -> wiring.Component:
    """Return the datapath the config describes: one replica, or three voted ones with `tmr`."""
    single = dataclasses.replace(config, tmr=False)
    if config.tmr:
        return TripleModular(lambda: Datapath(single, k=k, multiplier_bits=multiplier_bits))
    return Datapath(single, k=k, multiplier_bits=multiplier_bits)
