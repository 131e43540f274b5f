"""Follow a single activation fault of a convolution through the feature maps it can reach, in a window.

A flipped input value of a convolution changes only the outputs whose receptive field covers it: a
kh x kw window of positions (every channel). Requantization (rounding, saturation, ReLU) acts value by
value and max-pooling window by window, so outside a window that grows by each op's kernel and shrinks
by its stride, every value equals the golden one. Each row therefore carries a small box (C, h, w) of
values at a per-row position; each op is computed on the box only, from the golden tensor around it
(receptive-field halo, zero or -inf padding as the op pads), batched over rows with fixed box sizes.
A row whose box equals the golden one after requantization or pooling is masked and leaves. A row
joins the dense computation at the first linear layer, or at a convolution whose box would cover most
of its output, with its input rebuilt as the golden tensor with the box put in.

Exact: the same integer operations on the same values (convolutions of exact integers, see
`dsetool.engine.ops`), only on a window. It turns an early-layer fault from a whole inference into a
few thousand multiply-adds, and most faults never leave the window (they are masked in it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dsetool.engine import Engine, ops
from dsetool.engine.intmodel import Conv2d, Flatten, MaxPool2d, QuantAct, producer

# A convolution whose box would cover more than this share of its output runs densely: the windowed
# form recomputes the overlapping halos and costs more per output than the whole-map convolution.
DENSE_SHARE = 0.4


@dataclass(frozen=True)
class Box:
    """Row `rows[b]`'s values of one op's output in the window [y0[b], y0[b] + h) x [x0[b], x0[b] + w)
    (every channel); outside it the values are golden. `rows` index the propagated rows. The window
    may hang over the map's edge: positions outside the map mean nothing and are never read.
    `reference` holds the golden values in the window when a step needs them (None otherwise)."""

    rows: torch.Tensor
    y0: torch.Tensor
    x0: torch.Tensor
    values: torch.Tensor  # (B, C, h, w)
    reference: torch.Tensor | None

    def pick(self, index: torch.Tensor) -> Box:
        """Return the rows `index` of the box (a 1-D integer tensor)."""
        reference = None if self.reference is None else self.reference.index_select(0, index)
        return Box(self.rows[index], self.y0[index], self.x0[index], self.values.index_select(0, index), reference)


@dataclass(frozen=True)
class Join:
    """Rows that leave the window path at the input of op `op`: `tensor` holds their dense inputs to it;
    `rows` index the propagated rows."""

    op: int
    rows: np.ndarray
    tensor: torch.Tensor


def propagate(engine: Engine, golden: Sequence[torch.Tensor], inputs: np.ndarray, op: int, channel: torch.Tensor,
              y: torch.Tensor, x: torch.Tensor, faulty: torch.Tensor) -> list[Join]:
    """Follow one changed input value per row, at (channel, y, x) of conv op `op`'s input, now `faulty`.

    `inputs[r]` names row r's campaign input (its golden tensors are `golden[i][inputs[r]]`). Returns
    where the rows whose fault is not masked continue; masked rows appear in no `Join`.
    """
    images = torch.from_numpy(inputs)
    reference = _window(golden[op - 1], images, y, x, 1, 1, fill=0.0)
    hit = torch.arange(reference.shape[1])[None, :, None, None] == channel[:, None, None, None]
    box = Box(torch.arange(len(inputs)), y, x, torch.where(hit, faulty.to(reference.dtype)[:, None, None, None],
                                                            reference), reference)
    model_ops = engine.model.ops
    index = op
    while True:
        current = model_ops[index]
        if isinstance(current, Conv2d):
            if current.stride == (1, 1):
                (kh, kw), (ph, pw) = current.kernel, current.padding
                y0, x0 = box.y0 + ph - kh + 1, box.x0 + pw - kw + 1
                h, w = box.values.shape[2] + kh - 1, box.values.shape[3] + kw - 1
            else:
                y0, h = _reach(box.y0, box.values.shape[2], current.kernel[0], current.stride[0],
                               current.padding[0], current.out_shape[1])
                x0, w = _reach(box.x0, box.values.shape[3], current.kernel[1], current.stride[1],
                               current.padding[1], current.out_shape[2])
            if index != op and h * w > DENSE_SHARE * current.out_shape[1] * current.out_shape[2]:
                return [_dense_join(index, golden[index - 1], images, box, engine.input_shape(index))]
            if current.stride == (1, 1):
                box = _delta_conv(engine, index, golden, images, box, y0, x0, h, w)
            else:
                layer = engine.layers[index]
                patch = _patch(golden[index - 1], images, box, current, y0, x0, h, w, fill=0.0)
                box = Box(box.rows, y0, x0, ops.conv2d(patch.to(layer.dtype), layer.weight_tensor, layer.bias,
                                                       current.stride, (0, 0)), None)
        elif isinstance(current, MaxPool2d):
            y0, h = _reach(box.y0, box.values.shape[2], current.kernel[0], current.stride[0], current.padding[0],
                           current.out_shape[1])
            x0, w = _reach(box.x0, box.values.shape[3], current.kernel[1], current.stride[1], current.padding[1],
                           current.out_shape[2])
            patch = _patch(golden[index - 1], images, box, current, y0, x0, h, w, fill=float("-inf"))
            box = _unmasked(Box(box.rows, y0, x0, ops.max_pool2d(patch, current.kernel, current.stride, (0, 0)),
                                None), golden[index], images)
        elif isinstance(current, QuantAct):
            source = producer(model_ops, index)
            assert source is not None
            requantize = engine.requantizers[source].step(box.values.shape[1:])
            box = _unmasked(Box(box.rows, box.y0, box.x0, requantize(box.values), None), golden[index], images)
        elif isinstance(current, Flatten):  # the next (linear) layer reads the map as a vector: join there
            return [_dense_join(index + 1, golden[index], images, box, engine.input_shape(index))]
        else:  # a linear layer reading the map directly
            return [_dense_join(index, golden[index - 1], images, box, engine.input_shape(index))]
        if not len(box.rows):
            return []
        index += 1


def _delta_conv(engine: Engine, index: int, golden: Sequence[torch.Tensor], images: torch.Tensor, box: Box,
                y0: torch.Tensor, x0: torch.Tensor, h: int, w: int) -> Box:
    """Return a stride-1 convolution's accumulators around a changed input box: golden + the convolution
    of the change (zero outside the box, so the full convolution of the box alone), which is exactly the
    window of outputs the box reaches, [y0, y0 + h) = [box.y0 + pad - k + 1, box.y0 + box_h + pad). The
    golden values need not be gathered around the box, nor the box put into them."""
    assert box.reference is not None
    layer = engine.layers[index]
    dtype = _delta_dtype(engine, index)
    height, width = engine.input_shape(index)[1:]
    inside = _in_map(box.y0, box.x0, box.values.shape[2], box.values.shape[3], height, width)
    delta = torch.where(inside, box.values.to(dtype) - box.reference.to(dtype), torch.zeros((), dtype=dtype))
    assert isinstance(layer.op, Conv2d)
    kh, kw = layer.op.kernel
    change = ops.conv2d(F.pad(delta, (kw - 1, kw - 1, kh - 1, kh - 1)), layer.weight_tensor.to(dtype), None,
                        (1, 1), (0, 0))
    around = _window(golden[index], images.index_select(0, box.rows), y0, x0, h, w, fill=0.0)
    return Box(box.rows, y0, x0, (around.to(dtype) + change).to(layer.dtype), None)


def _delta_dtype(engine: Engine, index: int) -> torch.dtype:
    """Return the dtype in which layer `index`'s change products sum exactly: a change of an input code
    spans up to qmax - qmin either way (see `ops.gemm_bound`)."""
    layer = engine.layers[index]
    source = producer(engine.model.ops, index)
    assert source is not None
    act = engine.model.ops[source]
    assert isinstance(act, QuantAct)
    low, high = act.qrange
    weights = ops.int_range(layer.widths.weight_bits, layer.widths.weight_signed)
    return ops.accumulator_dtype(ops.gemm_bound(layer.op.reduction, (low - high, high - low), weights, (0, 0)))


def _in_map(y0: torch.Tensor, x0: torch.Tensor, h: int, w: int, height: int, width: int) -> torch.Tensor:
    """Return (B, 1, h, w): which positions of each row's window lie inside the (height, width) map."""
    ys, xs = y0[:, None] + torch.arange(h), x0[:, None] + torch.arange(w)
    return ((ys >= 0) & (ys < height))[:, None, :, None] & ((xs >= 0) & (xs < width))[:, None, None, :]


