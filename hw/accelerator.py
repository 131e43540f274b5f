"""The synthesizable accelerator datapaths: an array, its pipelined per-column output stage and its protection.

`Datapath` (weight-stationary) and `OSDatapath` (output-stationary) are what the synth stage builds: the
array's de-skewed output rows (in weight-stationary, summed over the K tiles by `hw.accumulator`) go
through `hw.output_stage.OutputStage` (requantize + ReLU, then with
`protection` "clip" or "zero" the paper's range check, all between registers). With `placement` "input"
the range check sits where the array takes its activations instead (the accelerator's input-side check on
the buffer's read path, `hw.machine`): every row's code is checked against that row's bounds (`in_lo`,
`in_hi`: a K slice's channels, so per-channel bounds are ports here) and registered with the array's
other inputs, one cycle more per GEMM (`drain`). `build_datapath` picks the
dataflow and adds TMR (three replicas named rep0..rep2 and bitwise voters, `hw.tmr`) when the config asks
for it. The unprotected datapath is the baseline every protection's overhead is measured against, on the
same target and seed; it has the same pipeline, so the overhead of a check at the outputs is the check's
logic alone (a check at the inputs adds its register of the array's inputs too, as the accelerator's read
path has one).

Cycle accounting: a datapath adds `drain` cycles to a GEMM (`hw.cycles.gemm_cycles(..., drain=...)`), once:
the last tile's rows leave the output stage that much after the array's last output; earlier tiles drain
while the next one runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from amaranth.hdl import Module, Signal, Value, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw import accumulator
from hw.accumulator import KAccumulator
from hw.array import OSArray, WSArray, delay_line
from hw.arrayconfig import ArrayConfig
from hw.output_stage import LATENCY, SHIFT_BITS, OutputStage
from hw.pe import MULTIPLIERS
from hw.protect import MODES
from hw.tmr import TripleModular

MULTIPLIER_BITS = 16  # the fixed-point multiplier of float scales; power-of-two scales need none (1 bit)
DEPTH = 1024          # output rows per GEMM the weight-stationary K accumulator holds, unless told


def _register(m: Module, value: Value, name: str) -> Signal:
    reg = Signal(Value.cast(value).shape(), name=name)
    m.d.sync += reg.eq(value)
    return reg


def _output_stage(config: ArrayConfig, acc_bits: int, multiplier_bits: int) -> OutputStage:
    act = signed(config.act_bits) if config.act_signed else unsigned(config.act_bits)
    check = MODES[config.protection] if config.protection != "none" else None
    return OutputStage(acc_bits, config.cols, act, multiplier_bits, check=check,
                       multiplier=MULTIPLIERS[config.multiplier])


def _stage_ports(config: ArrayConfig, multiplier_bits: int) -> dict[str, object]:
    act = signed(config.act_bits) if config.act_signed else unsigned(config.act_bits)
    return {
        "multiplier": In(unsigned(multiplier_bits)), "shift": In(signed(SHIFT_BITS)), "lo": In(act), "hi": In(act),
        "out_valid": Out(1), "out": Out(act).array(config.cols), "detected": Out(1).array(config.cols),
    }


def _connect_stage(m: Module, outer: wiring.Component, stage: OutputStage) -> None:
    """Feed the layer constants to the output stage and its results to the datapath's ports."""
    m.d.comb += [getattr(stage, name).eq(getattr(outer, name)) for name in ("multiplier", "shift", "lo", "hi")]
    m.d.comb += outer.out_valid.eq(stage.out_valid)
    m.d.comb += [out.eq(code) for out, code in zip(outer.out, stage.out, strict=True)]
    m.d.comb += [flag.eq(got) for flag, got in zip(outer.detected, stage.detected, strict=True)]


PLACEMENTS = ("output", "input")


