"""The accelerator's vector unit: the post-GEMM ops of the integer model, one activation word (`lanes`
codes) at a time, beside the array on the activation buffer's ports.

One `VECTOR` instruction (`hw.isa`) walks the output words (oy, ox, g) in order; for each it reads the
`kh` x `kw` window taps one per cycle, tap (ky, kx) at word `src_base` + `row_off` + oy * `step_y` +
ky * `ky_step` + `col_off` + ox * `step_x` + kx * `kx_step` + g, and when `bounded` only if the pixel
(oy * sy - py + ky, ox * sx - px + kx) lies inside `src_h` x `src_w` (else the tap is padding). Taps
are reduced lane by lane, by maximum (`reduce_max`: padding is the smallest code) or by sum (padding is
0). The reduced word then passes one `hw.column_stage.ColumnStage` of `lanes` columns with the
instruction's single multiplier, shift, clamp and ReLU, and with `check` each lane's range check against
its channel's bounds (the bounds memory's word `bounds_base` + g, `hw.machine_format`), and is written
to `dst_base` + the
output word's index (+ `dst_skip` per output pixel before it: a range of a concat's tensor). So one unit
runs:

- max pooling (identity requantization: multiplier 1, shift 0, the codes' full range);
- average pooling, global included: the window's sum requantized by the quantizer that reads it;
- a residual add: a 1 x 2 window, unbounded, whose second tap is the other addend's word
  (`kx_step` = its base - the first's), requantized by the quantizer that reads the sum;
- a quantizer re-scaling another's codes: a 1 x 1 window;
- with `logits`, an average pool's (or add's) sums that are the network's logits: `sums` gives them on
  the cycle `sums_valid` is high, not requantized, and the buffer is not written.

Timing: while `run` is high one tap is read per cycle (`last` high on the cycle of the final one); the
last word is written `TAIL` cycles after that cycle. Each tap is registered as it leaves the buffer (the
block RAM's clock-to-output, 5.8 ns on ECP5, lay on one path with the window's comparator or adder and
the reduction register, the accelerator's critical path) and a window's reduction before the stage.
The bounds memory is read beside the buffer, its word addressed on the same cycle as each tap's (so its
data arrives with the window's last tap, and travels with it to the stage).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Shape, Signal, Value, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.column_stage import LATENCY as STAGE_LATENCY
from hw.column_stage import ColumnStage
from hw.pe import Multiplier
from hw.protect import RangeMode

TAIL = 3 + STAGE_LATENCY   # the last tap's data, registered, its reduction registered, the stage; written next edge


class VectorUnit(wiring.Component):
    """See the module docstring.

    Parameters
    ----------
    instruction : data.StructLayout
        The instruction layout (`hw.isa.instruction_layout`), whose vector fields it reads.
    lanes : int
        Codes per activation word.
    code_shape : shape-castable
        One lane's code.
    sum_bits : int
        Width of a window's sum (two's complement).
    address_bits, dim_bits, bounds_bits : int
        Widths of buffer addresses, of map positions and of bounds memory addresses.
    multiplier_bits, shift_bits : int
        Requantization constant widths.
    check, multiplier
        As for `ColumnStage`.

    Members
    -------
    instr : In(instruction) : held for the whole instruction.
    start : In(1) : on the decode cycle: set the loops up from `next_instr`.
    next_instr : In(instruction) : the instruction being decoded.
    run : In(1); last : Out(1)
    read_addr : Out(address_bits); read_data : In(lanes * code width) : the buffer's read port (data one
        cycle after the address).
    write_addr : Out(address_bits); write_data : Out(lanes * code width); write_en : Out(1)
    sums_valid : Out(1); sums : Out(signed(sum_bits)).array(lanes) : each word's reduction, registered,
        before the stage (the logits, with `logits`).
    bounds_addr : Out(bounds_bits); bounds_data : In(lanes * 2 * code width) : the bounds memory's read
        port (data one cycle after the address).
    detected : Out(1) : a lane of the word the stage gives left its bounds (with `check`).
    """

    def __init__(self, instruction: object, lanes: int, code_shape: object, sum_bits: int, address_bits: int,
                 dim_bits: int, multiplier_bits: int, shift_bits: int, *, check: RangeMode | None = None,
                 multiplier: Multiplier | None = None, bounds_bits: int = 1) -> None:
        self.code_shape = Shape.cast(code_shape)
        self.lanes, self.sum_bits, self.address_bits, self.dim_bits = lanes, sum_bits, address_bits, dim_bits
        self.stage = ColumnStage(sum_bits, lanes, self.code_shape, multiplier_bits, shift_bits, check=check,
                                 multiplier=multiplier)
        word = lanes * self.code_shape.width
        super().__init__({
            "instr": In(instruction), "start": In(1), "next_instr": In(instruction), "run": In(1), "last": Out(1),
            "read_addr": Out(address_bits), "read_data": In(word),
            "write_addr": Out(address_bits), "write_data": Out(word), "write_en": Out(1),
            "sums_valid": Out(1), "sums": Out(signed(sum_bits)).array(lanes),
            "bounds_addr": Out(unsigned(bounds_bits)), "bounds_data": In(2 * word), "detected": Out(1),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.stage = stage = self.stage
        i = self.instr
        address, position = signed(self.address_bits + 2), signed(self.dim_bits + 2)
        regs = {name: Signal(address, name=name) for name in ("win_row", "win_col", "tap_row", "tap_col")}
        regs |= {name: Signal(position, name=name) for name in ("win_y", "win_x", "y", "x")}
        regs |= {name: Signal(self.dim_bits + 1, name=name) for name in ("oy", "ox", "ky", "kx")}
        regs["g"] = Signal(self.address_bits, name="g")
        inside_d, first_d, last_d = Signal(), Signal(), Signal()
        with m.If(self.start):
            m.d.sync += self._setup(regs, self.next_instr)
        with m.If(self.run):
            r = regs
            m.d.comb += [self.read_addr.eq((r["tap_row"] + r["tap_col"] + r["g"])[:self.address_bits]),
                         self.bounds_addr.eq(i.bounds_base + r["g"])]
            inside = (r["y"] >= 0) & (r["y"] < i.src_h) & (r["x"] >= 0) & (r["x"] < i.src_w)
            m.d.sync += [inside_d.eq(inside | ~i.bounded), first_d.eq((r["ky"] == 0) & (r["kx"] == 0)),
                         last_d.eq((r["ky"] == i.kh - 1) & (r["kx"] == i.kw - 1))]
            self._step(m, regs)
        with m.Else():
            m.d.sync += [inside_d.eq(0), first_d.eq(0), last_d.eq(0)]
        first_q, last_q = Signal(name="tap_first"), Signal(name="tap_last")
        m.d.sync += [first_q.eq(first_d), last_q.eq(last_d)]
        reduced = self._reduce(m, inside_d, first_q)
        # The window's reduction is registered before the stage and the logits memory (the adder would
        # otherwise lie on one path with theirs), and the bounds word, which arrives with the last tap,
        # follows it through the tap's register and the reduction's.
        done = Signal(name="window_done")
        bounds_q = Signal.like(self.bounds_data, name="tap_bounds")
        bounds = Signal.like(self.bounds_data, name="window_bounds")
        m.d.sync += [done.eq(last_q), bounds_q.eq(self.bounds_data), bounds.eq(bounds_q)]
        m.d.comb += [stage.valid.eq(done), stage.relu.eq(i.relu), stage.check_on.eq(i.check),
                     stage.qmin.eq(i.qmin), stage.qmax.eq(i.qmax), self.sums_valid.eq(done)]
        width = self.code_shape.width
        for lane in range(self.lanes):
            total = Signal(signed(self.sum_bits), name=f"window_{lane}")
            m.d.sync += total.eq(reduced[lane])
            lo, hi = (bounds[(2 * lane + k) * width:(2 * lane + k + 1) * width] for k in (0, 1))
            m.d.comb += [stage.acc[lane].eq(total), stage.multiplier[lane].eq(i.multiplier),
                         stage.shift[lane].eq(i.shift), stage.lo[lane].eq(lo), stage.hi[lane].eq(hi),
                         self.sums[lane].eq(total)]
        m.d.comb += self.detected.eq(stage.out_valid & Cat(*stage.detected).any())
        self._writer(m, stage)
        return m

    def _writer(self, m: Module, stage: ColumnStage) -> None:
        """Write each word the stage gives to the next destination word: in order, skipping `dst_skip`
        words after each pixel's `src_groups` (a range of a concat's tensor); nothing with `logits`."""
        i = self.instr
        destination = Signal(self.address_bits + 1, name="destination")
        group = Signal(self.address_bits, name="write_group")
        with m.If(self.start):
            m.d.sync += [destination.eq(self.next_instr.dst_base), group.eq(0)]
        m.d.comb += [self.write_addr.eq(destination), self.write_data.eq(Cat(*stage.out)),
                     self.write_en.eq(stage.out_valid & ~i.logits)]
        with m.If(stage.out_valid & (group == i.src_groups - 1)):
            m.d.sync += [destination.eq(destination + 1 + i.dst_skip), group.eq(0)]
        with m.Elif(stage.out_valid):
            m.d.sync += [destination.eq(destination + 1), group.eq(group + 1)]

    def _reduce(self, m: Module, inside_d: Value, first_q: Value) -> list[Value]:
        """Register each lane's tap as it arrives from the buffer (its code, or the padding value when
        `inside_d` is low); return each lane's reduction so far including the registered tap (comb,
        restarted on `first_q`), and keep it in a register for the next tap."""
        width, code = self.code_shape.width, self.code_shape
        floor = -(1 << (width - 1)) if code.signed else 0
        reduced = []
        for lane in range(self.lanes):
            raw = self.read_data[lane * width:(lane + 1) * width]
            value = raw.as_signed() if code.signed else raw
            held = Signal(signed(self.sum_bits), name=f"held_{lane}")
            padding = Mux(self.instr.reduce_max, floor, 0)
            tap = Signal(signed(width + 1), name=f"tap_{lane}")
            m.d.sync += tap.eq(Mux(inside_d, value, padding))
            combined = Mux(self.instr.reduce_max, Mux(tap > held, tap, held), held + tap)
            now = Signal(signed(self.sum_bits), name=f"reduced_{lane}")
            m.d.comb += now.eq(Mux(first_q, tap, combined))
            m.d.sync += held.eq(now)
            reduced.append(now)
        return reduced

    @staticmethod
    def _setup(r: dict[str, Signal], f: Value) -> list:
        return [r["win_row"].eq(f.src_base + f.row_off), r["tap_row"].eq(f.src_base + f.row_off),
                r["win_col"].eq(f.col_off), r["tap_col"].eq(f.col_off), r["win_y"].eq(-f.py), r["y"].eq(-f.py),
                r["win_x"].eq(-f.px), r["x"].eq(-f.px), r["oy"].eq(0), r["ox"].eq(0), r["g"].eq(0),
                r["ky"].eq(0), r["kx"].eq(0)]

    def _step(self, m: Module, r: dict[str, Signal]) -> None:
        """Step the loops (oy, ox, g, ky, kx; kx innermost) and their address registers."""
        i = self.instr
        kx_end, ky_end = r["kx"] == i.kw - 1, r["ky"] == i.kh - 1
        g_end, ox_end, oy_end = r["g"] == i.src_groups - 1, r["ox"] == i.out_w - 1, r["oy"] == i.out_h - 1
        m.d.comb += self.last.eq(kx_end & ky_end & g_end & ox_end & oy_end)
        restart_row = [r["kx"].eq(0), r["x"].eq(r["win_x"]), r["tap_col"].eq(r["win_col"])]
        restart_window = [*restart_row, r["ky"].eq(0), r["y"].eq(r["win_y"]), r["tap_row"].eq(r["win_row"])]
        with m.If(~kx_end):
            m.d.sync += [r["kx"].eq(r["kx"] + 1), r["x"].eq(r["x"] + 1), r["tap_col"].eq(r["tap_col"] + i.kx_step)]
        with m.Elif(~ky_end):
            m.d.sync += [*restart_row, r["ky"].eq(r["ky"] + 1), r["y"].eq(r["y"] + 1),
                         r["tap_row"].eq(r["tap_row"] + i.ky_step)]
        with m.Elif(~g_end):
            m.d.sync += [*restart_window, r["g"].eq(r["g"] + 1)]
        with m.Elif(~ox_end):
            col, x = r["win_col"] + i.step_x, r["win_x"] + i.sx
            m.d.sync += [*restart_window, r["g"].eq(0), r["ox"].eq(r["ox"] + 1), r["win_col"].eq(col),
                         r["tap_col"].eq(col), r["win_x"].eq(x), r["x"].eq(x)]
        with m.Else():
            row, y = r["win_row"] + i.step_y, r["win_y"] + i.sy
            m.d.sync += [r["kx"].eq(0), r["ky"].eq(0), r["g"].eq(0), r["ox"].eq(0), r["oy"].eq(r["oy"] + 1),
                         r["win_row"].eq(row), r["tap_row"].eq(row), r["win_y"].eq(y), r["y"].eq(y),
                         r["win_col"].eq(i.col_off), r["tap_col"].eq(i.col_off), r["win_x"].eq(-i.px),
                         r["x"].eq(-i.px)]
