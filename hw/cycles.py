"""Closed-form cycle counts of GEMMs on an R x C systolic array (DESIGN §6, checked against SCALE-Sim).

A GEMM is out (M x N) = A (M x K) @ W (K x N). Every tile pays a fill, a stream and a drain; the tile count
is the product of the two dimensions the dataflow pins to the array:

- weight-stationary (`ws`): ceil(K/R) * ceil(N/C) tiles of 2R + C + M - 2 cycles (R to load the weights,
  then M + R + C - 2 to stream M rows through and drain the skew);
- output-stationary (`os`): ceil(M/R) * ceil(N/C) tiles of R + C + K - 2 cycles;
- input-stationary (`is`): ceil(K/R) * ceil(M/C) tiles of 2R + C + N - 2 cycles.

A datapath's output stage (`hw.accelerator`) adds a `drain` once per GEMM: the cycles from the array's last
output to the last requantized code leaving the stage, which the next layer waits for; earlier tiles drain
while the next tile runs, so they add nothing.

Post-GEMM ops (pools, residual adds, a quantizer re-scaling another's codes) run on a vector unit after the
output stage, one lane per array column: each cycle every lane reads one value of each operand from the
activation buffer (an add's two addends through two read ports), and the op's requantization, ReLU
included, is in the same pass. A pass over `channels` x `positions` outputs, each reading a `window`, takes
ceil(channels / lanes) * positions * window cycles plus `VECTOR_PIPELINE` (read, compute, requantize,
write); passes run after the GEMM they read, not overlapped with the array. This is the schedule the cycle
model assumes for them; which ops are passes, and which are fused into the output stage, is
`dsetool.gemm.vector_pass`.

Pure Python: the RTL testbench in `tests/hw/test_array.py` checks the Amaranth array against `gemm_cycles`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

DATAFLOWS = ("ws", "os", "is")
VECTOR_PIPELINE = 4   # cycles from a pass's first buffer read to its first write

Gemm = tuple[int, int, int]


def _positive(name: str, value: object, what: str = "GEMM") -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{what} {name} must be a positive integer, not {value!r}")


def _check(m: int, k: int, n: int, rows: int, cols: int, dataflow: str) -> None:
    for name, value in (("m", m), ("k", k), ("n", n), ("rows", rows), ("cols", cols)):
        _positive(name, value)
    if dataflow not in DATAFLOWS:
        raise ValueError(f"GEMM dataflow must be one of {', '.join(map(repr, DATAFLOWS))}, not {dataflow!r}")


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def tile_cycles(m: int, k: int, n: int, rows: int, cols: int, dataflow: str) -> int:
    """Return the cycles of one tile: load/fill, stream and drain (the streamed dimension is not tiled)."""
    _check(m, k, n, rows, cols, dataflow)
    if dataflow == "ws":
        return 2 * rows + cols + m - 2
    if dataflow == "os":
        return rows + cols + k - 2
    return 2 * rows + cols + n - 2


def tile_grid(m: int, k: int, n: int, rows: int, cols: int, dataflow: str) -> tuple[int, int]:
    """Return the number of tiles along the two dimensions mapped onto (rows, cols)."""
    _check(m, k, n, rows, cols, dataflow)
    if dataflow == "ws":
        return _ceil(k, rows), _ceil(n, cols)
    if dataflow == "os":
        return _ceil(m, rows), _ceil(n, cols)
    return _ceil(k, rows), _ceil(m, cols)


def tiles(m: int, k: int, n: int, rows: int, cols: int, dataflow: str) -> Iterator[Gemm]:
    """Yield the (m, k, n) extent of every tile, in the order the array runs them (last tiles may be partial)."""
    first, second = tile_grid(m, k, n, rows, cols, dataflow)
    pinned = {"ws": (k, n), "os": (m, n), "is": (k, m)}[dataflow]
    for i in range(first):
        for j in range(second):
            a = min(rows, pinned[0] - i * rows)
            b = min(cols, pinned[1] - j * cols)
            yield {"ws": (m, a, b), "os": (a, k, b), "is": (b, a, n)}[dataflow]


def _drain(drain: object) -> int:
    if not isinstance(drain, int) or isinstance(drain, bool) or drain < 0:
        raise ValueError(f"GEMM drain must be a non-negative integer, not {drain!r}")
    return drain


def gemm_cycles(m: int, k: int, n: int, rows: int, cols: int, dataflow: str = "ws", drain: int = 0) -> int:
    """Return the cycles of a whole M x K x N GEMM: tiles times per-tile cycles, plus the output stage's drain."""
    first, second = tile_grid(m, k, n, rows, cols, dataflow)
    return first * second * tile_cycles(m, k, n, rows, cols, dataflow) + _drain(drain)


