"""Integer primitives of the engine: quantize, im2col + GEMM, requantize, pool, and the exactness proofs.

Integer codes travel as torch float32 tensors holding exact integers (codes have at most 16 bits), and
each layer's GEMM runs in float32 or float64 (`accumulator_dtype`). Why not int64: torch has no integer
BLAS, and float BLAS is 10-20x faster on a CPU (17 ms against 330 ms for a 6400x400 by 400x120 product on
one thread here). It is exact as long as every partial sum is an integer below 2**24 (float32) or 2**53
(float64) in magnitude, whatever order BLAS adds the terms in; `gemm_bound` and `check_exact` prove that
from the layer shapes and bit widths before anything runs. float32 halves the memory traffic and doubles
the SIMD width, so most LeNet-sized layers run 2-4x faster than in float64.

The one integer GEMM torch has is int8 x int8 -> int32 (`torch._int_mm`, oneDNN's VNNI kernels on x86).
Layers whose codes and weights fit int8 (unsigned bytes shifted by 128) and whose partial sums provably
fit int32 (`int8_gemm_exact`) can run through it (`int8_conv2d`, `int8_linear`): 2-2.5x faster than a
float32 convolution on large layers, 3.5-4.6x faster than the float64 ones on a CPU with VNNI. Their
accumulators come out in the float dtype the layer reports, so nothing downstream changes. Without VNNI
(an AVX2-only AMD EPYC, for one) oneDNN's int8 GEMM is a slow reference loop, 30x slower than float32, so
the route is taken only where `int8_gemm_fast` measured it faster; both routes give the same integers.

The int64 functions (`shift_round_half_even`, `fixed_point_requantize_int`) are the output stage as the RTL
computes it. The engine uses the float64 form (`requantize`), which the property tests pin to be
bit-identical, and falls back to the int64 form when a wide multiplier would take the product past 2**53.
"""

from __future__ import annotations

import functools
import time
from fractions import Fraction

import torch
import torch.nn.functional as F

from dsetool.gemm import window_side

FLOAT32_EXACT_BITS = 24  # every integer of magnitude <= 2**24 is a float32
FLOAT64_EXACT_BITS = 53  # every integer of magnitude <= 2**53 is a float64
CODE_DTYPE = torch.float32  # activation codes (at most 16 bits) between layers
INT64_BITS = 63  # magnitudes below 2**63 fit an int64
INT32_BITS = 31  # magnitudes below 2**31 fit an int32
INT8_RANGE = (-128, 127)
UNSIGNED_BYTE_OFFSET = 128  # 0..255 minus 128 is -128..127: the byte with its top bit flipped
INT8_CHUNK_BYTES = 2**21  # int8 columns + int32 products of the images one int8 GEMM takes at a time
TRANSPOSE_AFTER_CAST = 1024  # codes per plane from which `int8_codes` casts before it transposes
INT8_GEMM_ENABLED = True  # layers built while False keep the float route (tests compare the two)
INT8_FAST_RATIO = 0.75  # the int8 GEMM must take at most this share of the float32 one's time to be used


def int_range(bits: int, signed: bool, narrow_range: bool = False) -> tuple[int, int]:
    """Return (min, max) of a `bits`-bit code; narrow range drops the most negative signed value."""
    if not signed:
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)) + int(narrow_range), 2 ** (bits - 1) - 1


def signed_width(low: int, high: int) -> int:
    """Return the fewest two's-complement bits holding every integer in [low, high]."""
    bits = 1
    while not -(2 ** (bits - 1)) <= low <= high <= 2 ** (bits - 1) - 1:
        bits += 1
    return bits


def accumulator_dtype(acc_range: tuple[int, int]) -> torch.dtype:
    """Return the dtype a layer's GEMM runs in: float32 when every partial sum of any operands the
    registers can hold stays an exact float32 integer, and the accumulator register itself (whose
    two's-complement width may reach one bit beyond the range, e.g. after a partial-sum fault wraps)
    holds only such integers; else float64."""
    width = signed_width(*acc_range)
    return torch.float32 if fits(acc_range, FLOAT32_EXACT_BITS) and width <= FLOAT32_EXACT_BITS + 1 \
        else torch.float64


