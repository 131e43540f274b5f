"""The machine's datapath as one block: the weight-stationary array, its K accumulator (bias added) and
the column stage, so that `hw.machine.Machine` can build it once or three times with a vote on its
outputs (`hw.tmr.TripleModular`, `ArrayConfig.tmr`).

    a, w --> WSArray --> KAccumulator (+bias) --> sums (the logits' raw sums)
                                  '--> ColumnStage (requantize, clamp, check) --> out, detected

`k_first` / `k_last` come with each streamed row (the tile's first and last K slice) and are delayed
here by the array's skew (rows + cols - 1 cycles) to meet its sums; the stage takes the sums unless
`logits`. Timing as in the parts: `sums` `ACC_LATENCY` after the array's output, `out` `STAGE_LATENCY`
after that.

With `weight_buffers` 2 the array is `hw.array.WSDoubleBufferArray` (two weight banks per PE, loaded
by a broadcast per row: `w_rows`, `w_bank`; each streamed row names its bank, `a_bank`), and
`restart` marks each tile's first streamed row (delayed as `k_first`, it restarts the K accumulator's
row count: tiles stream back to back).

`StreamDatapath` is the output-stationary machine's (`ArrayConfig.dataflow` "os"):

    a, first, last, w --> OSStreamArray (shadow sums) --[drain_row]--> + bias --> sums
                                                               '--> ColumnStage --> out, detected

a tile's R x C sums wait in the PEs' shadow registers and leave one row per cycle (`drain_row`), the
bias added, while the next tile accumulates.
"""

from __future__ import annotations

import dataclasses

from amaranth.hdl import Array, Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.accumulator import KAccumulator
from hw.array import OSStreamArray, WSArray, WSDoubleBufferArray
from hw.arrayconfig import ArrayConfig
from hw.column_stage import ColumnStage
from hw.cycles import check_weight_buffers
from hw.pe import MULTIPLIERS
from hw.protect import RangeMode


