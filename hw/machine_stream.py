"""The output-stationary accelerator's GEMM (`hw.machine.Machine` with `ArrayConfig.dataflow` "os"): the
feed that streams K through the array from per-row shift registers, the drain of the finished tiles and
the sequencer states that run them. Everything else (memories, host port, vector unit, writer, checks)
is the machine's, shared with the weight-stationary one.

A tile is R output pixels (rows of the GEMM, m0 .. m0 + R - 1) by the C output channels of an N slice;
its K runs through time: the N slice's K slices (the slice table, as for the weight-stationary machine),
R lanes each. Order: N slice by N slice, the N slice's tiles m0 = 0, R, 2R, ..., each tile's K slices
in slice-table order. For each K slice the feed reads one buffer word per cycle, pixel m0 + r's on the
slice's r-th cycle, and loads its R codes (the slice's lane part, input-checked, zeros for a padded
position or a pixel beyond M) into row r's shift register, which presents one code per cycle to the
array's row r: row r starts a K slice r cycles after row 0, the skew the array needs, and every row is
reloaded exactly as its last code leaves, so K slices and tiles stream without a gap. The weight memory
(the weight-stationary images unchanged: per K slice R words of C weights, the slice's last lane first)
is read with the slice's i-th code and gives lane i's word, registered and presented to every column on
cycle read + 2 (`hw.array.OSStreamArray` delays column c by c): PE(r, c) meets A[m0 + r, k] and W[k, n_c] on
one cycle. The codes carry the tile's first / last flags, with which each PE restarts its sum and
latches the finished one into its shadow register (`hw.pe.OSStreamPE`).

Drain: a tile whose last read is on cycle E has its row r in the shadows from E + C + 2 + r on (the
last column's) until the next tile's last read E' reaches that row's first column, E' + 3 + r, so the
drain reads row r on cycle E + C + 2 + r (`hw.machine_datapath.StreamDatapath`: bias added, then the
column stage), the rows of pixels below M only, and needs E' - E >= C: before a tile's last K slice the
feed waits until its last read will be at least C cycles after the previous tile's (only when a tile
has fewer than C / R K slices; a drain also needs E' - E >= R, which a tile's R-cycle slices give). An
N slice's constants word is read into the `active` register the cycle before its first tile's drain,
and the stage's fields follow its rows one cycle later (`StreamDatapath`).

Cycles of a GEMM (`hw.cycles.machine_stream_gemm_cycles`): `FETCH` + `SETUP`, the first tile's reads
(K' = its K slices * R), each later tile's max(K', C), then C + R + 1 cycles until the last row is read
from the shadows and `hw.cycles.MACHINE_STREAM_TAIL` while it passes the stage and is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value
from amaranth.lib import data

from hw.array import delay_line
from hw.machine_format import MachineShape
from hw.protect import MACHINE_MODES


@dataclass(frozen=True)
class Walker:
    """A position in the GEMM's output pixels as the buffer addresses see it: input row and column of
    the window origin (y, x), the word offsets of its row and column (row, col), output column ox."""

    y: Value
    x: Value
    row: Value
    col: Value
    ox: Value

    def stepped(self, instr: Value, x_reset: Value, col_reset: Value) -> Walker:
        """Return the next output pixel's position (wrapping to the next output row at `out_w`)."""
        wrap = self.ox == instr.out_w - 1
        return Walker(y=Mux(wrap, self.y + instr.sy, self.y), x=Mux(wrap, x_reset, self.x + instr.sx),
                      row=Mux(wrap, self.row + instr.step_y, self.row),
                      col=Mux(wrap, col_reset, self.col + instr.step_x), ox=Mux(wrap, 0, self.ox + 1))

    def eq(self, other: Walker) -> list:
        return [getattr(self, name).eq(getattr(other, name)) for name in ("y", "x", "row", "col", "ox")]


