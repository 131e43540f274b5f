"""How one layer's GEMM is tiled onto an R x C systolic array, cycle by cycle.

A layer computes out[m, n] = sum_k A[m, k] * W[k, n] per image (M x K times K x N; conv via im2col).
This module names, for every PE register and every streaming cycle of every tile, which operand or
partial sum it holds, so a fault in that register at that cycle can be given exactly the effect the
hardware would show. The RTL generator follows the same schedule.

Weight-stationary (`ws`): tiles over (k-tile, n-tile); PE(r, c) holds W[kt*R + r, nt*C + c] for the
whole tile. A[m, kt*R + r] enters row r skewed by r cycles and moves one column right per cycle, so at
streaming cycle u of the tile PE(r, c) multiplies A[m, k] with m = u - r - c. Partial sums move down:
the psum register of PE(r, c) at cycle u holds sum_{r' <= r} A[m, kt*R + r'] W[kt*R + r', n]. Tiles'
partial sums meet in the output accumulator, outside the array.

Output-stationary (`os`): tiles over (m-tile, n-tile); PE(r, c) accumulates out[mt*R + r, nt*C + c].
A[m, k] moves right along row r, W[k, n] moves down along column c, both skewed, so at streaming
cycle u PE(r, c) uses k = u - r - c and its psum register holds the running sum over k' <= u - r - c.

K order (`k_order`): the array meets K in the order the accelerator's feed streams it, one K slice of
`rows` positions at a time. Without one, the positions are K in im2col order (channel, ky, kx), then zero
rows up to a multiple of `rows`. The accelerator (`dsetool.machine.tiling`) streams a convolution tap by
tap, each tap's activation words `rows` lanes at a time (a linear layer word by word, pixel-major), and
leaves out slices that hold only padding lanes: position j then holds K index `k_order[j]`, or -1 for a
padding lane (a zero operand times a zero weight). `machine_k_order` gives that order; the fault sites
of a layer then follow its registers as the accelerator runs it (a 1-channel first conv on 8 rows
streams 25 slices of one real lane, not ceil(25 / 8) full ones).

Timeline (`period`): the double-buffered weight-stationary accelerator presents tile j's first row
`period` cycles after tile j - 1's (`hw.cycles.machine_tile_period`, at least M), while that tile's rows
still cross the array. A PE then holds row m of tile j on cycle j * period + m + r + c of one shared
timeline and no tile's row on the others; the sites are each register at each cycle of it, (cycle, row,
col), counted once, where separate windows would count a PE's cycles that carry the next tile's rows a
second time, as bubbles. Tiles run in the machine's order, N slice after N slice, each N slice's K slices
in order. Each PE holds two weight banks, and the weight sites are both at every cycle, (cycle, bank, row,
col) (`site_shape`): the machine writes tile j's weight row r into bank j % 2 on cycle j * period + r - 1
(one cycle before its first row can reach that row of PEs), so at cycle t bank b holds the weights of the
last tile j = b (mod 2) written by then, and a flip there corrupts the rows of tile j that reach the PE
from t on. So a flip of the bank loaded for the next tile (from its write until its first row arrives)
corrupts all of that tile's rows; one of a bank before its first write, or after its tile's last row
passed, is overwritten or never read again: masked. On an array wider than the period (period <= C - 2),
tile j's write can come before tile j - 1 reaches the PE's column; each bank still holds one tile's
weights at a time.

The output-stationary accelerator (`hw.machine_stream`) also runs its tiles on one timeline: tile j
(N slice after N slice, each N slice's M tiles in order) streams its K positions back to back from cycle
j * period, period = K' (the streamed K), so PE(r, c) meets K position p of tile j on cycle j * period + p
+ r + c. Each PE restarts its sum with a tile's first product and, with its last, latches the finished sum
into a shadow register, which the drain reads; so a `psum` flip just after the last product is lost (the
shadow took the sum before it), and the others carry into the tile's output. Where K' < C the machine
waits before a tile's last K slice so that its shadows drain in time: no uniform timeline; such layers
keep a window per tile (`OSArray`'s schedule, not the machine's).

Grouped convolutions (`slice_orders`): the accelerator runs a grouped or depthwise conv as one GEMM over
all input channels (K = C_in x kh x kw, N = C_out; the block-diagonal weights, zero between an output
channel and another group's inputs) whose N slices each stream only the K slices holding a channel of
their columns' groups (`dsetool.machine.tiling`): N slice t has its own K order `slice_orders[t]`, and
so its own number of K tiles (weight-stationary; the output-stationary machine streams every N slice's
K' positions, which must then be equally many for one timeline). Its tiles still run N slice after N
slice; a PE there multiplies the zero weights of other groups too, so a flipped zero weight, or a
flipped activation of another group's channel in the same K slice, reaches outputs as the hardware's do.

Columns (`lead`): a layer writing into a concat from inside an activation word runs its N slices with
`lead` empty columns first (`dsetool.machine.tiling.machine_lead`), so its channels line up with the
word's parts; those columns are never written, so every fault there is masked but an activation's, which
travels on to the real columns.

A register outside its wavefront (m or k out of range, or a PE beyond the layer's N or M) holds a
bubble whose products are discarded: a fault there is masked, as it is on a padding lane's operand or
weight register (the product it feeds is multiplied by the other zero).

Which flip-flop a site is (checked against the Amaranth RTL in `tests/hw/test_rtl_faults.py`): the psum
site (u, r, c) is PE(r, c)'s psum register just after clock edge u; the WS weight site is PE(r, c)'s
weight register; the act site (and the OS weight site) is the *operand* PE(r, c) multiplies at cycle u,
held in the register that feeds it: PE(r, c-1)'s act register (PE(r-1, c)'s weight register), or the
input skew register for c = 0 (r = 0). The last column's act registers (the last row's weight registers
in OS) feed no PE, so faults there are always masked and are not part of the site population.
Weight-load and drain cycles are not part of the streaming window (the closed-form cycle count in
`hw/cycles.py` adds them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LayerTiling:
    """The schedule of one GEMM (per image) on one array."""

    m: int
    k: int
    n: int
    rows: int
    cols: int
    dataflow: str
    k_order: tuple[int, ...] | None = None   # K index at each streamed position (-1: padding); None: im2col
    lead: int = 0   # empty columns before output channel 0: column c of N slice t holds channel t*cols + c - lead
    period: int = 0   # > 0: the tiles run on one timeline, a tile starting every `period` cycles (see below)
    slice_orders: tuple[tuple[int, ...], ...] | None = None   # a K order per N slice (a grouped conv)

    def __post_init__(self) -> None:
        if self.dataflow not in ("ws", "os"):
            raise ValueError(f"Dataflow must be 'ws' or 'os', not {self.dataflow!r}")
        orders = [self.k_order] if self.k_order is not None else list(self.slice_orders or ())
        for order in orders:
            if len(order) % self.rows or not all(-1 <= k < self.k for k in order):
                raise ValueError(f"A K order holds whole slices of {self.rows} positions, each a K index below "
                                 f"{self.k} or -1")
        if self.slice_orders is not None:
            if self.k_order is not None:
                raise ValueError("A tiling has one K order or one per N slice, not both")
            if len(self.slice_orders) != math.ceil((self.lead + self.n) / self.cols):
                raise ValueError(f"{len(self.slice_orders)} K orders for "
                                 f"{math.ceil((self.lead + self.n) / self.cols)} N slices")
            if self.dataflow == "os" and len({len(order) for order in self.slice_orders}) > 1:
                raise ValueError("The output-stationary array streams every N slice's K positions: their K "
                                 "orders must be equally long")
        if not 0 <= self.lead < self.cols:
            raise ValueError(f"A lead of {self.lead} columns is not in 0..{self.cols - 1}")
        if self.period and self.period < self.streamed:
            raise ValueError(f"Tiles on one timeline need a period of at least the {self.streamed} cycles a tile "
                             f"streams, not {self.period}")

    @property
    def k_stream(self) -> int:
        """Return the K positions the array streams: the K order's length (per N slice: the longest), else K."""
        if self.slice_orders is not None:
            return max(len(order) for order in self.slice_orders)
        return self.k if self.k_order is None else len(self.k_order)

    def k_at(self, position: np.ndarray, n_slice: np.ndarray | int = 0) -> np.ndarray:
        """Return the K index held at streamed K positions `position` of N slices `n_slice` (-1: padding, or
        outside the slice's stream)."""
        position = np.asarray(position, dtype=np.int64)
        if self.slice_orders is not None:
            table = np.full((len(self.slice_orders), self.k_stream + 1), -1, dtype=np.int64)
            for row, order in enumerate(self.slice_orders):
                table[row, :len(order)] = order
            inside = (position >= 0) & (position < self.k_stream)
            slices = np.clip(np.asarray(n_slice, dtype=np.int64), 0, len(self.slice_orders) - 1)
            return table[slices, np.where(inside, position, self.k_stream)]
        inside = (position >= 0) & (position < self.k_stream)
        if self.k_order is None:
            return np.where(inside, position, -1)
        positions = np.asarray(self.k_order, dtype=np.int64)
        return np.where(inside, positions[np.clip(position, 0, max(self.k_stream - 1, 0))], -1)

    @property
    def streamed(self) -> int:
        """Return the cycles a tile streams its operands through the array: M rows (weight-stationary) or
        its K positions (output-stationary)."""
        return self.m if self.dataflow == "ws" else self.k_stream

    @property
    def tile_grid(self) -> tuple[int, int]:
        """Return the number of tiles along (k or m, n); with a K order per N slice, the longest's K tiles."""
        first = self.k_stream if self.dataflow == "ws" else self.m
        return math.ceil(first / self.rows), math.ceil((self.lead + self.n) / self.cols)

    @property
    def tiles(self) -> int:
        """Return the number of tiles."""
        return int(self._tiles_per_n_slice().sum())

    def _tiles_per_n_slice(self) -> np.ndarray:
        """Return the tiles of each N slice: its K tiles (weight-stationary) or the M tiles."""
        first, n_slices = self.tile_grid
        if self.slice_orders is not None and self.dataflow == "ws":
            return np.array([math.ceil(len(order) / self.rows) for order in self.slice_orders], dtype=np.int64)
        return np.full(n_slices, first, dtype=np.int64)

    def tile_at(self, tile: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (tile_a, tile_n) of tiles numbered in the machine's order: N slice after N slice, each
        N slice's K (or M) tiles in order."""
        tile = np.asarray(tile, dtype=np.int64)
        ends = np.cumsum(self._tiles_per_n_slice())
        tile_n = np.searchsorted(ends, tile, side="right")
        return tile - (ends - self._tiles_per_n_slice())[np.clip(tile_n, 0, len(ends) - 1)], tile_n

    def machine_tile(self, tile_a: np.ndarray | int, tile_n: np.ndarray | int) -> np.ndarray:
        """Return the machine's number of tile (tile_a, tile_n): `tile_at`'s inverse."""
        starts = np.cumsum(self._tiles_per_n_slice()) - self._tiles_per_n_slice()
        return starts[np.asarray(tile_n, dtype=np.int64)] + np.asarray(tile_a, dtype=np.int64)

    @property
    def window(self) -> int:
        """Return the streaming cycles of one tile (the fault window per tile)."""
        return self.streamed + self.rows + self.cols - 2

    @property
    def span(self) -> int:
        """Return the cycles of the tiles' timeline (`period` > 0): the first tile's first streaming cycle to
        the last tile's last."""
        return (self.tiles - 1) * self.period + self.window

    @property
    def banked(self) -> bool:
        """Tell whether each PE holds two weight banks on this schedule: the double-buffered weight-stationary
        machine's timeline."""
        return self.dataflow == "ws" and self.period > 0

    def site_shape(self, stationary: bool = False, shadow: bool = False) -> tuple[int, ...]:
        """Return the site grid of a PE register: `shape`, but for the weight-stationary weight registers of
        the double-buffered machine (`stationary` and `banked`) (cycle, bank, row, col), both banks of every
        PE at every cycle of the timeline; and for the output-stationary shadow registers (`shadow`, on the
        streaming timeline) one cycle more than the timeline: the drain reads the last tile's last row of
        shadows on the cycle after the last product left the array (`decode_shadow`)."""
        if stationary and self.banked:
            return self.span, 2, self.rows, self.cols
        if shadow and self.period:
            return self.span + 1, self.rows, self.cols
        return self.shape

    @property
    def shape(self) -> tuple[int, ...]:
        """Return the register-site grid whose flat index is a site's element: (tile, cycle, row, col), each
        tile its own window; on one timeline (`period`), (cycle, row, col), each register-cycle once."""
        if self.period:
            return self.span, self.rows, self.cols
        return self.tiles, self.window, self.rows, self.cols

    def decode(self, element: np.ndarray, stationary: bool = False
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Return (tile_a, tile_n, u, r, c) of flat site indices (tile_a is the k- or m-tile, u the streaming
        cycle of that tile's own window).

        On one timeline, tile j (the machine's order: N slice after N slice, each N slice's K or M tiles in
        order) streams from cycle j * period, so PE(r, c) holds row m (K position k) of tile j on cycle
        j * period + m (k) + r + c. A cycle on which it holds no tile's row gives u = -1 (a bubble:
        masked). With `stationary` (the weight-stationary weight registers, which keep a tile's weights
        between rows) on the double-buffered timeline, the sites are (cycle, bank, row, col) and u says
        which rows of the tile in that bank meet the flip (`_decode_bank`)."""
        if not self.period:   # windows per tile: (k or m tile, n tile) row-major, or the machine's order
            tile, u, r, c = np.unravel_index(element, self.shape)
            if self.slice_orders is not None:
                tile_a, tile_n = self.tile_at(tile)
            else:
                tile_a, tile_n = np.divmod(tile, self.tile_grid[1])
            return tile_a, tile_n, u, r, c
        if stationary and self.banked:
            return self._decode_bank(element)
        cycle, r, c = (np.asarray(x, dtype=np.int64) for x in np.unravel_index(element, self.shape))
        ahead = cycle - r - c
        tile = np.floor_divide(ahead, self.period)
        row = ahead - tile * self.period
        busy = (tile >= 0) & (tile < self.tiles) & (row < self.streamed)
        tile = np.where(busy, tile, 0)
        u = np.where(busy, row + r + c, -1)
        tile_a, tile_n = self.tile_at(tile)
        return tile_a, tile_n, u, r, c

    def _decode_bank(self, element: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """`decode` of the double-buffered machine's weight sites (cycle, bank, row, col): the tile whose
        weights the bank holds then, the last one written into it (tile j's row r into bank j % 2 on cycle
        j * period + r - 1), and u = the cycle in that tile's window, so the tile's rows from u - r - c on
        meet the flip; u = M + r + c (none) before the bank's first write."""
        cycle, bank, r, c = (np.asarray(x, dtype=np.int64) for x in np.unravel_index(element, self.site_shape(True)))
        written = np.floor_divide(cycle - r, self.period)   # the last tile whose row r is in a bank by `cycle`
        tile = written - np.remainder(written - bank, 2)     # ... of those in this bank
        last = self.tiles - 1
        tile = np.minimum(tile, last - np.remainder(last - bank, 2))
        empty = tile < 0                                      # not written yet: the write overwrites a flip
        tile = np.where(empty, 0, tile)
        u = np.where(empty, self.m + r + c, cycle - tile * self.period)
        tile_a, tile_n = self.tile_at(tile)
        return tile_a, tile_n, u, r, c

    def decode_shadow(self, element: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Return (tile_m, tile_n, held, r, c) of flat shadow-register sites of the output-stationary
        accelerator's timeline: PE(r, c) latches tile j's finished sum on cycle e_j + r + c (e_j = j *
        period + K' - 1, the tile's last product at PE(0, 0)) and the drain reads it on cycle e_j + C + r
        (`hw.machine_stream`), so a flip on a cycle in between (`held`) changes that output; on the others
        the register holds a sum already read, or is rewritten at once (masked). The last tile's last row
        is read on cycle `span` (e_j + C + R - 1), one past the timeline's last product: the sites run to
        it (`site_shape`)."""
        cycle, r, c = (np.asarray(x, dtype=np.int64) for x in np.unravel_index(element, self.site_shape(shadow=True)))
        since = cycle - r - (self.k_stream - 1)    # tile j's latch at PE(r, c) is since = j * period + c
        tile = np.floor_divide(since - c - 1, self.period)
        held = (tile >= 0) & (tile < self.tiles) & (since - tile * self.period <= self.cols)
        tile = np.where(held, tile, 0)
        tile_m, tile_n = self.tile_at(tile)
        return tile_m, tile_n, held, r, c


def tilings(shapes: dict[str, tuple[int, int, int]], rows: int, cols: int, dataflow: str) -> dict[str, LayerTiling]:
    """Return the tiling of every layer from its per-image GEMM shape (M, K, N)."""
    return {name: LayerTiling(m, k, n, rows, cols, dataflow) for name, (m, k, n) in shapes.items()}