def _reach(start: torch.Tensor, size: int, kernel: int, stride: int, padding: int, out_size: int
           ) -> tuple[torch.Tensor, int]:
    """Return the per-row first output position and the common count of outputs an op with this kernel,
    stride and padding computes from inputs [start, start + size): every output reading a changed input
    lies in [first, first + count) and within the output."""
    low = -torch.div(-(start + padding - kernel + 1), stride, rounding_mode="floor")  # ceil
    high = torch.div(start + size - 1 + padding, stride, rounding_mode="floor")
    low, high = low.clamp(min=0), high.clamp(max=out_size - 1)
    count = max(1, min(out_size, int((high - low + 1).max())))
    return torch.minimum(low, torch.tensor(out_size - count)), count


def _window(tensor: torch.Tensor, images: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, h: int, w: int,
            fill: float | None) -> torch.Tensor:
    """Return (B, C, h, w) windows of a golden (n_inputs, C, H, W) tensor at image `images[b]`, rows
    y0[b].., columns x0[b]..; positions outside the map read `fill` (None: the windows lie inside)."""
    _, channels, height, width = tensor.shape
    ys, xs = y0[:, None] + torch.arange(h), x0[:, None] + torch.arange(w)                     # (B, h), (B, w)
    index = ((images[:, None, None, None] * channels + torch.arange(channels)[None, :, None, None]) * height
             + ys.clamp(0, height - 1)[:, None, :, None]) * width + xs.clamp(0, width - 1)[:, None, None, :]
    values = torch.take(tensor, index)
    if fill is None:
        return values
    inside = ((ys >= 0) & (ys < height))[:, None, :, None] & ((xs >= 0) & (xs < width))[:, None, None, :]
    return torch.where(inside, values, torch.tensor(fill, dtype=values.dtype))


