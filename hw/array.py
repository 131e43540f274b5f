"""The weight-stationary systolic array, with input skew and output de-skew built in.

The schedule is the one `dsetool.engine.tiling` describes and `tests/fixtures/systolic_sim.py` runs.

Weight-stationary (`WSArray`): at streaming cycle u of a tile, PE(r, c)'s `act` register holds A[m, kt*R + r]
and its `psum` register holds sum_{r' <= r} A[m, kt*R + r'] W[kt*R + r', n] with m = u - r - c and
n = nt*C + c. One tile computes one K-slice of R rows against one N-slice of C columns; the array does not
accumulate across K tiles: `hw.accumulator.KAccumulator` (in `hw.accelerator.Datapath`) or the driver adds
the tiles' rows, wrapping at `acc_bits`.

`WSDoubleBufferArray` is the weight-stationary array with two weight banks per PE, for the machine that
loads a tile's weights while the previous tile streams (`MachineShape.weight_buffers` 2): same schedule
per row, weights written by row into a bank, each activation naming its bank.

Output-stationary (`OSArray`): at streaming cycle u of a tile, PE(r, c) holds A[mt*R + r, k] and
W[k, nt*C + c] with k = u - r - c, and its `psum` register the sum over k' <= k; the tile's R x C outputs are
complete, with no accumulation outside, after its last streaming cycle.

`OSStreamArray` is the output-stationary array of the accelerator (`hw.machine`): its rows arrive
already skewed, each activation flagged as its tile's first or last product, and every PE latches its
finished sum into a shadow register, so tiles stream back to back with no gap for the drain.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, Value, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.arrayconfig import ArrayConfig
from hw.pe import OSProcessingElement, OSStreamPE, WSDoubleBufferPE, WSProcessingElement


def delay_line(m: Module, value: Value, stages: int, name: str) -> Value:
    """Return `value` delayed by `stages` clock cycles through a named register chain."""
    for i in range(stages):
        reg = Signal(value.shape(), name=f"{name}_{i}")
        m.d.sync += reg.eq(value)
        value = reg
    return value


FAULT_REGISTERS = ("act", "weight", "psum", "shadow")
"""The PE registers a simulation build's fault port can flip, by their code on `fault_register` (the
shadow: the streaming output-stationary PE's, `hw.pe.OSStreamPE`)."""


FAULT_PORT = ("fault_fire", "fault_row", "fault_col", "fault_register", "fault_bank", "fault_mask")
"""The members of a simulation build's fault port (`_fault_port_members`), which the datapaths pass
through and a TMR machine drives into one replica."""


def _fault_port_members(acc_bits: int, config: ArrayConfig) -> dict[str, object]:
    """The array's fault port (a simulation build): while `fault_fire` is high, PE(`fault_row`,
    `fault_col`) flips the bits `fault_mask` of its register `fault_register` (`FAULT_REGISTERS`; a
    double-buffered PE's weight in bank `fault_bank`), as `hw.pe`'s fault masks say."""
    shapes = (1, range(max(2, config.rows)), range(max(2, config.cols)), 2, 1, acc_bits)
    return {name: In(shape) for name, shape in zip(FAULT_PORT, shapes, strict=True)}


def _drive_fault_masks(m: Module, array: WSArray | WSDoubleBufferArray | OSStreamArray) -> None:
    """Route the fault port's mask to the one PE and register it names, zeros everywhere else."""
    for r, line in enumerate(array.pes):
        for c, pe in enumerate(line):
            here = array.fault_fire & (array.fault_row == r) & (array.fault_col == c)
            for code, name in enumerate(FAULT_REGISTERS):
                mask = getattr(pe, f"fault_{name}", None)
                if mask is not None:
                    m.d.comb += mask.eq(Mux(here & (array.fault_register == code), array.fault_mask[:len(mask)], 0))
            if isinstance(pe, WSDoubleBufferPE):
                m.d.comb += pe.fault_bank.eq(array.fault_bank)


