"""Follow a single activation fault of a layer through the ops after it, as the few values it changes.

A flipped input value of a convolution changes at most kh x kw x N of its accumulators. Requantization
(rounding, saturation, ReLU) acts value by value and max-pooling window by window, so the values that
change after them follow from the values that changed before them and the golden run alone, and most
vanish on the way (rounded away, clipped, out-maxed in their pool window: the fault is masked there).
The next convolution's change is again a scatter of a few products per changed input, and a linear
layer's N products per changed input (the last layer's are the logits). Each fault of a batch is
followed on its own (`dsetool.faults.kernels`, compiled loops), the faults of every layer in one pass
over the ops, and leaves this path at a layer where its change costs more than the dense layer
(`SPARSE_COST`), with its input rebuilt as the golden tensor with its changes put in; from there it runs
with the dense rows. A fault whose changes all vanish is masked and never reaches the dense part.

Exact: the same integer operations on the same values (float64 holding exact integers), only on the
values that differ from the golden run. It turns an early-layer fault from a whole inference into a few
thousand multiply-adds.

On a graph, each tensor that differs from the golden run is followed on its own (`_Tensors`), kept until
the last op reading it has run: a residual block's changed input changes its shortcut and its first conv,
each is followed, and the add sums what either or both addends changed. A fault is masked when no tensor
holds a change of it any more, by the step that removed its last one. An op class without a sparse step
(`_SPARSE_STEPS`) sends the faults reaching it to the dense path, with every tensor they changed.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dsetool.engine import Engine
from dsetool.engine.executor import Requantizer
from dsetool.engine.intmodel import Add, Concat, Conv2d, Flatten, IntModel, Linear, MaxPool2d, Op, QuantAct
from dsetool.faults import kernels
from dsetool.protect.check import RangeCheck

_SKIP = "skip"   # a step that leaves the values as they are (flatten)

# One scattered multiply-add of the compiled loops costs about this many multiply-adds of the dense
# layer (BLAS or int8 GEMMs, vectorized); a fault whose change would cost more joins the dense rows there.
# Only a crossover: both paths give identical values. Since the dense layers run as int8 GEMMs and find
# the rows a fault no longer changes with a compiled scan, 60 beats 30 on ResNet-20 campaigns (2,664-2,815
# against 2,528-2,541 faults/s; 15: 1,931-1,994) and AlexNet-32 (5,008-5,304 against 4,864-5,179; 100:
# 4,395-4,747), and matches it within noise on LeNet-5 and MobileNet (two rounds in one process each, the
# benchmark's `prepare` and `campaign_rate` with this constant set between calls; 2026-12-06, 2 cores).
SPARSE_COST = 60

# Faults that would be cheaper dense still stay sparse while their sparse multiply-adds at that layer,
# all together, stay below this: starting the dense computation costs a batch more than the arithmetic
# of small layers (a tensor op per remaining op, the joins, the masked checks; LeNet-5's linear layers
# ran a uniform campaign 1.7x faster sparse than dense, `benchmarks/inject_throughput.py`).
DENSE_START = 2_000_000


@dataclass(frozen=True)
class Join:
    """Faults that leave the sparse path at op `op`: `tensors` holds their dense values of every tensor that
    differs from the golden run and that op `op` or a later op reads, by the index of the op that wrote it
    (with `op` one past the last op: their logits); `rows` index the propagated faults."""

    op: int
    rows: np.ndarray
    tensors: dict[int, torch.Tensor]


@dataclass(frozen=True)
class Changes:
    """Per propagated fault f (`rows[f]` indexes the propagated faults): the values of the current map at
    `element[start[f]:start[f + 1]]` changed to `value[start[f]:start[f + 1]]` (see `dsetool.faults.kernels`)."""

    rows: np.ndarray
    start: np.ndarray
    element: np.ndarray
    value: np.ndarray

    @property
    def count(self) -> np.ndarray:
        """Return how many values each fault changed."""
        return np.diff(self.start)

    def pick(self, keep: np.ndarray) -> Changes:
        """Return the faults where `keep` (bool) holds."""
        return Changes(self.rows[keep], *kernels.pick(keep, self.start, self.element, self.value))

    def aligned(self, rows: np.ndarray, faults: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return (start, element, value) with one row per fault of `rows` (of `faults` propagated ones),
        empty for a fault these changes do not hold."""
        where = np.full(faults, -1, dtype=np.int64)
        where[self.rows] = np.arange(len(self.rows))
        return kernels.gather(where[rows], self.start, self.element, self.value)

    def after(self, output: kernels.Output, masked_by: np.ndarray) -> Changes:
        """Return a kernel's output changes of these faults (the ones it left alive); record in
        `masked_by` (per propagated fault) which step masked the others."""
        alive, start, element, value, masked = output
        dead = masked != kernels.LIVE
        masked_by[self.rows[dead]] = masked[dead]
        return Changes(self.rows[alive], start, element, value)

    @staticmethod
    def born(rows: np.ndarray, element: np.ndarray, value: np.ndarray) -> Changes:
        """Return one changed value per fault."""
        return Changes(rows, np.arange(len(rows) + 1), element.astype(np.int64), value.astype(np.float64))

    @staticmethod
    def empty() -> Changes:
        """Return no changes."""
        return Changes.born(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0))

    def merge(self, other: Changes) -> Changes:
        """Return these changes followed by `other`'s."""
        if not len(self.rows):
            return other
        return Changes(np.concatenate([self.rows, other.rows]),
                       np.concatenate([self.start, other.start[1:] + self.start[-1]]),
                       np.concatenate([self.element, other.element]), np.concatenate([self.value, other.value]))


