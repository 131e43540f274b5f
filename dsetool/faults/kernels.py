"""Compiled per-fault loops of the sparse fault path (numba): one fault's few changed values per op.

A single activation fault changes a handful of values per feature map, each needing a few multiply-adds;
as tensor programs (gathers, masks, index arithmetic over every fault of a batch) that costs tens of
operations per value, as a loop per fault a few.

Changes travel as fixed-stride rows: fault f changed `count[f]` values, at flat positions
`element[f, :count[f]]` of one image's map (channel-major, as the engine's tensors), now
`value[f, :count[f]]`; everywhere else the map equals the golden run of image `image[f]`. Values are
float64 holding exact integers (accumulators below 2**53, codes). Each kernel returns the changes of its
op's output: the ones that still differ from the golden output (the others are masked there).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def _scatter(golden_in: np.ndarray, img: int, count: int, element: np.ndarray, value: np.ndarray,
             weight: np.ndarray, in_shape: np.ndarray, out_shape: np.ndarray, geometry: np.ndarray,
             delta: np.ndarray, seen: np.ndarray, touched: np.ndarray) -> int:
    """Add one fault's accumulator changes, (new - golden input) x weight over the taps each changed
    input reaches, into `delta`; list the output pixels touched; return how many.

    `weight` is (C, kh, kw, N) and `delta` pixel-major (pixel * N + n), so the innermost loop runs over
    the N output channels contiguously in both (vectorizable); `seen` / `touched` are per pixel."""
    height, width = in_shape[1], in_shape[2]
    outs, out_h, out_w = out_shape[0], out_shape[1], out_shape[2]
    kh, kw, sh, sw, ph, pw = geometry[0], geometry[1], geometry[2], geometry[3], geometry[4], geometry[5]
    n_touched = 0
    for j in range(count):
        e = element[j]
        change = value[j] - golden_in[img, e]
        if change == 0:
            continue
        c, y, x = e // (height * width), (e // width) % height, e % width
        # Taps reaching an output: ky = (y + ph) mod sh, then every sh-th, the output row one lower each
        # time (no division per tap: it costs more than the tap's multiply-adds).
        ky, oy = (y + ph) % sh, (y + ph) // sh
        while ky < kh and oy >= 0:
            if oy < out_h:
                kx, ox = (x + pw) % sw, (x + pw) // sw
                while kx < kw and ox >= 0:
                    if ox < out_w:
                        pixel = oy * out_w + ox
                        if not seen[pixel]:
                            seen[pixel] = True
                            touched[n_touched] = pixel
                            n_touched += 1
                        base = pixel * outs
                        for n in range(outs):
                            delta[base + n] += change * weight[c, ky, kx, n]
                    kx += sw
                    ox -= 1
            ky += sh
            oy -= 1
    return n_touched


@numba.njit(nogil=True, cache=True)
def conv_changes(golden_in: np.ndarray, golden_out: np.ndarray, image: np.ndarray, count: np.ndarray,
                 element: np.ndarray, value: np.ndarray, weight: np.ndarray, in_shape: np.ndarray,
                 out_shape: np.ndarray, geometry: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the changed accumulators of a convolution: golden + (new - golden input) x weight, summed
    over the kernel taps each changed input reaches. `weight` (C, kh, kw, N), see `_scatter`; `geometry`
    holds (kh, kw, stride_h, stride_w, pad_h, pad_w); shapes are (C, H, W)."""
    faults = len(count)
    outs, plane = out_shape[0], out_shape[1] * out_shape[2]
    size = outs * plane
    most = min(size, max(1, _largest(count)) * geometry[0] * geometry[1] * outs)  # reach of the inputs
    new_count = np.zeros(faults, dtype=np.int64)
    new_element = np.empty((faults, most), dtype=np.int64)
    new_value = np.empty((faults, most), dtype=np.float64)
    delta = np.zeros(size, dtype=np.float64)   # scratch, reset after each fault where it was touched
    seen = np.zeros(plane, dtype=np.bool_)
    touched = np.empty(plane, dtype=np.int64)
    for f in range(faults):
        img = image[f]
        n_touched = _scatter(golden_in, img, count[f], element[f], value[f], weight, in_shape, out_shape,
                             geometry, delta, seen, touched)
        kept = 0
        for i in range(n_touched):
            pixel = touched[i]
            for n in range(outs):
                change = delta[pixel * outs + n]
                if change != 0:
                    position = n * plane + pixel
                    new_element[f, kept] = position
                    new_value[f, kept] = golden_out[img, position] + change
                    kept += 1
                    delta[pixel * outs + n] = 0.0
            seen[pixel] = False
        new_count[f] = kept
    return new_count, new_element, new_value


