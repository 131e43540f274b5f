"""Compile an integer model into the accelerator's program (`dsetool.machine.program`).

The engine (`dsetool.engine.Engine`) is the source of every number: its output stages' requantization
constants, its layers' accumulator ranges and its range checks, so the machine computes what the engine
computes by construction, and `dsetool.machine.reference` checks the layout and ordering on top of that.

Ops the machine runs today: the input quantizer (the host writes its codes), convolutions (any stride,
padding and groups) and linear layers with the quantizer that reads their accumulators (fused into the
output stage: bias, ReLU, requantization, range check), the vector unit's max and average pools, adds
and requantizations (an average pool's or add's sums may be the logits themselves), and two ops that
are no instruction, only a layout: flattens, and concats along the channels, whose inputs' producers
write straight into their channel ranges of the concat's one tensor. Anything else raises
`UnsupportedOp` naming the op, so a network the machine cannot run is refused before anything is built.

Range checks: every `dsetool.protect.check.RangeCheck` the engine evaluates (clip, zero or detect, one
mode per network), per-layer or per-channel bounds. After an output stage (`Engine.checks`) on a GEMM
the bounds go in the constants words; on the vector unit, and on the codes a weight layer reads
(`Engine.input_checks`: checked as the array reads them from the buffer), in the bounds memory, one
word per word group of the checked tensor (`dsetool.machine.program`).

Grouped and depthwise convolutions run on the same weight-stationary array as dense layers: each N
slice streams only the K slices (tap, word, lane part) that hold a channel of its columns' groups, and
its tiles hold zeros for the lanes of other groups (`dsetool.machine.program` counts what a depthwise
conv costs: about 9 C / min(rows, cols) tiles of M rows, min(rows, cols) useful weights in each).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dsetool.engine.intmodel import (
    INPUT,
    Add,
    AvgPool2d,
    Concat,
    Conv2d,
    Flatten,
    IntModel,
    MaxPool2d,
    QuantAct,
    WeightOp,
)
from dsetool.machine.allocate import Buffer
from dsetool.machine.program import Constants, Gemm, Instruction, Program, Tensor, Vector, sum_bits
from dsetool.machine.tiling import Tiling

if TYPE_CHECKING:
    from dsetool.engine import Engine


SUMS = (Add, AvgPool2d)   # ops whose sums only the quantizer reading them turns into codes
Window = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]   # kernel, stride, padding


class UnsupportedOp(ValueError):
    """The network holds an op (or an op's form) the accelerator cannot run."""


def lanes_of(rows: int, cols: int) -> int:
    """Return the activation word's lanes for an array: the larger side, which the other must divide
    (a K slice takes `rows` lanes of a word, an output row writes `cols` lanes of one)."""
    if max(rows, cols) % min(rows, cols):
        raise UnsupportedOp(f"the accelerator needs array rows and cols that divide one another, not "
                            f"{rows} x {cols}")
    return max(rows, cols)


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
        self.buffer = Buffer()
        self.tiling = Tiling(rows, cols, self.lanes)
        self.codes: dict[int, _Codes] = {}
        self.instructions: list[Instruction] = []
        self.weights: list[tuple[int, ...]] = []
        self.constants: list[tuple[Constants, ...]] = []
        self.fused: set[int] = set()
        self.logits: set[int] = set()   # ops whose values are the logits (the last GEMM and its flattens)
        self.concats: dict[int, tuple[Tensor, int]] = {}   # a concat's tensor and its channel offset there
        self.bounds: list[tuple[tuple[int, int], ...]] = []   # the bounds memory's words
        self.lane_format = _lane_format([op for op in self.model.ops if isinstance(op, QuantAct)])
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
        (their sums exist only inside the vector unit) is the quantizer's reading them, or theirs when
        the sums are the logits; else op `index`."""
        if isinstance(self.model.ops[index], (*SUMS, Flatten)) and self._sums_of(index) is not None:
            reader = index
            while (readers := self.model.consumers(reader)) and len(readers) == 1 \
                    and isinstance(self.model.ops[readers[0]], Flatten):
                reader = readers[0]
            if not readers:   # the sums are the logits: the vector unit writes them to the logits memory
                return index
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
            if self._concat_reading(index) is not None:
                raise UnsupportedOp(f"the input quantizer {op.name!r} feeds a concat; the host writes the input "
                                    f"codes into words of their own")
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
        elif isinstance(op, SUMS) and self._runs_at(index) == index:
            self._sum_logits(index, op)
        elif isinstance(op, SUMS):
            pass   # run by the quantizer that reads the sums
        elif isinstance(op, QuantAct):
            self._requantize(index, op)
        elif isinstance(op, Concat):
            assert index in self.codes, "a concat's tensor is placed with its first input"
        else:
            raise UnsupportedOp(f"op {op.name!r} ({op.kind}) has no unit on the accelerator yet")  # type: ignore[attr-defined]

    def _place(self, index: int, shape: Sequence[int]) -> Tensor:
        channels, height, width = (*shape, 1, 1)[:3] if len(shape) == 1 else tuple(shape)
        tensor = Tensor(0, channels, height, width, self.lanes)
        tensor = Tensor(self.buffer.take(tensor.words), channels, height, width, self.lanes)
        self.codes[index] = _Codes(tensor, tuple(shape), index)
        return tensor

    def _destination(self, index: int, shape: Sequence[int], unit: int) -> tuple[Tensor, int]:
        """Place op `index`'s codes and return (tensor, channel offset) where its writer puts them: words of
        their own, or, when a concat reads them, their channel range of the concat's tensor, placed with
        its first input. `unit`: the channels a writer writes at once (the vector unit writes whole
        words), which a range inside a concat must start at and end at (or at the concat's end)."""
        concat = self._concat_reading(index)
        if concat is None:
            return self._place(index, shape), 0
        whole, start = self._concat_tensor(concat)
        reads = self.model.inputs[concat]
        offset = start + sum(self.model.ops[r].out_shape[0] for r in reads[:reads.index(index)])
        end = offset + shape[0]
        if offset % unit or (end % unit and end != whole.channels):
            op = self.model.ops[index]
            raise UnsupportedOp(f"op {op.name!r} ({op.kind}) writes channels {offset}..{end - 1} of concat "
                                f"{self.model.ops[concat].name!r}; the vector unit writes whole words of {unit} "
                                f"channels, so the range must start and end at a multiple of {unit}")
        self.codes[index] = _Codes(whole, tuple(shape), self.codes[concat].owner)
        return whole, offset

    def _concat_reading(self, index: int) -> int | None:
        """Return the concat that reads op `index`'s codes, or None; refuse other readers beside it (the
        codes exist only inside the concat's tensor)."""
        readers = self.model.consumers(index)
        concats = [r for r in readers if isinstance(self.model.ops[r], Concat)]
        if not concats:
            return None
        if len(readers) > 1 or self.model.inputs[concats[0]].count(index) > 1:
            names = [self.model.ops[r].name for r in readers]
            raise UnsupportedOp(f"op {self.model.ops[index].name!r} feeds {names}: the accelerator writes a "
                                f"concat's input only into the concat's tensor, so the concat must read it alone, once")
        return concats[0]

    def _concat_tensor(self, concat: int) -> tuple[Tensor, int]:
        """Return the concat's tensor and the channel offset of its channel 0 there (a concat inside
        another lives in the outer one's range), placing it on first use."""
        if concat not in self.concats:
            self.concats[concat] = self._destination(concat, self.model.ops[concat].out_shape, 1)
        return self.concats[concat]

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
        dest, offset = self._destination(index, op.out_shape, self.lanes)
        self.instructions.append(Vector(op.name, source.tensor, None, dest, op.kernel, op.stride, op.padding,
                                        "max", 1, 0, False, qmin, qmax, "none", 0, offset))

    def _requantize(self, index: int, op: QuantAct) -> None:
        """Run a quantizer that reads codes, an add's sums or an average pool's on the vector unit."""
        source_index = self.model.input_of(index)
        sums = self._sums_of(source_index)
        if sums is not None:
            source, other, window = self._summed(sums)
        else:
            source, other, window = self._source(index, "integers"), None, ((1, 1), (1, 1), (0, 0))
        stage = self.engine.output_stages[index]
        multiplier, shift = _one(stage.multiplier, op.name, "multiplier"), _one(stage.shift, op.name, "shift")
        t = source.tensor
        mode, bounds = self._bounds_of(self.engine.checks.get(index), op.name, t.channels)
        # The codes keep the map they are made on (pixel-major words), even when a flatten comes between:
        # a pool's output map, else the map read; a linear layer reading them takes the words in that order.
        shape: tuple[int, ...] = self.model.ops[sums].out_shape if sums is not None else \
            (op.out_shape if len(op.out_shape) == 3 else (t.channels, t.height, t.width))
        dest, offset = self._destination(index, shape, self.lanes)
        self.instructions.append(Vector(op.name, t, other, dest, *window, "sum", multiplier, shift, stage.relu,
                                        stage.qmin, stage.qmax, mode, bounds, offset))

    def _summed(self, index: int) -> tuple[_Codes, Tensor | None, Window]:
        """Return what the vector unit reads for add or average pool `index`: the codes it sums, the
        other addend and the window."""
        op = self.model.ops[index]
        if isinstance(op, Add):
            first, second = (self._codes_of(op.name, i) for i in self.model.inputs[index])
            return first, second.tensor, ((1, 1), (1, 1), (0, 0))
        assert isinstance(op, AvgPool2d)
        return self._codes_of(op.name, self.model.inputs[index][0]), None, (op.kernel, op.stride, op.padding)

    def _sum_logits(self, index: int, op: Add | AvgPool2d) -> None:
        """Write the sums of op `index`, which are the logits (flattened), to the logits memory: one value
        per channel, so only over one output pixel (a global pool's)."""
        if math.prod(op.out_shape[1:]) != 1:
            raise UnsupportedOp(f"the logits are the sums of op {op.name!r} ({op.kind}) over a "
                                f"{' x '.join(map(str, op.out_shape[1:]))} map; the logits memory holds one "
                                f"value per channel")
        source, other, window = self._summed(index)
        self.logits.update(range(index, len(self.model.ops)))
        self.instructions.append(Vector(op.name, source.tensor, other, None, *window, "sum", 1, 0, False, 0, 0,
                                        "none", 0))

    def _codes_of(self, reader: str, source: int) -> _Codes:
        if source == INPUT or source not in self.codes:
            raise UnsupportedOp(f"op {reader!r} reads integers the accelerator does not hold as codes")
        return self.codes[source]

    def _bounds_of(self, check: object, where: str, channels: int) -> tuple[str, int]:
        """Return a range check's mode and the bounds memory word of its tensor's word group 0, placing
        its words (`lanes` (lo, hi) pairs each, padding lanes the codes' whole range); ("none", 0)
        without a check."""
        if check is None:
            return "none", 0
        mode = _range_mode(check, where)
        lo, hi = (self._fitted(_per_channel(getattr(check, name), channels), where, channels) for name in ("lo", "hi"))
        lowest, highest = self._code_range()
        if min(lo) > highest or max(hi) < lowest:
            raise UnsupportedOp(f"the range check at {where!r} has bounds outside the codes' range "
                                f"{lowest}..{highest}")
        pairs = [(max(a, lowest), min(b, highest)) for a, b in zip(lo, hi, strict=True)]
        pairs += [(lowest, highest)] * (-len(pairs) % self.lanes)
        base = len(self.bounds)
        self.bounds.extend(tuple(pairs[g:g + self.lanes]) for g in range(0, len(pairs), self.lanes))
        return mode, base

    @staticmethod
    def _fitted(values: list[int], where: str, channels: int) -> list[int]:
        if len(values) != channels:
            raise UnsupportedOp(f"the range check at {where!r} has {len(values)} bounds for {channels} channels")
        return values

    def _code_range(self) -> tuple[int, int]:
        """Return the smallest and largest code a buffer lane holds."""
        bits = self.lane_format["act_bits"]
        return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if self.lane_format["act_signed"] else (0, (1 << bits) - 1)

    def _gemm(self, index: int, op: WeightOp) -> None:
        if not op.weight_signed:
            raise UnsupportedOp(f"layer {op.name!r} has unsigned weights; the array's weight registers are two's "
                                f"complement")
        source = self._source(index, "values")
        quantizer = self._quantizer(index)
        if quantizer is not None:
            self.fused.add(quantizer)
        else:
            self.logits.update(range(index, len(self.model.ops)))
        dest, offset = self._destination(quantizer, op.out_shape, 1) if quantizer is not None else (None, 0)
        columns = self.tiling.columns(op.out_features, offset % self.cols)
        slices, words = self.tiling.tiles(op, source.tensor, columns)
        in_mode, in_bounds = self._bounds_of(self.engine.input_checks.get(index), f"the input of {op.name}",
                                             source.tensor.channels)
        gemm = Gemm(name=op.name, source=self._read_view(op, source), dest=dest,
                    out_height=op.out_shape[1] if len(op.out_shape) == 3 else 1,
                    out_width=op.out_shape[2] if len(op.out_shape) == 3 else 1,
                    stride=op.stride if isinstance(op, Conv2d) else (1, 1), out_channels=op.out_features,
                    slices=slices, weight_base=len(self.weights), const_base=len(self.constants),
                    dest_offset=offset, input_check=in_mode, input_bounds=in_bounds,
                    input_period=source.tensor.groups, **self._stage(quantizer))  # type: ignore[arg-type]
        self.weights.extend(words)
        self.constants.extend(self._constant_words(op, quantizer, columns))
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
        mode = _range_mode(check, self.model.ops[quantizer].name) if check is not None else "none"
        return {"relu": stage.relu, "qmin": stage.qmin, "qmax": stage.qmax, "check": mode}

    def _read_view(self, op: WeightOp, source: _Codes) -> Tensor:
        """Return the tensor as the layer reads it: a linear layer reads every word of its input in order,
        as the groups of one 1 x 1 pixel."""
        if isinstance(op, Conv2d):
            return source.tensor
        t = source.tensor
        return Tensor(t.base, t.words * self.lanes, 1, 1, self.lanes)

    def _constant_words(self, op: WeightOp, quantizer: int | None, columns: np.ndarray
                        ) -> list[tuple[Constants, ...]]:
        """Return the constant memory words of the layer: per N slice its columns' constants (zeros for a
        column without a channel)."""
        n_out = op.out_features
        bias = [int(b) for b in np.asarray(op.bias, dtype=np.int64)]
        multiplier, shift, lo, hi = [1] * n_out, [0] * n_out, [0] * n_out, [0] * n_out
        if quantizer is not None:
            stage = self.engine.output_stages[quantizer]
            multiplier = _per_channel(stage.multiplier, n_out)
            shift = _per_channel(stage.shift, n_out)
            check = self.engine.checks.get(quantizer)
            lowest, highest = self._code_range()   # a bound beyond the codes' range acts as the range's end
            lo = [max(v, lowest) for v in _per_channel(getattr(check, "lo", [stage.qmin]), n_out)]
            hi = [min(v, highest) for v in _per_channel(getattr(check, "hi", [stage.qmax]), n_out)]
        return [tuple(Constants(bias[n], multiplier[n], shift[n], lo[n], hi[n]) if n >= 0 else Constants(0, 0, 0, 0, 0)
                      for n in outs.tolist()) for outs in columns]


def _range_mode(check: object, where: str) -> str:
    """Return the mode of a range check the machine builds (`dsetool.protect.check.RangeCheck`); refuse
    any other protection by name."""
    from dsetool.protect.check import RangeCheck

    if not isinstance(check, RangeCheck):
        raise UnsupportedOp(f"the protection at {where!r} ({type(check).__name__}) has no unit on the accelerator; "
                            f"it builds range checks (clip, zero, detect)")
    return check.mode


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
    if not any(instr.logits for instr in compiler.instructions):
        last = model.ops[-1]
        raise UnsupportedOp(f"the logits are the codes of op {last.name!r} ({last.kind}); the accelerator's "
                            f"logits are a layer's accumulators or a pool's sums")
    quantizers = [op for op in model.ops if isinstance(op, QuantAct)]
    vectors = [i for i in compiler.instructions if isinstance(i, Vector)]
    constants = [c for word in compiler.constants for c in word] + [
        Constants(0, v.multiplier, v.shift, 0, 0) for v in vectors]
    lane_format = _lane_format(quantizers)
    logit_sums = [sum_bits(lane_format["act_bits"], v.taps) for v in vectors if v.logits]   # held as accumulators
    return Program(
        rows=rows, cols=cols, lanes=compiler.lanes, **lane_format,
        weight_bits=max(op.weight_bits for op in model.ops if isinstance(op, WeightOp)),
        acc_bits=max([layer.widths.acc_bits for layer in engine.layers.values()] + logit_sums),
        multiplier_bits=max(1, *(c.multiplier.bit_length() for c in constants)),
        shift_bits=max(2, *(_signed_bits(c.shift) for c in constants)),
        input=compiler.codes[_input_op(model)].tensor, num_classes=model.num_classes,
        instructions=tuple(compiler.instructions), weights=tuple(compiler.weights),
        constants=tuple(compiler.constants), buffer_words=compiler.buffer.high, bounds=tuple(compiler.bounds))


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