@dataclass(frozen=True)
class Propagated:
    """Where the faults that were not masked continue (masked faults appear in no `Join`), which step
    masked the others (`kernels.MASKED_BY` codes, `kernels.LIVE` for the living), and which faults a
    protection acted on (`dsetool.protect`: it clipped, zeroed or flagged one of their changed values)."""

    joins: list[Join]
    masked_by: np.ndarray
    detected: np.ndarray


def follows(engine: Engine) -> bool:
    """Say whether the sparse path can follow faults on this engine: its protections, if any, act value by
    value (range checks); a median or anomaly filter mixes channels."""
    return all(isinstance(check, RangeCheck) for check in (*engine.checks.values(), *engine.input_checks.values()))


class _Tensors:
    """The tensors that differ from the golden run, each as the changes of the faults that changed it, kept
    until the last op reading it has run; per fault, how many of them it changes and which step last
    removed one of its changes. A fault none of them holds any more is masked (by that step)."""

    def __init__(self, engine: Engine, faults: int) -> None:
        self.changed: dict[int, Changes] = {}
        self.holds = np.zeros(faults, dtype=np.int64)
        self.why = np.zeros(faults, dtype=np.int8)   # kernels.MASKED_BY codes of the last step that dropped changes
        self.last_reader = engine.model.last_readers()
        self.logits = len(engine.model.ops) - 1

    def add(self, tensor: int, changes: Changes) -> None:
        """Record `changes` of op `tensor`'s output (faults it does not hold yet)."""
        if not len(changes.rows):
            return
        self.holds[changes.rows] += 1
        held = self.changed.get(tensor)
        self.changed[tensor] = changes if held is None else held.merge(changes)

    def read_by(self, reads: Sequence[int]) -> list[int]:
        """Return which of the tensors an op reads differ for some fault."""
        return [t for t in reads if t in self.changed]

    def release(self, done: int, masked_by: np.ndarray) -> None:
        """Let go of the tensors no op after op `done` reads; a fault that no tensor holds any more is masked."""
        for tensor in [t for t in self.changed if self.last_reader[t] <= done and t != self.logits]:
            rows = self.changed.pop(tensor).rows
            self.holds[rows] -= 1
            gone = rows[self.holds[rows] == 0]
            masked_by[gone] = self.why[gone]

    def leave(self, op: int, rows: np.ndarray, golden: Sequence[torch.Tensor], inputs: np.ndarray) -> Join:
        """Return the dense tensors of faults `rows`, which leave the sparse path at op `op`, and forget them."""
        tensors = {}
        for tensor, changes in list(self.changed.items()):
            mine = np.isin(changes.rows, rows)
            if mine.any():
                tensors[tensor] = _dense(golden[tensor], inputs, rows, changes.pick(mine), len(self.holds))
                kept = changes.pick(~mine)
                if len(kept.rows):
                    self.changed[tensor] = kept
                else:
                    del self.changed[tensor]
        self.holds[rows] = 0
        return Join(op, rows, tensors)