def _patch(golden_in: torch.Tensor, images: torch.Tensor, box: Box, op: Conv2d | MaxPool2d, y0: torch.Tensor,
           x0: torch.Tensor, h: int, w: int, fill: float) -> torch.Tensor:
    """Return the op's input that outputs [y0, y0 + h) x [x0, x0 + w) read: golden around the box, the
    box's values inside it (where it lies on the map), `fill` where the op pads."""
    (kh, kw), (sh, sw), (ph, pw) = op.kernel, op.stride, op.padding
    py0, px0 = y0 * sh - ph, x0 * sw - pw
    patch_h, patch_w = (h - 1) * sh + kh, (w - 1) * sw + kw
    around = _window(golden_in, images.index_select(0, box.rows), py0, px0, patch_h, patch_w, fill)
    rows, channels, box_h, box_w = box.values.shape
    by = py0[:, None] + torch.arange(patch_h) - box.y0[:, None]                            # box-relative
    bx = px0[:, None] + torch.arange(patch_w) - box.x0[:, None]
    inside = ((by >= 0) & (by < box_h))[:, None, :, None] & ((bx >= 0) & (bx < box_w))[:, None, None, :] \
        & _in_map(py0, px0, patch_h, patch_w, *golden_in.shape[2:])
    index = ((torch.arange(rows)[:, None, None, None] * channels + torch.arange(channels)[None, :, None, None])
             * box_h + by.clamp(0, box_h - 1)[:, None, :, None]) * box_w + bx.clamp(0, box_w - 1)[:, None, None, :]
    return torch.where(inside, torch.take(box.values, index).to(around.dtype), around)


def _unmasked(box: Box, golden_out: torch.Tensor, images: torch.Tensor) -> Box:
    """Return the rows of `box` whose values on the map differ from the golden ones (the others are
    masked), with the golden values as their reference."""
    _, _, h, w = box.values.shape
    reference = _window(golden_out, images.index_select(0, box.rows), box.y0, box.x0, h, w, fill=0.0)
    differs = (box.values != reference.to(box.values.dtype)) & _in_map(box.y0, box.x0, h, w, *golden_out.shape[2:])
    kept = torch.nonzero(differs.flatten(1).any(dim=1)).reshape(-1)
    return Box(box.rows, box.y0, box.x0, box.values, reference).pick(kept)


def _dense_join(op: int, golden_in: torch.Tensor, images: torch.Tensor, box: Box, shape: Sequence[int]) -> Join:
    """Return the rows' dense input to op `op`: golden with the box put in. The box lives in the
    (C, H, W) `shape` of that input, or of the map flatten turned into it (the same flat order)."""
    dense = torch.index_select(golden_in, 0, images.index_select(0, box.rows))
    rows, channels, h, w = box.values.shape
    _, height, width = shape
    ys, xs = box.y0[:, None] + torch.arange(h), box.x0[:, None] + torch.arange(w)
    index = ((torch.arange(rows)[:, None, None, None] * channels + torch.arange(channels)[None, :, None, None])
             * height + ys[:, None, :, None]) * width + xs[:, None, None, :]
    on_map = _in_map(box.y0, box.x0, h, w, height, width).expand_as(index)
    dense.put_(index[on_map], box.values[on_map].to(dense.dtype))
    return Join(op, box.rows.numpy(), dense)