def quantize(x: torch.Tensor, scale: float, qmin: int, qmax: int) -> torch.Tensor:
    """Return clamp(round_half_even(x / scale), qmin, qmax) as float32 codes.

    The division is done in float32, as Brevitas's `IntQuant.to_int` does on a float32 model, so a value
    on a rounding tie lands on the same code; float64 division would round some ties the other way.
    """
    divided = x.to(torch.float32) / torch.tensor(scale, dtype=torch.float32, device=x.device)
    return torch.round(divided).clamp_(qmin, qmax)


def gemm_bound(k: int, act_range: tuple[int, int], weight_range: tuple[int, int],
               bias_range: tuple[int, int]) -> tuple[int, int]:
    """Return (min, max) of any accumulator sum(a_k * w_k, k < K) + b with operands in the given ranges.

    Every partial sum of a subset of the terms lies in the same interval (the corner products bound each
    term on both sides, and 0 lies between the extremes), so this also bounds what BLAS ever holds.
    """
    corners = [a * w for a in act_range for w in weight_range]
    low = k * min(0, *corners) + min(0, bias_range[0])
    high = k * max(0, *corners) + max(0, bias_range[1])
    return low, high


def fits(bound: tuple[int, int], bits: int, factor_bits: int = 0) -> bool:
    """Return whether every value in `bound`, times a factor below 2**factor_bits, is below 2**bits."""
    return max(abs(bound[0]), abs(bound[1])) * 2**factor_bits < 2**bits


def check_exact(bound: tuple[int, int], what: str, factor_bits: int = 0, bits: int = FLOAT64_EXACT_BITS,
                kind: str = "float64") -> None:
    """Raise ValueError unless every value in `bound`, times a factor below 2**factor_bits, is below 2**bits."""
    if not fits(bound, bits, factor_bits):
        extra = f" times a {factor_bits}-bit multiplier" if factor_bits else ""
        raise ValueError(f"{what}: accumulators up to {max(map(abs, bound))}{extra} reach 2**{bits}, beyond "
                         f"the {kind} engine's exact range (fewer bits or a smaller layer would fit)")


def im2col(codes: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
           padding: tuple[int, int]) -> torch.Tensor:
    """Return the (B, M, K) input matrices of a convolution over (B, C, H, W) codes.

    M = out_h * out_w output positions (row-major), K = C * kh * kw in the order of
    `weight.reshape(out_channels, -1)`; padding contributes zeros, as the array's zero-padded feeder does.
    The result is a transposed view of a contiguous (B, K, M) tensor: `gemm` multiplies in that layout,
    which leaves the accumulators channels-first with no copy (F.unfold builds the same matrix ~1.5x slower).
    """
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    if ph or pw:
        codes = F.pad(codes, (pw, pw, ph, ph))
    windows = codes.unfold(2, kh, sh).unfold(3, kw, sw)  # (B, C, out_h, out_w, kh, kw), a view
    batch, channels, out_h, out_w = windows.shape[:4]
    columns = windows.permute(0, 1, 4, 5, 2, 3).reshape(batch, channels * kh * kw, out_h * out_w)
    return columns.transpose(1, 2)