def propagate(engine: Engine, golden: Sequence[torch.Tensor], inputs: np.ndarray, start: np.ndarray,
              element: np.ndarray, faulty: np.ndarray, buffer: np.ndarray | None = None) -> Propagated:
    """Follow one changed value per fault: flat element `element[f]` of op `buffer[f]`'s output (default:
    the op before `start[f]`), now `faulty[f]`, from op `start[f]`, the first op reading it, on campaign
    input `inputs[f]` (its golden tensors are `golden[i][inputs[f]]`).

    Each tensor that differs from the golden run for some fault is followed on its own, so a fault crosses
    a residual block: a changed block input changes the shortcut and the residual branch, and the add sums
    what both changed. Faults of every layer travel together: a fault joins the others at its own layer,
    so each op's kernel runs once per batch however many layers it holds faults of.
    """
    steps = _steps(engine)
    model = engine.model
    faults = len(inputs)
    buffer = start - 1 if buffer is None else buffer
    state = _Tensors(engine, faults)
    joins: list[Join] = []
    masked_by = np.zeros(faults, dtype=np.int8)
    detected = np.zeros(faults, dtype=np.bool_)
    later = np.unique(start)
    index = int(later[0])
    while index < len(steps):
        born = np.nonzero(start == index)[0]
        for tensor in np.unique(buffer[born]).tolist():   # a stuck-at bit that already held its value changed nothing
            mine = born[buffer[born] == tensor]
            unchanged = faulty[mine] == golden_rows(golden[tensor])[inputs[mine], element[mine]]
            masked_by[mine[unchanged]] = kernels.ARITHMETIC
            mine = mine[~unchanged]
            state.add(tensor, Changes.born(mine, element[mine], faulty[mine]))
        reads = model.inputs[index]
        if not state.read_by(reads):
            if not state.changed:
                ahead = later[later > index]
                if not len(ahead):
                    break
                index = int(ahead[0])
            else:
                index += 1
            continue
        step = steps[index]
        last = index
        if step is _SKIP:  # flatten: the same values at the same flat positions
            state.add(index, state.changed[reads[0]])
        elif not isinstance(step, _Step | _Joined):   # no sparse step here (an average pool's sum): the dense path
            rows = np.unique(np.concatenate([state.changed[t].rows for t in state.read_by(reads)]))
            joins.append(state.leave(index, rows, golden, inputs))
        elif isinstance(step, _Joined):
            state.add(index, step.changes(state))
        elif step.binary:
            state.add(index, _sum(step, state, golden, inputs))
        else:
            last = step.last
            changes = _unary(engine, index, step, state, start, golden, inputs, joins, detected)
            if changes is not None:
                state.add(last, changes)
        state.release(last, masked_by)
        index = last + 1
    logits = state.changed.get(len(steps) - 1)
    if logits is not None:  # past the logits layer: the changes are the rows' logits
        joins.append(state.leave(len(steps), logits.rows, golden, inputs))
    return Propagated(joins, masked_by, detected)


def _unary(engine: Engine, index: int, step: _Step, state: _Tensors, start: np.ndarray,
           golden: Sequence[torch.Tensor], inputs: np.ndarray, joins: list[Join], detected: np.ndarray
           ) -> Changes | None:
    """Run an op of one input on the changes of its input; return its output's changes (None: none left)."""
    source = step.reads[0]
    changes = state.changed[source]
    reads = [golden_rows(golden[i]) for i in step.reads]
    if step.input_check is not None:   # the weight op reads its input through a check (the buffer keeps it)
        reads[0] = checked_rows(golden[source], engine.input_checks[index])
        changes = _checked(changes, step.input_check, reads[0], inputs, state.why, detected)
        if not len(changes.rows):
            return None
    if step.sparse_limit is not None:
        # Faults born here have one change: never dearer than the layer.
        count = changes.count
        dense = (start[changes.rows] != index) & (count > step.sparse_limit)
        if dense.any() and int(count[dense].sum()) * step.products > DENSE_START:
            joins.append(state.leave(index, changes.rows[dense], golden, inputs))
            changes = changes.pick(~dense)
            if not len(changes.rows):
                return None
    if step.check is not None:   # the kernel finds what a fault changed against the unprotected codes
        reads[-1] = golden_rows(unchecked_golden(engine, golden, step.last))
    changes = changes.after(step.kernel(*reads, inputs[changes.rows], changes.start, changes.element,
                                        changes.value, *step.operands), state.why)
    if step.check is not None and len(changes.rows):
        changes = _checked(changes, step.check, golden_rows(golden[step.last]), inputs, state.why, detected)
    return changes