def _deskewed_outputs(m: Module, array: WSArray | WSDoubleBufferArray) -> None:
    """Drive a weight-stationary array's `out` from its last row's sums, column c delayed C - 1 - c cycles
    so an output row leaves whole, and `out_valid` from `a_valid` delayed by the array's R + C - 1."""
    rows, cols = array.config.rows, array.config.cols
    for c in range(cols):
        m.d.comb += array.out[c].eq(delay_line(m, array.pes[rows - 1][c].psum_out, cols - 1 - c, f"deskew_{c}"))
    m.d.comb += array.out_valid.eq(delay_line(m, array.a_valid, rows + cols - 1, "valid"))


class _Array(wiring.Component):
    """The checks and the accumulator width both dataflows share."""

    dataflow = ""
    pes: (list[list[WSProcessingElement]] | list[list[OSProcessingElement]] | list[list[WSDoubleBufferPE]]
          | list[list[OSStreamPE]])

    def __init__(self, config: ArrayConfig, members: dict[str, object]) -> None:
        self._config = config
        super().__init__(members)

    @classmethod
    def _accumulator(cls, config: ArrayConfig, k: int | None) -> int:
        if not isinstance(config, ArrayConfig):
            raise TypeError(f"Array config must be an ArrayConfig, not {config!r}")
        if config.dataflow != cls.dataflow:
            raise ValueError(f"Array dataflow must be {cls.dataflow!r} for {cls.__name__}, not {config.dataflow!r}")
        if config.protection != "none" or config.tmr:
            raise NotImplementedError("Array protection and TMR are not built yet; use protection='none', tmr=False")
        if not config.acc_bits and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
            raise ValueError(f"Array k must be a positive integer when acc_bits is 0, not {k!r}")
        return config.accumulator_bits(k or 1)

    @property
    def config(self) -> ArrayConfig:
        return self._config

    @property
    def acc_bits(self) -> int:
        return int(self.pes[0][0].acc_bits)