@dataclass(frozen=True)
class StreamPorts:
    """What the stream feed drives or reads of the machine around it."""

    instr: Value          # the running instruction
    sl: Value             # the current K slice's entry (a register of `hw.isa.slice_layout`)
    slice_layout: Any
    sp: Value             # its slice-table address
    nt: Value             # the N slice being read
    wptr: Value           # its first weight word
    count: Value          # the current K slice's read (0 .. R - 1)
    sread: Any            # the slice table's read port
    aread: Any            # the activation buffer's
    wread: Any            # the weight memory's
    cread: Any            # the constants memory's
    bread: Any            # the bounds memory's (None without range checks)
    walker: Walker        # the read position (the machine's address registers)
    active: Value         # the constants word of the N slice being drained


class StreamFeed:
    """Build the output-stationary GEMM's feed, drain and states into the machine's module (see the
    module docstring); `fired` says a check on the read path fired on a code the array takes."""

    def __init__(self, m: Module, shape: MachineShape, dp: Any, ports: StreamPorts) -> None:
        self.m, self.shape, self.dp, self.p = m, shape, dp, ports
        a = shape.array
        self.rows, self.cols = a.rows, a.cols
        instr = ports.instr
        # pixels up to M + R - 1: the last tile reads and drains past M (rows beyond it are zeros, not written)
        position = max(len(Value.cast(instr.m_count)), self.rows.bit_length()) + 1
        w = ports.walker
        self.base = Walker(*(Signal(Value.cast(v).shape(), name=f"base_{name}")
                             for name, v in zip(("y", "x", "row", "col", "ox"), (w.y, w.x, w.row, w.col, w.ox),
                                                strict=True)))
        self.m0 = Signal(position, name="tile_m0")          # the tile's first output pixel
        self.pos = Signal(position, name="read_pixel")      # the pixel being read
        self.n_first = Signal(ports.sp.shape(), name="n_first_slice")   # the N slice's first K slice
        self.n_weights = Signal(ports.wptr.shape(), name="n_first_weight")
        self.tile_first = Signal(name="tile_first_slice")   # the current K slice is its tile's first
        self.stall_gap = max(0, self.cols - self.rows + 1)   # cycles from a tile's last read to the next's last slice
        self.since = Signal(range(self.stall_gap + 1), name="since_tile_end")
        self.dnt = Signal(len(Value.cast(ports.nt)), name="drain_n_slice")
        self.fired = self._feed()
        self._drain()

    # ---- the shift registers and the weights
    def _feed(self) -> Value:
        """Build the read registers, the rows' shift registers and the weight address; return the
        input check's `fired`."""
        m, p, shape = self.m, self.p, self.shape
        rows, code = self.rows, shape.code_shape
        width = code.width
        self.reading = Signal(name="stream_reading")
        rd_valid, rd_inside, rd_first, rd_last = (Signal(name=f"stream_{n}") for n in ("valid", "inside", "first",
                                                                                         "last"))
        rd_row = Signal(range(rows), name="stream_row")
        rd_part = Signal(max(1, shape.widths.lane), name="stream_part")
        w = p.walker
        inside = (w.y >= 0) & (w.y < p.instr.src_h) & (w.x >= 0) & (w.x < p.instr.src_w) & (self.pos < p.instr.m_count)
        m.d.sync += [rd_valid.eq(self.reading), rd_row.eq(p.count), rd_inside.eq(inside), rd_part.eq(p.sl.part),
                     rd_first.eq(self.tile_first), rd_last.eq(p.sl.last)]
        # lane i's weights: read with the slice's i-th code, registered, on every column the cycle its
        # code reaches row 0 (the block RAM's output would otherwise feed column 0's multipliers)
        m.d.comb += p.wread.addr.eq(p.wptr + rows - 1 - p.count)
        weights = Signal(p.wread.data.shape(), name="stream_weights")
        m.d.sync += weights.eq(p.wread.data)
        self.weights = weights

        values = [p.aread.data.word_select(rd_part, rows * width)[i * width:(i + 1) * width] for i in range(rows)]
        values = [v.as_signed() if code.signed else v for v in values]
        fired: Value = Const(0)
        if shape.input_check and p.bread is not None:
            mode = MACHINE_MODES[shape.check]
            pairs = p.bread.data.word_select(rd_part, 2 * rows * width)
            checked, flags = [], []
            for i, v in enumerate(values):
                lo, hi = pairs[2 * i * width:(2 * i + 1) * width], pairs[(2 * i + 1) * width:(2 * i + 2) * width]
                lo, hi = (lo.as_signed(), hi.as_signed()) if code.signed else (lo, hi)
                below, above = (v < lo) & p.instr.in_check, (v > hi) & p.instr.in_check
                checked.append(mode(v, lo, hi, below, above))
                flags.append(below | above)
            values = checked
            fired = rd_valid & rd_inside & Cat(*flags).any()
        # the R codes a read gives, once (every row's shift register loads from them)
        loaded = [Signal(code, name=f"feed_code_{i}") for i in range(rows)]
        m.d.comb += [loaded[i].eq(Mux(rd_inside, values[i], 0)) for i in range(rows)]
        for r in range(rows):
            codes = [Signal(code, name=f"feed_{r}_{i}") for i in range(rows)]
            firsts, lasts = Signal(rows, name=f"feed_first_{r}"), Signal(rows, name=f"feed_last_{r}")
            with m.If(rd_valid & (rd_row == r)):
                m.d.sync += [codes[i].eq(loaded[i]) for i in range(rows)]
                m.d.sync += [firsts.eq(rd_first), lasts.eq(rd_last << (rows - 1))]
            with m.Else():
                m.d.sync += [codes[i].eq(codes[i + 1]) for i in range(rows - 1)] + [codes[rows - 1].eq(0)]
                m.d.sync += [firsts.eq(firsts >> 1), lasts.eq(lasts >> 1)]
            m.d.comb += [self.dp.a[r].eq(codes[0]), self.dp.first[r].eq(firsts[0]), self.dp.last[r].eq(lasts[0])]
        return fired

    # ---- the drain
    def _drain(self) -> None:
        """Read each finished tile's rows from the shadows, C + 2 cycles after its last read (module
        docstring), only rows of pixels below M; load an N slice's constants the cycle before its first
        tile's first row."""
        m, p, dp = self.m, self.p, self.dp
        rows = self.rows
        self.tile_end = Signal(name="tile_end")        # comb: this cycle reads a tile's last word
        self.tile_end_first = Signal(name="tile_end_first")   # ... and the tile is its N slice's first
        token = delay_line(m, Cat(self.tile_end, self.tile_end_first), self.cols + 1, "drain_token")
        start, new_slice = token[0], token[1]
        draining = Signal(name="draining")
        row = Signal(range(rows), name="drain_row")
        pixel = Signal(len(self.m0), name="drain_pixel")
        m.d.comb += [dp.drain_valid.eq(draining & (pixel < p.instr.m_count)), dp.drain_row.eq(row),
                     p.cread.addr.eq(p.instr.const_base + self.dnt)]
        following = Mux(draining, pixel + 1, pixel)
        with m.If(draining):
            m.d.sync += [row.eq(row + 1), pixel.eq(following)]
            with m.If(row == rows - 1):
                m.d.sync += draining.eq(0)
        with m.If(start):
            m.d.sync += [draining.eq(1), row.eq(0), pixel.eq(Mux(new_slice, 0, following))]
            with m.If(new_slice):
                m.d.sync += [p.active.eq(p.cread.data), self.dnt.eq(self.dnt + 1)]

    # ---- the sequencer
    def reset(self) -> list:
        """Return the statements of an instruction's decode."""
        return [self.dnt.eq(0)]

    def _latch(self, entry: Value, base: Walker, m0: Value) -> list:
        """Return the statements that make `entry` the current K slice, read from the pixel at `base`
        (the tile's first, `m0`)."""
        p = self.p
        s = data.View(p.slice_layout, entry)
        w = p.walker
        return [p.sl.eq(entry), w.y.eq(base.y + s.dy), w.x.eq(base.x + s.dx),
                w.row.eq(p.instr.src_base + base.row + s.row_off), w.col.eq(base.col + s.col_off),
                w.ox.eq(base.ox), self.pos.eq(m0)]

    def states(self, busy: Value, tail: Value, tail_cycles: int) -> None:
        """Add the states O_SETUP (read the first slice entry), O_RUN (the reads) and O_FLUSH (the last
        tile's drain), which ends in the machine's TAIL state with `tail_cycles` to go."""
        m, p = self.m, self.p
        rows, cols = self.rows, self.cols
        instr, count, sl, sp = p.instr, p.count, p.sl, p.sp
        zero = Walker(*(Const(0) for _ in range(5)))
        with m.State("O_SETUP"):
            m.d.comb += [busy.eq(1), p.sread.addr.eq(sp)]
            m.d.sync += count.eq(count + 1)
            with m.If(count == 1):
                m.d.sync += self._latch(p.sread.data, zero, Const(0))
                m.d.sync += [count.eq(0), self.base.eq(zero), self.m0.eq(0), self.n_first.eq(sp),
                             self.n_weights.eq(p.wptr), self.tile_first.eq(1), self.since.eq(self.stall_gap)]
                m.next = "O_RUN"
        with m.State("O_RUN"):
            m.d.comb += busy.eq(1)
            last_m = self.m0 + rows >= instr.m_count
            after = Mux(instr.slice_walk, sp + 1, instr.slice_first)   # the next N slice's first K slice
            next_sp = Mux(~sl.last, sp + 1, Mux(~last_m, self.n_first, after))
            m.d.comb += p.sread.addr.eq(next_sp)
            stall = Const(0)
            if self.stall_gap > 1:
                stall = (count == 0) & sl.last & (self.since < self.stall_gap)
                with m.If(self.since != self.stall_gap):
                    m.d.sync += self.since.eq(self.since + 1)
            m.d.comb += self.reading.eq(~stall)
            if p.bread is not None:   # the K slice's bounds word, for the codes its reads give a cycle later
                m.d.comb += p.bread.addr.eq(sl.bound)
            w = p.walker
            with m.If(~stall):
                m.d.comb += p.aread.addr.eq((w.row + w.col)[:self.shape.widths.address])
                m.d.sync += [count.eq(count + 1), self.pos.eq(self.pos + 1)]
                m.d.sync += w.eq(w.stepped(instr, sl.dx, sl.col_off))
                stepped_base = self.base.stepped(instr, Const(0), Const(0))
                with m.If(sl.last):   # the base walks the tile's R pixels while its last K slice is read
                    m.d.sync += self.base.eq(stepped_base)
                with m.If(count == rows - 1):   # the K slice's last read: the next one's entry is latched
                    m.d.sync += [count.eq(0), sp.eq(next_sp), self.tile_first.eq(sl.last)]
                    with m.If(~sl.last):
                        m.d.sync += [self._latch(p.sread.data, self.base, self.m0), p.wptr.eq(p.wptr + rows)]
                    with m.Else():
                        m.d.comb += [self.tile_end.eq(1), self.tile_end_first.eq(self.m0 == 0)]
                        m.d.sync += self.since.eq(1) if self.stall_gap > 1 else []
                        with m.If(~last_m):   # the N slice's next tile: its pixels, its K slices again
                            m.d.sync += [self._latch(p.sread.data, stepped_base, self.m0 + rows),
                                         self.m0.eq(self.m0 + rows), p.wptr.eq(self.n_weights)]
                        with m.Else():   # the next N slice, from pixel 0
                            m.d.sync += [self._latch(p.sread.data, zero, Const(0)), self.base.eq(zero),
                                         self.m0.eq(0), p.nt.eq(p.nt + 1), self.n_first.eq(next_sp),
                                         p.wptr.eq(p.wptr + rows), self.n_weights.eq(p.wptr + rows)]
                            with m.If(p.nt == instr.n_count - 1):
                                m.next = "O_FLUSH"
        with m.State("O_FLUSH"):
            m.d.comb += busy.eq(1)
            m.d.sync += count.eq(count + 1)
            with m.If(count == cols + rows):
                m.d.sync += [count.eq(0), tail.eq(tail_cycles - 1)]
                m.next = "TAIL"