def gemm(columns: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Return columns @ weight + bias: (B, M, K) x (K, N) -> (B, M, N) integer accumulators.

    For M > 1 (a convolution) the product is computed as weight.T @ columns.T, per image, so the result
    is a transposed view of a channels-first (B, N, M) tensor; for M = 1 (a linear layer) it is one GEMM
    over the batch.
    """
    batch, rows, depth = columns.shape
    if rows == 1:
        return torch.addmm(bias, columns.reshape(batch, depth), weight).unsqueeze(1)
    return torch.matmul(weight.T, columns.transpose(1, 2)).add_(bias[:, None]).transpose(1, 2)


def conv2d(codes: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int],
           padding: tuple[int, int], groups: int = 1) -> torch.Tensor:
    """Return the (B, N, out_h, out_w) accumulators of a convolution, bias included (the same values as
    `fold(gemm(im2col(codes)))`, 1.5-3x faster).

    Exact for the same reason as `gemm`: oneDNN's direct algorithm and the im2col + GEMM fallback only
    add the exact integer products, so every partial sum obeys `gemm_bound`. NNPACK must stay off (see
    `disable_transform_convolutions`): its Winograd and FFT transforms compute with fractions and round.
    """
    return F.conv2d(codes, weight, bias, stride=stride, padding=padding, groups=groups)


def is_channels_last(tensor: torch.Tensor) -> bool:
    """Say whether a (B, C, H, W) tensor is laid out channels-last and not also plain contiguous (one
    channel, or one pixel, is both: such a tensor counts as plain, so it stays in the layout it came in)."""
    return tensor.dim() == 4 and not tensor.is_contiguous() and tensor.is_contiguous(memory_format=torch.channels_last)


def disable_transform_convolutions() -> None:
    """Switch NNPACK off for the process: torch could route a float32 convolution to its Winograd or FFT
    algorithms, which are not exact on integers. Process-wide (not a context manager) because campaigns
    run batches in several threads, and a flag one thread restores would reach the others mid-op."""
    torch.backends.nnpack.set_flags(False)


def int8_gemm_available(device: str = "cpu") -> bool:
    """Say whether `torch._int_mm` (a private API) multiplies int8 matrices into exact int32 on `device`.

    Probed once per device type on odd shapes (M, K, N not multiples of 8) and extreme operands: rows and
    columns of all 127 or all -128. A kernel that re-biases A to unsigned bytes and sums pairs of u8 x s8
    products in saturating int16 (vpmaddubsw, x86 without VNNI) gets 255 * 127 * 2 > 2**15 wrong there, so
    such a backend, one that refuses the shapes, or a torch without the function keeps the float route.
    """
    return _probe_int_mm(torch.device(device).type)


@functools.cache
def _probe_int_mm(device_type: str) -> bool:
    int_mm = getattr(torch, "_int_mm", None)
    if int_mm is None:
        return False
    generator = torch.Generator().manual_seed(0)
    first = torch.randint(-128, 128, (33, 70), generator=generator, dtype=torch.int8)
    second = torch.randint(-128, 128, (70, 10), generator=generator, dtype=torch.int8)
    first[0], first[1], second[:, 0], second[:, 1] = 127, -128, 127, -128
    try:
        got = int_mm(first.to(device_type), second.to(device_type)).cpu()
    except (RuntimeError, NotImplementedError, TypeError):
        return False
    return got.dtype == torch.int32 and torch.equal(got.to(torch.int64), first.to(torch.int64) @ second.to(torch.int64))


def int8_gemm_fast(device: str = "cpu") -> bool:
    """Say whether `torch._int_mm` multiplies faster than float32 `torch.mm` here (measured once per device
    type): at most `INT8_FAST_RATIO` of its time on a stage-3 ResNet layer's product, 256 x 576 by 576 x 64.

    Exactness does not say speed: without VNNI (AVX2 only) oneDNN runs the int8 GEMM as a reference loop,
    0.9 GMAC/s on one AMD EPYC core against 27 for float32 (172 against 5.5 ms on 4096 x 576 by 576 x 64),
    where with VNNI the int8 route runs large layers 2-2.5x faster than float32. Which route runs changes
    no result, only the time. Both are timed on one thread: on a loaded machine a multi-threaded float32
    GEMM waits at its barrier for a descheduled thread (12-20 ms for this product on that EPYC with two
    threads while the test suite ran, against 0.35 ms on one), and the probe took the 30x slower route.
    """
    return int8_gemm_available(device) and _probe_int_mm_speed(torch.device(device).type)


@functools.cache
def _probe_int_mm_speed(device_type: str) -> bool:
    generator = torch.Generator().manual_seed(0)
    first = torch.randint(-128, 128, (256, 576), generator=generator, dtype=torch.int8).to(device_type)
    second = torch.randint(-128, 128, (576, 64), generator=generator, dtype=torch.int8).to(device_type)
    pairs = {"int8": (torch._int_mm, first, second), "float32": (torch.mm, first.float(), second.float())}
    best = dict.fromkeys(pairs, float("inf"))
    wait = torch.cuda.synchronize if device_type == "cuda" else (lambda: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(3):
            for name, (multiply, a, b) in pairs.items():
                start = time.perf_counter()
                multiply(a, b)
                wait()
                best[name] = min(best[name], time.perf_counter() - start)
    except (RuntimeError, NotImplementedError, TypeError):
        return False
    finally:
        torch.set_num_threads(threads)
    return best["int8"] <= INT8_FAST_RATIO * best["float32"]


def int8_act_offset(act_range: tuple[int, int]) -> int | None:
    """Return the c with act_range - c inside int8: 0 for codes that fit (signed, or unsigned up to 7 bits),
    128 for unsigned bytes (0..255), else None (the layer keeps the float route)."""
    for offset in (0, UNSIGNED_BYTE_OFFSET):
        if INT8_RANGE[0] <= act_range[0] - offset and act_range[1] - offset <= INT8_RANGE[1]:
            return offset
    return None


def int8_gemm_exact(k: int, act_range: tuple[int, int], weight_range: tuple[int, int]) -> int | None:
    """Return the activation offset c that makes an int8 x int8 -> int32 GEMM of depth k exact, or None.

    With a' = a - c, sum(a_k * w_k) = sum(a'_k * w_k) + c * sum(w_k): the int8 GEMM computes the first sum,
    the caller adds c times each column's weight sum (exact integers). Every partial sum of the int8
    product lies in `gemm_bound(k, act - c, weight)`, and must stay below 2**31. oneDNN may re-bias signed
    A to unsigned (a' + 128) and subtract 128 * column sums at the end: that form's partial sums are bounded
    too, so both have to fit (K up to 65,793 for bytes).
    """
    offset = int8_act_offset(act_range)
    if offset is None or not INT8_RANGE[0] <= weight_range[0] <= weight_range[1] <= INT8_RANGE[1]:
        return None
    low, high = act_range[0] - offset, act_range[1] - offset
    for operand in ((low, high), (low + 128, high + 128)):
        if not fits(gemm_bound(k, operand, weight_range, (0, 0)), INT32_BITS):
            return None
    return offset


def int8_weight_matrix(weight: torch.Tensor) -> torch.Tensor:
    """Return (K, N) int8 weights of a conv (N, C, kh, kw) or linear (N, K) weight tensor holding integers in
    int8, K in (kh, kw, C) order: the order of `int8_im2col`'s channels-last columns."""
    rows = weight.permute(0, 2, 3, 1) if weight.dim() == 4 else weight
    return rows.reshape(len(weight), -1).to(torch.int8).T.contiguous()


def int8_codes(codes: torch.Tensor, act_offset: int, padding: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Return codes (B, C, H, W) as channels-last int8 (B, H + 2 ph, W + 2 pw, C) holding code - act_offset,
    the zero padding as 0 - act_offset; (B, K) codes as (B, K) int8.

    For act_offset 128 the codes are cast to unsigned bytes (exact on 0..255) and the top bit flipped,
    which is the subtraction of 128 on the int8 reading of the byte. Planes of 1024 or more codes are cast
    before the transpose: the transposing copy then reads channels 1 KiB apart, not 4 KiB (float32), which
    alias in the cache (8 images of 32 channels at 32x32: 0.73 -> 0.32 ms on one core; 64 channels at
    16x16 transpose faster straight from float32, 0.12 against 0.17 ms).
    """
    dtype = torch.uint8 if act_offset else torch.int8
    if codes.dim() == 2:
        out = codes.to(dtype)
    else:
        (ph, pw), (batch, channels, height, width) = padding, codes.shape
        if height * width >= TRANSPOSE_AFTER_CAST:
            codes = codes.to(dtype)
        shape = (batch, height + 2 * ph, width + 2 * pw, channels)
        out = torch.zeros(shape, dtype=dtype, device=codes.device) if ph or pw else \
            torch.empty(shape, dtype=dtype, device=codes.device)
        out[:, ph:ph + height, pw:pw + width].copy_(codes.permute(0, 2, 3, 1))
    return out.view(torch.int8).bitwise_xor_(-128) if act_offset else out


def int8_im2col(padded: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """Return the (B * out_h * out_w, kh * kw * C) int8 columns of padded channels-last codes (B, H, W, C):
    one strided view copied once; a 1x1 stride-1 conv reads the codes themselves, with no copy."""
    (kh, kw), (sh, sw) = kernel, stride
    batch, height, width, channels = padded.shape
    out_h, out_w = (height - kh) // sh + 1, (width - kw) // sw + 1
    if (kh, kw, sh, sw) == (1, 1, 1, 1):
        return padded.reshape(batch * height * width, channels)
    row = width * channels
    windows = padded.as_strided((batch, out_h, out_w, kh, kw, channels),
                                (height * row, sh * row, sw * channels, row, channels, 1))
    return windows.reshape(batch * out_h * out_w, kh * kw * channels)


def int8_conv2d(codes: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor, act_offset: int,
                kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    """Return the (B, N, out_h, out_w) accumulators of an ungrouped convolution, contiguous, in
    `offsets`'s dtype: the int8 GEMM of (codes - act_offset) by `weight` (K, N from `int8_weight_matrix`),
    plus offsets[n] = bias[n] + act_offset * sum_k weight[k, n], added as the result is transposed out of
    the GEMM's channels-last layout. Exact under `int8_gemm_exact` when the int32 products, the offsets and
    the accumulators are all exact integers of that dtype (the caller proves it).

    A few images at a time (`INT8_CHUNK_BYTES` of columns and products): the int32 products are read back
    from cache, not memory, and no batch-sized temporary is allocated (glibc maps and faults in fresh pages
    for every allocation over 32 MB). On the engine's batches of 256 this halves the time of layers with
    large outputs (1->64 channels at 32x32: 135 -> 61 ms on one core; 64->192 at 16x16: 147 -> 84 ms).
    """
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    batch, _, height, width = codes.shape
    out_h, out_w = window_side(height, kh, sh, ph), window_side(width, kw, sw, pw)
    depth, features = weight.shape
    out = torch.empty((batch, features, out_h, out_w), dtype=offsets.dtype, device=codes.device)
    step = max(1, INT8_CHUNK_BYTES // (out_h * out_w * (depth + 4 * features)))
    offsets = offsets.reshape(-1, 1, 1)
    for first in range(0, batch, step):
        part = codes[first:first + step]
        columns = int8_im2col(int8_codes(part, act_offset, padding), kernel, stride)
        products = torch._int_mm(columns, weight).view(len(part), out_h, out_w, features)
        torch.add(products.permute(0, 3, 1, 2), offsets, out=out[first:first + step])
    return out


def int8_linear(codes: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor, act_offset: int) -> torch.Tensor:
    """Return the (B, N) accumulators of a linear layer on (B, ...) codes, as `int8_conv2d` computes them."""
    columns = int8_codes(codes.reshape(len(codes), -1), act_offset)
    return _add_offsets(torch._int_mm(columns, weight), offsets)


def _add_offsets(products: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """int32 products plus float offsets into a fresh contiguous tensor of the offsets' dtype, one pass."""
    out = torch.empty(products.shape, dtype=offsets.dtype, device=products.device)
    return torch.add(products, offsets, out=out)


def requantize(acc: torch.Tensor, factor: torch.Tensor | float, qmin: int, qmax: int, relu: bool = True
               ) -> torch.Tensor:
    """Return clamp(round_half_even(relu(acc) * factor), qmin, qmax) with factor = M * 2**-s (without the
    ReLU when `relu` is False).

    Exact in float64 when relu(acc) * M * 2**max(0, -s) is an integer below 2**53 (the engine proves it
    when it is built, else it uses `fixed_point_requantize_int`): scaling by 2**-s only moves the exponent,
    so torch.round sees the exact rational value and rounds ties to even, as the integer form does.
    """
    scaled = acc.clamp(min=0).mul_(factor) if relu else acc * factor
    return scaled.round_().clamp_(qmin, qmax)


def shift_round_half_even(x: torch.Tensor, shift: torch.Tensor | int) -> torch.Tensor:
    """Return round_half_even(x / 2**shift) for int64 `x`; shift <= 0 shifts left (shift may be a tensor).

    The hardware form: an arithmetic right shift, then +1 when the dropped bits exceed one half, or equal
    it and the kept value is odd. Shifts of 64 or more give 0 (the `>>` saturates to 0 or -1, and the
    dropped bits are then below one half).
    """
    shift = torch.as_tensor(shift, dtype=torch.int64, device=x.device)
    right = shift.clamp(min=0, max=63)
    kept = torch.bitwise_right_shift(x, right)
    dropped = x - torch.bitwise_left_shift(kept, right)
    half = torch.where(right > 0, torch.bitwise_left_shift(torch.ones_like(right), (right - 1).clamp(min=0)),
                       torch.zeros_like(right))
    odd = torch.bitwise_and(kept, 1) == 1
    up = (right > 0) & ((dropped > half) | ((dropped == half) & odd))
    rounded = kept + up.to(torch.int64)
    if bool((shift > 63).any()):
        rounded = torch.where(shift > 63, torch.zeros_like(rounded), rounded)
    return torch.bitwise_left_shift(rounded, (-shift).clamp(min=0))


def fixed_point_requantize_int(acc: torch.Tensor, multiplier: torch.Tensor | int, shift: torch.Tensor | int,
                               qmin: int, qmax: int, relu: bool = True) -> torch.Tensor:
    """Return clamp(round_half_even(relu?(acc) * M / 2**s), qmin, qmax) on int64, as the RTL does."""
    product = (acc.clamp(min=0) if relu else acc) * torch.as_tensor(multiplier, dtype=torch.int64,
                                                                     device=acc.device)
    return shift_round_half_even(product, shift).clamp_(qmin, qmax)


def fixed_point_multiplier(ratio: Fraction, bits: int) -> tuple[int, int]:
    """Return (M, s) with M = round_half_even(ratio * 2**s) < 2**bits, for the largest such s.

    M has `bits` significant bits (2**(bits-1) <= M < 2**bits), so |M * 2**-s - ratio| <= 2**-(s+1) and the
    relative error is below 1 / (2**bits - 1). s is negative for ratios of 2**bits or more.
    """
    if ratio <= 0:
        raise ValueError(f"Requantization ratio must be positive, not {ratio!r}")
    if not isinstance(bits, int) or bits < 1:
        raise ValueError(f"Multiplier bits must be a positive integer, not {bits!r}")
    # Start where ratio * 2**s lies in [2**(bits-1), 2**bits); rounding may carry to 2**bits, so step back.
    shift = bits - 1 - _floor_log2(ratio)
    while (multiplier := round(ratio * Fraction(2) ** shift)) >= 2**bits:
        shift -= 1
    return multiplier, shift


def _floor_log2(value: Fraction) -> int:
    exponent = value.numerator.bit_length() - value.denominator.bit_length()
    return exponent if Fraction(2) ** exponent <= value else exponent - 1


def max_pool2d(codes: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
               padding: tuple[int, int], ceil_mode: bool = False) -> torch.Tensor:
    """Return the max pool of codes or accumulators (it commutes with any monotonic requantization).

    The maximum of a window is the maximum over its kh rows of each row's maximum over kw columns, so it is
    taken as elementwise maxima of strided taps, first along the height (whole rows at a time), then along
    the width: the same values as `F.max_pool2d` (padding counts as -inf), in kh + kw passes instead of
    kh * kw: 2-5x faster than that on float32 maps, 6-18x faster than `F.max_pool2d`
    (`benchmarks/engine_kernels.py`; torch has no fast float64 kernel at all).
    """
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    height, width = codes.shape[2:]
    out_h, out_w = window_side(height, kh, sh, ph, ceil_mode), window_side(width, kw, sw, pw, ceil_mode)
    beyond_h = max(0, (out_h - 1) * sh + kh - height - 2 * ph)   # ceil mode: a last window past the edge
    beyond_w = max(0, (out_w - 1) * sw + kw - width - 2 * pw)
    if ph or pw or beyond_h or beyond_w:
        codes = F.pad(codes, (pw, pw + beyond_w, ph, ph + beyond_h), value=float("-inf"))
    rows = _max_of_taps(codes, 2, kh, sh, out_h)
    return _max_of_taps(rows, 3, kw, sw, out_w)


def _max_of_taps(values: torch.Tensor, dim: int, kernel: int, stride: int, size: int) -> torch.Tensor:
    """Return the elementwise maximum of the `kernel` taps of a 1-D window along `dim` (a fresh tensor)."""
    taps = [values[(slice(None),) * dim + (slice(offset, offset + stride * (size - 1) + 1, stride),)]
            for offset in range(kernel)]
    if kernel == 1:
        return taps[0].clone(memory_format=torch.contiguous_format)
    result = torch.maximum(taps[0], taps[1])
    for tap in taps[2:]:
        torch.maximum(result, tap, out=result)
    return result


def sum_pool2d(values: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
               padding: tuple[int, int]) -> torch.Tensor:
    """Return the sum of each window (zeros where padding) of integer values: an average pool before its
    division, which the requantization after it performs. Exact while the sums stay in the dtype's exact
    integer range (the engine picks the dtype from the bound, as for a GEMM)."""
    return F.avg_pool2d(values, kernel, stride, padding, ceil_mode=False, count_include_pad=True,
                        divisor_override=1)