class _Datapath(wiring.Component):
    """What both dataflows' datapaths share: one replica's array, its output stage and their ports, and
    with `placement` "input" the range check on the array's activation inputs."""

    def __init__(self, config: ArrayConfig, array: WSArray | OSArray, array_ports: dict[str, object],
                 multiplier_bits: int, placement: str = "output") -> None:
        if config.tmr:
            raise ValueError(f"{type(self).__name__} builds one replica; use build_datapath for TMR")
        if placement not in PLACEMENTS:
            raise ValueError(f"Datapath placement must be one of {', '.join(map(repr, PLACEMENTS))}, not {placement!r}")
        self._config = config
        self.array = array
        self.input_check = placement == "input" and config.protection != "none"
        at_output = config if not self.input_check else dataclasses.replace(config, protection="none")
        self.stage = _output_stage(at_output, array.acc_bits, multiplier_bits)
        self._array_ports = tuple(array_ports)
        ports = {**array_ports, **_stage_ports(config, multiplier_bits)}
        if self.input_check:
            act = array.pes[0][0].act_shape
            ports |= {"in_lo": In(act).array(config.rows), "in_hi": In(act).array(config.rows),
                      "in_detected": Out(1).array(config.rows)}
        super().__init__(ports)

    def _array_inputs(self, m: Module) -> dict[str, Any]:
        """Return the array's inputs by port name: the ports themselves, or with the input-side check all
        of them registered (so the schedule shifts by one cycle as a whole) and each row's activation
        checked against its bounds before its register."""
        if not self.input_check:
            return {name: getattr(self, name) for name in self._array_ports}
        mode = MODES[self._config.protection]
        held: dict[str, Any] = {}
        for name in self._array_ports:
            port = getattr(self, name)
            if name == "a":
                rows = []
                for r in range(self._config.rows):
                    value, lo, hi = port[r], self.in_lo[r], self.in_hi[r]
                    below, above = value < lo, value > hi
                    m.d.comb += self.in_detected[r].eq(below | above)
                    rows.append(_register(m, mode(value, lo, hi, below, above), f"a_checked_{r}"))
                held[name] = rows
            elif name == "w":
                held[name] = [_register(m, port[c], f"w_held_{c}") for c in range(self._config.cols)]
            else:
                held[name] = _register(m, port, f"{name}_held")
        return held

    @property
    def extra_latency(self) -> int:
        """Return the cycles the input-side check's register adds to a GEMM (0 without it)."""
        return int(self.input_check)

    @property
    def config(self) -> ArrayConfig:
        return self._config

    @property
    def acc_bits(self) -> int:
        return self.array.acc_bits