@numba.njit(nogil=True, cache=True)
def conv_requantize_changes(golden_in: np.ndarray, golden_acc: np.ndarray, golden_codes: np.ndarray,
                            image: np.ndarray, count: np.ndarray, element: np.ndarray, value: np.ndarray,
                            weight: np.ndarray, in_shape: np.ndarray, out_shape: np.ndarray, geometry: np.ndarray,
                            factor: np.ndarray, multiplier: np.ndarray, shift: np.ndarray, integer: bool,
                            qmin: float, qmax: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the changed codes after a convolution and its output stage (`conv_changes`, then
    `requantize_changes` per channel), in one pass: the changed accumulators are never stored."""
    faults = len(count)
    outs, plane = out_shape[0], out_shape[1] * out_shape[2]
    size = outs * plane
    most = min(size, max(1, _largest(count)) * geometry[0] * geometry[1] * outs)
    new_count = np.zeros(faults, dtype=np.int64)
    new_element = np.empty((faults, most), dtype=np.int64)
    new_value = np.empty((faults, most), dtype=np.float64)
    delta = np.zeros(size, dtype=np.float64)
    seen = np.zeros(plane, dtype=np.bool_)
    touched = np.empty(plane, dtype=np.int64)
    for f in range(faults):
        img = image[f]
        n_touched = _scatter(golden_in, img, count[f], element[f], value[f], weight, in_shape, out_shape,
                             geometry, delta, seen, touched)
        kept = 0
        for i in range(n_touched):
            pixel = touched[i]
            for n in range(outs):
                change = delta[pixel * outs + n]
                if change != 0:
                    position = n * plane + pixel
                    code = _requantized(golden_acc[img, position] + change, n, factor, multiplier, shift,
                                        integer, qmin, qmax)
                    if code != golden_codes[img, position]:
                        new_element[f, kept] = position
                        new_value[f, kept] = code
                        kept += 1
                    delta[pixel * outs + n] = 0.0
            seen[pixel] = False
        new_count[f] = kept
    return new_count, new_element, new_value


@numba.njit(nogil=True, cache=True)
def linear_changes(golden_in: np.ndarray, golden_acc: np.ndarray, golden_codes: np.ndarray, image: np.ndarray,
                   count: np.ndarray, element: np.ndarray, value: np.ndarray, weight: np.ndarray,
                   requantize: bool, factor: np.ndarray, multiplier: np.ndarray, shift: np.ndarray, integer: bool,
                   qmin: float, qmax: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the changed outputs of a linear layer (`weight` (K, N), so the loop over the N outputs runs
    contiguously): with `requantize`, its codes after the output stage where they differ from
    `golden_codes`; without (the logits layer), its changed accumulators."""
    faults, outs = len(count), weight.shape[1]
    new_count = np.zeros(faults, dtype=np.int64)
    new_element = np.empty((faults, outs), dtype=np.int64)
    new_value = np.empty((faults, outs), dtype=np.float64)
    delta = np.zeros(outs, dtype=np.float64)
    for f in range(faults):
        img = image[f]
        for j in range(count[f]):
            e = element[f, j]
            change = value[f, j] - golden_in[img, e]
            if change != 0:
                for n in range(outs):
                    delta[n] += change * weight[e, n]
        kept = 0
        for n in range(outs):
            if delta[n] != 0:
                result = golden_acc[img, n] + delta[n]
                if requantize:
                    result = _requantized(result, n, factor, multiplier, shift, integer, qmin, qmax)
                    if result == golden_codes[img, n]:
                        delta[n] = 0.0
                        continue
                new_element[f, kept] = n
                new_value[f, kept] = result
                kept += 1
                delta[n] = 0.0
        new_count[f] = kept
    return new_count, new_element, new_value


@numba.njit(nogil=True, cache=True)
def _requantized(acc: float, channel: int, factor: np.ndarray, multiplier: np.ndarray, shift: np.ndarray,
                 integer: bool, qmin: float, qmax: float) -> float:
    """Return the output stage's code of one accumulator (see `dsetool.engine.executor.Requantizer`)."""
    acc = max(acc, 0.0)
    if integer:
        code = float(_shift_round_half_even(np.int64(acc) * multiplier[channel], shift[channel]))
    else:
        code = np.rint(acc * factor[channel])
    return min(max(code, qmin), qmax)


@numba.njit(nogil=True, cache=True)
def _largest(count: np.ndarray) -> int:
    """Return the largest count (0 for none)."""
    most = 0
    for value in count:
        most = max(most, value)
    return most


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
def requantize_changes(golden_out: np.ndarray, image: np.ndarray, count: np.ndarray, element: np.ndarray,
                       value: np.ndarray, per_channel: int, factor: np.ndarray, multiplier: np.ndarray,
                       shift: np.ndarray, integer: bool, qmin: float, qmax: float
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the changed codes: the changed accumulators through the output stage (relu, M * 2**-s,
    half-even rounding, saturation, as the engine's `Requantizer`), where they differ from golden."""
    faults, width = element.shape
    new_count = np.zeros(faults, dtype=np.int64)
    new_element = np.empty((faults, width), dtype=np.int64)
    new_value = np.empty((faults, width), dtype=np.float64)
    for f in range(faults):
        img = image[f]
        kept = 0
        for j in range(count[f]):
            e = element[f, j]
            code = _requantized(value[f, j], e // per_channel, factor, multiplier, shift, integer, qmin, qmax)
            if code != golden_out[img, e]:
                new_element[f, kept] = e
                new_value[f, kept] = code
                kept += 1
        new_count[f] = kept
    return new_count, new_element, new_value


@numba.njit(nogil=True, cache=True)
def pool_changes(golden_in: np.ndarray, golden_out: np.ndarray, image: np.ndarray, count: np.ndarray,
                 element: np.ndarray, value: np.ndarray, in_shape: np.ndarray, out_shape: np.ndarray,
                 geometry: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the changed outputs of a max pool: every window where a changed value exceeds the golden
    maximum or was it, recomputed from the golden window with the changes put in (padding counts as
    -inf). A window whose maximum is unchanged and whose changed values stay at or below it keeps it."""
    faults = len(count)
    channels, height, width = in_shape[0], in_shape[1], in_shape[2]
    out_h, out_w = out_shape[1], out_shape[2]
    kh, kw, sh, sw, ph, pw = geometry[0], geometry[1], geometry[2], geometry[3], geometry[4], geometry[5]
    in_size, size = channels * height * width, channels * out_h * out_w
    windows = ((kh + sh - 1) // sh) * ((kw + sw - 1) // sw)  # pool windows holding one input, at most
    most = min(size, max(1, _largest(count)) * windows)
    new_count = np.zeros(faults, dtype=np.int64)
    new_element = np.empty((faults, most), dtype=np.int64)
    new_value = np.empty((faults, most), dtype=np.float64)
    current = np.empty(in_size, dtype=np.float64)  # scratch, reset after each fault where it was touched
    changed = np.zeros(in_size, dtype=np.bool_)
    cell_seen = np.zeros(size, dtype=np.bool_)
    cells = np.empty(size, dtype=np.int64)
    for f in range(faults):
        img = image[f]
        n_cells = 0
        for j in range(count[f]):
            e = element[f, j]
            changed[e] = True
            current[e] = value[f, j]
            c, y, x = e // (height * width), (e // width) % height, e % width
            ky, oy = (y + ph) % sh, (y + ph) // sh   # the windows holding (y, x), as in `_scatter`
            while ky < kh and oy >= 0:
                if oy < out_h:
                    kx, ox = (x + pw) % sw, (x + pw) // sw
                    while kx < kw and ox >= 0:
                        if ox < out_w:
                            cell = (c * out_h + oy) * out_w + ox
                            # Below the golden maximum and not the maximum before: this change keeps it.
                            if value[f, j] > golden_out[img, cell] or golden_in[img, e] == golden_out[img, cell]:
                                if not cell_seen[cell]:
                                    cell_seen[cell] = True
                                    cells[n_cells] = cell
                                    n_cells += 1
                        kx += sw
                        ox -= 1
                ky += sh
                oy -= 1
        kept = 0
        for i in range(n_cells):
            cell = cells[i]
            c, oy, ox = cell // (out_h * out_w), (cell // out_w) % out_h, cell % out_w
            best = -np.inf
            for ky in range(kh):
                iy = oy * sh - ph + ky
                if iy < 0 or iy >= height:
                    continue
                for kx in range(kw):
                    ix = ox * sw - pw + kx
                    if ix < 0 or ix >= width:
                        continue
                    e = (c * height + iy) * width + ix
                    v = current[e] if changed[e] else golden_in[img, e]
                    if v > best:
                        best = v
            if best != golden_out[img, cell]:
                new_element[f, kept] = cell
                new_value[f, kept] = best
                kept += 1
            cell_seen[cell] = False
        for j in range(count[f]):
            changed[element[f, j]] = False
        new_count[f] = kept
    return new_count, new_element, new_value


@numba.njit(nogil=True, cache=True)
def scatter_rows(dense: np.ndarray, count: np.ndarray, element: np.ndarray, value: np.ndarray) -> None:
    """Put each fault's changes into its dense row (rows of `dense` are the faults, in order)."""
    for f in range(len(count)):
        for j in range(count[f]):
            dense[f, element[f, j]] = value[f, j]


@numba.njit(nogil=True, cache=True)
def pick(keep: np.ndarray, count: np.ndarray, element: np.ndarray, value: np.ndarray
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the rows of the faults where `keep` holds, each as wide as the longest kept one, copying
    only the changes each holds (the rows of a wide map are mostly unused)."""
    kept, width = 0, 1
    for f in range(len(count)):
        if keep[f]:
            kept += 1
            width = max(width, count[f])
    new_count = np.empty(kept, dtype=np.int64)
    new_element = np.empty((kept, width), dtype=np.int64)
    new_value = np.empty((kept, width), dtype=np.float64)
    i = 0
    for f in range(len(count)):
        if keep[f]:
            new_count[i] = count[f]
            new_element[i, :count[f]] = element[f, :count[f]]
            new_value[i, :count[f]] = value[f, :count[f]]
            i += 1
    return new_count, new_element, new_value
