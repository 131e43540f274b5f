"""Compile an integer model into the accelerator's program (`dsetool.machine.program`).

The engine (`dsetool.engine.Engine`) is the source of every number: its output stages' requantization
constants, its layers' accumulator ranges and its range checks, so the machine computes what the engine
computes by construction, and `dsetool.machine.reference` checks the layout and ordering on top of that.

Ops the machine runs today: the input quantizer (the host writes its codes), convolutions (groups 1,
any stride and padding) and linear layers with the quantizer that reads their accumulators (fused into
the output stage: bias, ReLU, requantization, range check), max pools of codes, and flattens (no
instruction: a layout). Anything else raises `UnsupportedOp` naming the op, so a network the machine
cannot run is refused before anything is built.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from dsetool.engine.intmodel import INPUT, Add, AvgPool2d, Conv2d, Flatten, IntModel, MaxPool2d, QuantAct, WeightOp
from dsetool.machine.program import Constants, Gemm, Instruction, Program, Slice, Tensor, Vector

if TYPE_CHECKING:
    from dsetool.engine import Engine


SUMS = (Add, AvgPool2d)   # ops whose sums only the quantizer reading them turns into codes


class UnsupportedOp(ValueError):
    """The network holds an op (or an op's form) the accelerator cannot run."""


def lanes_of(rows: int, cols: int) -> int:
    """Return the activation word's lanes for an array: the larger side, which the other must divide
    (a K slice takes `rows` lanes of a word, an output row writes `cols` lanes of one)."""
    if max(rows, cols) % min(rows, cols):
        raise UnsupportedOp(f"the accelerator needs array rows and cols that divide one another, not "
                            f"{rows} x {cols}")
    return max(rows, cols)


@dataclass
class _Buffer:
    """First-fit allocation of tensors in the activation buffer, freed after their last reader."""

    free: list[tuple[int, int]] = field(default_factory=lambda: [(0, 1 << 40)])
    high: int = 0

    def take(self, words: int) -> int:
        for i, (start, size) in enumerate(self.free):
            if size >= words:
                self.free[i] = (start + words, size - words)
                self.high = max(self.high, start + words)
                return start
        raise AssertionError("the free list ends in an unbounded region")

    def give(self, start: int, words: int) -> None:
        spans = sorted([*self.free, (start, words)])
        merged = [spans[0]]
        for begin, size in spans[1:]:
            last_begin, last_size = merged[-1]
            if last_begin + last_size == begin:
                merged[-1] = (last_begin, last_size + size)
            else:
                merged.append((begin, size))
        self.free = merged


@dataclass(frozen=True)
class _Codes:
    """A tensor of codes in the buffer, and the torch shape its words stand for (a flatten keeps the
    words of the (C, H, W) tensor it flattens, in the buffer's pixel-major order)."""

    tensor: Tensor
    shape: tuple[int, ...]
    owner: int   # the op whose output occupies the words


class _Compiler:
    def __init__(self, engine: Engine, rows: int, cols: int) -> None:
        self.engine, self.model = engine, engine.model
        self.rows, self.cols, self.lanes = rows, cols, lanes_of(rows, cols)
        self.buffer = _Buffer()
        self.codes: dict[int, _Codes] = {}
        self.instructions: list[Instruction] = []
        self.weights: list[tuple[int, ...]] = []
        self.constants: list[tuple[Constants, ...]] = []
        self.fused: set[int] = set()
        self.logits: set[int] = set()   # ops whose values are the logits (the last GEMM and its flattens)
        self.readers = self._last_readers()

    def _last_readers(self) -> dict[int, int]:
        """Return per op the last op reading its words, looking through flattens (which share them)."""
        last: dict[int, int] = {}
        for index in range(len(self.model.ops)):
            for source in self.model.inputs[index]:
                owner = self._owner(source)
                last[owner] = max(last.get(owner, -1), self._runs_at(index))
        return last

    def _runs_at(self, index: int) -> int:
        """Return the op whose instruction reads what op `index` reads: an add's or average pool's own
        (their sums exist only inside the vector unit), else op `index`."""
        if isinstance(self.model.ops[index], (*SUMS, Flatten)) and self._sums_of(index) is not None:
            reader = index
            while (readers := self.model.consumers(reader)) and len(readers) == 1 \
                    and isinstance(self.model.ops[readers[0]], Flatten):
                reader = readers[0]
            if not readers:
                raise UnsupportedOp(f"the logits are the sums of op {self.model.ops[index].name!r} "
                                    f"({self.model.ops[index].kind}); the accelerator's logits come from a layer")
            if len(readers) != 1 or not isinstance(self.model.ops[readers[0]], QuantAct):
                raise UnsupportedOp(f"op {self.model.ops[index].name!r} ({self.model.ops[index].kind}) must be read "
                                    f"by one quantizer, which the vector unit runs it with")
            return readers[0]
        return index

    def _sums_of(self, index: int) -> int | None:
        """Return the add or average pool whose sums op `index` holds (itself, or through flattens)."""
        while index != INPUT and isinstance(self.model.ops[index], Flatten):
            index = self.model.inputs[index][0]
        return index if index != INPUT and isinstance(self.model.ops[index], SUMS) else None

    def _owner(self, source: int) -> int:
        while source != INPUT and isinstance(self.model.ops[source], Flatten):
            source = self.model.inputs[source][0]
        return source

    def run(self) -> None:
        for index, op in enumerate(self.model.ops):
            if index in self.fused:
                self._release(index)
                continue
            self._op(index, op)
            self._release(index)

    def _op(self, index: int, op: object) -> None:
        if isinstance(op, QuantAct) and op.kind == "quant_input":
            self._place(index, op.out_shape)
        elif isinstance(op, Flatten) and self._sums_of(index) is not None:
            self._runs_at(index)   # flattened sums: run with the quantizer that reads them
        elif isinstance(op, Flatten):
            source = self.model.input_of(index)
            if source in self.codes:
                self.codes[index] = self.codes[source]   # the same words, read in their order
            elif source not in self.logits:   # flattening the logits layer's sums: they are the logits already
                raise UnsupportedOp(f"op {op.name!r} flattens integers the accelerator does not hold as codes")
        elif isinstance(op, WeightOp):
            self._gemm(index, op)
        elif isinstance(op, MaxPool2d):
            self._maxpool(index, op)
        elif isinstance(op, SUMS):
            self._runs_at(index)   # run by the quantizer that reads the sums
        elif isinstance(op, QuantAct):
            self._requantize(index, op)
        else:
            raise UnsupportedOp(f"op {op.name!r} ({op.kind}) has no unit on the accelerator yet")  # type: ignore[attr-defined]

    def _place(self, index: int, shape: Sequence[int]) -> Tensor:
        channels, height, width = (*shape, 1, 1)[:3] if len(shape) == 1 else tuple(shape)
        tensor = Tensor(0, channels, height, width, self.lanes)
        tensor = Tensor(self.buffer.take(tensor.words), channels, height, width, self.lanes)
        self.codes[index] = _Codes(tensor, tuple(shape), index)
        return tensor

    def _release(self, index: int) -> None:
        """Free the words of every tensor whose last reader is op `index`."""
        for owner, last in self.readers.items():
            if last == index and owner in self.codes and self.codes[owner].owner == owner:
                tensor = self.codes[owner].tensor
                self.buffer.give(tensor.base, tensor.words)

    def _source(self, index: int, what: str) -> _Codes:
        source = self.model.input_of(index)
        if source == INPUT or source not in self.codes:
            raise UnsupportedOp(f"op {self.model.ops[index].name!r} reads {what} the accelerator does not hold "
                                f"as codes")
        return self.codes[source]

    def _maxpool(self, index: int, op: MaxPool2d) -> None:
        source = self._source(index, "integers")
        quantizer = self.model.ops[self.model.producer(index)]   # type: ignore[index]
        assert isinstance(quantizer, QuantAct)
        qmin, qmax = quantizer.qrange
        dest = self._place(index, op.out_shape)
        self.instructions.append(Vector(op.name, source.tensor, None, dest, op.kernel, op.stride, op.padding,
                                        "max", 1, 0, False, qmin, qmax, "none", qmin, qmax))

    def _requantize(self, index: int, op: QuantAct) -> None:
        """Run a quantizer that reads codes, an add's sums or an average pool's on the vector unit."""
        source_index = self.model.input_of(index)
        sums = self._sums_of(source_index)
        source_index = sums if sums is not None else source_index
        source_op = self.model.ops[source_index] if source_index != INPUT else None
        window: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] = ((1, 1), (1, 1), (0, 0))
        other = None
        if isinstance(source_op, Add):
            first, second = (self._codes_of(source_op.name, i) for i in self.model.inputs[source_index])
            source, other = first, second.tensor
        elif isinstance(source_op, AvgPool2d):
            source = self._codes_of(source_op.name, self.model.inputs[source_index][0])
            window = (source_op.kernel, source_op.stride, source_op.padding)
        else:
            source = self._source(index, "integers")
        stage = self.engine.output_stages[index]
        multiplier, shift = _one(stage.multiplier, op.name, "multiplier"), _one(stage.shift, op.name, "shift")
        mode, lo, hi = self._tensor_check(index, stage.qmin, stage.qmax)
        t = source.tensor
        shape: tuple[int, ...] = op.out_shape if len(op.out_shape) == 3 else (t.channels, t.height, t.width)
        if isinstance(source_op, AvgPool2d):
            shape = op.out_shape
        dest = self._place(index, shape)
        self.codes[index] = _Codes(dest, tuple(op.out_shape), index)
        self.instructions.append(Vector(op.name, t, other, dest, *window, "sum", multiplier, shift, stage.relu,
                                        stage.qmin, stage.qmax, mode, lo, hi))

    def _codes_of(self, reader: str, source: int) -> _Codes:
        if source == INPUT or source not in self.codes:
            raise UnsupportedOp(f"op {reader!r} reads integers the accelerator does not hold as codes")
        return self.codes[source]

    def _tensor_check(self, index: int, qmin: int, qmax: int) -> tuple[str, int, int]:
        """Return the range check after quantizer `index` on the vector unit: one pair of bounds for the
        whole tensor (its stage has one constant set)."""
        check = self.engine.checks.get(index)
        if check is None:
            return "none", qmin, qmax
        mode = getattr(check, "mode", "none")
        lo, hi = (np.unique(np.asarray(getattr(check, name))) for name in ("lo", "hi"))
        if mode not in ("clip", "zero") or len(lo) != 1 or len(hi) != 1:
            raise UnsupportedOp(f"the range check after {self.model.ops[index].name!r} ({mode}, "
                                f"{len(lo)} bounds) has no unit on the accelerator's vector unit yet")
        return mode, int(lo[0]), int(hi[0])

    def _gemm(self, index: int, op: WeightOp) -> None:
        if isinstance(op, Conv2d) and op.groups != 1:
            raise UnsupportedOp(f"op {op.name!r} is a grouped convolution ({op.groups} groups), which the "
                                f"accelerator does not map yet")
        source = self._source(index, "values")
        quantizer = self._quantizer(index)
        if quantizer is not None:
            self.fused.add(quantizer)
        else:
            self.logits.update(range(index, len(self.model.ops)))
        dest = self._place(quantizer, op.out_shape) if quantizer is not None else None
        slices, k_index = self._slices(op, source)
        gemm = Gemm(name=op.name, source=self._read_view(op, source), dest=dest,
                    out_height=op.out_shape[1] if len(op.out_shape) == 3 else 1,
                    out_width=op.out_shape[2] if len(op.out_shape) == 3 else 1,
                    stride=op.stride if isinstance(op, Conv2d) else (1, 1), out_channels=op.out_features,
                    slices=tuple(slices), weight_base=len(self.weights), const_base=len(self.constants),
                    **self._stage(quantizer))  # type: ignore[arg-type]
        self.weights.extend(self._weight_rows(op, k_index))
        self.constants.extend(self._constant_words(index, op, quantizer))
        self.instructions.append(gemm)

    def _quantizer(self, index: int) -> int | None:
        """Return the quantizer fused into layer `index`'s output stage, or None for the logits layer."""
        readers = self.model.consumers(index)
        if self._is_logits(index):
            return None
        if len(readers) != 1 or not isinstance(self.model.ops[readers[0]], QuantAct):
            names = [self.model.ops[r].name for r in readers]
            raise UnsupportedOp(f"layer {self.model.ops[index].name!r} feeds {names}: the accelerator needs its "
                                f"accumulators read by one quantizer (its output stage) or to be the logits")
        return readers[0]

    def _is_logits(self, index: int) -> bool:
        """Tell whether layer `index`'s accumulators are the logits: the last op, or flattened into it,
        one value per output channel (the logits memory holds channels, not maps)."""
        last = index
        while (readers := self.model.consumers(last)) and len(readers) == 1 \
                and isinstance(self.model.ops[readers[0]], Flatten):
            last = readers[0]
        shape = self.model.ops[index].out_shape
        return last == len(self.model.ops) - 1 and not self.model.consumers(last) and math.prod(shape[1:]) == 1

    def _stage(self, quantizer: int | None) -> dict[str, object]:
        if quantizer is None:
            return {"relu": False, "qmin": 0, "qmax": 0, "check": "none"}
        stage = self.engine.output_stages[quantizer]
        check = self.engine.checks.get(quantizer)
        mode = getattr(check, "mode", "none") if check is not None else "none"
        if check is not None and mode not in ("clip", "zero"):
            raise UnsupportedOp(f"the range check after {self.model.ops[quantizer].name!r} ({mode}) has no "
                                f"unit on the accelerator yet")
        return {"relu": stage.relu, "qmin": stage.qmin, "qmax": stage.qmax, "check": mode}

    def _read_view(self, op: WeightOp, source: _Codes) -> Tensor:
        """Return the tensor as the layer reads it: a linear layer reads every word of its input in order,
        as the groups of one 1 x 1 pixel."""
        if isinstance(op, Conv2d):
            return source.tensor
        t = source.tensor
        return Tensor(t.base, t.words * self.lanes, 1, 1, self.lanes)

    def _slices(self, op: WeightOp, source: _Codes) -> tuple[list[Slice], list[list[int]]]:
        """Return the layer's K slices (all-padding ones left out) and, per slice, the index into the
        flattened torch weight (out, -1) of each of its `rows` lanes (-1: a padding lane)."""
        slices: list[Slice] = []
        k_index: list[list[int]] = []
        for dy, dx, group, _, flat in self._taps(op, source):
            for first in range(0, self.lanes, self.rows):
                indices = [flat(lane_c) for lane_c in range(first, first + self.rows)]
                if any(i >= 0 for i in indices):
                    slices.append(Slice(dy, dx, group, first))
                    k_index.append(indices)
        return slices, k_index

    def _taps(self, op: WeightOp, source: _Codes) -> Iterator[tuple[int, int, int, int, Any]]:
        """Yield (dy, dx, group, lane, flat) per word a layer reads at each output pixel, flat(lane)
        giving the torch weight's flat K index of that lane (-1: padding)."""
        lanes, t = self.lanes, source.tensor
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

    def _weight_rows(self, op: WeightOp, k_index: list[list[int]]) -> list[tuple[int, ...]]:
        """Return the weight memory words of the layer's tiles: per N slice, per K slice, `rows` rows of
        `cols` weights, the row of the slice's last lane first (the order the array loads them)."""
        matrix = np.asarray(op.weight, dtype=np.int64).reshape(op.out_features, -1)
        words: list[tuple[int, ...]] = []
        for nt in range(-(-op.out_features // self.cols)):
            outs = range(nt * self.cols, (nt + 1) * self.cols)
            for indices in k_index:
                for k in reversed(indices):
                    words.append(tuple(int(matrix[n, k]) if k >= 0 and n < op.out_features else 0 for n in outs))
        return words

    def _constant_words(self, index: int, op: WeightOp, quantizer: int | None) -> list[tuple[Constants, ...]]:
        n_out = op.out_features
        bias = np.asarray(op.bias, dtype=np.int64)
        multiplier, shift, lo, hi = [1] * n_out, [0] * n_out, [0] * n_out, [0] * n_out
        if quantizer is not None:
            stage = self.engine.output_stages[quantizer]
            multiplier = _per_channel(stage.multiplier, n_out)
            shift = _per_channel(stage.shift, n_out)
            check = self.engine.checks.get(quantizer)
            lo = _per_channel(getattr(check, "lo", [stage.qmin]), n_out)
            hi = _per_channel(getattr(check, "hi", [stage.qmax]), n_out)
        words = []
        for nt in range(-(-n_out // self.cols)):
            words.append(tuple(Constants(int(bias[n]), multiplier[n], shift[n], lo[n], hi[n]) if n < n_out
                               else Constants(0, 0, 0, 0, 0)
                               for n in range(nt * self.cols, (nt + 1) * self.cols)))
        return words


def _one(values: Sequence[int], name: str, what: str) -> int:
    distinct = set(int(v) for v in values)
    if len(distinct) != 1:
        raise UnsupportedOp(f"quantizer {name!r} needs one {what} per channel; the vector unit has one")
    return distinct.pop()


def _per_channel(values: Sequence[int] | np.ndarray, channels: int) -> list[int]:
    values = [int(v) for v in np.asarray(values).reshape(-1)]
    return values * channels if len(values) == 1 else values


def compile_program(engine: Engine, rows: int, cols: int) -> Program:
    """Return the accelerator's program for the engine's model on a rows x cols array (weight-stationary),
    with the engine's requantization constants and range checks; raise `UnsupportedOp` for a network
    the machine cannot run."""
    compiler = _Compiler(engine, rows, cols)
    compiler.run()
    model = engine.model
    quantizers = [op for op in model.ops if isinstance(op, QuantAct)]
    vectors = [i for i in compiler.instructions if isinstance(i, Vector)]
    constants = [c for word in compiler.constants for c in word] + [
        Constants(0, v.multiplier, v.shift, v.lo, v.hi) for v in vectors]
    return Program(
        rows=rows, cols=cols, lanes=compiler.lanes,
        **_lane_format(quantizers),
        weight_bits=max(op.weight_bits for op in model.ops if isinstance(op, WeightOp)),
        acc_bits=max(layer.widths.acc_bits for layer in engine.layers.values()),
        multiplier_bits=max(1, *(c.multiplier.bit_length() for c in constants)),
        shift_bits=max(2, *(_signed_bits(c.shift) for c in constants)),
        input=compiler.codes[_input_op(model)].tensor, num_classes=model.num_classes,
        instructions=tuple(compiler.instructions), weights=tuple(compiler.weights),
        constants=tuple(compiler.constants), buffer_words=compiler.buffer.high)


def _lane_format(quantizers: Sequence[QuantAct]) -> dict[str, Any]:
    """Return the buffer lanes' width and sign: the widest code, one bit wider when signed and unsigned
    codes meet (a signed input quantizer before ReLU layers), so every code reads back as itself."""
    signed_bits = max((q.bits for q in quantizers if q.signed), default=0)
    unsigned_bits = max((q.bits for q in quantizers if not q.signed), default=0)
    if signed_bits and unsigned_bits:
        return {"act_bits": max(signed_bits, unsigned_bits + 1), "act_signed": True}
    return {"act_bits": signed_bits or unsigned_bits, "act_signed": bool(signed_bits)}


def _input_op(model: IntModel) -> int:
    return next(i for i, op in enumerate(model.ops) if isinstance(op, QuantAct) and op.kind == "quant_input")


def _signed_bits(value: int) -> int:
    return (value if value >= 0 else ~value).bit_length() + 1


def layer_names(program: Program) -> Mapping[str, Instruction]:
    """Return the program's instructions by the name of the op they run."""
    return {instr.name: instr for instr in program.instructions}