class Datapath(wiring.Component):
    """The array, K accumulator and column stage of a machine (see the module docstring).

    Parameters
    ----------
    array : ArrayConfig
        The weight-stationary array (its `tmr` flag is the caller's business: one datapath is built).
    depth : int
        The K accumulator's rows (the largest GEMM M).
    code_shape : shape-castable
        The activation buffer's codes.
    multiplier_bits, shift_bits : int
        The requantization constants' widths.
    check : RangeMode or None
        The column stage's range check (`hw.protect.MACHINE_MODES`), or None.
    weight_buffers : int
        1: `hw.array.WSArray`, weights shifted in (`w_load`); 2: `hw.array.WSDoubleBufferArray`.
    fault_port : bool
        A simulation build: the array's PE fault port (`fault_fire`, `fault_row`, ...) is passed through.

    Members
    -------
    a_valid, a, w_load, w : the array's ports (with 2 weight buffers w_rows, w_bank and a_bank instead
        of w_load). k_first, k_last : In(1) : with each streamed row; restart : In(1) (2 buffers only).
    bias : the K accumulator's. multiplier, shift, lo, hi, relu, check_on, qmin, qmax : the stage's.
    logits : In(1) : the sums are the logits (the stage idles).
    sums_valid : Out(1); sums : the K accumulator's output. out_valid, out, detected : the stage's.
    """

    def __init__(self, array: ArrayConfig, depth: int, code_shape: object, multiplier_bits: int, shift_bits: int,
                 *, check: RangeMode | None = None, weight_buffers: int = 1, fault_port: bool = False) -> None:
        self.weight_buffers = check_weight_buffers(weight_buffers, "Datapath")
        config = dataclasses.replace(array, tmr=False)
        self._array: WSArray | WSDoubleBufferArray = WSArray(config, fault_port=fault_port) \
            if weight_buffers == 1 else WSDoubleBufferArray(config, fault_port=fault_port)
        self._sums = KAccumulator(self._array.acc_bits, array.cols, max(1, depth), with_bias=True,
                                  restart=weight_buffers == 2)
        self._stage = ColumnStage(self._array.acc_bits, array.cols, code_shape, multiplier_bits, shift_bits,
                                 check=check, multiplier=MULTIPLIERS[array.multiplier])
        self.skew = array.rows + array.cols - 1
        parts = {"array": self._array.signature.members, "sums": self._sums.signature.members,
                 "stage": self._stage.signature.members}
        loads = ("w_load",) if weight_buffers == 1 else ("w_rows", "w_bank", "a_bank")
        faults = self._fault_members = tuple(name for name in parts["array"] if name.startswith("fault_"))
        members = {name: parts["array"][name] for name in ("a_valid", "a", *loads, "w", *faults)}
        members |= {"k_first": In(1), "k_last": In(1), "bias": parts["sums"]["bias"], "logits": In(1)}
        if weight_buffers == 2:
            members |= {"restart": In(1)}
        members |= {name: parts["stage"][name] for name in ("multiplier", "shift", "lo", "hi", "relu", "check_on",
                                                             "qmin", "qmax", "out_valid", "out", "detected")}
        members |= {"sums_valid": parts["sums"]["out_valid"], "sums": parts["sums"]["out"]}
        super().__init__(members)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.array, m.submodules.sums, m.submodules.stage = array, sums, stage = \
            self._array, self._sums, self._stage
        first, last = self.k_first, self.k_last
        for i in range(self.skew):
            first_next, last_next = Signal(name=f"k_first_{i}"), Signal(name=f"k_last_{i}")
            m.d.sync += [first_next.eq(first), last_next.eq(last)]
            first, last = first_next, last_next
        cols = range(len(self.w))
        if self.weight_buffers == 2:
            assert isinstance(array, WSDoubleBufferArray)
            restart = self.restart
            for i in range(self.skew):
                restart_next = Signal(name=f"restart_{i}")
                m.d.sync += restart_next.eq(restart)
                restart = restart_next
            m.d.comb += [array.a_valid.eq(self.a_valid), array.w_rows.eq(self.w_rows),
                         array.w_bank.eq(self.w_bank), array.a_bank.eq(self.a_bank), sums.restart.eq(restart)]
        else:
            assert isinstance(array, WSArray)
            m.d.comb += [array.a_valid.eq(self.a_valid), array.w_load.eq(self.w_load)]
        m.d.comb += [array.a[r].eq(self.a[r]) for r in range(len(self.a))]
        m.d.comb += [getattr(array, name).eq(getattr(self, name)) for name in self._fault_members]   # sim builds
        m.d.comb += [array.w[c].eq(self.w[c]) for c in cols]
        m.d.comb += [sums.valid.eq(array.out_valid), sums.first.eq(first), sums.last.eq(last)]
        m.d.comb += [sums.acc[c].eq(array.out[c]) for c in cols]
        m.d.comb += [sums.bias[c].eq(self.bias[c]) for c in cols]
        m.d.comb += [self.sums_valid.eq(sums.out_valid)] + [self.sums[c].eq(sums.out[c]) for c in cols]
        m.d.comb += [stage.valid.eq(sums.out_valid & ~self.logits), stage.relu.eq(self.relu),
                     stage.check_on.eq(self.check_on), stage.qmin.eq(self.qmin), stage.qmax.eq(self.qmax)]
        for c in cols:
            m.d.comb += [stage.acc[c].eq(sums.out[c]), stage.multiplier[c].eq(self.multiplier[c]),
                         stage.shift[c].eq(self.shift[c]), stage.lo[c].eq(self.lo[c]), stage.hi[c].eq(self.hi[c]),
                         self.detected[c].eq(stage.detected[c]), self.out[c].eq(stage.out[c])]
        m.d.comb += self.out_valid.eq(stage.out_valid)
        return m