def _sum(step: _Step, state: _Tensors, golden: Sequence[torch.Tensor], inputs: np.ndarray) -> Changes:
    """Run an add on the changes of its addends (either or both)."""
    first, second, _ = step.reads
    empty = Changes.empty()
    addends = state.changed.get(first, empty), state.changed.get(second, empty)
    rows = np.union1d(addends[0].rows, addends[1].rows)
    aligned = [changes.aligned(rows, len(state.holds)) for changes in addends]
    union = Changes(rows, *aligned[0])
    return union.after(step.kernel(*(golden_rows(golden[i]) for i in step.reads), inputs[rows], *aligned[0],
                                   *aligned[1]), state.why)


def _checked(changes: Changes, operands: tuple[Any, ...], golden: np.ndarray, inputs: np.ndarray,
             masked_by: np.ndarray, detected: np.ndarray) -> Changes:
    """Return the changes after a range check (`kernels.check_changes`) on a map whose golden values are
    `golden` (rows per campaign input); record the faults it acted on and those it masked."""
    *output, acted = kernels.check_changes(golden, inputs[changes.rows], changes.start, changes.element,
                                           changes.value, *operands)
    detected[changes.rows[acted]] = True
    return changes.after(tuple(output), masked_by)  # type: ignore[arg-type]


@dataclass(frozen=True)
class _Step:
    """How the sparse path runs one op: `kernel(*golden outputs of ops `reads`, image, start, element,
    value, *operands)` gives the changes after op `last` (past a fused output stage)."""

    kernel: Callable[..., kernels.Output]
    reads: tuple[int, ...]
    operands: tuple[Any, ...]
    last: int
    sparse_limit: float | None = None   # a weight op: faults with more changed inputs run the dense layer
    products: int = 0                   # a weight op: multiply-adds per changed input
    check: tuple[Any, ...] | None = None   # the range check on op `last`'s codes: `kernels.check_changes` operands
    input_check: tuple[Any, ...] | None = None   # a weight op's check of the codes it reads, likewise
    binary: bool = False                 # an add: `kernel` takes the changes of both inputs (`_sum`)


@dataclass(frozen=True)
class _Joined:
    """A concat on the sparse path: each input's changes, moved to its channels in the output (`offsets`:
    flat position of each input's first value). Values pass unchanged, so nothing is masked here."""

    reads: tuple[int, ...]
    offsets: tuple[int, ...]

    def changes(self, state: _Tensors) -> Changes:
        """Return the output's changes: per fault, its changes of every input, in input order."""
        parts = [state.changed.get(read, Changes.empty()) for read in self.reads]
        rows = np.unique(np.concatenate([part.rows for part in parts]))
        counts, elements, values, owners = [], [], [], []
        for part, offset in zip(parts, self.offsets, strict=True):
            start, element, value = part.aligned(rows, len(state.holds))
            count = np.diff(start)
            counts.append(count)
            elements.append(element + offset)
            values.append(value)
            owners.append(np.repeat(np.arange(len(rows)), count))
        order = np.argsort(np.concatenate(owners), kind="stable")   # by fault; inputs in order within one
        start = np.concatenate([[0], np.cumsum(np.sum(counts, axis=0))]).astype(np.int64)
        return Changes(rows, start, np.concatenate(elements)[order], np.concatenate(values)[order])


