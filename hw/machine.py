"""The accelerator that runs a whole network: memories, sequencer, weight- or output-stationary datapath,
vector unit, range checks and host port, around the program `dsetool.machine.compiler` makes (`hw.isa` is the
format). The output-stationary machine (`ArrayConfig.dataflow` "os") shares everything here but the GEMM's
feed, drain and states, which `hw.machine_stream` documents and builds; the rest of this docstring is
the weight-stationary GEMM.

    host in  --> activation buffer <--> [stream feed, input check] --> WSArray --> KAccumulator (+bias)
                      ^   |                                                          |
                      |   '--> [vector unit] --.                       ColumnStage (requant, clamp, check)
                      '----------- writes -----'---------------------------------- '   (logits: raw sums)
    instruction memory, slice table --> sequencer;  weight memory --> array;  constant memory --> columns
    bounds memory --> input check, vector unit;  logits memory --> host out;  every check --> alarm

One instruction at a time (`hw.isa`): a GEMM runs tile after tile, each tile = `SETUP` cycles (read its slice-
table entry, and at an N slice's first tile its constants word), `rows` cycles loading the weights, `m_count`
cycles streaming rows of A read from the buffer (each read two cycles ahead, the last two load cycles reading
the first two rows: the read codes are registered, checked, before the array), and `rows + cols - 2` cycles
letting the last row leave the array; an N slice ends with the tile of the slice entry marked `last` (a
grouped conv's N slices have their own K slices, `slice_walk`); after its last tile the output pipeline drains
(`GEMM_TAIL`). The writer writes only the columns that hold channels, from any `cols`-wide part of a word on,
so a layer writes its channel range of a concat's tensor directly. A vector instruction reads one window word
per cycle and writes one output word per window. Every instruction costs `FETCH` cycles before it.
`hw.cycles`' machine functions count exactly this schedule.

Double-buffered weights (`MachineShape.weight_buffers` 2; the single-buffered machine above is built
unchanged otherwise): every PE holds two weight banks (`hw.array.WSDoubleBufferArray`) and a GEMM's
tiles overlap. Tile j (of the GEMM's T, in the order above) reads its first row of A on cycle
I_j = I_0 + j P, P = max(M, R, ceil((M + C - 1) / 2)) (`hw.cycles.machine_tile_period`), its M rows on
consecutive cycles; its slice entry is read on I_j - 2 and latched on I_j - 1 (while the tile before
may be reading its last row), with its bounds word (input check); its weights load from I_j + 1 on into
bank j % 2 by a broadcast per row, row r on cycle I_j + 1 + r, read from the weight memory in the
order the single buffer shifts them in (so the images are the same). Each row of A carries its tile's
bank through the array, and PE(r, c) multiplies it with that bank. Why this is correct (a row read on
cycle u is presented on u + 2 and reaches PE(r, c) on u + 2 + r + c; a weight written on cycle l is
used from l + 1; a machine with an input check presents on u + 3 and writes the weights a cycle later,
`Machine._overlap`, so every step below moves by that cycle):
- tile j's row r of weights is written on I_j + 1 + r, before its first row of A reaches row r
  (I_j + 2 + r): a tile's load overlaps its own stream;
- the bank tile j writes was last used by tile j - 2, whose last row reached PE(r, C - 1) on
  I_{j-2} + M + 1 + r + C - 1 = I_j - 2P + M + C + r, no later than the write on I_j + 1 + r (which
  changes the bank from the next cycle on) when 2P + 1 >= M + C; tile j - 1 uses the other bank, which
  the load does not touch; a load one cycle earlier fails (`tests/hw/test_array.py`);
- one weight row per cycle (P >= R), one row of A per cycle (P >= M), so loads and streams never
  overlap their own kind;
- the K accumulator reads entry m for tile j + 1 P >= 2 cycles after tile j's row m arrived, after
  its write (`hw.accumulator`; no forwarding), and each tile's first row restarts its row count;
- an N slice's constants word is read from the constants memory the cycle before its first K tile's
  first row reaches the K accumulator (the bias, added from a register of the port's data), and its
  stage fields (multiplier, shift, bounds) are registered from the port as its last K tile's first row
  enters the column stage, each held until the next N slice's: the rows of different N slices stream
  back to back, each with its own slice's constants (`Machine._overlap`); the writer counts rows as before.
After the GEMM's last row is read: R + C cycles while it is presented and leaves the array (R + C + 1
with an input check), then `GEMM_TAIL`: a GEMM costs `FETCH` + `SETUP` + (T - 1) P + M + R + C (+ 1) +
`GEMM_TAIL` cycles, against `FETCH` + T (`SETUP` + 2R + C - 2 + M) + `GEMM_TAIL` with one buffer.

The logits memory holds `lanes` sums per word, written `cols` at a time by a logits GEMM (one N slice's)
or `lanes` at a time by the vector unit (an average pool's sums that are the logits); logit c is lane
c % cols of the `cols`-wide part c // cols.

Range checks (`MachineShape.check`: clip, zero or detect, `hw.protect.MACHINE_MODES`), each unit built
only when the program has such checks: on each column's output code (`ColumnStage`, bounds from the
constants word, `check`), on the vector unit's output words (bounds per lane from the bounds memory,
`check`), and on the read path into the array (`MachineShape.input_check`, instruction bit `in_check`):
the `rows` codes a tile streams are checked against the bounds of its K slice's word group (slice entry
`bound`, read from the bounds memory as the tile starts and held for its rows): on the single-buffered
machine between the buffer's read data and the register before the array's row inputs, on the
double-buffered one between a register of the read data and that register (`MachineShape.checked_read`:
one cycle more per GEMM, and the block RAM's clock-to-output off the comparators' path); a padded
position is no read: its zeros are not checked, as the engine pads after its input check. `alarm` is a
sticky detector: cleared by `start`, set when any check finds a code outside its bounds (a code the
array takes, a column a writer writes, a word the vector unit gives), valid with the logits.

Host port: while idle, the load stream (`load_*`, `hw.machine_format`) writes the program, slice table,
weights, constants and bounds into their memories (once per network: the machine is built for a shape,
`MachineShape`, not for one network's values); `in_*` is a valid/ready stream of the input tensor's
codes, lane by lane, word by word from the input's base (padding lanes included: zeros); a pulse on
`start` runs the program; at its end the `out_*` stream gives the `num_classes` logits (and `alarm`
says whether a check fired), then the machine is idle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal, Value, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw import isa, vector_unit
from hw.accumulator import LATENCY as ACC_LATENCY
from hw.array import FAULT_PORT, delay_line
from hw.column_stage import LATENCY as STAGE_LATENCY
from hw.cycles import MACHINE_GEMM_TAIL, MACHINE_SETUP, MACHINE_STREAM_TAIL, MACHINE_VECTOR_TAIL
from hw.machine_datapath import Datapath, StreamDatapath
from hw.machine_format import (
    BEAT,
    BMEM,
    CMEM,
    IMEM,
    MEMORY_BITS,
    PE_CYCLE_BITS,
    PE_TILE_BITS,
    SMEM,
    WMEM,
    MachineShape,
)
from hw.machine_stream import StreamFeed, StreamPorts, Walker
from hw.pe import MULTIPLIERS
from hw.protect import MACHINE_MODES
from hw.tmr import TripleModular

SETUP = MACHINE_SETUP   # cycles per GEMM tile before its weights load: read its slice entry (and constants)
GEMM_TAIL = MACHINE_GEMM_TAIL   # last sums through the accumulator, the stage, the write
VECTOR_TAIL = MACHINE_VECTOR_TAIL   # the last window's word through the vector unit's stage
STREAM_TAIL = MACHINE_STREAM_TAIL   # output-stationary: the last row's sums through the stage, the write
assert GEMM_TAIL == ACC_LATENCY + STAGE_LATENCY + 1 and VECTOR_TAIL == vector_unit.TAIL
assert STREAM_TAIL == STAGE_LATENCY + 1


@dataclass(frozen=True)
class _Overlap:
    """The double-buffered sequencer's registers (`Machine._overlap`)."""

    period: Signal       # P: cycles from one tile's first row read to the next's (`machine_tile_period`)
    phase: Signal        # cycles since the current tile's first row read, modulo P
    feeding: Signal      # a tile's rows are being read
    walk_done: Signal    # the GEMM's last tile is latched: no slice entry to read
    final: Signal        # the tile being read is the GEMM's last
    feed_first: Signal   # the tile being read is its N slice's first K tile
    bank: Signal         # the weight bank of the next tile latched
    feed_bank: Signal    # the weight bank of the tile being read
    issue_valid: Signal  # a row is read this cycle (comb)
    issue_first: Signal  # it is its tile's first (comb)
    wread: Any           # the weight memory's read port
    waddr: Signal        # the weight word the loader reads next
    lrows: Signal        # one-hot: the array row the loader writes this cycle (the next, after a checked read)
    lbank: Signal        # the bank it writes
    const_nt: Signal     # the N slices whose constants word has been read (the next's)
    weights: Value       # the weight row the loader writes (the port's data, registered after a checked read)

    def reset(self, fetched: Value, rows: int, cols: int) -> list:
        m_count = fetched.m_count
        half = (m_count + cols) >> 1   # ceil((M + C - 1) / 2)
        longer = Mux(m_count > rows, m_count, rows)
        period = Mux(half > longer, half, longer)
        return [self.period.eq(period), self.phase.eq(period - 2), self.feeding.eq(0), self.walk_done.eq(0),
                self.final.eq(0), self.bank.eq(0), self.const_nt.eq(0)]


