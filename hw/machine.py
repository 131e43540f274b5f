"""The accelerator that runs a whole network: memories, sequencer, weight-stationary datapath, max-pool
unit and host port, around the program `dsetool.machine.compiler` makes (`hw.isa` is the format).

    host in  --> activation buffer <--> [stream feed] --> WSArray --> KAccumulator (+bias)
                      ^   |                                                  |
                      |   '--> [max-pool unit] --.                    ColumnStage (requant, clamp, check)
                      '------------ writes ------'------------------------- '   (logits: raw sums)
    instruction memory, slice table --> sequencer;  weight memory --> array;  constant memory --> columns
    logits memory --> host out

One instruction at a time (`hw.isa`): a GEMM runs tile after tile, each tile = `SETUP` cycles (read its
slice-table entry, and at an N slice's first tile its constants word), `rows` cycles loading the weights,
`m_count` cycles streaming rows of A read from the buffer, and `rows + cols - 2` cycles letting the last
row leave the array; an N slice ends with the tile of the slice entry marked `last` (a grouped conv's N
slices have their own K slices, `slice_walk`); after its last tile the output pipeline drains
(`GEMM_TAIL`). The writer writes only the columns that hold channels, from any `cols`-wide part of a
word on, so a layer writes its channel range of a concat's tensor directly. A vector instruction reads
one window word per cycle and writes one output word per window. Every instruction costs `FETCH` cycles
before it. `hw.cycles`' machine functions count exactly this schedule.

The logits memory holds `lanes` sums per word, written `cols` at a time by a logits GEMM (one N slice's)
or `lanes` at a time by the vector unit (an average pool's sums that are the logits); logit c is lane
c % cols of the `cols`-wide part c // cols.

Host port: while idle, `in_*` is a valid/ready stream of the input tensor's codes, lane by lane, word by
word from the input's base (padding lanes included: zeros); a pulse on `start` runs the program; at its
end the `out_*` stream gives the `num_classes` logits, then the machine is idle.
Memory contents other than the activation buffer are given at build time (the network's weights and
program): the machine is built for the network it runs.
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
from hw.accumulator import KAccumulator
from hw.array import WSArray
from hw.column_stage import LATENCY as STAGE_LATENCY
from hw.column_stage import ColumnStage
from hw.cycles import MACHINE_GEMM_TAIL, MACHINE_SETUP, MACHINE_VECTOR_TAIL
from hw.machine_format import BEAT, CMEM, IMEM, SMEM, WMEM, MachineShape
from hw.pe import MULTIPLIERS
from hw.protect import MODES

SETUP = MACHINE_SETUP   # cycles per GEMM tile before its weights load: read its slice entry (and constants)
GEMM_TAIL = MACHINE_GEMM_TAIL   # last sums through the accumulator, the stage, the write
VECTOR_TAIL = MACHINE_VECTOR_TAIL   # the last window's word through the vector unit's stage
assert GEMM_TAIL == ACC_LATENCY + STAGE_LATENCY + 1 and VECTOR_TAIL == vector_unit.TAIL


@dataclass(frozen=True)
class _WriterReset:
    """The output writer's position registers, set at each instruction's decode."""

    row: Signal
    address: Signal
    group: Signal
    part: Signal
    n_slice: Signal

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
    """

    def __init__(self, params: MachineShape) -> None:
        self.params = params
        a = params.array
        if a.dataflow != "ws" or a.tmr or a.protection != "none":
            raise ValueError("Machine needs a weight-stationary ArrayConfig without TMR or protection "
                             "(the range check is MachineShape.check)")
        if a.rows < 2:
            raise ValueError(f"Machine rows must be at least 2, not {a.rows!r}")
        self.instruction = isa.instruction_layout(params.widths)
        self.slice = isa.slice_layout(params.widths)
        super().__init__({
            "in_valid": In(1), "in_data": In(params.code_shape), "in_ready": Out(1),
            "load_valid": In(1), "load_data": In(BEAT), "load_ready": Out(1),
            "start": In(1), "busy": Out(1),
            "out_valid": Out(1), "out_data": Out(signed(a.acc_bits)), "out_ready": In(1),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        p, a = self.params, self.params.array
        code = p.code_shape
        rows, cols, lanes = a.rows, a.cols, p.lanes
        word_bits = lanes * code.width

        # ---- memories: the loadable ones, the activation buffer, the logits
        loadable = {memory: Memory(shape=unsigned(p.word_bits(memory)), depth=p.depth(memory), init=[])
                    for memory in (IMEM, SMEM, WMEM, CMEM)}
        imem, smem, wmem, cmem = (loadable[memory] for memory in (IMEM, SMEM, WMEM, CMEM))
        const_bits = sum(p.const_fields)
        abuf = Memory(shape=unsigned(word_bits), depth=max(1, p.buffer_words), init=[])
        lmem = Memory(shape=unsigned(lanes * a.acc_bits), depth=-(-p.num_classes // lanes), init=[])
        m.submodules.imem, m.submodules.smem, m.submodules.wmem = imem, smem, wmem
        m.submodules.cmem, m.submodules.abuf, m.submodules.lmem = cmem, abuf, lmem
        iread, sread, wread, cread = imem.read_port(), smem.read_port(), wmem.read_port(), cmem.read_port()
        self._fetched = data.View(self.instruction, iread.data)
        idle = Signal()
        self._loader(m, loadable, idle)
        aread, awrite = abuf.read_port(), abuf.write_port(granularity=code.width)
        lread, lwrite = lmem.read_port(), lmem.write_port(granularity=cols * a.acc_bits)

        # ---- datapath
        m.submodules.array = array = WSArray(a)
        m.submodules.sums = sums = KAccumulator(array.acc_bits, cols, max(1, p.max_rows), with_bias=True)
        check = MODES[p.check] if p.check != "none" else None
        m.submodules.stage = stage = ColumnStage(a.acc_bits, cols, code, p.multiplier_bits, p.shift_bits,
                                                 check=check, multiplier=MULTIPLIERS[a.multiplier])
        skew = rows + cols - 1
        k_first, k_last = Signal(), Signal()
        first_line, last_line = k_first, k_last
        for i in range(skew):
            first_next, last_next = Signal(name=f"k_first_{i}"), Signal(name=f"k_last_{i}")
            m.d.sync += [first_next.eq(first_line), last_next.eq(last_line)]
            first_line, last_line = first_next, last_next
        m.d.comb += [sums.valid.eq(array.out_valid), sums.first.eq(first_line), sums.last.eq(last_line)]
        m.d.comb += [sums.acc[c].eq(array.out[c]) for c in range(cols)]

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
        pending = Signal(unsigned(cols * const_bits))
        active = Signal(unsigned(cols * const_bits))
        bias_active = Signal(unsigned(cols * const_bits))
        self._feed_constants(m, stage, sums, active, bias_active, const_bits)
        m.d.comb += [stage.valid.eq(sums.out_valid & ~instr.logits), stage.relu.eq(instr.relu),
                     stage.check_on.eq(instr.check), stage.qmin.eq(instr.qmin), stage.qmax.eq(instr.qmax)]
        m.d.comb += [stage.acc[c].eq(sums.out[c]) for c in range(cols)]

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

        a_lanes = aread.data.word_select(part_d, rows * code.width)
        feed_valid = Signal()
        m.d.comb += [array.a_valid.eq(feed_valid)]
        for r in range(rows):
            lane = a_lanes[r * code.width:(r + 1) * code.width]
            m.d.comb += array.a[r].eq(Mux(inside_d, lane.as_signed() if code.signed else lane, 0))

        # ---- output writer: rows of the stage in order, N slice after N slice
        writer = self._writer(m, instr, stage, awrite)

        # ---- vector unit (pools, adds, requantizations)
        vector = self._vector_unit(m, instr, aread, awrite)

        # ---- logits: a GEMM's raw sums, or the vector unit's
        logit_reset = self._logits(m, instr, sums, vector, lwrite)

        # ---- host input
        in_word = Signal(range(max(2, p.input_words + 1)))
        in_lane = Signal(range(max(2, lanes)))

        # ---- sequencer
        m.d.comb += [iread.addr.eq(pc), wread.addr.eq(wptr)]
        m.d.comb += [array.w[c].eq(wread.data[c * a.weight_bits:(c + 1) * a.weight_bits].as_signed())
                     for c in range(cols)]
        out_index = Signal(range(max(2, p.num_classes + 1)))
        out_word, out_lane = Signal(range(max(2, lmem.depth))), Signal(range(lanes))
        with m.FSM(name="seq"):
            with m.State("IDLE"):
                m.d.comb += [self.in_ready.eq(1), idle.eq(1)]
                with m.If(self.in_valid):
                    self._host_write(m, awrite, in_word, in_lane, code)
                with m.If(self.start):
                    m.d.sync += [pc.eq(0), in_word.eq(0), in_lane.eq(0), *logit_reset]
                    m.next = "FETCH"
            with m.State("FETCH"):
                m.d.comb += self.busy.eq(1)
                m.next = "DECODE"
            with m.State("DECODE"):
                m.d.comb += self.busy.eq(1)
                fetched = self._fetched
                m.d.sync += [instr.eq(iread.data), nt.eq(0), kt.eq(0), wptr.eq(fetched.weight_base),
                             pc.eq(pc + 1), count.eq(0), sp.eq(fetched.slice_first)]
                m.d.sync += writer.reset(fetched)
                with m.Switch(fetched.opcode):
                    with m.Case(isa.GEMM):
                        m.next = "G_SETUP"
                    with m.Case(isa.VECTOR):
                        m.d.comb += vector.start.eq(1)
                        m.next = "V_RUN"
                    with m.Default():
                        m.d.sync += [out_index.eq(0), out_word.eq(0), out_lane.eq(0)]
                        m.next = "OUT_READ"
            with m.State("G_SETUP"):
                m.d.comb += [self.busy.eq(1), sread.addr.eq(sp),
                             cread.addr.eq(instr.const_base + nt)]
                m.d.sync += count.eq(count + 1)
                with m.If(count == 1):
                    slice_now = data.View(self.slice, sread.data)
                    m.d.sync += [sl.eq(sread.data), y.eq(slice_now.dy), x.eq(slice_now.dx), ox.eq(0),
                                 gen["row"].eq(instr.src_base + slice_now.row_off), gen["col"].eq(slice_now.col_off),
                                 count.eq(0)]
                    with m.If(kt == 0):
                        m.d.sync += pending.eq(cread.data)
                    m.next = "G_LOAD"
            with m.State("G_LOAD"):
                m.d.comb += [self.busy.eq(1), array.w_load.eq(1), wread.addr.eq(wptr + 1)]
                m.d.sync += [count.eq(count + 1), wptr.eq(wptr + 1)]
                with m.If(count == rows - 1):
                    issue_row()
                    m.d.sync += count.eq(0)
                    m.next = "G_STREAM"
            with m.State("G_STREAM"):
                m.d.comb += [self.busy.eq(1), feed_valid.eq(1), k_first.eq(kt == 0), k_last.eq(sl.last)]
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
                        m.d.sync += [kt.eq(0), nt.eq(nt + 1), sp.eq(Mux(instr.slice_walk, sp + 1, instr.slice_first))]
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

    def _loader(self, m: Module, memories: dict[int, Memory], idle: Value) -> None:
        """Build the host's load stream (`hw.machine_format`): headers, then each word's beats gathered
        into a register and written on the cycle after its last beat; accepted only while idle."""
        p = self.params
        per_word = {memory: -(-p.word_bits(memory) // BEAT) for memory in memories}
        gathered = Signal(BEAT * max(per_word.values()), name="load_word")
        target, address = Signal(2, name="load_memory"), Signal(BEAT, name="load_address")
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

    def _feed_constants(self, m: Module, stage: ColumnStage, sums: KAccumulator, active: Value,
                        bias_active: Value, const_bits: int) -> None:
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
            m.d.comb += [sums.bias[c].eq(bias_active[b_off:b_off + b_w].as_signed()),
                         stage.multiplier[c].eq(active[m_off:m_off + m_w]),
                         stage.shift[c].eq(active[s_off:s_off + s_w].as_signed()),
                         stage.lo[c].eq(cast(active[lo_off:lo_off + lo_w])),
                         stage.hi[c].eq(cast(active[hi_off:hi_off + hi_w]))]

    def _writer(self, m: Module, instr: Value, stage: ColumnStage, awrite: Any) -> _WriterReset:
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
        return _WriterReset(row, address, group, part, n_slice)

    def _logits(self, m: Module, instr: Value, sums: KAccumulator, vector: vector_unit.VectorUnit,
                lwrite: Any) -> list:
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
        with m.If(sums.out_valid & instr.logits):
            m.d.comb += [lwrite.data.eq(Cat(*(sums.out[c] for c in range(a.cols))).replicate(parts)),
                         lwrite.en.eq(Const(1, parts) << part)]
            m.d.sync += part.eq(Mux(part == parts - 1, 0, part + 1))
            with m.If(part == parts - 1):
                m.d.sync += address.eq(address + 1)
        with m.If(vector.sums_valid & instr.logits):
            m.d.comb += [lwrite.data.eq(Cat(*wide)), lwrite.en.eq((1 << parts) - 1)]
            m.d.sync += address.eq(address + 1)
        return [address.eq(0), part.eq(0)]

    def _vector_unit(self, m: Module, instr: Value, aread: Any, awrite: Any) -> vector_unit.VectorUnit:
        """Add the vector unit on the buffer's ports: it reads while it runs, and writes when its stage
        gives a word (never while the array's writer does: one instruction at a time)."""
        p = self.params
        check = MODES[p.check] if p.check != "none" else None
        unit = vector_unit.VectorUnit(self.instruction, p.lanes, p.code_shape, p.sum_bits, p.widths.address,
                                      p.widths.dim, p.multiplier_bits, p.shift_bits, check=check,
                                      multiplier=MULTIPLIERS[p.array.multiplier])
        m.submodules.vector = unit
        m.d.comb += [unit.instr.eq(instr), unit.next_instr.eq(self._fetched), unit.read_data.eq(aread.data)]
        with m.If(unit.run):
            m.d.comb += aread.addr.eq(unit.read_addr)
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