def _concat_step(engine: Engine, index: int) -> _Joined:
    """A concat: its inputs' changes at their channels' place (`_Joined`)."""
    model = engine.model
    plane = math.prod(model.ops[index].out_shape[1:])
    channels = [model.ops[read].out_shape[0] for read in model.inputs[index]]
    offsets = np.concatenate([[0], np.cumsum(channels)[:-1]]) * plane
    return _Joined(model.inputs[index], tuple(int(offset) for offset in offsets))


def _steps(engine: Engine) -> list[_Step | _Joined | str | None]:
    """Return the step of every op, built once per engine (see `_sparse_step_of`)."""
    def build() -> list[_Step | _Joined | str | None]:
        if not follows(engine):
            raise NotImplementedError("The sparse fault path follows range checks only (see `follows`)")
        steps = [_sparse_step_of(engine, index, op) for index, op in enumerate(engine.model.ops)]
        return [step if not isinstance(step, _Step) else dataclasses.replace(
                    step, check=_check(engine.checks.get(step.last), engine.model.ops[step.last].out_shape),
                    input_check=_check(engine.input_checks.get(index), engine.input_shape(index))
                    if index in engine.input_checks else None)
                for index, step in enumerate(steps)]

    steps: list[_Step | _Joined | str | None] = _operand(engine, ("steps", 0), build)
    return steps


def _sparse_step_of(engine: Engine, index: int, op: Op) -> _Step | _Joined | str | None:
    """Return how the sparse path crosses op `index`: a step, `_SKIP` (flatten: the same values), or None
    (the faults join the dense path here: an op class without a builder in `_SPARSE_STEPS`, or one whose
    builder declines)."""
    builder = _SPARSE_STEPS.get(type(op))
    return None if builder is None else builder(engine, index)


def _add_step(engine: Engine, index: int) -> _Step | None:
    """An add, on the changes of either addend or both (`kernels.add_changes`); not of a tensor to itself."""
    first, second = engine.model.inputs[index]
    if first == second:
        return None
    return _Step(kernels.add_changes, (first, second, index), (), index, binary=True)


def _chained(model: IntModel, index: int) -> bool:
    return index > 0 and model.inputs[index] == (index - 1,) and model.consumers(index - 1) == (index,)


def can_follow(engine: Engine, index: int) -> bool:
    """Say whether a single fault in the buffer op `index` is the first to read can start on the sparse path."""
    return follows(engine) and _steps(engine)[index] is not None


def _sparse_limit(op: Conv2d | Linear) -> float:
    """Return how many changed inputs of weight op `op` the sparse path takes: each reaches kh x kw x N
    accumulators of a conv, N of a linear layer, at `SPARSE_COST` each; beyond, the dense layer is cheaper."""
    if not SPARSE_COST:
        return math.inf
    if isinstance(op, Conv2d):
        return op.out_shape[1] * op.out_shape[2] * op.reduction / (op.kernel[0] * op.kernel[1] * SPARSE_COST)
    return op.reduction / SPARSE_COST


def _conv_step(engine: Engine, index: int) -> _Step:
    """Convolution, with its output stage when that follows directly (codes out, else accumulators). A
    grouped (or depthwise) conv runs as the dense conv whose weights are zero between groups: a changed
    input reaches only its group's outputs, the others get exact zeros and never count as changed."""
    current = engine.model.ops[index]
    assert isinstance(current, Conv2d)
    ungrouped = _ungrouped(engine.layers[index].weight_tensor.to(torch.float64), current.groups)
    weight = ungrouped.permute(1, 2, 3, 0).contiguous().numpy()
    in_shape, geometry = _window(current, engine.input_shape(index))
    fused = _fused_output_stage(engine, index)
    return _Step(kernels.conv_changes, (_source(engine, index), index, index + 1 if fused else index),
                 (weight, kernels.reach(in_shape, geometry), _shape(current.out_shape), geometry, fused,
                  *_output_stage(engine, index + 1 if fused else None)), index + fused,
                 _sparse_limit(current),
                 current.kernel[0] * current.kernel[1] * current.out_features)