def conv_gemm(c_in: int, c_out: int, kernel: tuple[int, int], out_hw: tuple[int, int]) -> Gemm:
    """Return the per-image im2col GEMM (M, K, N) of a convolution: M = out_h*out_w, K = c_in*kh*kw, N = c_out."""
    (kh, kw), (oh, ow) = kernel, out_hw
    for name, value in (("c_in", c_in), ("c_out", c_out), ("kh", kh), ("kw", kw), ("out_h", oh), ("out_w", ow)):
        _positive(name, value)
    return oh * ow, c_in * kh * kw, c_out


def linear_gemm(in_features: int, out_features: int) -> Gemm:
    """Return the per-sample GEMM (1, in_features, out_features) of a fully connected layer."""
    _positive("in_features", in_features)
    _positive("out_features", out_features)
    return 1, in_features, out_features


def network_cycles(gemms: Iterable[Gemm], rows: int, cols: int, dataflow: str = "ws", drain: int = 0) -> int:
    """Return the cycles of a network run layer after layer: the sum over its (M, K, N) GEMMs, each with its
    drain (a layer waits for the previous one's last output)."""
    return sum(gemm_cycles(m, k, n, rows, cols, dataflow, drain) for m, k, n in gemms)


def vector_cycles(channels: int, positions: int, window: int, lanes: int) -> int:
    """Return the cycles of one pass of the vector unit: ceil(channels / lanes) * positions * window reads
    per lane, plus the pipeline's fill."""
    for name, value in (("channels", channels), ("positions", positions), ("window", window), ("lanes", lanes)):
        _positive(name, value, "Vector pass")
    return _ceil(channels, lanes) * positions * window + VECTOR_PIPELINE


# The accelerator's schedule (`hw.machine.Machine`), cycle for cycle: every instruction pays
# `MACHINE_FETCH` cycles (read, decode); a GEMM runs its tiles one after the other, each
# `MACHINE_SETUP` + R (weights) + M (rows streamed) + R + C - 2 (the last row leaving the array), then
# `MACHINE_GEMM_TAIL` cycles while its last sums pass the K accumulator, the output stage and the write;
# a vector instruction reads one window tap per cycle and writes its last word `MACHINE_VECTOR_TAIL` later; after
# the program's end the first logit is on the host stream `MACHINE_OUTPUT` cycles later. Counted from
# the cycle that presents `start` (`MACHINE_START`) to the one that presents the first logit. With two
# weight banks per PE (`MachineShape.weight_buffers` 2) a GEMM's tiles start every `machine_tile_period`
# cycles, each tile's weights loading while the tile before streams, and the GEMM pays `MACHINE_SETUP`
# and the array's drain once (`machine_gemm_cycles`). The output-stationary machine (`hw.machine_stream`)
# streams each tile's K through the array and drains the finished tile from shadow registers while the
# next accumulates (`machine_stream_gemm_cycles`). A double-buffered machine that checks the codes its array
# reads registers them first: `MACHINE_CHECKED_READ` more cycles per GEMM.
MACHINE_START = 1
MACHINE_FETCH = 2
MACHINE_SETUP = 2
MACHINE_GEMM_TAIL = 7
MACHINE_VECTOR_TAIL = 7
MACHINE_OUTPUT = 1
MACHINE_STREAM_TAIL = 5   # output-stationary: the last row's sums through the column stage and the write
MACHINE_CHECKED_READ = 1  # double-buffered with an input check: the codes registered as read, then checked


WEIGHT_BUFFERS = (1, 2)
DEFAULT_WEIGHT_BUFFERS = 2   # `hw.weight_buffers`'s default: loads overlapped with streams


def check_weight_buffers(weight_buffers: object, what: str = "Machine") -> int:
    """Return `weight_buffers` (weight registers per PE) if it is 1 or 2; raise ValueError naming `what`."""
    if weight_buffers not in WEIGHT_BUFFERS or isinstance(weight_buffers, bool):
        raise ValueError(f"{what} weight_buffers must be 1 or 2, not {weight_buffers!r}")
    assert isinstance(weight_buffers, int)
    return weight_buffers