@dataclass(frozen=True)
class _WriterReset:
    """The output writer's position registers, set at each instruction's decode."""

    row: Signal
    address: Signal
    group: Signal
    part: Signal
    n_slice: Signal
    columns: Value   # which of the stage's columns the current row writes (hold a channel)

    def reset(self, fetched: Value) -> list:
        return [self.row.eq(0), self.address.eq(fetched.dst_base), self.group.eq(0),
                self.part.eq(fetched.dst_part), self.n_slice.eq(0)]


class Machine(wiring.Component):
    """The accelerator; see the module docstring for its schedule and host protocol.

    Members
    -------
    in_valid : In(1); in_data : In(code shape); in_ready : Out(1) : the input codes, while idle.
    start : In(1) : run the program (ignored unless idle).
    busy : Out(1) : the program is running or the logits are being sent.
    out_valid : Out(1); out_data : Out(signed(acc_bits)); out_ready : In(1) : the logits.
    load_valid : In(1); load_data : In(32); load_ready : Out(1) : the load stream (`hw.machine_format`).
    alarm : Out(1) : a range check fired during the last run (cleared by `start`; valid with the logits).

    With `fault_port` (for simulation: the accelerator synth builds has none), a fault injector: while
    `fault_arm` is high, the fetch of instruction `fault_pc` reads activation-buffer word `fault_address`
    and the next cycle writes it back with the bits `fault_mask` of lane `fault_lane` flipped, so a
    stored code is corrupted after the instructions before it wrote it and before that instruction
    reads it (the buffer is idle while an instruction is fetched and decoded).
    fault_arm : In(1); fault_pc : In(instruction index); fault_address : In(buffer address);
    fault_lane : In(lane); fault_mask : In(code width).

    The fault port also has a PE fault injector (`pe_faults`; with TMR it reaches replica `rep0` only, so the
    voters face a fault in one replica, as in the field, and `tmr_mismatch`, Out(1), says whether they saw
    the replicas disagree during the last run): while `pe_arm`
    is high, the GEMM instruction `pe_pc` counts its tiles' starts as they reach the array (a first row
    presented; output-stationary: a first K position at row 0; tile 0 first, in the machine's order), and
    `pe_cycle` cycles after tile `pe_tile`'s (0: on that cycle) PE(`pe_row`, `pe_col`) flips bits `pe_mask`
    of its register `pe_register` (`hw.array.FAULT_REGISTERS`; the weight in bank `pe_bank` of a
    double-buffered PE). So a fault site of `dsetool.engine.tiling` is (tile, cycle of its window) on the
    single-buffered machine, and (tile 0, cycle of the shared timeline) on the double-buffered and the
    output-stationary ones, whose tiles follow one another on one timeline.
    pe_arm : In(1); pe_pc : In(instruction index); pe_tile : In(`hw.machine_format.PE_TILE_BITS`);
    pe_cycle : In(`PE_CYCLE_BITS`);
    pe_row, pe_col, pe_register, pe_bank : the array's; pe_mask : In(acc_bits).
    """

    def __init__(self, params: MachineShape, *, fault_port: bool = False) -> None:
        self.params = params
        self.fault_port = fault_port
        a = params.array
        self.pe_faults = fault_port
        if a.dataflow not in ("ws", "os") or a.protection != "none":
            raise ValueError("Machine needs a weight- or output-stationary ArrayConfig without protection "
                             "(the range check is MachineShape.check)")
        if a.dataflow == "os" and params.weight_buffers != 1:
            raise ValueError("An output-stationary Machine streams its weights: weight_buffers must be 1, "
                             f"not {params.weight_buffers!r}")
        if a.rows < 2:
            raise ValueError(f"Machine rows must be at least 2, not {a.rows!r}")
        self.instruction = isa.instruction_layout(params.widths)
        self.slice = isa.slice_layout(params.widths)
        super().__init__({
            "in_valid": In(1), "in_data": In(params.code_shape), "in_ready": Out(1),
            "load_valid": In(1), "load_data": In(BEAT), "load_ready": Out(1),
            "start": In(1), "busy": Out(1),
            "out_valid": Out(1), "out_data": Out(signed(a.acc_bits)), "out_ready": In(1), "alarm": Out(1),
            **({"fault_arm": In(1), "fault_pc": In(range(max(2, params.instruction_words + 1))),
                "fault_address": In(range(max(2, params.buffer_words))), "fault_lane": In(range(max(2, params.lanes))),
                "fault_mask": In(params.code_shape.width)} if fault_port else {}),
            **({"pe_arm": In(1), "pe_pc": In(range(max(2, params.instruction_words + 1))), "pe_tile": In(PE_TILE_BITS),
                "pe_cycle": In(PE_CYCLE_BITS), "pe_row": In(range(max(2, a.rows))), "pe_col": In(range(max(2, a.cols))),
                "pe_register": In(2), "pe_bank": In(1), "pe_mask": In(a.acc_bits)} if self.pe_faults else {}),
            **({"tmr_mismatch": Out(1)} if fault_port and a.tmr else {}),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        p, a = self.params, self.params.array
        code = p.code_shape
        rows, cols, lanes = a.rows, a.cols, p.lanes
        word_bits = lanes * code.width

        # ---- memories: the loadable ones, the activation buffer, the logits
        loadable = {memory: Memory(shape=unsigned(p.word_bits(memory)), depth=p.depth(memory), init=[])
                    for memory in p.memories}
        imem, smem, wmem, cmem = (loadable[memory] for memory in (IMEM, SMEM, WMEM, CMEM))
        const_bits = sum(p.const_fields)
        abuf = Memory(shape=unsigned(word_bits), depth=max(1, p.buffer_words), init=[])
        lmem = Memory(shape=unsigned(lanes * a.acc_bits), depth=-(-p.num_classes // lanes), init=[])
        m.submodules.imem, m.submodules.smem, m.submodules.wmem = imem, smem, wmem
        m.submodules.cmem, m.submodules.abuf, m.submodules.lmem = cmem, abuf, lmem
        iread, sread, wread, cread = imem.read_port(), smem.read_port(), wmem.read_port(), cmem.read_port()
        bread = None
        if BMEM in loadable:
            m.submodules.bmem = loadable[BMEM]
            bread = loadable[BMEM].read_port()
        self._fetched = data.View(self.instruction, iread.data)
        idle = Signal()
        self._loader(m, loadable, idle)
        aread, awrite = abuf.read_port(), abuf.write_port(granularity=code.width)
        lread, lwrite = lmem.read_port(), lmem.write_port(granularity=cols * a.acc_bits)

        # ---- datapath (array, K accumulator, column stage), triplicated and voted with TMR
        m.submodules.datapath = dp = self._datapath()

        # ---- instruction registers and counters
        instr = Signal(self.instruction)
        sl = Signal(self.slice)
        pc = Signal(range(max(2, p.instruction_words + 1)))
        nt = Signal(p.widths.const + 1)
        kt = Signal(p.widths.slice + 1)
        sp = Signal(p.widths.slice + 1)   # the slice-table entry of the current tile
        wptr = Signal(range(max(2, p.weight_words + 1)))
        count = Signal(32)   # cycles within a phase
        tail = Signal(range(max(GEMM_TAIL, VECTOR_TAIL)))   # the finishing instruction's pipeline, less one
        double = p.weight_buffers == 2
        stream = a.dataflow == "os"
        if stream:   # an N slice's constants word, loaded before its first tile's drain (`hw.machine_stream`)
            active = Signal(unsigned(cols * const_bits))
            self._feed_constants(m, dp, active, active, const_bits)
        elif double:   # the bias registered from the constants memory's read port, the stage's fields too
            active = Signal(unsigned(cols * const_bits))
            bias_word = Signal(unsigned(cols * const_bits))   # (Yosys keeps only its bias fields' flip-flops)
            m.d.sync += bias_word.eq(cread.data)
            self._feed_constants(m, dp, active, bias_word, const_bits)
        else:
            pending = Signal(unsigned(cols * const_bits))
            active = Signal(unsigned(cols * const_bits))
            bias_active = Signal(unsigned(cols * const_bits))
            self._feed_constants(m, dp, active, bias_active, const_bits)
        m.d.comb += [dp.logits.eq(instr.logits), dp.relu.eq(instr.relu), dp.check_on.eq(instr.check),
                     dp.qmin.eq(instr.qmin), dp.qmax.eq(instr.qmax)]

        # ---- the stream feed's address generator (one row of A per cycle)
        gen = {name: Signal(signed(p.widths.address + 2), name=f"gen_{name}") for name in ("row", "col")}
        y, x = Signal(signed(p.widths.dim + 2)), Signal(signed(p.widths.dim + 2))
        ox = Signal(p.widths.dim)
        inside_d, part_d = Signal(), Signal(max(1, p.widths.lane))
        m.d.sync += part_d.eq(sl.part)

        def issue_row() -> list:
            """Read the current row's word, remember whether it lies inside the map, step to the next."""
            m.d.comb += aread.addr.eq((gen["row"] + gen["col"])[:p.widths.address])
            m.d.sync += inside_d.eq((y >= 0) & (y < instr.src_h) & (x >= 0) & (x < instr.src_w))
            with m.If(ox == instr.out_w - 1):
                m.d.sync += [ox.eq(0), x.eq(sl.dx), gen["col"].eq(sl.col_off), y.eq(y + instr.sy),
                             gen["row"].eq(gen["row"] + instr.step_y)]
            with m.Else():
                m.d.sync += [ox.eq(ox + 1), x.eq(x + instr.sx), gen["col"].eq(gen["col"] + instr.step_x)]
            return []

        feed_valid, load_bounds = Signal(), Signal()
        if stream:
            feed = StreamFeed(m, p, dp, StreamPorts(
                instr=instr, sl=sl, slice_layout=self.slice, sp=sp, nt=nt, wptr=wptr, count=count, sread=sread,
                aread=aread, wread=wread, cread=cread, bread=bread, active=active,
                walker=Walker(y=y, x=x, row=gen["row"], col=gen["col"], ox=ox)))
            read_fired = feed.fired
        else:
            m.d.comb += [dp.a_valid.eq(feed_valid)]
            read_fired = self._read_path(m, instr, dp, aread.data.word_select(part_d, rows * code.width), inside_d,
                                         feed_valid, bread, sl.part, load_bounds, staged=double)

        # ---- output writer: rows of the stage in order, N slice after N slice
        writer = self._writer(m, instr, dp, awrite)

        # ---- vector unit (pools, adds, requantizations)
        vector = self._vector_unit(m, instr, aread, awrite, bread)

        # ---- the detector: any range check firing during a run
        alarm = Signal()
        m.d.comb += self.alarm.eq(alarm)
        stage_fired = dp.out_valid & (Cat(*dp.detected) & writer.columns).any()
        with m.If(read_fired | stage_fired | vector.detected):
            m.d.sync += alarm.eq(1)
        mismatch_reset: list = []
        if self.fault_port and a.tmr:   # the voters saw the replicas disagree during the run (simulation)
            mismatch = Signal(name="tmr_mismatch_seen")
            m.d.comb += self.tmr_mismatch.eq(mismatch)
            with m.If(dp.mismatch):
                m.d.sync += mismatch.eq(1)
            mismatch_reset = [mismatch.eq(0)]

        # ---- logits: a GEMM's raw sums, or the vector unit's
        logit_reset = self._logits(m, instr, dp, vector, lwrite)

        # ---- host input
        in_word = Signal(range(max(2, p.input_words + 1)))
        in_lane = Signal(range(max(2, lanes)))

        # ---- sequencer
        if stream:
            m.d.comb += iread.addr.eq(pc)
        elif double:
            m.d.comb += iread.addr.eq(pc)
            ov = self._overlap(m, dp, instr, sl, wread, cread, active, feed_valid)
        else:
            m.d.comb += [iread.addr.eq(pc), wread.addr.eq(wptr)]
        weight_row = feed.weights if stream else ov.weights if double else wread.data
        m.d.comb += [dp.w[c].eq(weight_row[c * a.weight_bits:(c + 1) * a.weight_bits].as_signed())
                     for c in range(cols)]
        out_index = Signal(range(max(2, p.num_classes + 1)))
        out_word, out_lane = Signal(range(max(2, lmem.depth))), Signal(range(lanes))
        flip = self._fault_injector(m, aread, awrite) if self.fault_port else None
        tile_start: Value = Const(0)   # (single-buffered: driven in G_STREAM) a tile's first row reaches the array
        pe_reset: list = []
        if self.pe_faults:
            tile_start = dp.first[0] if stream else dp.restart if double else Signal(name="pe_tile_start")
            pe_reset = self._pe_fault_injector(m, dp, pc, tile_start)
        with m.FSM(name="seq"):
            with m.State("IDLE"):
                m.d.comb += [self.in_ready.eq(1), idle.eq(1)]
                with m.If(self.in_valid):
                    self._host_write(m, awrite, in_word, in_lane, code)
                with m.If(self.start):
                    m.d.sync += [pc.eq(0), in_word.eq(0), in_lane.eq(0), alarm.eq(0), *mismatch_reset, *logit_reset]
                    m.next = "FETCH"
            with m.State("FETCH"):
                m.d.comb += self.busy.eq(1)
                if flip is not None:
                    with m.If(self.fault_arm & (pc == self.fault_pc)):
                        m.d.comb += aread.addr.eq(self.fault_address)
                        m.d.sync += flip.eq(1)
                m.next = "DECODE"
            with m.State("DECODE"):
                m.d.comb += self.busy.eq(1)
                if flip is not None:
                    m.d.sync += flip.eq(0)
                fetched = self._fetched
                m.d.sync += [instr.eq(iread.data), nt.eq(0), kt.eq(0), wptr.eq(fetched.weight_base),
                             pc.eq(pc + 1), count.eq(0), sp.eq(fetched.slice_first), *pe_reset]
                m.d.sync += writer.reset(fetched)
                if stream:
                    m.d.sync += feed.reset()
                elif double:
                    m.d.sync += ov.reset(fetched, rows, cols)
                with m.Switch(fetched.opcode):
                    with m.Case(isa.GEMM):
                        m.next = "O_SETUP" if stream else "G_RUN" if double else "G_SETUP"
                    with m.Case(isa.VECTOR):
                        m.d.comb += vector.start.eq(1)
                        m.next = "V_RUN"
                    with m.Default():
                        m.d.sync += [out_index.eq(0), out_word.eq(0), out_lane.eq(0)]
                        m.next = "OUT_READ"
            if stream:
                feed.states(self.busy, tail, STREAM_TAIL)
            elif double:
                self._overlapped_states(m, ov, instr, sl, sp, nt, kt, wptr, count, tail, sread, bread, gen, y, x, ox,
                                        issue_row, load_bounds)
            else:   # one tile at a time: setup, load, stream, drain
                with m.State("G_SETUP"):
                    m.d.comb += [self.busy.eq(1), sread.addr.eq(sp),
                                 cread.addr.eq(instr.const_base + nt)]
                    m.d.sync += count.eq(count + 1)
                    with m.If(count == 1):
                        slice_now = data.View(self.slice, sread.data)
                        if bread is not None:   # its bounds word arrives on G_LOAD's first cycle
                            m.d.comb += bread.addr.eq(slice_now.bound)
                        m.d.sync += [sl.eq(sread.data), y.eq(slice_now.dy), x.eq(slice_now.dx), ox.eq(0),
                                     gen["row"].eq(instr.src_base + slice_now.row_off),
                                     gen["col"].eq(slice_now.col_off), count.eq(0)]
                        with m.If(kt == 0):
                            m.d.sync += pending.eq(cread.data)
                        m.next = "G_LOAD"
                with m.State("G_LOAD"):
                    m.d.comb += [self.busy.eq(1), dp.w_load.eq(1), wread.addr.eq(wptr + 1), load_bounds.eq(count == 0)]
                    m.d.sync += [count.eq(count + 1), wptr.eq(wptr + 1)]
                    with m.If(count >= rows - 2):   # a row reaches the array two cycles after its read
                        issue_row()
                    with m.If(count == rows - 1):
                        m.d.sync += count.eq(0)
                        m.next = "G_STREAM"
                with m.State("G_STREAM"):
                    m.d.comb += [self.busy.eq(1), feed_valid.eq(1), dp.k_first.eq(kt == 0), dp.k_last.eq(sl.last)]
                    if isinstance(tile_start, Signal):
                        m.d.comb += tile_start.eq(count == 0)
                    with m.If(count == 0):
                        with m.If(kt == 0):
                            m.d.sync += bias_active.eq(pending)
                        with m.If(sl.last):
                            m.d.sync += active.eq(pending)
                    issue_row()
                    m.d.sync += count.eq(count + 1)
                    with m.If(count == instr.m_count - 1):
                        m.d.sync += count.eq(0)
                        m.next = "G_DRAIN"
                with m.State("G_DRAIN"):
                    m.d.comb += self.busy.eq(1)
                    m.d.sync += count.eq(count + 1)
                    with m.If(count == rows + cols - 3):
                        m.d.sync += count.eq(0)
                        with m.If(sl.last):
                            m.d.sync += [kt.eq(0), nt.eq(nt + 1),
                                         sp.eq(Mux(instr.slice_walk, sp + 1, instr.slice_first))]
                            with m.If(nt == instr.n_count - 1):
                                m.d.sync += tail.eq(GEMM_TAIL - 1)
                                m.next = "TAIL"
                            with m.Else():
                                m.next = "G_SETUP"
                        with m.Else():
                            m.d.sync += [kt.eq(kt + 1), sp.eq(sp + 1)]
                            m.next = "G_SETUP"
            with m.State("V_RUN"):
                m.d.comb += [self.busy.eq(1), vector.run.eq(1)]
                with m.If(vector.last):
                    m.d.sync += [count.eq(0), tail.eq(VECTOR_TAIL - 1)]
                    m.next = "TAIL"
            with m.State("TAIL"):   # the instruction's last results leave its pipeline
                m.d.comb += self.busy.eq(1)
                m.d.sync += count.eq(count + 1)
                with m.If(count == tail):
                    m.next = "FETCH"
            with m.State("OUT_READ"):
                m.d.comb += [self.busy.eq(1), lread.addr.eq(out_word)]
                m.next = "OUT_SEND"
            with m.State("OUT_SEND"):
                m.d.comb += [self.busy.eq(1), self.out_valid.eq(1), lread.addr.eq(out_word)]
                m.d.comb += self.out_data.eq(lread.data.word_select(out_lane, a.acc_bits).as_signed())
                with m.If(self.out_ready):
                    m.d.sync += [out_index.eq(out_index + 1), out_lane.eq(out_lane + 1)]
                    with m.If(out_lane == lanes - 1):
                        m.d.sync += [out_lane.eq(0), out_word.eq(out_word + 1)]
                    with m.If(out_index == p.num_classes - 1):
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "OUT_READ"
        return m

    def _fault_injector(self, m: Module, aread: Any, awrite: Any) -> Signal:
        """Write word `fault_address`, read at the fetch, back with lane `fault_lane`'s bits `fault_mask`
        flipped on the cycle after (the decode), when the returned signal is high: a bit flip of a stored
        code, seen by every later read until the word is written again."""
        width = self.params.code_shape.width
        flip = Signal(name="fault_flip")
        with m.If(flip):
            m.d.comb += [awrite.addr.eq(self.fault_address),
                         awrite.data.eq(aread.data ^ (self.fault_mask << (self.fault_lane * width))),
                         awrite.en.eq((1 << self.params.lanes) - 1)]
        return flip

    def _pe_fault_injector(self, m: Module, dp: Any, pc: Value, tile_start: Value) -> list:
        """Drive the datapath's PE fault port from `pe_*` (see the class docstring): count the armed
        GEMM's tile starts, then its cycles from tile `pe_tile`'s, and fire on cycle `pe_cycle`. Return
        the statements that reset the counts at an instruction's decode."""
        seen = Signal(PE_TILE_BITS, name="pe_tiles_seen")
        running = Signal(name="pe_counting")
        clock = Signal(PE_CYCLE_BITS, name="pe_clock")
        armed = self.pe_arm & (pc == self.pe_pc + 1)   # the decode advanced `pc` past the instruction
        here = armed & tile_start & ~running & (seen == self.pe_tile)
        with m.If(running):
            m.d.sync += clock.eq(clock + 1)
        with m.If(armed & tile_start):
            m.d.sync += seen.eq(seen + 1)
        with m.If(here):
            m.d.sync += [running.eq(1), clock.eq(1)]
        fire = (here & (self.pe_cycle == 0)) | (armed & running & (clock == self.pe_cycle))
        m.d.comb += [dp.fault_fire.eq(fire), dp.fault_row.eq(self.pe_row), dp.fault_col.eq(self.pe_col),
                     dp.fault_register.eq(self.pe_register), dp.fault_bank.eq(self.pe_bank),
                     dp.fault_mask.eq(self.pe_mask)]
        return [seen.eq(0), running.eq(0), clock.eq(0)]

    def _overlap(self, m: Module, dp: Any, instr: Value, sl: Value, wread: Any, cread: Any, active: Value,
                 feed_valid: Value) -> _Overlap:
        """Build the double-buffered machine's weight loader, the flags that go with each streamed row,
        and the constants' reads; return the registers the sequencer's states drive (`_Overlap`).

        Loader: started on a tile's first row read (cycle I), it reads the tile's weight words last
        first (the memory holds row R - 1 first, as the shifting load takes them) and writes row r into
        every PE of array row r, bank `lbank`, on cycle I + 1 + r: one cycle before the tile's row of A
        reaches row r (it is presented at I + 2, row r takes it on I + 2 + r), so a tile streams while
        its own weights load (`hw.array.WSDoubleBufferArray`).

        With an input check, a row read on cycle u is presented on u + 3 (`_read_path`, staged), and the
        loader's row and bank and the weight memory's data are registered before the array, so its rows
        are written a cycle later too: every time below, counted from the presentation, is unchanged.

        Flags: a row read on cycle u is presented on u + 2 (`_read_path`); its valid, tile-first, k_first,
        k_last and bank go with it through two registers (three with an input check). Constants: an N slice's
        word is read from the constants memory the cycle before its first K tile's first row reaches the K
        accumulator (cycle T, R + C - 1 cycles after it is presented), so the port's data is the word from T on
        and the bias register (`bias_word`, the port's data a cycle later: the block RAM's clock-to-output delay
        then ends in a register, not in the accumulator's bias add) holds it from T + 1 on, when the accumulator
        adds the bias to that row, through T + kP (k the N slice's K tiles: the next N slice's read is on T + kP
        - 1), so through T + M, when the first tile's last row takes it (kP >= P >= M; with k = 1 and P = M the
        last row takes it on the last cycle it holds); the stage's fields are registered (`active`) from the
        port on the cycle after the N slice's last K tile's first row arrives at the accumulator (that tile's
        first row arrived at or after T, and the next N slice's read comes P - 1 >= 1 cycles after it), so they
        change just as that row enters the column stage and hold for its M rows."""
        p, a = self.params, self.params.array
        rows, cols = a.rows, a.cols
        count_bits = len(Value.cast(instr.m_count)) + max(rows, cols).bit_length() + 1
        staged = p.checked_read
        weights = Signal(wread.data.shape(), name="load_weights") if staged else wread.data
        ov = _Overlap(period=Signal(count_bits, name="period"), phase=Signal(count_bits, name="phase"),
                      feeding=Signal(name="feeding"), walk_done=Signal(name="walk_done"),
                      final=Signal(name="final"), feed_first=Signal(name="feed_first"), bank=Signal(name="bank"),
                      feed_bank=Signal(name="feed_bank"),
                      issue_valid=Signal(name="issue_valid"), issue_first=Signal(name="issue_first"), wread=wread,
                      waddr=Signal(range(max(2, p.weight_words + 1)), name="load_addr"),
                      lrows=Signal(rows, name="load_rows"), lbank=Signal(name="load_bank"),
                      const_nt=Signal(p.widths.const + 1, name="const_n_slice"), weights=weights)
        m.d.comb += wread.addr.eq(ov.waddr)   # the states start a load on a tile's first row read
        m.d.sync += [ov.lrows.eq(ov.lrows << 1), ov.waddr.eq(ov.waddr - 1)]
        read = Cat(ov.issue_valid, ov.issue_first, ov.feed_first, sl.last, ov.feed_bank)
        fetched, presented = Signal(len(read), name="row_flags_read"), Signal(len(read), name="row_flags")
        if staged:
            w_rows, w_bank = Signal(rows, name="load_rows_staged"), Signal(name="load_bank_staged")
            checked = Signal(len(read), name="row_flags_checked")
            m.d.sync += [w_rows.eq(ov.lrows), w_bank.eq(ov.lbank), weights.eq(wread.data),
                         fetched.eq(read), checked.eq(fetched), presented.eq(checked)]
            m.d.comb += [dp.w_rows.eq(w_rows), dp.w_bank.eq(w_bank)]
        else:
            m.d.sync += [fetched.eq(read), presented.eq(fetched)]
            m.d.comb += [dp.w_rows.eq(ov.lrows), dp.w_bank.eq(ov.lbank)]
        valid, first, k_first, k_last, bank = (presented[i] for i in range(len(read)))
        m.d.comb += [feed_valid.eq(valid), dp.restart.eq(valid & first), dp.k_first.eq(k_first),
                     dp.k_last.eq(k_last), dp.a_bank.eq(bank)]
        bias_read = delay_line(m, valid & first & k_first, rows + cols - 2, "bias_read")
        stage_read = delay_line(m, valid & first & k_last, rows + cols, "stage_read")
        m.d.comb += [cread.en.eq(bias_read), cread.addr.eq(instr.const_base + ov.const_nt)]
        with m.If(bias_read):
            m.d.sync += ov.const_nt.eq(ov.const_nt + 1)
        with m.If(stage_read):
            m.d.sync += active.eq(cread.data)
        return ov

    def _overlapped_states(self, m: Module, ov: _Overlap, instr: Value, sl: Value, sp: Value, nt: Value,
                           kt: Value, wptr: Value, count: Value, tail: Value, sread: Any, bread: Any,
                           gen: dict[str, Value], y: Value, x: Value, ox: Value, issue_row: Any,
                           load_bounds: Value) -> None:
        """Add the double-buffered GEMM's states. G_RUN: tile j's first row is read on cycle I_j = I_0 + j P
        (`hw.cycles.machine_tile_period`), its M rows on consecutive cycles; its slice entry is read on I_j - 2
        and latched on I_j - 1 (the feed's address registers, its bounds word read; with an input check the
        bounds word's address latched, so that the word is read on I_j and the slice table's block RAM does not
        drive the bounds memory's address), overriding the previous tile's step when that one reads its last row
        then (M = P); its weights load from I_j + 1 (`_overlap`) into the bank the tile before it does not use.
        After the GEMM's last row is read, G_FLUSH: R + C cycles while it is presented and leaves the array (one
        more with an input check: `MACHINE_CHECKED_READ`), then the output pipeline's tail (`GEMM_TAIL`)."""
        rows, cols = self.params.array.rows, self.params.array.cols
        staged = self.params.checked_read
        if staged:
            bound_addr = Signal.like(bread.addr, name="bound_addr")
        with m.State("G_RUN"):
            m.d.comb += self.busy.eq(1)
            m.d.sync += ov.phase.eq(Mux(ov.phase == ov.period - 1, 0, ov.phase + 1))
            with m.If(ov.feeding):
                issue_row()
                m.d.comb += [ov.issue_valid.eq(1), ov.issue_first.eq(count == 0)]
                m.d.sync += count.eq(count + 1)
                with m.If(count == 0):   # the tile's weights: row r into the PEs on the (r + 1)-th cycle on
                    m.d.comb += [ov.wread.addr.eq(wptr + rows - 1), load_bounds.eq(1)]
                    m.d.sync += [ov.lrows.eq(1), ov.lbank.eq(ov.feed_bank), ov.waddr.eq(wptr + rows - 2),
                                 wptr.eq(wptr + rows)]
                with m.If(count == instr.m_count - 1):
                    m.d.sync += ov.feeding.eq(0)
                    with m.If(ov.final):
                        m.d.sync += count.eq(0)
                        m.next = "G_FLUSH"
            if staged:   # the bounds word's address registered from the slice entry: the word arrives
                m.d.comb += bread.addr.eq(bound_addr)   # the cycle after the tile's first read, as the codes
            with m.If(~ov.walk_done):
                with m.If(ov.phase == ov.period - 2):
                    m.d.comb += sread.addr.eq(sp)
                with m.If(ov.phase == ov.period - 1):
                    slice_now = data.View(self.slice, sread.data)
                    if staged:
                        m.d.sync += bound_addr.eq(slice_now.bound)
                    elif bread is not None:   # its bounds word arrives on the tile's first read
                        m.d.comb += bread.addr.eq(slice_now.bound)
                    m.d.sync += [sl.eq(sread.data), y.eq(slice_now.dy), x.eq(slice_now.dx), ox.eq(0),
                                 gen["row"].eq(instr.src_base + slice_now.row_off), gen["col"].eq(slice_now.col_off),
                                 count.eq(0), ov.feeding.eq(1), ov.feed_first.eq(kt == 0),
                                 ov.feed_bank.eq(ov.bank), ov.bank.eq(~ov.bank)]
                    with m.If(slice_now.last):
                        m.d.sync += [kt.eq(0), nt.eq(nt + 1), sp.eq(Mux(instr.slice_walk, sp + 1, instr.slice_first))]
                        with m.If(nt == instr.n_count - 1):
                            m.d.sync += [ov.walk_done.eq(1), ov.final.eq(1)]
                    with m.Else():
                        m.d.sync += [kt.eq(kt + 1), sp.eq(sp + 1)]
        with m.State("G_FLUSH"):
            m.d.comb += self.busy.eq(1)
            m.d.sync += count.eq(count + 1)
            with m.If(count == rows + cols - 1 + (1 if staged else 0)):   # `MACHINE_CHECKED_READ`
                m.d.sync += [count.eq(0), tail.eq(GEMM_TAIL - 1)]
                m.next = "TAIL"

    def _loader(self, m: Module, memories: dict[int, Memory], idle: Value) -> None:
        """Build the host's load stream (`hw.machine_format`): headers, then each word's beats gathered
        into a register and written on the cycle after its last beat; accepted only while idle."""
        p = self.params
        per_word = {memory: -(-p.word_bits(memory) // BEAT) for memory in memories}
        gathered = Signal(BEAT * max(per_word.values()), name="load_word")
        target, address = Signal(MEMORY_BITS, name="load_memory"), Signal(BEAT, name="load_address")
        remaining, beat = Signal(BEAT, name="load_remaining"), Signal(range(max(per_word.values()) + 1))
        commit = Signal(name="load_commit")
        last_beat = Signal()
        with m.Switch(target):
            for memory, beats in per_word.items():
                with m.Case(memory):
                    m.d.comb += last_beat.eq(beat == beats - 1)
        for memory, mem in memories.items():
            port = mem.write_port()
            m.d.comb += [port.addr.eq(address), port.data.eq(gathered[:p.word_bits(memory)]),
                         port.en.eq(commit & (target == memory))]
        m.d.sync += commit.eq(0)
        with m.If(commit):
            m.d.sync += address.eq(address + 1)
        m.d.comb += self.load_ready.eq(idle)
        with m.FSM(name="load"):
            for state, register, following in (("MEMORY", target, "ADDRESS"), ("ADDRESS", address, "COUNT"),
                                                ("COUNT", remaining, "DATA")):
                with m.State(state):
                    with m.If(self.load_valid & idle):
                        m.d.sync += [register.eq(self.load_data), beat.eq(0)]
                        m.next = following
            with m.State("DATA"):
                with m.If(self.load_valid & idle):
                    m.d.sync += gathered.word_select(beat, BEAT).eq(self.load_data)
                    with m.If(last_beat):
                        m.d.sync += [beat.eq(0), commit.eq(1), remaining.eq(remaining - 1)]
                        with m.If(remaining == 1):
                            m.next = "MEMORY"
                    with m.Else():
                        m.d.sync += beat.eq(beat + 1)

    def _datapath(self) -> Datapath | StreamDatapath | TripleModular:
        """Return the datapath, or with `ArrayConfig.tmr` three of them behind bitwise majority voters
        (`hw.tmr.TripleModular`: replicas `rep0`..`rep2`, each with its own skew registers)."""
        p = self.params
        check = MACHINE_MODES[p.check] if p.check != "none" and p.output_check else None

        def make() -> Datapath | StreamDatapath:
            if p.array.dataflow == "os":
                return StreamDatapath(p.array, p.code_shape, p.multiplier_bits, p.shift_bits, check=check,
                                      fault_port=self.pe_faults)
            return Datapath(p.array, p.max_rows, p.code_shape, p.multiplier_bits, p.shift_bits, check=check,
                            weight_buffers=p.weight_buffers, fault_port=self.pe_faults)

        return TripleModular(make, single=FAULT_PORT if self.pe_faults else ()) if p.array.tmr else make()

    def _feed_constants(self, m: Module, dp: Any, active: Value, bias_active: Value, const_bits: int) -> None:
        """Drive each column's constants from the active words: the bias into the K accumulator, the
        multiplier, shift and bounds into the column stage."""
        p = self.params
        widths = p.const_fields
        for c in range(p.array.cols):
            fields, offset = [], c * const_bits
            for width in widths:
                fields.append((offset, width))
                offset += width
            (b_off, b_w), (m_off, m_w), (s_off, s_w), (lo_off, lo_w), (hi_off, hi_w) = fields
            cast = (lambda v: v.as_signed()) if p.code_shape.signed else (lambda v: v)
            m.d.comb += [dp.bias[c].eq(bias_active[b_off:b_off + b_w].as_signed()),
                         dp.multiplier[c].eq(active[m_off:m_off + m_w]),
                         dp.shift[c].eq(active[s_off:s_off + s_w].as_signed()),
                         dp.lo[c].eq(cast(active[lo_off:lo_off + lo_w])),
                         dp.hi[c].eq(cast(active[hi_off:hi_off + hi_w]))]

    def _writer(self, m: Module, instr: Value, stage: Any, awrite: Any) -> _WriterReset:
        """Write each output row of the stage into `cols` lanes of a buffer word, N slice after N slice
        from part `dst_part` of word `dst_base` on; only the columns holding channels (not the first
        `dst_lead` of N slice 0, nor the last `dst_trail` of the last), so a concat's inputs each write
        their range of its tensor without touching the others'."""
        p, a = self.params, self.params.array
        cols, lanes = a.cols, p.lanes
        parts = lanes // cols
        row = Signal(2 * p.widths.dim + 1)
        address = Signal(p.widths.address + 1)
        group = Signal(p.widths.address + 1)
        part = Signal(range(max(2, parts)))
        n_slice = Signal(p.widths.const + 1, name="write_n_slice")
        codes = Cat(*(stage.out[c] for c in range(cols)))
        first, last = n_slice == 0, n_slice == instr.n_count - 1
        columns = Cat(*((~first | (instr.dst_lead <= c)) & (~last | (instr.dst_trail + c < cols))
                        for c in range(cols)))
        m.d.comb += [awrite.data.eq(Cat(*([codes] * parts))), awrite.addr.eq(address)]
        with m.If(stage.out_valid):
            m.d.comb += awrite.en.eq(columns << (part * cols))
            with m.If(row == instr.m_count - 1):
                next_part = Mux(part == parts - 1, 0, part + 1)
                next_group = Mux(part == parts - 1, group + 1, group)
                m.d.sync += [row.eq(0), part.eq(next_part), group.eq(next_group),
                             address.eq(instr.dst_base + next_group), n_slice.eq(n_slice + 1)]
            with m.Else():
                m.d.sync += [row.eq(row + 1), address.eq(address + instr.dst_groups)]
        return _WriterReset(row, address, group, part, n_slice, columns)

    def _logits(self, m: Module, instr: Value, dp: Any, vector: vector_unit.VectorUnit, lwrite: Any) -> list:
        """Write the logits memory: a logits GEMM's raw sums, `cols` per N slice into the next `cols`-wide
        part of a word; or the vector unit's sums (sign-extended), `lanes` per word. Return the
        statements that reset its position at the program's start."""
        p, a = self.params, self.params.array
        parts = p.lanes // a.cols
        address = Signal(range(max(2, -(-p.num_classes // p.lanes) + 1)), name="logit_word")
        part = Signal(range(max(2, parts)), name="logit_part")
        wide = [Signal(signed(a.acc_bits), name=f"logit_sum_{lane}") for lane in range(p.lanes)]
        m.d.comb += [wide[lane].eq(vector.sums[lane]) for lane in range(p.lanes)]
        m.d.comb += lwrite.addr.eq(address)
        with m.If(dp.sums_valid & instr.logits):
            m.d.comb += [lwrite.data.eq(Cat(*(dp.sums[c] for c in range(a.cols))).replicate(parts)),
                         lwrite.en.eq(Const(1, parts) << part)]
            m.d.sync += part.eq(Mux(part == parts - 1, 0, part + 1))
            with m.If(part == parts - 1):
                m.d.sync += address.eq(address + 1)
        with m.If(vector.sums_valid & instr.logits):
            m.d.comb += [lwrite.data.eq(Cat(*wide)), lwrite.en.eq((1 << parts) - 1)]
            m.d.sync += address.eq(address + 1)
        return [address.eq(0), part.eq(0)]

    def _read_path(self, m: Module, instr: Value, array: Any, lanes: Value, inside_d: Value, feed_valid: Value,
                   bread: Any, part: Value, load_bounds: Value, *, staged: bool = False) -> Value:
        """Drive the array's rows from the `rows` lanes read from the buffer: zeros for a padded position
        (no read), else the code, checked against its channel's bounds when the machine has an input
        check and the instruction asks for it (`in_check`). A tile's bounds are the `rows` pairs of part
        `part` of the bounds word read at its setup, taken on `load_bounds`. The codes are registered
        before the array (the block RAM's clock-to-output, the lane select and the check would otherwise
        lie on one path with the first column's multipliers), so a row is read two cycles before the
        array takes it. `staged` (the double-buffered machine, whose schedule `_overlap` shifts by a
        cycle) registers the lanes as read too, before the check: the block RAM's clock-to-output then
        ends in a register, not in the comparators (the input-checked accelerator's critical path without
        it), and a row is read three cycles before the array takes it. Return whether a check
        fired on a code the array takes this cycle."""
        p = self.params
        code = p.code_shape
        width = code.width
        values = [lanes[r * width:(r + 1) * width] for r in range(p.array.rows)]
        values = [value.as_signed() if code.signed else value for value in values]
        rows_in = [Signal(code, name=f"row_in_{r}") for r in range(p.array.rows)]
        m.d.comb += [array.a[r].eq(rows_in[r]) for r in range(p.array.rows)]
        if not p.checked_read:
            m.d.sync += [rows_in[r].eq(Mux(inside_d, value, 0)) for r, value in enumerate(values)]
            return Const(0)
        mode = MACHINE_MODES[p.check]
        pairs = bread.data.word_select(part, 2 * p.array.rows * width)
        if staged:   # the codes a cycle later, and the bounds word, read a cycle later too (`_overlapped_states`)
            read = [Signal(code, name=f"read_code_{r}") for r in range(p.array.rows)]
            inside, taken = Signal(name="read_inside"), Signal(name="read_bounds_taken")
            m.d.sync += [*(read[r].eq(value) for r, value in enumerate(values)), inside.eq(inside_d),
                         taken.eq(load_bounds)]
            values, inside_d, load_bounds = read, inside, taken
        fired = []
        for r, value in enumerate(values):
            lo, hi = Signal(code, name=f"read_lo_{r}"), Signal(code, name=f"read_hi_{r}")
            with m.If(load_bounds):
                m.d.sync += [lo.eq(pairs[2 * r * width:(2 * r + 1) * width]),
                             hi.eq(pairs[(2 * r + 1) * width:(2 * r + 2) * width])]
            below, above = (value < lo) & instr.in_check, (value > hi) & instr.in_check
            m.d.sync += rows_in[r].eq(Mux(inside_d, mode(value, lo, hi, below, above), 0))
            fired.append(below | above)
        fired_in = Signal(name="read_fired")
        m.d.sync += fired_in.eq(inside_d & Cat(*fired).any())
        return feed_valid & fired_in

    def _vector_unit(self, m: Module, instr: Value, aread: Any, awrite: Any, bread: Any) -> vector_unit.VectorUnit:
        """Add the vector unit on the buffer's ports (and the bounds memory's): it reads while it runs,
        and writes when its stage gives a word (never while the array's writer does: one instruction at
        a time)."""
        p = self.params
        check = MACHINE_MODES[p.check] if p.check != "none" and p.output_check else None
        unit = vector_unit.VectorUnit(self.instruction, p.lanes, p.code_shape, p.sum_bits, p.widths.address,
                                      p.widths.dim, p.multiplier_bits, p.shift_bits, check=check,
                                      multiplier=MULTIPLIERS[p.array.multiplier], bounds_bits=p.widths.bounds)
        m.submodules.vector = unit
        m.d.comb += [unit.instr.eq(instr), unit.next_instr.eq(self._fetched), unit.read_data.eq(aread.data)]
        if bread is not None:
            m.d.comb += unit.bounds_data.eq(bread.data)
        with m.If(unit.run):
            m.d.comb += aread.addr.eq(unit.read_addr)
            if bread is not None:
                m.d.comb += bread.addr.eq(unit.bounds_addr)
        with m.If(unit.write_en):
            m.d.comb += [awrite.addr.eq(unit.write_addr), awrite.data.eq(unit.write_data),
                         awrite.en.eq((1 << p.lanes) - 1)]
        return unit

    def _host_write(self, m: Module, awrite: Any, word: Value, lane: Value, code: Shape) -> None:
        """Write one input code into its lane of the input tensor's current word, and step."""
        p = self.params
        m.d.comb += [awrite.addr.eq(p.input_base + word),
                     awrite.data.eq(Cat(*([self.in_data] * p.lanes))),
                     awrite.en.eq(Const(1, p.lanes) << lane)]
        with m.If(lane == p.lanes - 1):
            m.d.sync += [lane.eq(0), word.eq(word + 1)]
        with m.Else():
            m.d.sync += lane.eq(lane + 1)