def _ungrouped(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """Return grouped conv weights (N, C / g, kh, kw) as the (N, C, kh, kw) weights of the same conv with
    zeros between groups."""
    if groups == 1:
        return weight
    out_channels, per_group, kh, kw = weight.shape
    outs = out_channels // groups
    full = torch.zeros(out_channels, per_group * groups, kh, kw, dtype=weight.dtype)
    for group in range(groups):
        full[group * outs:(group + 1) * outs, group * per_group:(group + 1) * per_group] = \
            weight[group * outs:(group + 1) * outs]
    return full


def _linear_step(engine: Engine, index: int) -> _Step:
    """Linear layer (weight (K, N): the loop over the N outputs runs contiguously), fused as `_conv_step`."""
    current = engine.model.ops[index]
    assert isinstance(current, Linear)
    weight = engine.layers[index].weight_tensor.to(torch.float64).T.contiguous().numpy()
    fused = _fused_output_stage(engine, index)
    return _Step(kernels.linear_changes, (_source(engine, index), index, index + 1 if fused else index),
                 (weight, fused, *_output_stage(engine, index + 1 if fused else None)), index + fused,
                 _sparse_limit(current), current.out_features)


def _pool_step(engine: Engine, index: int) -> _Step:
    """Max pool."""
    current = engine.model.ops[index]
    assert isinstance(current, MaxPool2d)
    in_shape, geometry = _window(current, engine.input_shape(index))
    return _Step(kernels.pool_changes, (_source(engine, index), index),
                 (kernels.reach(in_shape, geometry), in_shape, _shape(current.out_shape), geometry), index)


def _requantize_step(engine: Engine, index: int) -> _Step | None:
    """An output stage not fused into a weight op (a pool sits between them, or it requantizes an add's or
    a pool's sums, or another quantizer's codes); the input quantizer starts no fault's path."""
    if index not in engine.output_stages:
        return None
    stage = engine.output_stages[index]
    per_channel = math.prod(engine.input_shape(index)) // len(stage.multiplier)
    return _Step(kernels.requantize_changes, (_source(engine, index), index), (per_channel, *_stage_operands(stage)),
                 index)


def _source(engine: Engine, index: int) -> int:
    """Return the op whose output op `index` (of one input) reads."""
    return engine.model.input_of(index)


# op class -> how the sparse path crosses it; an op class missing here sends its faults to the dense path.
_SPARSE_STEPS: dict[type, Callable[[Engine, int], _Step | _Joined | str | None]] = {
    Conv2d: _conv_step, Linear: _linear_step, MaxPool2d: _pool_step, QuantAct: _requantize_step, Add: _add_step,
    Concat: _concat_step, Flatten: lambda engine, index: _SKIP}


def _window(op: Conv2d | MaxPool2d, in_shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Return a sliding-window op's input shape (C, H, W) and its geometry as the kernels take it
    (kh, kw, stride_h, stride_w, pad_h, pad_w)."""
    return _shape(in_shape), _shape([*op.kernel, *op.stride, *op.padding])


def _fused_output_stage(engine: Engine, index: int) -> bool:
    """Say whether weight op `index`'s output stage is the op right after it, and the only reader of its
    accumulators."""
    return index + 1 in engine.output_stages and _chained(engine.model, index + 1)


def golden_rows(tensor: torch.Tensor) -> np.ndarray:
    """Return a golden tensor as (n_inputs, values per input), sharing its memory (the view is kept
    while the tensor lives: every batch of a campaign asks for the same ones)."""
    return _per_tensor(_GOLDEN_ROWS, tensor, lambda: tensor.reshape(tensor.shape[0], -1).numpy())


def checked_rows(tensor: torch.Tensor, check: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
    """Return `golden_rows` of a golden input as a weight op with an input check reads it (computed once
    per tensor: the buffer holds the unchecked codes, the array multiplies the checked ones)."""
    def build() -> np.ndarray:
        checked = check(tensor).contiguous()
        return checked.reshape(checked.shape[0], -1).numpy()   # keeps `checked` alive
    return _per_tensor(_CHECKED_ROWS, tensor, build)


def unchecked_golden(engine: Engine, golden: Sequence[torch.Tensor], op: int) -> torch.Tensor:
    """Return output stage `op`'s golden codes before the protection after it (computed once per golden
    tensor). A fault changed a code when it differs from these; the protection then acts on it."""
    return _per_tensor(_UNCHECKED, golden[op],
                       lambda: engine.run(None, start=op, stop=op + 1, checked=False, given=golden))


def _per_tensor(cache: dict[int, tuple[weakref.ref[torch.Tensor], Any]], tensor: torch.Tensor,
                build: Callable[[], Any]) -> Any:
    """Return `build()`, computed once while `tensor` lives (the entry goes with it: a view would keep
    its memory alive). Keyed by id: tensors compare element-wise, so they cannot key a WeakKeyDictionary."""
    entry = cache.get(id(tensor))
    if entry is not None and entry[0]() is tensor:
        return entry[1]
    value = build()
    cache[id(tensor)] = (weakref.ref(tensor), value)
    weakref.finalize(tensor, cache.pop, id(tensor), None)
    return value


# id(tensor) -> (the tensor, weakly; what was derived from it), see `_per_tensor`.
_GOLDEN_ROWS: dict[int, tuple[weakref.ref[torch.Tensor], np.ndarray]] = {}
_CHECKED_ROWS: dict[int, tuple[weakref.ref[torch.Tensor], np.ndarray]] = {}
_UNCHECKED: dict[int, tuple[weakref.ref[torch.Tensor], torch.Tensor]] = {}


def _shape(shape: Sequence[int]) -> np.ndarray:
    return np.array(shape, dtype=np.int64)


Stage = tuple[np.ndarray, np.ndarray, np.ndarray, bool, float, float, bool]

# What the kernels take for "no output stage" (their `requantize` False): never read, typed alike.
_NO_STAGE: Stage = (np.zeros(1), np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64), False, 0.0, 0.0, True)
_CHECK_MODES = {"clip": kernels.CLIP, "zero": kernels.ZERO, "detect": kernels.DETECT}


def _output_stage(engine: Engine, quantizer: int | None) -> Stage:
    """Return quantizer op `quantizer`'s output-stage constants as the kernels take them (None: no output
    stage)."""
    return _NO_STAGE if quantizer is None else _stage_operands(engine.output_stages[quantizer])


def _stage_operands(requantizer: Requantizer) -> Stage:
    return (requantizer.factor.to(torch.float64).numpy(), np.array(requantizer.multiplier, dtype=np.int64),
            np.array(requantizer.shift, dtype=np.int64), requantizer.compute_dtype == torch.int64,
            float(requantizer.qmin), float(requantizer.qmax), requantizer.relu)


def _check(check: Any, shape: Sequence[int]) -> tuple[Any, ...] | None:
    """Return the `kernels.check_changes` operands of a range check (or None) on a map of per-image `shape`."""
    if check is None:
        return None
    assert isinstance(check, RangeCheck)
    per_channel = math.prod(shape) // len(check.lo)
    return per_channel, check.lo.astype(np.float64), check.hi.astype(np.float64), _CHECK_MODES[check.mode]


# Kernel operands derived from an engine's layers (its steps: float64 weights in the kernels' layout,
# output-stage constants), built once per engine: a campaign asks for them on every batch.
_OPERANDS: weakref.WeakKeyDictionary[Engine, dict[tuple[str, int], Any]] = weakref.WeakKeyDictionary()


def _operand(engine: Engine, key: tuple[str, int], build: Callable[[], Any]) -> Any:
    """Return `build()` for this engine and key, computed on first use (threads may both build it: same value)."""
    cache = _OPERANDS.get(engine)
    if cache is None:
        cache = _OPERANDS.setdefault(engine, {})
    if key not in cache:
        cache[key] = build()
    return cache[key]


def _dense(golden: torch.Tensor, inputs: np.ndarray, rows: np.ndarray, changes: Changes, faults: int
           ) -> torch.Tensor:
    """Return the golden rows of faults `rows` with their changes (a fault `changes` lacks keeps golden) put in."""
    dense = torch.index_select(golden, 0, torch.from_numpy(inputs[rows]))
    kernels.scatter_rows(dense.reshape(len(dense), -1).numpy(), *changes.aligned(rows, faults))
    return dense
