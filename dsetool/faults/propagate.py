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
from dsetool.engine.intmodel import Add, Conv2d, Flatten, IntModel, Linear, MaxPool2d, Op, QuantAct, WeightOp
from dsetool.faults import kernels
from dsetool.protect.check import RangeCheck

_SKIP = "skip"   # a step that leaves the values as they are (flatten)

# One scattered multiply-add of the compiled loops costs about this many multiply-adds of the dense
# layer (BLAS, vectorized); a fault whose change would cost more joins the dense rows there. Only a
# crossover: both paths give identical values.
SPARSE_COST = 10

# Faults that would be cheaper dense still stay sparse while their sparse multiply-adds at that layer,
# all together, stay below this: starting the dense computation costs a batch more than the arithmetic
# of small layers (a tensor op per remaining op, the joins, the masked checks; LeNet-5's linear layers
# ran a uniform campaign 1.7x faster sparse than dense, `benchmarks/inject_throughput.py`).
DENSE_START = 2_000_000


@dataclass(frozen=True)
class Join:
    """Faults that leave the sparse path at the input of op `op`: `tensor` holds their dense inputs to
    it (with `op` one past the last op: their logits); `rows` index the propagated faults."""

    op: int
    rows: np.ndarray
    tensor: torch.Tensor


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


def propagate(engine: Engine, golden: Sequence[torch.Tensor], inputs: np.ndarray, start: np.ndarray,
              element: np.ndarray, faulty: np.ndarray) -> Propagated:
    """Follow one changed input value per fault: flat element `element[f]` of weight op `start[f]`'s
    input, now `faulty[f]`, on campaign input `inputs[f]` (its golden tensors are `golden[i][inputs[f]]`).

    Faults of every layer travel together: a fault joins the others at its own layer, so each op's
    kernel runs once per batch however many layers it holds faults of.
    """
    steps = _steps(engine)
    joins: list[Join] = []
    masked_by = np.zeros(len(inputs), dtype=np.int8)
    detected = np.zeros(len(inputs), dtype=np.bool_)
    changes = Changes.empty()
    later = np.unique(start)
    index = int(later[0])
    while index < len(steps):
        born = np.nonzero(start == index)[0]
        if len(born):   # a stuck-at bit that already held its value changed nothing
            unchanged = faulty[born] == golden_rows(golden[index - 1])[inputs[born], element[born]]
            masked_by[born[unchanged]] = kernels.ARITHMETIC
            born = born[~unchanged]
            changes = changes.merge(Changes.born(born, element[born], faulty[born]))
        if not len(changes.rows):
            ahead = later[later > index]
            if not len(ahead):
                break
            index = int(ahead[0])
            continue
        step = steps[index]
        if step is _SKIP:  # flatten
            index += 1
            continue
        if not isinstance(step, _Step):   # no sparse step here (a branch, an add, a pool's sum): the dense path
            joins.append(_dense_join(index, golden[index - 1], inputs, changes))
            changes = Changes.empty()
            index += 1
            continue
        reads = [golden_rows(golden[i]) for i in step.reads]
        if step.input_check is not None:   # the weight op reads its input through a check
            reads[0] = checked_rows(golden[index - 1], engine.input_checks[index])
            changes = _checked(changes, step.input_check, reads[0], inputs, masked_by, detected)
            if not len(changes.rows):
                index += 1
                continue
        if step.sparse_limit is not None:
            # Faults born here have one change: never dearer than the layer.
            count = changes.count
            dense = (start[changes.rows] != index) & (count > step.sparse_limit)
            if dense.any() and int(count[dense].sum()) * step.products > DENSE_START:
                joins.append(_dense_join(index, golden[index - 1], inputs, changes.pick(dense)))
                changes = changes.pick(~dense)
                if not len(changes.rows):
                    index += 1
                    continue
        if step.check is not None:   # the kernel finds what a fault changed against the unprotected codes
            reads[-1] = golden_rows(unchecked_golden(engine, golden, step.last))
        changes = changes.after(step.kernel(*reads, inputs[changes.rows], changes.start, changes.element,
                                            changes.value, *step.operands), masked_by)
        if step.check is not None and len(changes.rows):
            changes = _checked(changes, step.check, golden_rows(golden[step.last]), inputs, masked_by, detected)
        index = step.last + 1
    if len(changes.rows):  # past the logits layer: the changes are the rows' logits
        joins.append(_dense_join(index, golden[index - 1], inputs, changes))
    return Propagated(joins, masked_by, detected)


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


def _steps(engine: Engine) -> list[_Step | str | None]:
    """Return the step of every op, built once per engine (see `_sparse_step_of`)."""
    def build() -> list[_Step | str | None]:
        if not follows(engine):
            raise NotImplementedError("The sparse fault path follows range checks only (see `follows`)")
        steps = [_sparse_step_of(engine, index, op) for index, op in enumerate(engine.model.ops)]
        return [step if not isinstance(step, _Step) else dataclasses.replace(
                    step, check=_check(engine.checks.get(step.last), engine.model.ops[step.last].out_shape),
                    input_check=_check(engine.input_checks.get(index), engine.input_shape(index))
                    if index in engine.input_checks else None)
                for index, step in enumerate(steps)]

    steps: list[_Step | str | None] = _operand(engine, ("steps", 0), build)
    return steps


