"""Run an `IntModel` on integer codes, op by op, as the systolic array and its output stage compute it.

`Engine.run` executes ops[start:stop] in the model's topological order, each op on the outputs of the ops
`IntModel.inputs` names: the float images for op 0 (the input quantizer), else codes or integers. Each
op's output is:

- quant_input / quant_relu / quant_identity: activation codes (float32 tensors of exact integers);
- conv2d / linear: the layer's int accumulators, (B, C, H, W) or (B, N), at scale `acc_scale(i)`, in the
  layer's `dtype` (float32 when its accumulators provably fit, else float64; see `ops.accumulator_dtype`);
- maxpool2d / flatten / concat: the same values, pooled, reshaped or joined along the channels;
- avgpool2d / add: exact integer window sums or sums of two code tensors (`ranges[i]`, `dtypes[i]`).

What the fault layer builds on: `run(x, keep=True)` returns every op's output (the golden cache, list
index i = op i); `run(y, start=i, given=golden)` recomputes only ops i.. from a replacement y for op i's
input, reading other earlier outputs (a residual branch) from `given`; `step(i, *inputs)` runs one op;
`layers[i]` is weight op i as a GEMM (`weight` K x N, `im2col`, `gemm`, `fold`, register `widths`);
`requantize(i, acc, channels)` is weight op i's output stage on any subset of its accumulators
(`output_stages[q]`: quantizer q's, whatever it reads); `top1` turns logit accumulators into classes
(per-class scales under per-channel weights).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from typing import Any, ClassVar, Literal, overload

import numpy as np
import torch

from dsetool.engine import ops
from dsetool.engine.intmodel import (
    INPUT,
    Add,
    AvgPool2d,
    Concat,
    Conv2d,
    Flatten,
    IntModel,
    Linear,
    MaxPool2d,
    Op,
    QuantAct,
    WeightOp,
)

DEFAULT_MULTIPLIER_BITS = 16
# `Engine.run` splits a batch into parts whose widest op output stays below this many bytes: each part's
# tensors are then reused from the allocator's heap and stay in cache, where a batch of 256 allocates
# tensors of tens of MB that are fresh memory, page-faulted in, every call.
RUN_CHUNK_BYTES = 2**23
INT8_MIN_WORK = 8192   # K * N from which a float32 layer takes the int8 route (`_int8_pays_off`)
# At most this many float32 products over slices of the input channels run a float64 layer on the "parts"
# route (`_NarrowPlan`); a layer that needs more takes the split route (two products of weight halves).
# Each slice adds a copy of its input channels and a float64 add of the output: AlexNet-32's conv4 (384 ->
# 256, 8x8) and fc1 (4096 -> 256), batch 256, one AVX2 EPYC core, cut into 1 / 2 / 4 / 8 equal slices:
# 341 / 350 / 372 / 418 ms and 6.5 / 6.6 / 6.9 / 7.2 ms, against 678 and 17.9 ms on the split route.
MAX_PARTS = 8
# `Engine.run` runs a clean batch with its feature maps channels-last (each convolution's input converted
# once, its weights cached channels-last): oneDNN then convolves without reordering NCHW maps into its
# blocked layout and back at every call. AlexNet-32 / ResNet-20 W8A8 as `benchmarks/inject_throughput.py`
# trains them, batch 256, two AVX2 EPYC cores, this flag on and off in one process, three alternating
# rounds: 309-415 / 898-1,092 images/s against 264-345 / 755-950 plain. Runs that keep their outputs or
# take given tensors (a campaign's golden run, its dense rows of a residual network) stay plain: the fault
# paths index flat NCHW memory.
CHANNELS_LAST = True
Step = Callable[[torch.Tensor], torch.Tensor]
OpStep = Callable[..., torch.Tensor]   # an op on its input tensors, in the order of `IntModel.inputs`


@dataclass(frozen=True)
class RegisterWidths:
    """The register widths of one weight layer on the array (two's complement when signed).

    `acc_bits` is the fewest signed bits holding any accumulator the layer can reach with *any* bit
    pattern in its activation and weight registers (so also under operand faults), plus its actual bias:
    `acc_range` is that interval.
    """

    act_bits: int
    act_signed: bool
    weight_bits: int
    weight_signed: bool
    acc_bits: int
    acc_range: tuple[int, int]


def tensor_versions(*tensors: torch.Tensor) -> tuple[int, ...] | None:
    """Return what says whether `tensors` changed since: each one's storage address and autograd version
    counter (bumped by every in-place op on the tensor or a view of it), or None when one has no counter
    (made under `torch.inference_mode`): then nothing derived from them may be cached. Writes that bypass
    the counter (through `.data`, or a NumPy view of the storage) are not seen: edit weights with torch ops.
    """
    try:
        return tuple(number for t in tensors for number in (t.data_ptr(), t._version))
    except RuntimeError:
        return None


class GemmLayer:
    """One conv2d / linear layer as a GEMM: (B, M, K) input matrices times the K x N weight matrix.

    For a conv, M = out_h * out_w positions and K = C * kh * kw (im2col); for a linear layer M = 1 and
    K = in_features. N = output channels / features. Accumulators are exact (see `ops.gemm_bound`).
    """

    def __init__(self, op_index: int, op: WeightOp, act: QuantAct, device: torch.device) -> None:
        self.op_index, self.op, self.name = op_index, op, op.name
        self.widths = _widths(op, act)
        ops.check_exact(self.widths.acc_range, f"Layer {op.name!r}")
        self.dtype = ops.accumulator_dtype(self.widths.acc_range)
        self.weight_tensor = torch.from_numpy(op.weight.astype(np.float64)).to(device, self.dtype)  # torch layout
        self.weight = self.weight_tensor.reshape(op.out_features, -1).T  # (K, N), a view: one copy of the weights
        self.bias = torch.from_numpy(op.bias.astype(np.float64)).to(device, self.dtype)
        self.split = _split_shift(op, act) if self.dtype == torch.float64 else None
        self.int8 = _Int8Route.of(op, self.widths, self.dtype, device)
        self._narrow: tuple[tuple[int, ...] | None, _NarrowPlan | None] | None = None
        self._channels_last: dict[int, tuple[torch.Tensor, tuple[int, ...] | None, torch.Tensor]] = {}
        self.route = "int8" if self.int8 is not None else self._wide_route() if self.dtype == torch.float64 \
            else "float"

    def _wide_route(self) -> str:
        plan = self._narrow_plan()
        if plan is not None:
            return "narrow" if len(plan.bounds) == 1 else "parts"
        return "split" if self.split is not None else "float"

    def im2col(self, codes: torch.Tensor) -> torch.Tensor:
        """Return the (B, M, K) input matrices (in the layer's dtype) of codes shaped like its input."""
        codes = codes.to(self.dtype)
        if isinstance(self.op, Conv2d):
            return ops.im2col(codes, self.op.kernel, self.op.stride, self.op.padding)
        return codes.reshape(len(codes), 1, -1)

    def gemm(self, columns: torch.Tensor) -> torch.Tensor:
        """Return the (B, M, N) accumulators of (B, M, K) input matrices, bias included."""
        return ops.gemm(columns, self.weight, self.bias)

    def fold(self, acc: torch.Tensor) -> torch.Tensor:
        """Return (B, M, N) accumulators in the layer's output layout, (B, C, H, W) or (B, N)."""
        return acc.transpose(1, 2).reshape(len(acc), *self.op.out_shape)

    @property
    def grouped(self) -> bool:
        """Say whether the layer is a grouped (e.g. depthwise) conv: then `weight`, `im2col` and `gemm`
        describe one group's GEMM, not the layer's, and only `__call__` runs it."""
        return isinstance(self.op, Conv2d) and self.op.groups > 1

    def __call__(self, codes: torch.Tensor) -> torch.Tensor:
        """Return the layer's accumulators (B, C, H, W) or (B, N) of its input codes, contiguous (channels-last
        for channels-last codes, `ops.is_channels_last`), in `dtype`:
        by the int8 GEMM where `route` is "int8" (`_Int8Route`), else in float32 ("float"); a float64 layer
        as float32 products where its weights keep them exact (`_narrow_plan`: "narrow", one product;
        "parts", one per slice of the input channels, summed in float64), else as two float32 products of
        the weights' halves summed in float64 ("split") or one float64 product. `im2col`, `gemm` and `fold`
        stay float (the fault kernels' operands)."""
        if self.int8 is not None:
            acc = self.int8(codes, self.weight_tensor, self.bias)
            if acc is not None:
                return acc
        if self.dtype == torch.float32:
            return self._product(codes.to(torch.float32), self.weight_tensor, self.bias, slot=-1)
        plan = self._narrow_plan()
        if plan is None:
            return self._wide_product(codes, self.weight_tensor, self.bias)
        codes = codes.to(torch.float32)
        if plan.bias.dtype == torch.float32:
            return self._product(codes, plan.weights[0], plan.bias, slot=0).double()
        if isinstance(self.op, Linear):
            codes = codes.reshape(len(codes), -1)
        whole = len(plan.bounds) == 1   # one slice, the bias added after it (a grouped conv's are never cut)
        layout = torch.channels_last if ops.is_channels_last(codes) else torch.contiguous_format
        parts = (self._product(codes if whole else codes[:, first:last].contiguous(memory_format=layout), weight,
                               None, slot=slot)
                 for slot, ((first, last), weight) in enumerate(zip(plan.bounds, plan.weights, strict=True)))
        out = next(parts).double()
        for part in parts:
            out.add_(part)
        return out.add_(plan.bias.reshape(-1, 1, 1) if isinstance(self.op, Conv2d) else plan.bias)

    def _product(self, codes: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 slot: int | None = None) -> torch.Tensor:
        """The layer's product with `weight` (torch layout: all output channels, some input channels) and
        `bias` (None: none), in the codes' dtype. A conv of channels-last codes convolves channels-last
        weights and gives channels-last accumulators: those of `slot` are kept (`_weights_like`)."""
        if isinstance(self.op, Conv2d):
            if ops.is_channels_last(codes):
                weight = self._weights_like(weight, slot)
            return ops.conv2d(codes, weight, bias, self.op.stride, self.op.padding, self.op.groups)
        matrix = weight.reshape(len(weight), -1).T
        flat = codes.reshape(len(codes), -1)
        return torch.mm(flat, matrix) if bias is None else torch.addmm(bias, flat, matrix)

    def _weights_like(self, weight: torch.Tensor, slot: int | None) -> torch.Tensor:
        """Return `weight` channels-last, kept per `slot` (-1: the layer's weights; i: slice i of the narrow
        plan; None: not kept, as the split route's halves, made at every call) for as long as that slot
        holds the same tensor at the same version (an in-place edit makes a new copy)."""
        if slot is None:
            return weight.contiguous(memory_format=torch.channels_last)
        versions = tensor_versions(weight)
        kept = self._channels_last.get(slot)
        if kept is not None and kept[0] is weight and versions is not None and kept[1] == versions:
            return kept[2]
        copy = weight.contiguous(memory_format=torch.channels_last)
        self._channels_last[slot] = weight, versions, copy
        return copy

    def _narrow_plan(self) -> _NarrowPlan | None:
        """Return how float32 products compute this float64 layer exactly with its actual weights, or None
        when they cannot in `MAX_PARTS` products.

        The register bound (`widths.acc_range`) assumes every weight at its register's extreme; trained
        weights are far smaller, and with these weights every partial sum of output channel n over input
        channels P is at most max|act register| * sum_(k in P) |w[n, k]| in magnitude, whatever order the
        terms are added in and whatever codes (faulty ones included) the activation register holds. Below
        2**24 one float32 product over P is exact. So the input channels (a linear layer's features) are cut
        greedily into the fewest contiguous slices that each stay below it for every output channel; each
        slice is one float32 product (a conv on those channels: the same multiply-adds as the whole layer
        in total, where the split route runs every one twice), and their sum and the bias are exact in
        float64. With one slice the bias joins the product when it fits too: ResNet-20's 64-channel 3x3 convs
        at W8A8 (576 * 255 * 128 reaches 2**24 in the worst case, while trained weights stay near a tenth of
        it); AlexNet-32's conv4 and fc1 take two slices. A grouped conv takes one slice or none (a slice of
        its input channels would cut its groups). Checked again whenever the weights or the bias were
        replaced or edited in place (`tensor_versions`): a brute-force weight fault can push a layer onto
        more slices or the split route. (`route` says what the layer was built with.)"""
        versions = tensor_versions(self.weight_tensor, self.bias)
        cached = self._narrow
        if cached is not None and versions is not None and cached[0] == versions:
            return cached[1]
        self._narrow = versions, _NarrowPlan.of(self.weight_tensor, self.bias, self.widths, self.grouped)
        return self._narrow[1]

    def _wide_product(self, codes: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The float64 accumulators of `weight`'s channels, from two float32 products where `split` is
        set: with w = hi * 2**s + lo (0 <= lo < 2**s), each of x @ hi and x @ lo stays an exact float32
        integer (`_split_shift` proves it), and hi * 2**s + lo is summed exactly in float64; else one
        float64 product. Float64 BLAS and convolutions run about 10x slower than float32 here. The halves
        are taken from the weights at every call, so an edited weight (a test's brute-force fault) is what
        runs."""
        if self.split is None:
            return self._product(codes.to(torch.float64), weight, bias)
        codes = codes.to(torch.float32)
        scale = float(2**self.split)
        high = torch.floor(weight / scale)
        low = (weight - high * scale).to(torch.float32)
        high = high.to(torch.float32)
        shape = (-1, 1, 1) if isinstance(self.op, Conv2d) else (-1,)
        zero = torch.zeros(len(weight), dtype=torch.float32, device=codes.device)
        return self._product(codes, high, zero).double().mul_(scale).add_(
            self._product(codes, low, zero).double()).add_(bias.reshape(shape))


@dataclass(frozen=True, eq=False)
class _NarrowPlan:
    """A float64 layer as float32 products over contiguous slices of its input channels (`bounds`, [first,
    last) each; a linear layer's input features), each exact, summed in float64 (`GemmLayer._narrow_plan`).
    `weights` are the slices' float32 weights in torch layout; `bias` is float32 and part of the one
    product when there is one slice and it keeps that exact, else float64, added after the sum."""

    bounds: tuple[tuple[int, int], ...]
    weights: tuple[torch.Tensor, ...]
    bias: torch.Tensor

    @classmethod
    def of(cls, weight: torch.Tensor, bias: torch.Tensor, widths: RegisterWidths, grouped: bool
           ) -> _NarrowPlan | None:
        """Return the plan with the fewest slices for `weight` (N, C, ...) and `bias`, or None when one
        input channel alone passes 2**24, a grouped layer needs two slices, or more than `MAX_PARTS` do."""
        low, high = ops.int_range(widths.act_bits, widths.act_signed)
        limit = 2.0**ops.FLOAT32_EXACT_BITS
        per_channel = weight.abs().reshape(*weight.shape[:2], -1).sum(dim=2) * max(abs(low), abs(high), 1)
        if bool((per_channel.sum(dim=1) + bias.abs() < limit).all()):
            return cls(((0, weight.shape[1]),), (weight.to(torch.float32),), bias.to(torch.float32))
        reach = torch.nn.functional.pad(per_channel.cumsum(dim=1), (1, 0))   # (N, C + 1): sums of channels [0, c)
        bounds: list[tuple[int, int]] = []
        first = 0
        while first < weight.shape[1]:
            last = int((reach - reach[:, first:first + 1] < limit).all(dim=0).sum()) - 1
            if last <= first or len(bounds) == (1 if grouped else MAX_PARTS):
                return None
            bounds.append((first, last))
            first = last
        return cls(tuple(bounds), tuple(weight[:, first:last].to(torch.float32).contiguous()
                                        for first, last in bounds), bias)


class _Int8Route:
    """A weight layer as an int8 x int8 -> int32 GEMM (`torch._int_mm`; oneDNN's VNNI kernels on x86).

    Exact by `ops.int8_gemm_exact`: the codes minus an offset c (128 for unsigned bytes) and the weights
    are int8, every partial sum of their product fits int32, and offsets[n] = bias[n] + c * sum_k w[k, n]
    restores sum_k a_k w_k + bias[n]. The int32 products and the offsets are added in `sum_dtype`: the
    layer's dtype when both, and so their sum, are exact integers of it (below 2**24 for float32), else
    float64 (below 2**53: the engine's own check), narrowed after (exact: the accumulators fit the layer's
    dtype). The int8 weights and the offsets are rebuilt from `weight_tensor` and `bias` whenever either
    was edited in place (torch's version counter): a brute-force weight fault runs as written, and falls
    back to the float route when a value leaves the weight register the proof assumed.

    Taken for ungrouped convs and linear layers (grouped and depthwise convs stay float: each group's GEMM
    is too small, K = 9 and N = 1 for a depthwise 3x3). Measured on one EPYC core (VNNI), batch 256,
    float32 codes in and contiguous accumulators out, int8 against float32 `F.conv2d`: 64->192 3x3 at
    16x16 84 / 177 ms, 192->384 at 8x8 65 / 166, 384->256 at 8x8 88 / 222, 1x1 128->256 at 8x8 10 / 14;
    against the split route of float64 layers 3.5-4.6x (AlexNet-32 conv2-conv5, ResNet-20 stage 3). The
    casts around the GEMM (float codes to int8 channels-last, int32 products to float NCHW) bound the gain
    on layers with few channels: see `_int8_pays_off`.
    """

    def __init__(self, op: WeightOp, act_offset: int, weight_range: tuple[int, int], sum_dtype: torch.dtype,
                 out_dtype: torch.dtype) -> None:
        self.op, self.act_offset, self.weight_range = op, act_offset, weight_range
        self.sum_dtype, self.out_dtype = sum_dtype, out_dtype
        self._operands: tuple[tuple[int, ...] | None, torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def of(cls, op: WeightOp, widths: RegisterWidths, out_dtype: torch.dtype,
           device: torch.device) -> _Int8Route | None:
        """Return the route when it is exact and pays off for `op`, else None."""
        if not ops.INT8_GEMM_ENABLED or (isinstance(op, Conv2d) and op.groups > 1) or \
                not _int8_pays_off(op, out_dtype) or not ops.int8_gemm_fast(str(device)):
            return None
        act_range = ops.int_range(widths.act_bits, widths.act_signed)
        weight_range = ops.int_range(widths.weight_bits, widths.weight_signed)
        act_offset = ops.int8_gemm_exact(op.reduction, act_range, weight_range)
        if act_offset is None:
            return None
        shifted = (act_range[0] - act_offset, act_range[1] - act_offset)
        products = ops.gemm_bound(op.reduction, shifted, weight_range, (0, 0))
        column = ops.gemm_bound(op.reduction, (act_offset, act_offset), weight_range, (0, 0))
        bias = (int(op.bias.min()), int(op.bias.max()))
        offsets = column[0] + min(0, bias[0]), column[1] + max(0, bias[1])
        exact_bits = ops.FLOAT32_EXACT_BITS if out_dtype == torch.float32 else ops.FLOAT64_EXACT_BITS
        if not ops.fits(offsets, ops.FLOAT64_EXACT_BITS):
            return None
        narrow = all(ops.fits(bound, exact_bits) for bound in (products, offsets, widths.acc_range))
        return cls(op, act_offset, weight_range, out_dtype if narrow else torch.float64, out_dtype)

    def __call__(self, codes: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor | None:
        """Return the accumulators of `codes`, or None when `weight` holds a value the proof did not cover."""
        operands = self._current(weight, bias)
        if operands is None:
            return None
        matrix, offsets = operands
        op = self.op
        if isinstance(op, Conv2d):
            acc = ops.int8_conv2d(codes, matrix, offsets, self.act_offset, op.kernel, op.stride, op.padding)
        else:
            acc = ops.int8_linear(codes, matrix, offsets, self.act_offset)
        return acc.to(self.out_dtype)

    def _current(self, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        versions = tensor_versions(weight, bias)
        cached = self._operands
        if cached is not None and versions is not None and cached[0] == versions:
            return cached[1], cached[2]
        low, high = self.weight_range
        if not bool(((weight >= low) & (weight <= high)).all()):
            return None
        matrix = ops.int8_weight_matrix(weight)
        sums = matrix.to(torch.int64).sum(dim=0)
        offsets = (bias.to(torch.int64) + self.act_offset * sums).to(self.sum_dtype)
        self._operands = versions, matrix, offsets
        return matrix, offsets


def _int8_pays_off(op: WeightOp, out_dtype: torch.dtype) -> bool:
    """Say whether the int8 route beats the float one on `op`: always for float64 accumulators (the split
    route runs two float32 products and float64 passes: 3.5-4.6x slower than int8 on AlexNet-32 conv2-conv5
    and the 64-channel ResNet-20 convs), else when K * N >= `INT8_MIN_WORK`.

    Below that the casts around the int8 GEMM cost more than the float32 product saves. Per layer, batch
    256, one EPYC core (CPU ms, int8 / float32): ResNet-20 16->16 3x3 at 32x32 (K*N 2,304) 24 / 19, 1x1
    stride-2 shortcut 16->32 (512) 12 / 4, MobileNet 1x1 32->64 at 32x32 (2,048) 47 / 22, LeNet conv2
    (2,400) 2.6 / 1.2; 32->32 3x3 at 16x16 (9,216) 10.5 / 12.5, 1x1 64->128 (8,192) 16 / 17, 1x1 128->256
    (32,768) 10 / 14, 1x1 256->256 (65,536) 14 / 24.
    """
    return out_dtype == torch.float64 or op.reduction * op.out_features >= INT8_MIN_WORK


def _split_shift(op: WeightOp, act: QuantAct) -> int | None:
    """Return s such that both halves of every weight, hi = floor(w / 2**s) and lo = w - hi * 2**s, keep a
    product with any register activation exact in float32 (every partial sum below 2**24), or None."""
    act_register = ops.int_range(act.bits, act.signed)
    low, high = ops.int_range(op.weight_bits, op.weight_signed)
    for shift in range(1, op.weight_bits):
        halves = ((low >> shift, high >> shift), (0, 2**shift - 1))
        if all(ops.fits(ops.gemm_bound(op.reduction, act_register, part, (0, 0)), ops.FLOAT32_EXACT_BITS)
               for part in halves):
            return shift
    return None


def _widths(op: WeightOp, act: QuantAct) -> RegisterWidths:
    act_register = ops.int_range(act.bits, act.signed)
    weight_register = ops.int_range(op.weight_bits, op.weight_signed)
    bias = (int(op.bias.min()), int(op.bias.max()))
    bound = ops.gemm_bound(op.reduction, act_register, weight_register, bias)
    return RegisterWidths(act_bits=act.bits, act_signed=act.signed, weight_bits=op.weight_bits,
                          weight_signed=op.weight_signed, acc_bits=ops.signed_width(*bound), acc_range=bound)


class Requantizer:
    """An output stage: codes = clamp(round_half_even(relu?(acc) * M_c * 2**-s_c), qmin, qmax), ReLU when
    the quantizer is a quant_relu. `acc` are the integers of the op it reads (a weight layer's
    accumulators, an add's or a pool's sums, another quantizer's codes), channel c at scale s_in_c.

    `multiplier` and `shift` hold (M_c, s_c) per output channel c (the constants the RTL is built with);
    `factor` is M_c * 2**-s_c, exact. `ratios` are the exact acc_scale / out_scale they realise.
    `compute_dtype` says how: float32 when the accumulators are float32 and every M_c is a power of two
    (`po2` scaling: the product only moves the exponent, so it stays exact); float64 when `acc_range`
    times the multiplier stays below 2**53; else int64, as the RTL computes it (below 2**63; beyond that,
    ValueError). Codes come out as float32.
    """

    def __init__(self, constants: Sequence[tuple[int, int]], ratios: Sequence[Fraction], out: QuantAct,
                 acc_range: tuple[int, int], device: torch.device, what: str) -> None:
        self.relu = out.relu
        self.multiplier = tuple(m for m, _ in constants)
        self.shift = tuple(s for _, s in constants)
        self.ratios = tuple(ratios)
        self.qmin, self.qmax = out.qrange
        factor_bits = max(m.bit_length() + max(0, -s) for m, s in constants)  # bits of the pre-shift product
        ops.check_exact(acc_range, what, factor_bits, ops.INT64_BITS, "int64")
        shifts_only = all(m & (m - 1) == 0 for m in self.multiplier)
        if ops.accumulator_dtype(acc_range) == torch.float32 and shifts_only:
            self.compute_dtype = torch.float32
        elif ops.fits(acc_range, ops.FLOAT64_EXACT_BITS, factor_bits):
            self.compute_dtype = torch.float64
        else:
            self.compute_dtype = torch.int64
        factors = [float(Fraction(m) / Fraction(2) ** s) for m, s in constants]  # exact: m has <= 53 bits
        float_dtype = torch.float64 if self.compute_dtype == torch.int64 else self.compute_dtype
        self.factor = torch.tensor(factors, dtype=float_dtype, device=device)  # exact: see above
        self._int_constants = torch.tensor([self.multiplier, self.shift], dtype=torch.int64, device=device)

    def __call__(self, acc: torch.Tensor, channels: torch.Tensor | None = None) -> torch.Tensor:
        """Requantize `acc`: either in the layer's layout (B, C, ...) or, with `channels` (an integer
        tensor shaped like `acc` naming each value's output channel), any subset of accumulators."""
        if channels is None:
            return self.step(acc.shape[1:])(acc)
        multiplier, shift = self._int_constants[:, channels]
        return self._apply(acc, self.factor[channels], multiplier, shift)

    def step(self, shape: Sequence[int]) -> Callable[[torch.Tensor], torch.Tensor]:
        """Return the output stage for batches of per-image `shape`: (C, H, W), (C,) or flattened (C*H*W,)."""
        multiplier, shift = self._int_constants
        return partial(self._apply, factor=self._laid_out(self.factor, shape),
                       multiplier=self._laid_out(multiplier, shape), shift=self._laid_out(shift, shape))

    @staticmethod
    def _laid_out(values: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        channels = len(values)
        if len(shape) == 3:
            return values.reshape(channels, 1, 1)
        (features,) = shape
        return values.repeat_interleave(features // channels)  # chw order: channel-major

    def rounded(self, acc: torch.Tensor) -> torch.Tensor:
        """Return `acc` (B, C, ...) after ReLU, scaling and rounding, not yet saturated (float64): where a
        fault's effect vanished inside the output stage (`dsetool.faults.apply.Evaluated.masked_by`)."""
        multiplier, shift = self._int_constants
        shape = acc.shape[1:]
        unbounded = -2**62, 2**62
        return self._apply(acc, self._laid_out(self.factor, shape), self._laid_out(multiplier, shape),
                           self._laid_out(shift, shape), unbounded).to(torch.float64)

    def _apply(self, acc: torch.Tensor, factor: torch.Tensor, multiplier: torch.Tensor,
               shift: torch.Tensor, bounds: tuple[int, int] | None = None) -> torch.Tensor:
        qmin, qmax = (self.qmin, self.qmax) if bounds is None else bounds
        if self.compute_dtype != torch.int64:
            codes = ops.requantize(acc.to(self.compute_dtype), factor, qmin, qmax, self.relu)
            return codes.to(ops.CODE_DTYPE if bounds is None else torch.float64)
        codes = ops.fixed_point_requantize_int(acc.to(torch.int64), multiplier, shift, qmin, qmax, self.relu)
        return codes.to(ops.CODE_DTYPE if bounds is None else torch.float64)


def po2_constants(ratios: Sequence[Fraction], multiplier_bits: int) -> list[tuple[int, int]]:
    """Return (1, n) for each ratio 2**-n: the `po2` output stage is a pure shift (left when n < 0).

    A ratio that is not a power of two (after an average pool over a window of 9, say) takes the
    `multiplier_bits`-bit fixed-point multiplier instead, as under float scaling.
    """
    if not all(_is_po2(ratio) for ratio in ratios):
        return fixed_point_constants(ratios, multiplier_bits)
    return [(1, ratio.denominator.bit_length() - ratio.numerator.bit_length()) for ratio in ratios]


def _is_po2(ratio: Fraction) -> bool:
    return not (ratio.numerator & (ratio.numerator - 1) or ratio.denominator & (ratio.denominator - 1))


def fixed_point_constants(ratios: Sequence[Fraction], multiplier_bits: int) -> list[tuple[int, int]]:
    """Return the `multiplier_bits`-bit fixed-point multiplier (M, s) of each ratio (`float` scaling)."""
    return [ops.fixed_point_multiplier(ratio, multiplier_bits) for ratio in ratios]


OUTPUT_STAGES: dict[str, Callable[[Sequence[Fraction], int], list[tuple[int, int]]]] = {
    "po2": po2_constants, "float": fixed_point_constants}


class Engine:
    """Execute an `IntModel` bit-exactly on `device` (results do not depend on it).

    `multiplier_bits` sets the width of the fixed-point requantization multiplier under `float` scaling
    (`po2` needs none, except after an average pool whose window is no power of two). `checks[i]` acts on
    the codes the output stage of op i (a quantizer reading another op's integers) produces: a protection
    such as `dsetool.protect.check.RangeCheck`. `input_checks[w]` acts on the codes weight op w reads, as
    it reads them (so a fault in its input buffer meets it). Raises ValueError when a layer's accumulators
    could leave float64's exact integer range (2**53), or their product with the multiplier could leave
    int64's.

    Ops run in the model's topological order; each reads the outputs of the ops `IntModel.inputs` names,
    so a residual branch is kept until its add has read it.
    """

    def __init__(self, model: IntModel, *, multiplier_bits: int = DEFAULT_MULTIPLIER_BITS,
                 device: str | torch.device = "cpu", checks: Mapping[int, Step] | None = None,
                 input_checks: Mapping[int, Step] | None = None) -> None:
        if not isinstance(multiplier_bits, int) or isinstance(multiplier_bits, bool) or \
                not 1 <= multiplier_bits <= 32:
            raise ValueError(f"Multiplier bits must be an integer in 1..32, not {multiplier_bits!r}")
        self.model, self.multiplier_bits, self.device = model, multiplier_bits, torch.device(device)
        self.checks: dict[int, Step] = dict(checks or {})
        self.input_checks: dict[int, Step] = dict(input_checks or {})
        self._unchecked: dict[int, OpStep] = {}   # the output stages the checks follow, alone
        ops.disable_transform_convolutions()
        self.layers: dict[int, GemmLayer] = {}
        self.requantizers: dict[int, Requantizer] = {}   # by the weight op whose accumulators they read
        self.output_stages: dict[int, Requantizer] = {}  # by quantizer op: every requantizing quantizer
        self.ranges: list[tuple[int, int]] = []   # every op's output values lie in ranges[i]
        self.dtypes: list[torch.dtype] = []       # and come out as dtypes[i]
        self._steps: list[OpStep] = []
        for index, op in enumerate(model.ops):
            self._steps.append(self._step(index, op))
        for index, check in self.input_checks.items():
            if index not in self.layers:
                raise ValueError(f"Input checks go before weight layers, and op {index} is not one")
            self._steps[index] = _then(check, self._steps[index])
        self.weight_layers: tuple[int, ...] = tuple(self.layers)
        self._convolutions = frozenset(index for index, layer in self.layers.items() if isinstance(layer.op, Conv2d))
        self._last_reader = model.last_readers()
        widest = max(math.prod(op.out_shape) * dtype.itemsize for op, dtype in zip(model.ops, self.dtypes,
                                                                                      strict=True))
        self.run_chunk = max(1, RUN_CHUNK_BYTES // widest)   # images `run` takes at a time

    def _step(self, index: int, op: Op) -> OpStep:
        """Return how op `index` runs, recording the range and dtype of its outputs; each op class has its
        builder in `_BUILDERS` (an op class without one cannot be executed: a clear error, not a guess)."""
        builder = self._BUILDERS.get(type(op))
        if builder is None:
            raise ValueError(f"The engine has no step for op {op.name!r} of kind {op.kind!r}")
        return builder(self, index, op)

    def _input_ranges(self, index: int) -> list[tuple[int, int]]:
        return [self.ranges[i] for i in self.model.inputs[index] if i != INPUT]

    def _quant(self, index: int, op: QuantAct) -> OpStep:
        step = self._quant_step(index, op)
        self._record(op.qrange, ops.CODE_DTYPE)
        return step

    def _weight(self, index: int, op: WeightOp) -> OpStep:
        act = self.model.ops[self._producer(index)]
        assert isinstance(act, QuantAct)  # the loader checked the wiring
        layer = self.layers[index] = GemmLayer(index, op, act, self.device)
        self._record(layer.widths.acc_range, layer.dtype)
        return layer

    def _maxpool(self, index: int, op: MaxPool2d) -> OpStep:
        self._record(self._input_ranges(index)[0], self.dtypes[self.model.inputs[index][0]])
        return partial(ops.max_pool2d, kernel=op.kernel, stride=op.stride, padding=op.padding,
                       ceil_mode=op.ceil_mode)

    def _flatten(self, index: int, op: Flatten) -> OpStep:
        self._record(self._input_ranges(index)[0], self.dtypes[self.model.inputs[index][0]])
        return partial(torch.flatten, start_dim=1)

    def _avgpool(self, index: int, op: AvgPool2d) -> OpStep:
        low, high = self._input_ranges(index)[0]
        bound = op.window * min(0, low), op.window * max(0, high)   # padding adds zeros
        dtype = self._exact_dtype(bound, op.name)
        return partial(_sum_pool, dtype=dtype, kernel=op.kernel, stride=op.stride, padding=op.padding)

    def _add_op(self, index: int, op: Add) -> OpStep:
        first, second = self._input_ranges(index)
        bound = first[0] + second[0], first[1] + second[1]
        return partial(_add, dtype=self._exact_dtype(bound, op.name))

    def _concat(self, index: int, op: Concat) -> OpStep:
        ranges = self._input_ranges(index)
        self._record((min(low for low, _ in ranges), max(high for _, high in ranges)),
                     self.dtypes[self.model.inputs[index][0]])   # codes of one format: one range, one dtype
        return _concatenated

    # op class -> how the engine builds its step (and records its outputs' range and dtype)
    _BUILDERS: ClassVar[dict[type, Callable[[Engine, int, Any], OpStep]]] = {
        QuantAct: _quant, Conv2d: _weight, Linear: _weight, MaxPool2d: _maxpool, Flatten: _flatten,
        AvgPool2d: _avgpool, Add: _add_op, Concat: _concat}

    def _record(self, bound: tuple[int, int], dtype: torch.dtype) -> None:
        self.ranges.append(bound)
        self.dtypes.append(dtype)

    def _exact_dtype(self, bound: tuple[int, int], name: str) -> torch.dtype:
        ops.check_exact(bound, f"Op {name!r}")
        dtype = ops.accumulator_dtype(bound)
        self._record(bound, dtype)
        return dtype

    def _quant_step(self, index: int, op: QuantAct) -> OpStep:
        if op.kind == "quant_input":
            return partial(ops.quantize, scale=op.scale, qmin=op.qrange[0], qmax=op.qrange[1])
        source = self._producer(index)
        requantizer = self._requantizer(index, source, op)
        self.output_stages[index] = requantizer
        if source in self.layers:
            self.requantizers[source] = requantizer
        step = requantizer.step(self.model.input_shape_of(index))
        check = self.checks.get(index)
        if check is None:
            return step
        self._unchecked[index] = step
        return lambda acc: check(step(acc))

    def _producer(self, index: int) -> int:
        source = self.model.producer(index)
        assert source is not None  # the loader checked the wiring
        return source

    def _requantizer(self, index: int, source: int, out: QuantAct) -> Requantizer:
        ratios = [scale / Fraction(out.scale) for scale in self.model.scale_of(source)]
        constants = OUTPUT_STAGES[self.model.scaling](ratios, self.multiplier_bits)
        what = f"Output stage of {self.model.ops[source].name!r}" if source in self.layers \
            else f"Quantizer {out.name!r}"
        return Requantizer(constants, ratios, out, self.ranges[source], self.device, what)

    def input_shape(self, index: int) -> tuple[int, ...]:
        """Return the per-image shape of op `index`'s input (`len(ops)` gives the logits' shape)."""
        return self.model.input_shape_of(index) if index < len(self.model.ops) else self.model.ops[-1].out_shape

    def input_dtype(self, index: int) -> torch.dtype:
        """Return the dtype op `index` reads (of its first input): float32 images or codes, or the integers
        of the op it follows (a weight layer's accumulators: float32 or float64, that layer's `dtype`)."""
        if index >= len(self.model.ops):
            return self.dtypes[-1]
        source = self.model.inputs[index][0]
        return torch.float32 if source == INPUT else self.dtypes[source]

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Return the input quantizer's codes of float images x (B, C, H, W), as Brevitas computes them."""
        return self.run(x, stop=1)

    def step(self, index: int, *inputs: torch.Tensor, checked: bool = True) -> torch.Tensor:
        """Execute op `index` on its batched input tensors (`IntModel.inputs` order), which must already
        be in the dtypes the ops before it give; `checked` False: without the protection after it."""
        return (self._steps[index] if checked else self._unchecked.get(index, self._steps[index]))(*inputs)

    @overload
    def run(self, x: torch.Tensor | None, *, start: int = ..., stop: int | None = ...,
            keep: Literal[False] = ..., checked: bool = ...,
            given: Sequence[torch.Tensor] | Mapping[int, torch.Tensor] | None = ...) -> torch.Tensor: ...

    @overload
    def run(self, x: torch.Tensor | None, *, start: int = ..., stop: int | None = ...,
            keep: Literal[True], checked: bool = ...,
            given: Sequence[torch.Tensor] | Mapping[int, torch.Tensor] | None = ...) -> list[torch.Tensor]: ...

    def run(self, x: torch.Tensor | None, *, start: int = 0, stop: int | None = None,
            keep: bool = False, checked: bool = True,
            given: Sequence[torch.Tensor] | Mapping[int, torch.Tensor] | None = None
            ) -> torch.Tensor | list[torch.Tensor]:
        """Run ops[start:stop] on x, the batched input of op `start`; return the last output, or with
        `keep` the list of every op's output (item j is op start + j). `checked` False runs the ops
        without the protections (`checks`) after them.

        An op that reads the output of an op before `start` other than op `start`'s input (a residual
        branch) takes it from `given` (a list or dict by op index: the golden run, say); x may then be
        None when `given` holds op `start`'s input too. x is not modified. Outputs may share storage
        (flatten returns a view of its input): clone one before editing it in place. x is cast to
        `input_dtype(start)` (images: float32, the Brevitas model's). Without `given` or `keep`, a batch
        of more than `run_chunk` images runs `run_chunk` at a time (`RUN_CHUNK_BYTES`; every op is per
        image, so the values are the same). With `keep` it runs whole: its outputs are batch-sized anyway,
        and gathering the parts' would hold every output twice. Without `given` or `keep` the feature maps
        are channels-last inside (`CHANNELS_LAST`); the result is contiguous either way.
        """
        stop = len(self._steps) if stop is None else stop
        if not 0 <= start <= stop <= len(self._steps):
            raise ValueError(f"Op range [{start}, {stop}) is not within the model's {len(self._steps)} ops")
        if given is None and x is not None and not keep and len(x) > self.run_chunk:
            return torch.cat([self.run(x[first:first + self.run_chunk], start=start, stop=stop, checked=checked)
                              for first in range(0, len(x), self.run_chunk)])
        values: dict[int, torch.Tensor] = {}
        if x is not None:
            first = self.model.inputs[start][0] if start < len(self._steps) else len(self._steps) - 1
            expected = self.model.input_shape if first == INPUT else self.model.ops[first].out_shape
            if tuple(x.shape[1:]) != expected:
                raise ValueError(f"Op {start} reads per-image shape {list(expected)}, not {list(x.shape[1:])}")
            x = x.to(self.device, self.input_dtype(start))
            if start < len(self._steps):   # x is op start's first input (an add takes its other one from given)
                values[self.model.inputs[start][0]] = x
        outputs = []
        last = x
        plain = not CHANNELS_LAST or keep or given is not None   # else channels-last (see CHANNELS_LAST)
        for index in range(start, stop):
            reads = [self._value(source, values, given, index) for source in self.model.inputs[index]]
            if not plain and index in self._convolutions:
                reads[0] = reads[0].contiguous(memory_format=torch.channels_last)
            last = values[index] = self.step(index, *reads, checked=checked)
            outputs.append(last)
            for source in self.model.inputs[index]:   # free what no later op reads
                if self._last_reader[source] <= index and source in values and source != index:
                    del values[source]
        if keep:
            return outputs
        assert last is not None, "an empty op range needs its input x"
        return last if plain else last.contiguous()

    def _value(self, source: int, values: Mapping[int, torch.Tensor],
               given: Sequence[torch.Tensor] | Mapping[int, torch.Tensor] | None, reader: int) -> torch.Tensor:
        if source in values:
            return values[source]
        if given is not None and (source in given if isinstance(given, Mapping) else 0 <= source < len(given)):
            return given[source].to(self.device, self.dtypes[source] if source != INPUT else torch.float32)
        raise ValueError(f"Op {reader} reads op {source}'s output, which this run neither computes nor is given")

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Return the last op's integers (B, num_classes) for float images x: the last layer's accumulators,
        or what the last op gives (a flattened global average pool's sums, as SqueezeNet ends)."""
        return self.run(x)

    def logit_scale(self) -> torch.Tensor:
        """Return the float scale of each logit (num_classes,): the last layer's accumulator scales, else
        the exact scale of the last op's integers (`IntModel.scale_of`), per class."""
        last = len(self.model.ops) - 1
        if last in self.layers:
            return self.acc_scale(last)
        scales = torch.tensor([float(s) for s in self.model.scale_of(last)], dtype=torch.float64, device=self.device)
        return scales.repeat_interleave(self.model.num_classes // len(scales))   # channel-major when flattened

    def acc_scale(self, index: int) -> torch.Tensor:
        """Return the float scale of weight op `index`'s accumulators, per output channel (N,)."""
        return torch.from_numpy(self.layers[index].op.acc_scale().copy()).to(self.device)

    def dequantized_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Return the float logits, the integer logits times their scale (comparable with Brevitas's output)."""
        return self.logits(x) * self.logit_scale()

    def top1(self, acc: torch.Tensor) -> torch.Tensor:
        """Return the predicted class of integer logits (B, num_classes).

        Not `acc.argmax(1)`: with per-channel weight scales each class has its own accumulator scale.
        """
        return (acc.to(self.device) * self.logit_scale()).argmax(1)

    def requantize(self, index: int, acc: torch.Tensor, channels: torch.Tensor | None = None) -> torch.Tensor:
        """Apply weight op `index`'s output stage to `acc` (see `Requantizer.__call__`)."""
        if index not in self.requantizers:
            raise ValueError(f"Op {index} is not a weight layer with an output stage (those are "
                             f"{sorted(self.requantizers)}; the logits layer has none)")
        channels = None if channels is None else channels.to(self.device)
        return self.requantizers[index](acc.to(self.device, torch.float64), channels)


def _then(first: Step, second: OpStep) -> OpStep:
    return lambda x: second(first(x))


def _sum_pool(values: torch.Tensor, *, dtype: torch.dtype, kernel: tuple[int, int], stride: tuple[int, int],
              padding: tuple[int, int]) -> torch.Tensor:
    return ops.sum_pool2d(values.to(dtype), kernel, stride, padding)


def _add(first: torch.Tensor, second: torch.Tensor, *, dtype: torch.dtype) -> torch.Tensor:
    return first.to(dtype) + second.to(dtype)


def _concatenated(*parts: torch.Tensor) -> torch.Tensor:
    return torch.cat(parts, dim=1)