class Datapath(_Datapath):
    """A weight-stationary array whose K tiles are summed per column, then a pipelined output stage and an
    optional range check on every column.

    Driven as `hw.array.WSArray`, with the tiles of a GEMM N slice by N slice, the K slices of each in a
    row, and `k_first` / `k_last` high, alongside `a_valid` while a tile streams, when it is the first / the
    last K slice of its N slice (both when K <= R). Rows of the earlier K tiles are summed in
    `hw.accumulator.KAccumulator`; after a last tile's streaming cycle m + R + C - 2 + `latency` (=
    `hw.accumulator.LATENCY` + `hw.output_stage.LATENCY`, 6) `out_valid` is high and `out` holds row m's codes
    of the whole sum. `drain` is `latency` too. The layer constants are registered: set them at least one
    cycle before the first row reaches the output stage and hold them for the layer.

    Parameters
    ----------
    config : ArrayConfig
        The array; `protection` selects the range check ("none", "clip", "zero"); `tmr` must be False
        (use `build_datapath`); `multiplier` also builds the requantizer's multiply. Output codes are
        `act_bits` wide, like the activations they become.
    k : int, optional
        The reduction length the accumulator must hold, required when `config.acc_bits` is 0.
    depth : int
        Output rows per GEMM (M) the K accumulator holds; a GEMM with more rows runs as several.
    multiplier_bits : int
        Width of the requantization multiplier M: 16 for float scales; 1 for power-of-two scales, whose
        output stage is a pure shift (M = 1), so no DSP is spent on it.
    placement : str
        Where `protection` checks: "output" (the column outputs, the paper's) or "input" (each row's
        activation as the array takes it, against that row's bounds; every input one register later).

    Members
    -------
    w_load, w, a_valid, a : the array's inputs (see `hw.array.WSArray`).
    k_first, k_last : In(1) : the streaming tile's place among its N slice's K tiles.
    multiplier : In(unsigned(multiplier_bits)), shift : In(signed(6)) : the layer's requantization constants.
    lo, hi : In(act shape) : the layer's profiled bounds (ignored without protection at the outputs).
    out_valid : Out(1); out : Out(act shape).array(cols), registered; detected : Out(1).array(cols).
    in_lo, in_hi : In(act shape).array(rows); in_detected : Out(1).array(rows) : with the check at the
        inputs, each row's bounds (a K slice's channels) and whether the code it is given leaves them.

    `array` is the `WSArray`, `sums` the `KAccumulator`, `stage` the `OutputStage`.
    """

    def __init__(self, config: ArrayConfig, *, k: int | None = None, depth: int = DEPTH,
                 multiplier_bits: int = MULTIPLIER_BITS, placement: str = "output") -> None:
        array = WSArray(dataclasses.replace(config, protection="none", tmr=False), k=k)
        self.sums = KAccumulator(array.acc_bits, config.cols, depth)
        super().__init__(config, array, {
            "w_load": In(1), "w": In(signed(config.weight_bits)).array(config.cols),
            "a_valid": In(1), "a": In(array.pes[0][0].act_shape).array(config.rows),
            "k_first": In(1), "k_last": In(1),
        }, multiplier_bits, placement)

    @property
    def latency(self) -> int:
        """Return the clock edges from the array's output row (of a last K tile) to the same row on `out`."""
        return accumulator.LATENCY + LATENCY

    @property
    def drain(self) -> int:
        """Return the cycles a GEMM takes beyond `hw.cycles.gemm_cycles` without drain: the last row's latency
        (and the input-side check's register)."""
        return self.latency + self.extra_latency

    def elaborate(self, platform: object) -> Module:
        m = Module()
        cfg = self._config
        m.submodules.array = array = self.array
        m.submodules.sums = sums = self.sums
        m.submodules.stage = stage = self.stage
        given = self._array_inputs(m)
        m.d.comb += [array.w_load.eq(given["w_load"]), array.a_valid.eq(given["a_valid"])]
        m.d.comb += [array.w[c].eq(given["w"][c]) for c in range(cfg.cols)]
        m.d.comb += [array.a[r].eq(given["a"][r]) for r in range(cfg.rows)]
        skew = cfg.rows + cfg.cols - 1   # as the array's out_valid follows a_valid
        m.d.comb += [sums.valid.eq(array.out_valid),
                     sums.first.eq(delay_line(m, given["k_first"], skew, "k_first")),
                     sums.last.eq(delay_line(m, given["k_last"], skew, "k_last"))]
        m.d.comb += [sums.acc[c].eq(array.out[c]) for c in range(cfg.cols)]
        m.d.comb += stage.valid.eq(sums.out_valid)
        m.d.comb += [stage.acc[c].eq(sums.out[c]) for c in range(cfg.cols)]
        _connect_stage(m, self, stage)
        return m