def _sparse_step_of(engine: Engine, index: int, op: Op) -> _Step | str | None:
    """Return how the sparse path crosses op `index`: a step, `_SKIP` (flatten: the same values), or None
    (the faults join the dense path here: an op class without a builder in `_SPARSE_STEPS`, or one whose
    builder declines, as a grouped conv's does). An op of one input is crossed only on a chain link: it
    reads op `index - 1` and nothing else does, so the changes it carries are all that differs."""
    builder = _SPARSE_STEPS.get(type(op))
    if builder is None or (op.ARITY == 1 and not _chained(engine.model, index)):
        return None
    return builder(engine, index)


def _add_step(engine: Engine, index: int) -> _Step | None:
    """An add, crossed when the changes come from op `index - 1`, which only the add reads (the other
    addend is then golden for every fault on the path)."""
    model = engine.model
    reads = model.inputs[index]
    if index - 1 not in reads or model.consumers(index - 1) != (index,) or reads[0] == reads[1]:
        return None
    other = reads[0] if reads[1] == index - 1 else reads[1]
    return _Step(kernels.add_changes, (other, index), (), index)


def _chained(model: IntModel, index: int) -> bool:
    return index > 0 and model.inputs[index] == (index - 1,) and model.consumers(index - 1) == (index,)


def can_follow(engine: Engine, index: int) -> bool:
    """Say whether a single fault in weight op `index`'s input buffer can start on the sparse path."""
    return follows(engine) and isinstance(_steps(engine)[index], _Step) \
        and isinstance(engine.model.ops[index], WeightOp)


def _sparse_limit(op: Conv2d | Linear) -> float:
    """Return how many changed inputs of weight op `op` the sparse path takes: each reaches kh x kw x N
    accumulators of a conv, N of a linear layer, at `SPARSE_COST` each; beyond, the dense layer is cheaper."""
    if not SPARSE_COST:
        return math.inf
    if isinstance(op, Conv2d):
        return op.out_shape[1] * op.out_shape[2] * op.reduction / (op.kernel[0] * op.kernel[1] * SPARSE_COST)
    return op.reduction / SPARSE_COST


def _conv_step(engine: Engine, index: int) -> _Step | None:
    """Convolution, with its output stage when that follows directly (codes out, else accumulators); a
    grouped conv goes dense (its kernel scatters over every output channel)."""
    current = engine.model.ops[index]
    assert isinstance(current, Conv2d)
    if current.groups != 1:
        return None
    weight = engine.layers[index].weight_tensor.to(torch.float64).permute(1, 2, 3, 0).contiguous().numpy()
    in_shape, geometry = _window(current, engine.input_shape(index))
    fused = _fused_output_stage(engine, index)
    return _Step(kernels.conv_changes, (index - 1, index, index + 1 if fused else index),
                 (weight, kernels.reach(in_shape, geometry), _shape(current.out_shape), geometry, fused,
                  *_output_stage(engine, index + 1 if fused else None)), index + fused,
                 _sparse_limit(current),
                 current.kernel[0] * current.kernel[1] * current.out_features)


def _linear_step(engine: Engine, index: int) -> _Step:
    """Linear layer (weight (K, N): the loop over the N outputs runs contiguously), fused as `_conv_step`."""
    current = engine.model.ops[index]
    assert isinstance(current, Linear)
    weight = engine.layers[index].weight_tensor.to(torch.float64).T.contiguous().numpy()
    fused = _fused_output_stage(engine, index)
    return _Step(kernels.linear_changes, (index - 1, index, index + 1 if fused else index),
                 (weight, fused, *_output_stage(engine, index + 1 if fused else None)), index + fused,
                 _sparse_limit(current), current.out_features)


def _pool_step(engine: Engine, index: int) -> _Step:
    """Max pool."""
    current = engine.model.ops[index]
    assert isinstance(current, MaxPool2d)
    in_shape, geometry = _window(current, engine.input_shape(index))
    return _Step(kernels.pool_changes, (index - 1, index),
                 (kernels.reach(in_shape, geometry), in_shape, _shape(current.out_shape), geometry), index)


def _requantize_step(engine: Engine, index: int) -> _Step | None:
    """An output stage not fused into a weight op (a pool sits between them, or it requantizes an add's or
    a pool's sums, or another quantizer's codes); the input quantizer starts no fault's path."""
    if index not in engine.output_stages:
        return None
    stage = engine.output_stages[index]
    per_channel = math.prod(engine.input_shape(index)) // len(stage.multiplier)
    return _Step(kernels.requantize_changes, (index - 1, index), (per_channel, *_stage_operands(stage)), index)


# op class -> how the sparse path crosses it; an op class missing here sends its faults to the dense path.
_SPARSE_STEPS: dict[type, Callable[[Engine, int], _Step | str | None]] = {
    Conv2d: _conv_step, Linear: _linear_step, MaxPool2d: _pool_step, QuantAct: _requantize_step, Add: _add_step,
    Flatten: lambda engine, index: _SKIP}


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


def _dense_join(op: int, golden_in: torch.Tensor, inputs: np.ndarray, changes: Changes) -> Join:
    """Return the faults' dense input to op `op`: their golden rows with their changes put in."""
    dense = torch.index_select(golden_in, 0, torch.from_numpy(inputs[changes.rows]))
    kernels.scatter_rows(dense.reshape(len(dense), -1).numpy(), changes.start, changes.element, changes.value)
    return Join(op, changes.rows, dense)
