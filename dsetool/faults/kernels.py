"""Compiled per-fault loops of the sparse fault path (numba): one fault's few changed values per op.

A single activation fault changes a handful of values per feature map, each needing a few multiply-adds;
as tensor programs (gathers, masks, index arithmetic over every fault of a batch) that costs tens of
operations per value, as a loop per fault a few.

Changes travel as compressed rows: fault f changed the values at flat positions
`element[start[f]:start[f + 1]]` of one image's map (channel-major, as the engine's tensors), now
`value[start[f]:start[f + 1]]`; everywhere else the map equals the golden run of image `image[f]`. Values
are float64 holding exact integers (accumulators below 2**53, codes). Each kernel returns the changes of
its op's output that still differ from the golden output, for the faults that keep some: `alive` (their
indexes among its input faults) and their `start`, `element`, `value`. The other faults are masked there,
and `masked` (one entry per input fault, 0 for the living) says by which step: `MASKED_BY`.

Which step masked a fault: a changed accumulator whose code equals the golden code was masked by the first
step of the output stage after which it equals the golden value (ReLU, then rounding, then saturation); a
fault is masked by the latest of these among its last changed values (without that step it would live on).
A fault whose changed inputs change no accumulator (zero weights, cancelling products, or a stuck-at bit that
already held its value) was masked by the integer arithmetic.

Outputs go into flat arrays that double when full. Rows as wide as a fault's largest possible reach were
mostly unused, and touching their fresh memory cost more than the arithmetic.
"""

from __future__ import annotations

import numba
import numpy as np

Output = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]   # alive, start, element, value, masked

# What masked a fault (`Output`'s `masked`), in the order of the steps an output stage applies.
# VOTE: a TMR campaign's majority vote (`dsetool.faults.campaign.vote`), never a kernel.
LIVE, ARITHMETIC, RELU, ROUNDING, SATURATION, POOL, PROTECTION, VOTE = range(8)
MASKED_BY = ("", "arithmetic", "relu", "rounding", "saturation", "pool", "protection", "vote")

# What a protection does to a code outside its bounds (`check_changes`).
CLIP, ZERO, DETECT = 0, 1, 2


@numba.njit(nogil=True, cache=True)
def _room(element: np.ndarray, value: np.ndarray, used: int, need: int) -> tuple[np.ndarray, np.ndarray]:
    """Return `element` and `value`, or copies twice as large when `need` more entries after `used` do not fit."""
    if used + need <= len(element):
        return element, value
    size = max(2 * len(element), used + need)
    wider_element = np.empty(size, dtype=np.int64)
    wider_value = np.empty(size, dtype=np.float64)
    wider_element[:used] = element[:used]
    wider_value[:used] = value[:used]
    return wider_element, wider_value