class OSDatapath(_Datapath):
    """An output-stationary array whose finished R x C tile drains row by row through the output stage.

    Driven as `hw.array.OSArray` (tile after tile, R + C + K - 2 cycles each). On the clock edge after the
    array's `out_valid`, the tile is copied into a bank of R x C accumulator registers, which shifts one row
    per cycle into a `hw.output_stage.OutputStage` of C columns: row r of the tile comes out on `out`, with
    `out_valid` high, 1 + r + `LATENCY` edges after the array's `out_valid` (`latency` is 1 + `LATENCY`
    for row 0), so the last row of a GEMM's last tile leaves `drain` = R + `LATENCY` cycles after the array's
    last output. The bank is free again after R cycles, and no tile is shorter than R cycles, so tiles
    still run back to back.

    Parameters
    ----------
    config, k, multiplier_bits
        As for `Datapath`; the config's dataflow must be "os".

    Members
    -------
    start, valid, last, a, w : the array's inputs (see `hw.array.OSArray`).
    multiplier, shift, lo, hi, out_valid, out, detected : as for `Datapath` (one row of the tile per cycle).

    `array` is the `OSArray`, `stage` the `OutputStage`.
    """

    def __init__(self, config: ArrayConfig, *, k: int | None = None, multiplier_bits: int = MULTIPLIER_BITS,
                 placement: str = "output") -> None:
        array = OSArray(dataclasses.replace(config, protection="none", tmr=False), k=k)
        super().__init__(config, array, {
            "start": In(1), "valid": In(1), "last": In(1),
            "a": In(array.pes[0][0].act_shape).array(config.rows),
            "w": In(signed(config.weight_bits)).array(config.cols),
        }, multiplier_bits, placement)

    @property
    def latency(self) -> int:
        """Return the clock edges from the array's finished tile to its row 0 on `out` (row r: r more)."""
        return 1 + LATENCY

    @property
    def drain(self) -> int:
        """Return the cycles a GEMM takes beyond `hw.cycles.gemm_cycles` without drain: its last row's (and
        the input-side check's register)."""
        return self._config.rows + LATENCY + self.extra_latency

    def elaborate(self, platform: object) -> Module:
        m = Module()
        rows, cols = self._config.rows, self._config.cols
        m.submodules.array = array = self.array
        m.submodules.stage = stage = self.stage
        given = self._array_inputs(m)
        m.d.comb += [array.start.eq(given["start"]), array.valid.eq(given["valid"]), array.last.eq(given["last"])]
        m.d.comb += [array.a[r].eq(given["a"][r]) for r in range(rows)]
        m.d.comb += [array.w[c].eq(given["w"][c]) for c in range(cols)]
        bank = [[Signal(signed(array.acc_bits), name=f"bank_{r}_{c}") for c in range(cols)] for r in range(rows)]
        full = [Signal(name=f"bank_valid_{r}") for r in range(rows)]
        with m.If(array.out_valid):
            m.d.sync += [bank[r][c].eq(array.out[r][c]) for r in range(rows) for c in range(cols)]
            m.d.sync += [flag.eq(1) for flag in full]
        with m.Else():
            m.d.sync += [bank[r][c].eq(bank[r + 1][c]) for r in range(rows - 1) for c in range(cols)]
            m.d.sync += [full[r].eq(full[r + 1]) for r in range(rows - 1)]
            m.d.sync += full[rows - 1].eq(0)
        m.d.comb += stage.valid.eq(full[0])
        m.d.comb += [stage.acc[c].eq(bank[0][c]) for c in range(cols)]
        _connect_stage(m, self, stage)
        return m


def build_datapath(config: ArrayConfig, *, k: int | None = None, depth: int = DEPTH,
                   multiplier_bits: int = MULTIPLIER_BITS, placement: str = "output") -> wiring.Component:
    """Return the datapath the config describes (by dataflow): one replica, or three voted ones with `tmr`.
    `depth` sizes the weight-stationary K accumulator (output-stationary arrays sum K in place);
    `placement` where the range check sits (the column outputs, or the array's activation inputs)."""
    if config.dataflow not in ("ws", "os"):
        raise NotImplementedError(f"Datapath dataflow must be 'ws' or 'os', not {config.dataflow!r}")
    single = dataclasses.replace(config, tmr=False)

    def replica() -> wiring.Component:
        if config.dataflow == "ws":
            return Datapath(single, k=k, depth=depth, multiplier_bits=multiplier_bits, placement=placement)
        return OSDatapath(single, k=k, multiplier_bits=multiplier_bits, placement=placement)

    return TripleModular(replica) if config.tmr else replica()


def drain_cycles(component: wiring.Component) -> int:
    """Return the drain of a datapath built by `build_datapath`, TMR or not (the replicas share it)."""
    single = component.replicas[0] if isinstance(component, TripleModular) else component
    drain = getattr(single, "drain", None)
    if not isinstance(drain, int):
        raise TypeError(f"Drain needs a Datapath or OSDatapath, not {single!r}")
    return drain