class WSArray(_Array):
    """A rows x cols weight-stationary array that takes plain rows of A and returns plain rows of the output.

    Driving one tile (weights W_t = W[kt*R:(kt+1)*R, nt*C:(nt+1)*C], zero-padded to R x C):

    1. Load: for R cycles hold `w_load` high and present one row of W_t on `w`, last row first
       (W_t[R-1], then W_t[R-2], ..., W_t[0]); the rows shift down the columns.
    2. Stream: with `w_load` low, present A[u, kt*R:(kt+1)*R] (zero-padded to R) on `a` with `a_valid` high
       on streaming cycles u = 0..M-1, then hold `a_valid` low. Row r of `a` is delayed r cycles inside,
       so the first clock edge after presenting row u is streaming cycle u of the schedule.
    3. Collect: after streaming cycle m + R + C - 2, `out_valid` is high and `out` holds the tile's output row
       m (columns nt*C..nt*C+C-1, each the sum over the tile's R products, wrapped at `acc_bits`).

    Load and stream take 2R + C + M - 2 cycles per tile, as `hw.cycles.gemm_cycles` counts; the next tile's
    load may start on the cycle after its last row appears. Activations presented while `a_valid` is low enter
    as zeros, so the registers outside a tile's wavefront hold bubbles (zeros), as in the schedule.

    Parameters
    ----------
    config : ArrayConfig
        Array shape, operand widths and signedness, multiplier; its dataflow must be "ws".
    k : int, optional
        The reduction length the accumulator must hold, required when `config.acc_bits` is 0.

    Members
    -------
    w_load : In(1)
    w : In(signed(weight_bits)).array(cols)
    a_valid : In(1)
    a : In(act shape).array(rows)
    out_valid : Out(1)
    out : Out(signed(acc_bits)).array(cols)

    `pes[r][c]` is PE(r, c), whose `act`, `weight` and `psum` registers a testbench may read or force.
    With `fault_port` (simulation builds), the fault port of `_fault_port_members` flips them instead.
    """

    dataflow = "ws"

    def __init__(self, config: ArrayConfig, *, k: int | None = None, fault_port: bool = False) -> None:
        acc_bits = self._accumulator(config, k)
        self.fault_port = fault_port
        self.pes = [[WSProcessingElement.from_config(config, acc_bits, fault_masks=fault_port)
                     for _ in range(config.cols)] for _ in range(config.rows)]
        super().__init__(config, {
            **(_fault_port_members(acc_bits, config) if fault_port else {}),
            "w_load": In(1),
            "w": In(signed(config.weight_bits)).array(config.cols),
            "a_valid": In(1),
            "a": In(self.pes[0][0].act_shape).array(config.rows),
            "out_valid": Out(1),
            "out": Out(signed(acc_bits)).array(config.cols),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        for r, line in enumerate(self.pes):
            for c, pe in enumerate(line):
                m.submodules[f"pe_{r}_{c}"] = pe
                m.d.comb += pe.w_load.eq(self.w_load)
                m.d.comb += pe.w_in.eq(self.w[c] if r == 0 else self.pes[r - 1][c].w_out)
                m.d.comb += pe.psum_in.eq(0 if r == 0 else self.pes[r - 1][c].psum_out)
                if c > 0:
                    m.d.comb += pe.act_in.eq(line[c - 1].act_out)
            lane = Mux(self.a_valid, self.a[r], 0)
            m.d.comb += line[0].act_in.eq(delay_line(m, lane, r, f"skew_{r}"))
        if self.fault_port:
            _drive_fault_masks(m, self)
        _deskewed_outputs(m, self)
        return m


class WSDoubleBufferArray(_Array):
    """A rows x cols weight-stationary array whose PEs hold two weight banks (`hw.pe.WSDoubleBufferPE`):
    the next tile's weights load into one bank while the current tile's activations multiply with the
    other, so tiles stream back to back.

    Every activation carries a bank-select bit (`a_bank`, presented with its row of A), skewed with it
    and passed along the row with it: PE(r, c) multiplies the activation of row u with the bank that
    activation names, whatever is being loaded meanwhile. Weights are loaded by a broadcast per row:
    column c's bus `w[c]` reaches every PE of the column, and PE(r, c) latches it into bank `w_bank`
    on a cycle where `w_rows[r]` is high (one row per cycle, any order).

    Timing, with a row of A presented on `a` at cycle t (`a_valid` high): PE(r, c) multiplies it during
    cycle t + r + c, with the value its bank holds in that cycle; a weight latched on cycle l is held from
    cycle l + 1. So a tile whose first row is presented at t needs row r of its weights latched on a cycle
    <= t + r - 1 (loading rows 0, 1, ..., R-1 on cycles t - 1, t, ..., t + R - 2 suffices: the load
    overlaps the tile's own stream), and a bank whose last activation row was presented at t' may be
    loaded in row r only from cycle t' + r + C - 1 on (the last PE of the row, c = C - 1, reads it
    during cycle t' + r + C - 1); rows loaded in order from cycle l on: l >= t' + C - 1. Outputs as in
    `WSArray`: row m of a tile leaves, de-skewed, R + C - 1 cycles after it was presented, whatever
    tile it belongs to.

    Members
    -------
    w_rows : In(rows) : the rows that latch `w` this cycle. w_bank : In(1) : into which bank.
    w : In(signed(weight_bits)).array(cols)
    a_valid : In(1); a_bank : In(1) : the bank this row's activations multiply with.
    a : In(act shape).array(rows)
    out_valid : Out(1); out : Out(signed(acc_bits)).array(cols)

    `pes[r][c]` is PE(r, c). With `fault_port`, as `WSArray`'s (`fault_bank`: the weight bank flipped).
    """

    dataflow = "ws"

    def __init__(self, config: ArrayConfig, *, k: int | None = None, fault_port: bool = False) -> None:
        acc_bits = self._accumulator(config, k)
        self.fault_port = fault_port
        self.pes = [[WSDoubleBufferPE.from_config(config, acc_bits, fault_masks=fault_port)
                     for _ in range(config.cols)] for _ in range(config.rows)]
        super().__init__(config, {
            **(_fault_port_members(acc_bits, config) if fault_port else {}),
            "w_rows": In(config.rows),
            "w_bank": In(1),
            "w": In(signed(config.weight_bits)).array(config.cols),
            "a_valid": In(1),
            "a_bank": In(1),
            "a": In(self.pes[0][0].act_shape).array(config.rows),
            "out_valid": Out(1),
            "out": Out(signed(acc_bits)).array(config.cols),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        for r, line in enumerate(self.pes):
            for c, pe in enumerate(line):
                m.submodules[f"pe_{r}_{c}"] = pe
                m.d.comb += [pe.w_load.eq(self.w_rows[r]), pe.w_bank.eq(self.w_bank), pe.w_in.eq(self.w[c])]
                m.d.comb += pe.psum_in.eq(0 if r == 0 else self.pes[r - 1][c].psum_out)
                if c > 0:
                    m.d.comb += [pe.act_in.eq(line[c - 1].act_out), pe.sel_in.eq(line[c - 1].sel_out)]
            lane = Mux(self.a_valid, self.a[r], 0)
            m.d.comb += line[0].act_in.eq(delay_line(m, lane, r, f"skew_{r}"))
            m.d.comb += line[0].sel_in.eq(delay_line(m, self.a_bank, r, f"skew_bank_{r}"))
        if self.fault_port:
            _drive_fault_masks(m, self)
        _deskewed_outputs(m, self)
        return m


class OSArray(_Array):
    """A rows x cols output-stationary array that takes plain columns of A and rows of W, and returns the tile.

    Driving one tile (outputs out[mt*R:(mt+1)*R, nt*C:(nt+1)*C]), on streaming cycles u = 0..K-1:
    present A[mt*R:(mt+1)*R, u] on `a` and W[u, nt*C:(nt+1)*C] on `w` (both zero-padded), with `valid` high,
    `start` high on u = 0 only and `last` high on u = K-1 only; then hold `valid` low. Row r of `a` is delayed
    r cycles and column c of `w` c cycles inside. `start` clears every PE's sum at the tile's first clock edge.
    After streaming cycle K + R + C - 3, `out_valid` is high for one cycle and `out[r][c]` holds the tile's
    output (r, c): R + C + K - 2 cycles per tile, as `hw.cycles.gemm_cycles` counts, and the next tile may
    start on the following cycle.

    Parameters
    ----------
    config : ArrayConfig
        As for `WSArray`; its dataflow must be "os".
    k : int, optional
        The reduction length the accumulator must hold, required when `config.acc_bits` is 0.

    Members
    -------
    start : In(1)
    valid : In(1)
    last : In(1)
    a : In(act shape).array(rows)
    w : In(signed(weight_bits)).array(cols)
    out_valid : Out(1)
    out : Out(signed(acc_bits)).array(rows, cols)

    `pes[r][c]` is PE(r, c), whose `act`, `weight` and `psum` registers a testbench may read or force.
    """

    dataflow = "os"

    def __init__(self, config: ArrayConfig, *, k: int | None = None) -> None:
        acc_bits = self._accumulator(config, k)
        self.pes = [[OSProcessingElement.from_config(config, acc_bits) for _ in range(config.cols)]
                    for _ in range(config.rows)]
        super().__init__(config, {
            "start": In(1),
            "valid": In(1),
            "last": In(1),
            "a": In(self.pes[0][0].act_shape).array(config.rows),
            "w": In(signed(config.weight_bits)).array(config.cols),
            "out_valid": Out(1),
            "out": Out(signed(acc_bits)).array(config.rows, config.cols),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        rows, cols = self._config.rows, self._config.cols
        for r, line in enumerate(self.pes):
            for c, pe in enumerate(line):
                m.submodules[f"pe_{r}_{c}"] = pe
                m.d.comb += pe.start.eq(self.start)
                if c > 0:
                    m.d.comb += pe.act_in.eq(line[c - 1].act_out)
                if r > 0:
                    m.d.comb += pe.w_in.eq(self.pes[r - 1][c].w_out)
                m.d.comb += self.out[r][c].eq(pe.psum_out)
            m.d.comb += line[0].act_in.eq(delay_line(m, Mux(self.valid, self.a[r], 0), r, f"skew_a_{r}"))
        for c in range(cols):
            m.d.comb += self.pes[0][c].w_in.eq(delay_line(m, Mux(self.valid, self.w[c], 0), c, f"skew_w_{c}"))
        m.d.comb += self.out_valid.eq(delay_line(m, self.valid & self.last, rows + cols - 1, "done"))
        return m


class OSStreamArray(_Array):
    """A rows x cols output-stationary array whose tiles follow one another without a gap
    (`hw.pe.OSStreamPE`), for the accelerator that feeds each row from its own shift register.

    Driving: row r of A is presented on `a[r]` already skewed: the activation A[m_r, k] of a tile on
    cycle t_k + r, with `first[r]` high with its k = 0 and `last[r]` with its last k (zeros, flags low,
    between tiles). Column c's weight W[k, n_c] is presented on `w[c]` on cycle t_k, unskewed: it is
    delayed c cycles inside. PE(r, c) multiplies A[m_r, k] by W[k, n_c] during cycle t_k + r + c and,
    after the tile's last k, holds the finished sum on `shadow[r][c]` from cycle t_K + r + c on (t_K:
    the cycle after the last k's t), until that PE's next tile's last product. So the whole tile is on
    `shadow` from t_K + R + C - 2 on, and its row r can be read on any cycle from t_K + r + C - 1 until
    t'_K + r - 1, t'_K that of the next tile.

    Members
    -------
    a : In(act shape).array(rows); first, last : In(rows)
    w : In(signed(weight_bits)).array(cols)
    shadow : Out(signed(acc_bits)).array(rows, cols)

    `pes[r][c]` is PE(r, c). With `fault_port`, as `WSArray`'s (`fault_bank` unused).
    """

    dataflow = "os"

    def __init__(self, config: ArrayConfig, *, k: int | None = None, fault_port: bool = False) -> None:
        acc_bits = self._accumulator(config, k)
        self.fault_port = fault_port
        self.pes = [[OSStreamPE.from_config(config, acc_bits, fault_masks=fault_port) for _ in range(config.cols)]
                    for _ in range(config.rows)]
        super().__init__(config, {
            **(_fault_port_members(acc_bits, config) if fault_port else {}),
            "a": In(self.pes[0][0].act_shape).array(config.rows),
            "first": In(config.rows),
            "last": In(config.rows),
            "w": In(signed(config.weight_bits)).array(config.cols),
            "shadow": Out(signed(acc_bits)).array(config.rows, config.cols),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        for r, line in enumerate(self.pes):
            for c, pe in enumerate(line):
                m.submodules[f"pe_{r}_{c}"] = pe
                if c == 0:
                    m.d.comb += [pe.act_in.eq(self.a[r]), pe.first_in.eq(self.first[r]),
                                 pe.last_in.eq(self.last[r])]
                else:
                    m.d.comb += [pe.act_in.eq(line[c - 1].act_out), pe.first_in.eq(line[c - 1].first_out),
                                 pe.last_in.eq(line[c - 1].last_out)]
                if r > 0:
                    m.d.comb += pe.w_in.eq(self.pes[r - 1][c].w_out)
                m.d.comb += self.shadow[r][c].eq(pe.shadow)
        for c in range(self._config.cols):
            m.d.comb += self.pes[0][c].w_in.eq(delay_line(m, self.w[c], c, f"skew_w_{c}"))
        if self.fault_port:
            _drive_fault_masks(m, self)
        return m