@numba.njit(nogil=True, cache=True)
def _buffers(faults: int, guess: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return empty output arrays (alive, start, element, value, masked) for `faults` faults, `guess` changes."""
    start = np.empty(faults + 1, dtype=np.int64)
    start[0] = 0
    size = max(64, guess)
    return (np.empty(faults, dtype=np.int64), start, np.empty(size, dtype=np.int64), np.empty(size, dtype=np.float64),
            np.zeros(faults, dtype=np.int8))


def reach(in_shape: np.ndarray, geometry: np.ndarray) -> np.ndarray:
    """Return, per flat input position of a sliding-window op (conv, pool), its channel and the first tap
    (ky, oy, kx, ox) that reaches an output: kernel row ky of output row oy, then every stride-th row, the
    output row one lower each time (likewise for columns). Rows (C*H*W, 5): an integer division costs
    more than a tap's multiply-adds, so the kernels look these up instead."""
    channels, height, width = (int(v) for v in in_shape)
    sh, sw, ph, pw = (int(v) for v in geometry[2:])
    c, y, x = np.indices((channels, height, width)).reshape(3, -1)
    return np.ascontiguousarray(np.stack([c, (y + ph) % sh, (y + ph) // sh, (x + pw) % sw, (x + pw) // sw], axis=1))


@numba.njit(nogil=True, cache=True)
def _scatter(golden_in: np.ndarray, img: int, element: np.ndarray, value: np.ndarray, begin: int, end: int,
             weight: np.ndarray, taps: np.ndarray, out_shape: np.ndarray, geometry: np.ndarray,
             delta: np.ndarray, seen: np.ndarray, touched: np.ndarray) -> int:
    """Add one fault's accumulator changes (entries begin..end), (new - golden input) x weight over the
    taps each changed input reaches, into `delta`; list the output pixels touched; return how many.

    `weight` is (C, kh, kw, N) and `delta` pixel-major (pixel * N + n), so the innermost loop runs over
    the N output channels contiguously in both (vectorizable); `seen` / `touched` are per pixel; `taps`
    as `reach` returns."""
    outs, out_h, out_w = out_shape[0], out_shape[1], out_shape[2]
    kh, kw, sh, sw = geometry[0], geometry[1], geometry[2], geometry[3]
    flat_weight = weight.reshape(-1)   # (C, kh, kw, N), C-contiguous: a view
    n_touched = 0
    for j in range(begin, end):
        e = element[j]
        change = value[j] - golden_in[img, e]
        if change == 0:
            continue
        c, ky, oy = taps[e, 0], taps[e, 1], taps[e, 2]
        while ky < kh and oy >= 0:
            if oy < out_h:
                kx, ox = taps[e, 3], taps[e, 4]
                while kx < kw and ox >= 0:
                    if ox < out_w:
                        pixel = oy * out_w + ox
                        if not seen[pixel]:
                            seen[pixel] = True
                            touched[n_touched] = pixel
                            n_touched += 1
                        # unsigned indices: numba then skips its negative-index wraparound and the
                        # loop vectorizes (row slices did too, but counted a reference per tap: 1.3x)
                        row = np.uint64(pixel * outs)
                        tap = np.uint64(((c * kh + ky) * kw + kx) * outs)
                        for n in range(np.uint64(outs)):
                            delta[row + n] += change * flat_weight[tap + n]
                    kx += sw
                    ox -= 1
            ky += sh
            oy -= 1
    return n_touched


@numba.njit(nogil=True, cache=True)
def conv_changes(golden_in: np.ndarray, golden_acc: np.ndarray, golden_codes: np.ndarray, image: np.ndarray,
                 start: np.ndarray, element: np.ndarray, value: np.ndarray, weight: np.ndarray,
                 taps: np.ndarray, out_shape: np.ndarray, geometry: np.ndarray, requantize: bool,
                 factor: np.ndarray, multiplier: np.ndarray, shift: np.ndarray, integer: bool, qmin: float,
                 qmax: float, relu: bool) -> Output:
    """Return the changes of a convolution: golden + (new - golden input) x weight, summed over the
    kernel taps each changed input reaches; with `requantize`, through its output stage (its codes where
    they differ from `golden_codes`: the changed accumulators are never stored), else the accumulators.
    `weight` (C, kh, kw, N), see `_scatter`; `geometry` holds (kh, kw, stride_h, stride_w, pad_h, pad_w);
    `taps` is `reach(input shape, geometry)`; `out_shape` (N, H, W)."""
    faults = len(image)
    outs, plane = out_shape[0], out_shape[1] * out_shape[2]
    alive, new_start, new_element, new_value, masked = _buffers(faults, min(4 * len(element) * outs,
                                                                            faults * outs * plane))
    delta = np.zeros(outs * plane, dtype=np.float64)   # scratch, reset after each fault where it was touched
    seen = np.zeros(plane, dtype=np.bool_)
    touched = np.empty(plane, dtype=np.int64)
    used = n_alive = 0
    for f in range(faults):
        img = image[f]
        n_touched = _scatter(golden_in, img, element, value, start[f], start[f + 1], weight, taps, out_shape,
                             geometry, delta, seen, touched)
        new_element, new_value = _room(new_element, new_value, used, n_touched * outs)
        first = used
        why = ARITHMETIC
        for i in range(n_touched):
            pixel = touched[i]
            for n in range(outs):
                change = delta[pixel * outs + n]
                if change != 0:
                    position = n * plane + pixel
                    golden = golden_acc[img, position]
                    result = golden + change
                    if requantize:
                        code = _requantized(result, n, factor, multiplier, shift, integer, qmin, qmax, relu)
                        if code == golden_codes[img, position]:
                            if why < SATURATION:
                                why = max(why, _masked_by(result, golden, n, factor, multiplier, shift, integer,
                                                          relu))
                            delta[pixel * outs + n] = 0.0
                            continue
                        result = code
                    new_element[used] = position
                    new_value[used] = result
                    used += 1
                    delta[pixel * outs + n] = 0.0
            seen[pixel] = False
        n_alive = _close(f, first, used, why, alive, n_alive, new_start, masked)
    return alive[:n_alive], new_start[:n_alive + 1], new_element[:used], new_value[:used], masked


@numba.njit(nogil=True, cache=True)
def linear_changes(golden_in: np.ndarray, golden_acc: np.ndarray, golden_codes: np.ndarray, image: np.ndarray,
                   start: np.ndarray, element: np.ndarray, value: np.ndarray, weight: np.ndarray,
                   requantize: bool, factor: np.ndarray, multiplier: np.ndarray, shift: np.ndarray, integer: bool,
                   qmin: float, qmax: float, relu: bool) -> Output:
    """Return the changes of a linear layer (`weight` (K, N), so the loop over the N outputs runs
    contiguously): with `requantize`, its codes after the output stage where they differ from
    `golden_codes`; without (the logits layer), its changed accumulators."""
    faults, outs = len(image), weight.shape[1]
    alive, new_start, new_element, new_value, masked = _buffers(faults, faults * outs)
    delta = np.zeros(outs, dtype=np.float64)
    used = n_alive = 0
    for f in range(faults):
        img = image[f]
        for j in range(start[f], start[f + 1]):
            e = element[j]
            change = value[j] - golden_in[img, e]
            if change != 0:
                row = weight[e]
                for n in range(outs):
                    delta[n] += change * row[n]
        first = used
        why = ARITHMETIC
        for n in range(outs):
            if delta[n] != 0:
                golden = golden_acc[img, n]
                result = golden + delta[n]
                delta[n] = 0.0
                if requantize:
                    code = _requantized(result, n, factor, multiplier, shift, integer, qmin, qmax, relu)
                    if code == golden_codes[img, n]:
                        if why < SATURATION:
                            why = max(why, _masked_by(result, golden, n, factor, multiplier, shift, integer, relu))
                        continue
                    result = code
                new_element[used] = n
                new_value[used] = result
                used += 1
        n_alive = _close(f, first, used, why, alive, n_alive, new_start, masked)
    return alive[:n_alive], new_start[:n_alive + 1], new_element[:used], new_value[:used], masked


@numba.njit(nogil=True, cache=True, inline="always")  # a call would count references to its arrays
def _close(f: int, first: int, used: int, why: int, alive: np.ndarray, n_alive: int, new_start: np.ndarray,
           masked: np.ndarray) -> int:
    """End fault f's row (its changes `first:used`): record it alive, or masked by `why`; return the count alive."""
    if used > first:
        alive[n_alive] = f
        n_alive += 1
        new_start[n_alive] = used
    else:
        masked[f] = why
    return n_alive


@numba.njit(nogil=True, cache=True)
def _rounded(acc: float, channel: int, factor: np.ndarray, multiplier: np.ndarray, shift: np.ndarray,
             integer: bool, relu: bool) -> float:
    """Return an accumulator after the output stage's ReLU (if it has one), scaling and rounding (not yet
    saturated)."""
    if relu:
        acc = max(acc, 0.0)
    if integer:
        return float(_shift_round_half_even(np.int64(acc) * multiplier[channel], shift[channel]))
    return np.rint(acc * factor[channel])


@numba.njit(nogil=True, cache=True)
def _requantized(acc: float, channel: int, factor: np.ndarray, multiplier: np.ndarray, shift: np.ndarray,
                 integer: bool, qmin: float, qmax: float, relu: bool) -> float:
    """Return the output stage's code of one accumulator (see `dsetool.engine.executor.Requantizer`)."""
    return min(max(_rounded(acc, channel, factor, multiplier, shift, integer, relu), qmin), qmax)


@numba.njit(nogil=True, cache=True)
def _masked_by(acc: float, golden: float, channel: int, factor: np.ndarray, multiplier: np.ndarray,
               shift: np.ndarray, integer: bool, relu: bool) -> int:
    """Return the output-stage step after which a changed accumulator whose code is the golden one (before
    any protection: the kernels compare with those) first equals the golden value: RELU, ROUNDING, else
    SATURATION."""
    if relu and acc <= 0 and golden <= 0:
        return RELU
    if _rounded(acc, channel, factor, multiplier, shift, integer, relu) == \
            _rounded(golden, channel, factor, multiplier, shift, integer, relu):
        return ROUNDING
    return SATURATION


@numba.njit(nogil=True, cache=True)
def _shift_round_half_even(x: np.int64, shift: np.int64) -> np.int64:
    """round_half_even(x / 2**shift) for int64, as `dsetool.engine.ops.shift_round_half_even`."""
    if shift <= 0:
        return x << (-shift)
    if shift > 63:
        return np.int64(0)
    kept = x >> shift
    dropped = x - (kept << shift)
    half = np.int64(1) << (shift - 1)
    if dropped > half or (dropped == half and (kept & 1) == 1):
        kept += 1
    return kept


@numba.njit(nogil=True, cache=True)
def requantize_changes(golden_in: np.ndarray, golden_out: np.ndarray, image: np.ndarray, start: np.ndarray,
                       element: np.ndarray, value: np.ndarray, per_channel: int, factor: np.ndarray,
                       multiplier: np.ndarray, shift: np.ndarray, integer: bool, qmin: float, qmax: float,
                       relu: bool) -> Output:
    """Return the changed codes: the changed accumulators through the output stage (relu?, M * 2**-s,
    half-even rounding, saturation, as the engine's `Requantizer`), where they differ from golden."""
    faults = len(image)
    alive, new_start, new_element, new_value, masked = _buffers(faults, len(element))
    used = n_alive = 0
    for f in range(faults):
        img = image[f]
        first = used
        why = ARITHMETIC
        for j in range(start[f], start[f + 1]):
            e = element[j]
            channel = e // per_channel
            code = _requantized(value[j], channel, factor, multiplier, shift, integer, qmin, qmax, relu)
            if code != golden_out[img, e]:
                new_element[used] = e
                new_value[used] = code
                used += 1
            elif why < SATURATION:
                why = max(why, _masked_by(value[j], golden_in[img, e], channel, factor, multiplier, shift, integer,
                                          relu))
        n_alive = _close(f, first, used, why, alive, n_alive, new_start, masked)
    return alive[:n_alive], new_start[:n_alive + 1], new_element[:used], new_value[:used], masked


@numba.njit(nogil=True, cache=True, inline="always")
def _add_deltas(golden: np.ndarray, img: int, begin: int, end: int, element: np.ndarray, value: np.ndarray,
                delta: np.ndarray, seen: np.ndarray, touched: np.ndarray, n_touched: int) -> int:
    """Add one addend's changes (entries begin..end) minus its golden values into `delta`; list the positions
    first touched; return how many are listed."""
    for j in range(begin, end):
        e = element[j]
        delta[e] += value[j] - golden[img, e]
        if not seen[e]:
            seen[e] = True
            touched[n_touched] = e
            n_touched += 1
    return n_touched


@numba.njit(nogil=True, cache=True)
def add_changes(golden_a: np.ndarray, golden_b: np.ndarray, golden_out: np.ndarray, image: np.ndarray,
                a_start: np.ndarray, a_element: np.ndarray, a_value: np.ndarray, b_start: np.ndarray,
                b_element: np.ndarray, b_value: np.ndarray) -> Output:
    """Return the changes of an add whose addends changed as given (one row per fault in both, rows aligned,
    a fault's row empty where that addend is golden): the sum wherever either addend changed, where it
    differs from the golden sum (changes of the two addends can cancel: masked by the arithmetic)."""
    faults = len(image)
    size = golden_out.shape[1]
    # at most one output change per input change: the buffers never grow
    alive, new_start, new_element, new_value, masked = _buffers(faults, len(a_element) + len(b_element))
    delta = np.zeros(size, dtype=np.float64)   # scratch, reset after each fault where it was touched
    seen = np.zeros(size, dtype=np.bool_)
    touched = np.empty(size, dtype=np.int64)
    used = n_alive = 0
    for f in range(faults):
        img = image[f]
        n_touched = _add_deltas(golden_a, img, a_start[f], a_start[f + 1], a_element, a_value, delta, seen, touched, 0)
        n_touched = _add_deltas(golden_b, img, b_start[f], b_start[f + 1], b_element, b_value, delta, seen, touched,
                                n_touched)
        first = used
        for i in range(n_touched):
            e = touched[i]
            if delta[e] != 0:
                new_element[used] = e
                new_value[used] = golden_out[img, e] + delta[e]
                used += 1
            delta[e] = 0.0
            seen[e] = False
        n_alive = _close(f, first, used, ARITHMETIC, alive, n_alive, new_start, masked)
    return alive[:n_alive], new_start[:n_alive + 1], new_element[:used], new_value[:used], masked


@numba.njit(nogil=True, cache=True)
def check_changes(golden_out: np.ndarray, image: np.ndarray, start: np.ndarray, element: np.ndarray,
                  value: np.ndarray, per_channel: int, lo: np.ndarray, hi: np.ndarray, mode: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return the changed codes after a range check (`dsetool.protect.check`): a code outside its channel's
    [lo, hi] becomes the nearer bound (CLIP), 0 (ZERO) or stays (DETECT); `golden_out` holds the golden codes
    after the check. Also returns, per input fault, whether the check acted on one of its changed codes."""
    faults = len(image)
    alive, new_start, new_element, new_value, masked = _buffers(faults, len(element))
    acted = np.zeros(faults, dtype=np.bool_)
    used = n_alive = 0
    for f in range(faults):
        img = image[f]
        first = used
        for j in range(start[f], start[f + 1]):
            e = element[j]
            code = value[j]
            channel = e // per_channel
            if code < lo[channel] or code > hi[channel]:
                acted[f] = True
                if mode == CLIP:
                    code = min(max(code, lo[channel]), hi[channel])
                elif mode == ZERO:
                    code = 0.0
            if code != golden_out[img, e]:
                new_element[used] = e
                new_value[used] = code
                used += 1
        n_alive = _close(f, first, used, PROTECTION, alive, n_alive, new_start, masked)
    return alive[:n_alive], new_start[:n_alive + 1], new_element[:used], new_value[:used], masked, acted


@numba.njit(nogil=True, cache=True)
def pool_changes(golden_in: np.ndarray, golden_out: np.ndarray, image: np.ndarray, start: np.ndarray,
                 element: np.ndarray, value: np.ndarray, taps: np.ndarray, in_shape: np.ndarray,
                 out_shape: np.ndarray, geometry: np.ndarray) -> Output:
    """Return the changed outputs of a max pool: every window where a changed value exceeds the golden
    maximum or was it, recomputed from the golden window with the changes put in (padding counts as
    -inf). A window whose maximum is unchanged and whose changed values stay at or below it keeps it.
    `taps` is `reach(in_shape, geometry)`."""
    faults = len(image)
    channels, height, width = in_shape[0], in_shape[1], in_shape[2]
    out_h, out_w = out_shape[1], out_shape[2]
    kh, kw, sh, sw, ph, pw = geometry[0], geometry[1], geometry[2], geometry[3], geometry[4], geometry[5]
    in_size, size = channels * height * width, channels * out_h * out_w
    alive, new_start, new_element, new_value, masked = _buffers(faults, len(element))
    current = np.empty(in_size, dtype=np.float64)  # scratch, reset after each fault where it was touched
    changed = np.zeros(in_size, dtype=np.bool_)
    cell_seen = np.zeros(size, dtype=np.bool_)
    cells = np.empty((size, 3), dtype=np.int64)    # the windows to recompute: output channel, row, column
    used = n_alive = 0
    for f in range(faults):
        img = image[f]
        n_cells = 0
        for j in range(start[f], start[f + 1]):
            e = element[j]
            changed[e] = True
            current[e] = value[j]
            c, ky, oy = taps[e, 0], taps[e, 1], taps[e, 2]   # the windows holding e, as in `_scatter`
            while ky < kh and oy >= 0:
                if oy < out_h:
                    kx, ox = taps[e, 3], taps[e, 4]
                    while kx < kw and ox >= 0:
                        if ox < out_w:
                            cell = (c * out_h + oy) * out_w + ox
                            # Below the golden maximum and not the maximum before: this change keeps it.
                            if value[j] > golden_out[img, cell] or golden_in[img, e] == golden_out[img, cell]:
                                if not cell_seen[cell]:
                                    cell_seen[cell] = True
                                    cells[n_cells, 0], cells[n_cells, 1], cells[n_cells, 2] = c, oy, ox
                                    n_cells += 1
                        kx += sw
                        ox -= 1
                ky += sh
                oy -= 1
        new_element, new_value = _room(new_element, new_value, used, n_cells)
        first = used
        for i in range(n_cells):
            c, oy, ox = cells[i, 0], cells[i, 1], cells[i, 2]
            best = -np.inf
            for ky in range(kh):
                iy = oy * sh - ph + ky
                if iy < 0 or iy >= height:
                    continue
                row = (c * height + iy) * width
                for kx in range(kw):
                    ix = ox * sw - pw + kx
                    if ix < 0 or ix >= width:
                        continue
                    v = current[row + ix] if changed[row + ix] else golden_in[img, row + ix]
                    if v > best:
                        best = v
            cell = (c * out_h + oy) * out_w + ox
            if best != golden_out[img, cell]:
                new_element[used] = cell
                new_value[used] = best
                used += 1
            cell_seen[cell] = False
        for j in range(start[f], start[f + 1]):
            changed[element[j]] = False
        n_alive = _close(f, first, used, POOL, alive, n_alive, new_start, masked)
    return alive[:n_alive], new_start[:n_alive + 1], new_element[:used], new_value[:used], masked


@numba.njit(nogil=True, cache=True)
def scatter_rows(dense: np.ndarray, start: np.ndarray, element: np.ndarray, value: np.ndarray) -> None:
    """Put each fault's changes into its dense row (rows of `dense` are the faults, in order)."""
    for f in range(len(start) - 1):
        for j in range(start[f], start[f + 1]):
            dense[f, element[j]] = value[j]


@numba.njit(nogil=True, cache=True)
def pick(keep: np.ndarray, start: np.ndarray, element: np.ndarray, value: np.ndarray
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the (start, element, value) of the faults where `keep` holds."""
    return gather(np.nonzero(keep)[0], start, element, value)


@numba.njit(nogil=True, cache=True)
def gather(order: np.ndarray, start: np.ndarray, element: np.ndarray, value: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the (start, element, value) whose row i is row `order[i]` of the given ones (empty where
    `order[i]` is -1: a fault with no change there)."""
    total = 0
    for i in range(len(order)):
        if order[i] >= 0:
            total += start[order[i] + 1] - start[order[i]]
    new_start = np.empty(len(order) + 1, dtype=np.int64)
    new_element = np.empty(total, dtype=np.int64)
    new_value = np.empty(total, dtype=np.float64)
    new_start[0] = used = 0
    for i in range(len(order)):
        f = order[i]
        if f >= 0:
            for j in range(start[f], start[f + 1]):
                new_element[used] = element[j]
                new_value[used] = value[j]
                used += 1
        new_start[i + 1] = used
    return new_start, new_element, new_value


@numba.njit(nogil=True, cache=True)
def still_golden(values: np.ndarray, golden: np.ndarray, images: np.ndarray, same: np.ndarray) -> None:
    """Clear `same[r]` for each row r still set whose values (`values[r]`, one image's flattened tensor)
    differ anywhere from `golden[images[r]]`.

    The dense path asks this after every op for every tensor its rows still need, to let go of the rows a
    fault no longer changes. As tensor operations that is a gather of the golden rows, a comparison and a
    reduction over whole tensors; here a row stops at its first difference and rows already known to
    differ are skipped, with no copy."""
    for r in range(values.shape[0]):
        if not same[r]:
            continue
        reference = golden[images[r]]
        row = values[r]
        for j in range(row.shape[0]):
            if row[j] != reference[j]:
                same[r] = False
                break