class StreamDatapath(wiring.Component):
    """The output-stationary array, its drain and the column stage of a machine (module docstring).

    Parameters
    ----------
    array : ArrayConfig
        The output-stationary array (its `tmr` flag is the caller's business: one datapath is built).
    code_shape, multiplier_bits, shift_bits, check
        As for `Datapath`.

    fault_port : bool
        As for `Datapath`.

    Members
    -------
    a, first, last, w : the array's ports (`hw.array.OSStreamArray`).
    drain_valid : In(1); drain_row : In(range(rows)) : read this row of the shadow sums this cycle.
    bias, multiplier, shift, lo, hi : In(...).array(cols) : the constants of the row read, sampled with
        it (the bias is added as it is read; the stage's fields are registered to meet it there).
    relu, check_on, qmin, qmax, logits : the layer's, as for `Datapath`.
    sums_valid : Out(1); sums : Out(signed(acc_bits)).array(cols) : the row read, bias added, one cycle
        later. out_valid, out, detected : the column stage's, `hw.column_stage.LATENCY` after `sums`.
    """

    def __init__(self, array: ArrayConfig, code_shape: object, multiplier_bits: int, shift_bits: int,
                 *, check: RangeMode | None = None, fault_port: bool = False) -> None:
        config = dataclasses.replace(array, tmr=False)
        self._array = OSStreamArray(config, fault_port=fault_port)
        acc = signed(self._array.acc_bits)
        self._stage = ColumnStage(self._array.acc_bits, array.cols, code_shape, multiplier_bits, shift_bits,
                                 check=check, multiplier=MULTIPLIERS[array.multiplier])
        parts = {"array": self._array.signature.members, "stage": self._stage.signature.members}
        faults = self._fault_members = tuple(name for name in parts["array"] if name.startswith("fault_"))
        members = {name: parts["array"][name] for name in ("a", "first", "last", "w", *faults)}
        members |= {"drain_valid": In(1), "drain_row": In(range(array.rows)), "bias": In(acc).array(array.cols),
                    "logits": In(1)}
        members |= {name: parts["stage"][name] for name in ("multiplier", "shift", "lo", "hi", "relu", "check_on",
                                                             "qmin", "qmax", "out_valid", "out", "detected")}
        members |= {"sums_valid": Out(1), "sums": Out(acc).array(array.cols)}
        super().__init__(members)

    @property
    def array(self) -> OSStreamArray:
        return self._array

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.array, m.submodules.stage = array, stage = self._array, self._stage
        rows, cols = len(self.a), len(self.w)
        m.d.comb += [array.a[r].eq(self.a[r]) for r in range(rows)]
        m.d.comb += [array.first.eq(self.first), array.last.eq(self.last)]
        m.d.comb += [array.w[c].eq(self.w[c]) for c in range(cols)]
        m.d.comb += [getattr(array, name).eq(getattr(self, name)) for name in self._fault_members]   # sim builds
        m.d.sync += self.sums_valid.eq(self.drain_valid)
        for c in range(cols):
            column = Array(array.shadow[r][c] for r in range(rows))
            m.d.sync += self.sums[c].eq(column[self.drain_row] + self.bias[c])
            for name in ("multiplier", "shift", "lo", "hi"):
                field = getattr(self, name)[c]
                held = Signal(field.shape(), name=f"stage_{name}_{c}")
                m.d.sync += held.eq(field)
                m.d.comb += getattr(stage, name)[c].eq(held)
            m.d.comb += [stage.acc[c].eq(self.sums[c]), self.detected[c].eq(stage.detected[c]),
                         self.out[c].eq(stage.out[c])]
        m.d.comb += [stage.valid.eq(self.sums_valid & ~self.logits), stage.relu.eq(self.relu),
                     stage.check_on.eq(self.check_on), stage.qmin.eq(self.qmin), stage.qmax.eq(self.qmax),
                     self.out_valid.eq(stage.out_valid)]
        return m