def machine_tile_period(m: int, rows: int, cols: int) -> int:
    """Return the cycles from one tile's first streamed row to the next tile's in the double-buffered
    machine (`MachineShape.weight_buffers` 2): P = max(M, R, ceil((M + C - 1) / 2)).

    M: the rows a tile streams, one per cycle. R: the weight memory gives one row of weights per cycle,
    and a tile's R rows load into its bank while the tile before it streams. ceil((M + C - 1) / 2): tile
    j loads the bank tile j - 2 used, from one cycle after its own first row is read (tile j - 2's first
    row was read 2P cycles earlier), and may only once tile j - 2's last activations have passed the
    bank's last column: M + C - 1 cycles after that tile's first row presented (`hw.array.WSDoubleBufferArray`),
    so 2P + 1 >= M + C. P >= R >= 2 also spaces the K accumulator's read of an entry after its write
    (`hw.accumulator`)."""
    for name, value in (("m", m), ("rows", rows), ("cols", cols)):
        _positive(name, value)
    return max(m, rows, (m + cols) // 2)


def machine_gemm_cycles(m: int, tiles: int, rows: int, cols: int, weight_buffers: int = 1,
                        input_check: bool = False) -> int:
    """Return the cycles of one GEMM instruction of the accelerator: fetch, `tiles` weight tiles (every N
    slice's K slices: a dense layer's N * K, a grouped conv's own count per N slice) of M streamed rows,
    and the output pipeline's tail.

    Single-buffered (`weight_buffers` 1): every tile `MACHINE_SETUP` + R (load) + M (stream) + R + C - 2
    (drain). Double-buffered (2): the tiles start every P = `machine_tile_period` cycles, their setups and
    loads overlapped with the previous tiles' streams; the GEMM pays `MACHINE_SETUP` once, then
    (tiles - 1) * P, the last tile's M rows, and R + C cycles while its last row is presented (2) and
    leaves the array (R + C - 2); with an input check (`MachineShape.input_check`) its rows are presented
    `MACHINE_CHECKED_READ` cycles later (`hw.machine.Machine._read_path`), so the GEMM ends that much later.
    The single-buffered machine checks without the extra register: `input_check` changes nothing there."""
    for name, value in (("m", m), ("tiles", tiles), ("rows", rows), ("cols", cols)):
        _positive(name, value)
    if check_weight_buffers(weight_buffers) == 2:
        period = machine_tile_period(m, rows, cols)
        staged = MACHINE_CHECKED_READ if input_check else 0
        return MACHINE_FETCH + MACHINE_SETUP + (tiles - 1) * period + m + rows + cols + staged + MACHINE_GEMM_TAIL
    tile = MACHINE_SETUP + 2 * rows + cols - 2 + m
    return MACHINE_FETCH + tiles * tile + MACHINE_GEMM_TAIL


def machine_stream_period(k_stream: int, cols: int) -> int:
    """Return the cycles from one tile's first K position to the next's on the output-stationary
    accelerator, where they are uniform: K' (`k_stream`, its K slices' positions), the tiles streaming
    back to back; 0 where K' < C, whose tiles wait before their last K slice (`machine_stream_gemm_cycles`)."""
    _positive("k_stream", k_stream)
    _positive("cols", cols)
    return k_stream if k_stream >= cols else 0


def machine_stream_gemm_cycles(m: int, k_slices: Sequence[int], rows: int, cols: int) -> int:
    """Return the cycles of one GEMM instruction of the output-stationary accelerator (`hw.machine_stream`):
    fetch, setup, then N slice after N slice (`k_slices`: each one's K slice count) ceil(M / R) tiles,
    each reading its K slices in K' = slices * R cycles, a tile after the first taking max(K', C) (the
    drain of a tile's shadows needs C cycles between two tiles' last reads), then C + R + 1 cycles until
    the last tile's last row leaves the shadows and `MACHINE_STREAM_TAIL` while it is requantized and
    written."""
    for name, value in (("m", m), ("rows", rows), ("cols", cols)):
        _positive(name, value)
    if not k_slices or any(not isinstance(k, int) or k < 1 for k in k_slices):
        raise ValueError(f"GEMM k_slices must be positive integers, one per N slice, not {list(k_slices)!r}")
    spans = [k * rows for k in k_slices for _ in range(_ceil(m, rows))]
    reads = spans[0] + sum(max(span, cols) for span in spans[1:])
    return MACHINE_FETCH + MACHINE_SETUP + reads + cols + rows + 1 + MACHINE_STREAM_TAIL


def machine_vector_cycles(words: int, taps: int) -> int:
    """Return the cycles of one vector instruction: fetch, one read per tap of each of its `words`
    output words (a pool's window, an add's two addends), and the last word through the unit's stage."""
    _positive("words", words, "Vector instruction")
    _positive("taps", taps, "Vector instruction")
    return MACHINE_FETCH + words * taps + MACHINE_VECTOR_TAIL


def machine_end_cycles() -> int:
    """Return the cycles outside the instructions: the start, the end instruction's fetch and the cycle
    before the first logit is on the host stream."""
    return MACHINE_START + MACHINE_FETCH + MACHINE_OUTPUT
