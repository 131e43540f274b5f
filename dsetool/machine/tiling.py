"""How a layer's weights tile the weight-stationary array: its K slices (lanes of one activation word at
one kernel tap; slices holding only padding channels left out), which slices each N slice reads (all of
them, or for a grouped conv those holding its columns' groups) and the weight memory's words in the order
the array loads them. Pure numpy, from the layer and where its input lies (`program.Tensor`)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from dsetool.engine.intmodel import Add, AvgPool2d, Concat, Conv2d, Flatten, IntModel, QuantAct, WeightOp
from dsetool.machine.program import Slice, Tensor, ceil_div


@dataclass(frozen=True)
class Tiling:
    """The array (`rows` x `cols`) and the activation word's `lanes` a layer is tiled for."""

    rows: int
    cols: int
    lanes: int

    def columns(self, out_channels: int, lead: int) -> np.ndarray:
        """Return per N slice the output channel of each column (-1: none): channel n at column
        lead + n, so a layer writing from inside a part of a word lines its N slices up with the parts."""
        virtual = np.arange(ceil_div(lead + out_channels, self.cols) * self.cols) - lead
        return np.where(virtual < out_channels, virtual, -1).reshape(-1, self.cols)

    def tiles(self, op: WeightOp, source: Tensor, columns: np.ndarray
              ) -> tuple[tuple[tuple[Slice, ...], ...], list[tuple[int, ...]]]:
        """Return the K slices of each N slice (one shared list when all read the same) and the weight
        memory words of their tiles: per N slice, per K slice, `rows` rows of `cols` weights, the row of
        the slice's last lane first (the order the array loads them)."""
        slices, k_index = self.slices(op, source)
        matrix = dense_weight(op)
        padded = np.zeros((matrix.shape[0] + 1, matrix.shape[1] + 1), dtype=np.int64)
        padded[:-1, :-1] = matrix   # index -1 (no channel, a padding lane) reads the zero row and column
        lists: list[tuple[Slice, ...]] = []
        words: list[tuple[int, ...]] = []
        for outs in columns:
            read = np.flatnonzero(_reads(op, outs, k_index))
            lists.append(tuple(slices[i] for i in read))
            rows = k_index[read][:, ::-1]
            words.extend(map(tuple, padded[outs[None, None, :], rows[:, :, None]].reshape(-1, self.cols).tolist()))
        return ((lists[0],) if all(one == lists[0] for one in lists) else tuple(lists)), words

    def slices(self, op: WeightOp, source: Tensor) -> tuple[list[Slice], np.ndarray]:
        """Return the layer's K slices (all-padding ones left out) and, per slice, the index into the
        dense weight (`dense_weight`) of each of its `rows` lanes (-1: a padding lane)."""
        slices: list[Slice] = []
        k_index: list[list[int]] = []
        for dy, dx, group, _, flat in self.taps(op, source):
            for first in range(0, self.lanes, self.rows):
                indices = [flat(lane_c) for lane_c in range(first, first + self.rows)]
                if any(i >= 0 for i in indices):
                    slices.append(Slice(dy, dx, group, first))
                    k_index.append(indices)
        return slices, np.array(k_index, dtype=np.int64).reshape(-1, self.rows)

    def taps(self, op: WeightOp, source: Tensor) -> Iterator[tuple[int, int, int, int, Any]]:
        """Yield (dy, dx, group, lane, flat) per word a layer reads at each output pixel, flat(lane)
        giving the torch weight's flat K index of that lane (-1: padding)."""
        lanes, t = self.lanes, source
        if isinstance(op, Conv2d):
            (kh, kw), (py, px) = op.kernel, op.padding
            for ky in range(kh):
                for kx in range(kw):
                    for g in range(t.groups):
                        def flat(lane: int, g: int = g, ky: int = ky, kx: int = kx) -> int:
                            c = g * lanes + lane
                            return c * kh * kw + ky * kw + kx if c < t.channels else -1
                        yield ky - py, kx - px, g, 0, flat
            return
        pixels = t.height * t.width
        for word in range(t.words):
            pixel, g = divmod(word, t.groups)

            def flat_linear(lane: int, g: int = g, pixel: int = pixel) -> int:
                c = g * lanes + lane
                return c * pixels + pixel if c < t.channels else -1
            yield 0, 0, word, 0, flat_linear


def machine_k_order(model: IntModel, index: int, rows: int, cols: int) -> tuple[int, ...] | None:
    """Return the order in which the accelerator streams weight op `index`'s K through a rows x cols array
    (`dsetool.engine.tiling.LayerTiling.k_order`: per K slice its `rows` lanes' K indices, -1 for padding
    lanes), or None where there is no one order: sides that do not divide one another (no accelerator
    has that array) or a grouped conv (its N slices read different K slices).

    The layer reads its input's words as the compiler lays them out (`stored_map`); a concat's tensor is
    laid out as any other, so its readers' order follows the same rule."""
    op = model.ops[index]
    if isinstance(op, Conv2d) and op.groups > 1:
        return None
    found = _machine_slices(model, index, rows, cols)
    return None if found is None else tuple(int(k) for k in found[1].reshape(-1))


