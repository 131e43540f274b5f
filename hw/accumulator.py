"""Per-column accumulation of a weight-stationary array's K tiles, in one memory per column.

A weight-stationary tile sums only R of an output's K products; the rest come from the other K tiles of
the same N slice. `KAccumulator` keeps every column's running sums, one entry per output row m, in a
memory (block RAM on FPGAs): the first K tile writes its rows, every later one reads, adds and writes
back, and the last one passes the complete sums on (to the output stage) instead of writing them. Sums
wrap at `acc_bits`, as the PEs' partial sums do, so the result equals the engine's exact sum whenever the
accumulator is wide enough for K products.

One row per cycle, in order: the row address counts a tile's rows (`valid` high) and restarts whenever
`valid` is low (tiles are at least the R weight-load cycles apart). The read is issued on the row's cycle;
the sum is formed and written (or registered for the output) on the next, so a row leaves two clock edges
after it arrives (`LATENCY`). An entry is read again only by the next K tile, at least M + R cycles later,
so a read never meets its own pending write.

With `restart` (a machine whose tiles stream back to back, `MachineShape.weight_buffers` 2) `valid`
may stay high from one tile's last row to the next tile's first: the `restart` input marks a tile's
first row, which takes row address 0. An entry written by row m of a tile (on the cycle after the row
arrives, visible from the one after that) is then read again by row m of the next K tile, P cycles
later, where P is the tiles' spacing: P >= 2 (`hw.cycles.machine_tile_period`, at least R >= 2)
leaves the write visible to that read (the memory's read port is not transparent: a read on the
write's own cycle would see the old sum), so no forwarding is needed.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

LATENCY = 2   # clock edges from a row on `acc` to its sums on `out`


class KAccumulator(wiring.Component):
    """Sum the K tiles of a weight-stationary GEMM per output row and column.

    Parameters
    ----------
    acc_bits : int
        Width of the partial sums and of the stored running sums (two's complement, wrapping).
    cols : int
        Columns of the array.
    depth : int
        Output rows per GEMM the memories hold (M at most; a GEMM with more rows runs as several).

    Members
    -------
    valid : In(1) : a tile row is on `acc` (rows of a tile arrive on consecutive cycles, in order).
    acc : In(signed(acc_bits)).array(cols) : the array's partial sums of that row.
    first, last : In(1) : the row's tile is the first / last K tile of its N slice (both for K <= R).
    out_valid : Out(1) : after a last-tile row: `out` holds its complete sums.
    out : Out(signed(acc_bits)).array(cols), registered.
    bias : In(signed(acc_bits)).array(cols), only `with_bias`: where a first tile's sums start instead
        of 0 (the layer's bias, for free in the adder that is there anyway); sampled with the row one
        edge after it arrives.
    restart : In(1), only `restart`: the row on `acc` is its tile's first (row address 0).
    """

    def __init__(self, acc_bits: int, cols: int, depth: int, *, with_bias: bool = False,
                 restart: bool = False) -> None:
        for name, value in (("acc_bits", acc_bits), ("cols", cols), ("depth", depth)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Accumulator {name} must be a positive integer, not {value!r}")
        self.acc_bits, self.cols, self.depth, self.with_bias = acc_bits, cols, depth, with_bias
        self.restarts = restart
        super().__init__({
            "valid": In(1), "acc": In(signed(acc_bits)).array(cols), "first": In(1), "last": In(1),
            "out_valid": Out(1), "out": Out(signed(acc_bits)).array(cols),
            **({"bias": In(signed(acc_bits)).array(cols)} if with_bias else {}),
            **({"restart": In(1)} if restart else {}),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        address = Signal(range(self.depth), name="row")
        if self.restarts:   # this row's address: 0 at a tile's first row, else the count
            counted = address
            address = Signal(range(self.depth), name="row_now")
            m.d.comb += address.eq(Mux(self.restart, 0, counted))
            m.d.sync += counted.eq(Mux(self.valid, address + 1, 0))
        else:
            m.d.sync += address.eq(Mux(self.valid, address + 1, 0))
        # The row one edge later, while its stored sums come out of the memories.
        held_valid, held_first, held_last = Signal(), Signal(), Signal()
        held_address = Signal(range(self.depth))
        m.d.sync += [held_valid.eq(self.valid), held_first.eq(self.first), held_last.eq(self.last),
                     held_address.eq(address)]
        m.d.sync += self.out_valid.eq(held_valid & held_last)
        for c in range(self.cols):
            held = Signal(signed(self.acc_bits), name=f"held_{c}")
            m.d.sync += held.eq(self.acc[c])
            m.submodules[f"sums_{c}"] = sums = Memory(shape=signed(self.acc_bits), depth=self.depth, init=[])
            read, write = sums.read_port(), sums.write_port()
            total = Signal(signed(self.acc_bits), name=f"total_{c}")   # wraps at acc_bits
            start = self.bias[c] if self.with_bias else 0
            m.d.comb += [read.addr.eq(address), total.eq(Mux(held_first, start, read.data) + held)]
            m.d.comb += [write.addr.eq(held_address), write.data.eq(total), write.en.eq(held_valid & ~held_last)]
            m.d.sync += self.out[c].eq(total)
        return m