def machine_slice_orders(model: IntModel, index: int, rows: int, cols: int) -> tuple[tuple[int, ...], ...] | None:
    """Return the K order of each N slice of grouped conv `index` on a rows x cols array (the K slices
    holding a channel of its columns' groups, as `Tiling.tiles` picks them; K indices over all input
    channels), or None for a dense layer or an array no accelerator has."""
    op = model.ops[index]
    if not isinstance(op, Conv2d) or op.groups == 1:
        return None
    found = _machine_slices(model, index, rows, cols)
    if found is None:
        return None
    tiling, k_index = found
    columns = tiling.columns(op.out_features, machine_lead(model, index, cols))
    return tuple(tuple(int(k) for k in k_index[_reads(op, outs, k_index)].reshape(-1)) for outs in columns)


def _machine_slices(model: IntModel, index: int, rows: int, cols: int) -> tuple[Tiling, np.ndarray] | None:
    """Return the tiling and weight op `index`'s K slices' K indices (`Tiling.slices`), None without an
    accelerator."""
    op = model.ops[index]
    assert isinstance(op, WeightOp)
    from dsetool.machine.compiler import UnsupportedOp, lanes_of  # (the compiler imports this module)

    try:
        lanes = lanes_of(rows, cols)
    except UnsupportedOp:
        return None
    channels, height, width = stored_map(model, model.input_of(index))
    tiling = Tiling(rows, cols, lanes)
    _, k_index = tiling.slices(op, Tensor(0, channels, height, width, lanes))
    return tiling, k_index


def machine_lead(model: IntModel, index: int, cols: int) -> int:
    """Return the empty columns before output channel 0 of weight op `index` on an array of `cols` columns
    (`Gemm.lead`): its output channels' offset in the concat its quantizer writes into, if any (nested
    concats add their own), modulo `cols`; 0 for the logits layer or a quantizer with words of its own."""
    readers = model.consumers(index)
    if len(readers) != 1 or not isinstance(model.ops[readers[0]], QuantAct):
        return 0   # the logits (the compiler refuses any other reader)
    return _concat_offset(model, readers[0]) % cols


def _concat_offset(model: IntModel, index: int) -> int:
    """Return the channel where op `index`'s codes start in the concat reading them (0: none)."""
    concats = [r for r in model.consumers(index) if isinstance(model.ops[r], Concat)]
    if not concats:
        return 0
    reads = model.inputs[concats[0]]
    return _concat_offset(model, concats[0]) + sum(model.ops[r].out_shape[0] for r in reads[:reads.index(index)])


def stored_map(model: IntModel, index: int) -> tuple[int, int, int]:
    """Return the (C, H, W) map whose pixel-major words hold op `index`'s codes in the activation buffer, as
    `dsetool.machine.compiler` places them: a flatten keeps its input's words; a quantizer the vector unit
    runs keeps the map its codes are made on even when its output is flat (an add's or average pool's
    output map, else the map of the codes it reads); every other op's output is its own shape (a vector
    of F values: F x 1 x 1)."""
    op = model.ops[index]
    if isinstance(op, Flatten):
        return stored_map(model, model.input_of(index))
    if isinstance(op, QuantAct) and op.kind != "quant_input" and len(op.out_shape) != 3:
        source = model.input_of(index)
        inner = source
        while isinstance(model.ops[inner], Flatten):
            inner = model.input_of(inner)
        if isinstance(model.ops[inner], (Add, AvgPool2d)):
            return _as_map(model.ops[inner].out_shape)
        if not isinstance(model.ops[inner], WeightOp):   # (a weight op's quantizer is its output stage)
            return stored_map(model, source)
    return _as_map(op.out_shape)


def _as_map(shape: tuple[int, ...]) -> tuple[int, int, int]:
    return (shape[0], shape[1], shape[2]) if len(shape) == 3 else (math.prod(shape), 1, 1)


def _reads(op: WeightOp, outs: np.ndarray, k_index: np.ndarray) -> np.ndarray:
    """Return which K slices an N slice with output channels `outs` reads: all for a dense layer; for a
    grouped conv those holding a channel of one of its columns' groups."""
    if not isinstance(op, Conv2d) or op.groups == 1:
        return np.ones(len(k_index), dtype=bool)
    in_group = int(op.weight.shape[1]) * op.kernel[0] * op.kernel[1]   # K indices per group
    groups = np.unique(outs[outs >= 0] // (op.out_features // op.groups))
    return np.asarray((np.isin(k_index // in_group, groups) & (k_index >= 0)).any(axis=1))



def dense_weight(op: WeightOp) -> np.ndarray:
    """Return the layer's weights as a dense (out, K) matrix, K = input channel * taps + tap (a linear
    layer's: its flat input): a grouped conv's block diagonal, zeros between an output channel and the
    input channels of other groups."""
    weight = np.asarray(op.weight, dtype=np.int64)
    if not isinstance(op, Conv2d) or op.groups == 1:
        return weight.reshape(op.out_features, -1)
    out_group, in_group = op.out_features // op.groups, int(weight.shape[1])
    dense = np.zeros((op.out_features, in_group * op.groups, op.kernel[0] * op.kernel[1]), dtype=np.int64)
    for g in range(op.groups):
        outs, ins = slice(g * out_group, (g + 1) * out_group), slice(g * in_group, (g + 1) * in_group)
        dense[outs, ins] = weight[outs].reshape(out_group, in_group, -1)
    return dense.reshape(op.out_features, -1)
