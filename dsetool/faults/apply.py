"""Evaluate a batch of faulty inferences on the integer engine, reusing the golden run.

Each row of a batch is one faulty inference with its own faults. Rows start from the golden tensor of
the first op they fault (the prefix is never recomputed), all rows run the suffix together, and rows
whose tensor equals the golden one after their last fault are masked and leave the batch early.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from dsetool.engine import Engine
from dsetool.engine.intmodel import Conv2d, WeightOp
from dsetool.faults import kernels
from dsetool.faults.bits import with_masks
from dsetool.faults.propagate import Propagated, can_follow, follows, golden_rows, propagate, unchecked_golden
from dsetool.faults.site_registry import PE, POST, PRE, WEIGHT, Hook
from dsetool.faults.sites import SiteGroup
from dsetool.faults.sparse import act_fault_accumulators
from dsetool.protect.check import acted


class Network(Protocol):
    """What fault evaluation needs of the integer engine."""

    engine: Engine

    def run_op(self, index: int, *tensors: torch.Tensor, checked: bool = True) -> torch.Tensor:
        """Execute op `index` on its input tensors (`checked` False: without the protection after it)."""
        ...

    def check(self, index: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Return the protection applied to op `index`'s output, if any."""
        ...

    def input_check(self, index: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Return the protection applied to weight op `index`'s input as it reads it, if any."""
        ...

    def masked_by(self, index: int, acc: torch.Tensor, golden_acc: torch.Tensor, golden_out: torch.Tensor
                  ) -> np.ndarray:
        """Return, per row, the step of output-stage op `index` that masks accumulators `acc` whose codes
        equal those of `golden_acc` (`kernels.MASKED_BY` codes)."""
        ...

    def weight_matrix(self, index: int) -> torch.Tensor:
        """Return the integer weights of weight op `index` as an (N, K) matrix (GEMM form)."""
        ...

    def gemm_input(self, index: int, tensor: torch.Tensor) -> torch.Tensor:
        """Return the (B, K, M) operand matrix op `index` multiplies its weights with (im2col for conv)."""
        ...

    def weight_op(self, index: int) -> WeightOp | None:
        """Return op `index` when it is a conv/linear layer, else None."""
        ...

    def can_mask(self, index: int) -> bool:
        """Say whether op `index` can turn a corrupted input back into the golden output."""
        ...

    def weight_tensor(self, index: int) -> torch.Tensor:
        """Return weight op `index`'s integer weights in torch layout, in the layer's accumulator dtype."""
        ...

    @property
    def n_ops(self) -> int:
        """Return the number of ops."""
        ...


@dataclass(frozen=True)
class Evaluated:
    """A batch's faulty inferences: each row's final-op output (logits); whether a protection acted on a
    value its faults changed (`detected`, whatever the protection: a range check flagged it, or a filter
    altered it); which step masked its faults before the logits (`kernels.MASKED_BY` codes; `kernels.LIVE`:
    not masked on the way, or no fault); and, for a TMR vote, where it overruled a faulty replica."""

    logits: torch.Tensor
    detected: np.ndarray
    masked_by: np.ndarray
    outvoted: np.ndarray | None = None


@dataclass(frozen=True)
class Faults:
    """The faults of one batch: fault j hits row `row[j]`, group `group[j]`, element, bit."""

    row: np.ndarray
    group: np.ndarray
    element: np.ndarray
    bit: np.ndarray


def combined_masks(rows: np.ndarray, elements: np.ndarray, bits: np.ndarray, model: str
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge the faults that hit the same (row, element) into one bit mask each.

    Flips on one register compose by XOR (two flips of one bit cancel); stuck-at bits compose by OR.
    """
    span = int(elements.max()) + 1 if len(elements) else 1
    unique, inverse = np.unique(rows * span + elements, return_inverse=True)   # 1-D keys: much faster
    masks = np.zeros(len(unique), dtype=np.int64)
    ufunc = np.bitwise_xor if model == "bitflip" else np.bitwise_or
    ufunc.at(masks, inverse.reshape(-1), np.left_shift(np.int64(1), bits))
    return unique // span, unique % span, masks


def _fault_tensor(tensor: torch.Tensor, group: SiteGroup, rows: np.ndarray, elements: np.ndarray,
                  bits: np.ndarray, model: str) -> torch.Tensor:
    """Apply faults to elements of a (B, ...) code tensor in place of a copy, and return it."""
    r, e, m = combined_masks(rows, elements, bits, model)
    flat = tensor.reshape(tensor.shape[0], -1).clone()
    ri, ei = torch.from_numpy(r), torch.from_numpy(e)
    old = flat[ri, ei].to(torch.int64)
    flat[ri, ei] = with_masks(old, torch.from_numpy(m), model, group.width, group.signed).to(flat.dtype)
    return flat.reshape(tensor.shape)


def _weight_delta(net: Network, group: SiteGroup, op_input: torch.Tensor, acc: torch.Tensor, rows: np.ndarray,
                  elements: np.ndarray, bits: np.ndarray, model: str) -> torch.Tensor:
    """Add the effect of faulty weights to the accumulators: acc[b, n, m] += dW[n, k] * A[b, k, m]."""
    r, e, m = combined_masks(rows, elements, bits, model)
    weights = net.weight_matrix(group.op_index)
    n_out, k_in = weights.shape
    n_idx, k_idx = torch.from_numpy(e // k_in), torch.from_numpy(e % k_in)
    old = weights[n_idx, k_idx].to(torch.int64)
    delta = (with_masks(old, torch.from_numpy(m), model, group.width, True) - old).to(acc.dtype)
    operand = net.gemm_input(group.op_index, op_input)             # (B, K, M)
    op = net.weight_op(group.op_index)
    if isinstance(op, Conv2d) and op.groups > 1:   # output n reads its own group's rows of the operand
        k_idx = k_idx + torch.div(n_idx, n_out // op.groups, rounding_mode="floor") * k_in
    contribution = delta[:, None] * operand[torch.from_numpy(r), k_idx]   # (F, M)
    flat = acc.reshape(acc.shape[0], n_out, -1).clone(memory_format=torch.contiguous_format)
    flat.view(-1, flat.shape[-1]).index_add_(0, torch.from_numpy(r) * n_out + n_idx, contribution)
    return flat.reshape(acc.shape)


def evaluate(net: Network, golden: Sequence[torch.Tensor], inputs: np.ndarray, groups: Sequence[SiteGroup],
             faults: Faults, model: str) -> Evaluated:
    """Return the final-op output (logits) of every faulty row of the batch, and what protected them.

    `golden[i]` holds op i's output for every campaign input; `inputs[b]` names row b's input. A row
    joins the computation at its first faulted op (its prefix is the golden tensor) and leaves as soon
    as every tensor it still needs is golden again after its last fault (masked: its logits are the golden
    ones). Rows with a single fault in a layer's input are followed as the values they change
    (`propagate`) and join the dense rows only where that no longer pays, if their fault was not masked
    before.

    The dense rows run the ops in order; `frontier` holds, for the live rows, each computed tensor that a
    later op still reads (in a chain only the latest; a residual branch stays until its add). An op reads
    a tensor from the frontier, or the golden run when no live row has it computed.
    """
    last_op = net.n_ops - 1
    graph = net.engine.model
    logits = _rows_of(golden[last_op], inputs)
    detected = np.zeros(len(inputs), dtype=np.bool_)
    masked_by = np.zeros(len(inputs), dtype=np.int8)
    result = Evaluated(logits, detected, masked_by)
    if not len(faults.row):
        return result
    fault_ops = np.array([g.op_index for g in groups])[faults.group]
    first = np.full(len(inputs), np.iinfo(np.int64).max, dtype=np.int64)
    final = np.full(len(inputs), -1, dtype=np.int64)
    np.minimum.at(first, faults.row, fault_ops)
    np.maximum.at(final, faults.row, fault_ops)
    n_faults = np.bincount(faults.row, minlength=len(inputs))
    start = int(fault_ops.min())
    if start == 0:
        _missing_input(start)
    pre = np.array([g.hook == PRE for g in groups])[faults.group]
    # op -> (the changed tensors, rows) of sparse faults joining there
    pending: dict[int, list[tuple[dict[int, torch.Tensor], np.ndarray]]] = {}
    carried_rows = np.zeros(len(inputs), dtype=bool)  # rows whose single fault `_carry` follows
    carried = np.nonzero(pre & (n_faults[faults.row] == 1))[0]
    if not follows(net.engine):
        carried = carried[:0]
    carried = carried[_carriable(net, groups)[faults.group[carried]]]
    if len(carried):
        carried_rows[faults.row[carried]] = True
        first[faults.row[carried]] = np.iinfo(np.int64).max   # they arrive through `pending` only
        propagated = _carry(net, golden, inputs, carried, groups, faults, fault_ops, model)
        masked_by[faults.row[carried]] = propagated.masked_by
        detected[faults.row[carried]] = propagated.detected
        for join in propagated.joins:
            rows = faults.row[carried[join.rows]]
            if join.op > last_op:
                logits[torch.from_numpy(rows)] = join.tensors[last_op].to(logits.dtype)
            else:
                pending.setdefault(join.op, []).append((join.tensors, rows))
    live = np.zeros(0, dtype=np.int64)
    frontier: dict[int, torch.Tensor] = {}
    position = np.full(len(inputs), -1, dtype=np.int64)
    entry_ops = set(first[first <= last_op].tolist()) | set(pending)
    if not entry_ops:
        return _masked_at_logits(result, golden[last_op], inputs, n_faults)
    last_reader = graph.last_readers()
    for op in range(min(entry_ops), last_op + 1):
        if not len(live) and op not in entry_ops:
            continue  # nothing runs here
        joining = np.nonzero(first == op)[0]
        sparse = _sparse_rows(net, op, joining, faults, fault_ops, pre, len(inputs))
        dense = np.setdiff1d(joining, sparse, assume_unique=True) if len(sparse) else joining
        arriving: list[tuple[dict[int, torch.Tensor], np.ndarray]] = [({}, dense)] if len(dense) else []
        arriving += pending.pop(op, [])
        for given, rows in arriving:
            frontier, live = _join(frontier, live, given, rows, golden, inputs)
        if arriving:
            position[live] = np.arange(len(live))
        before: torch.Tensor | None = None   # the op's (first) input, with the faults it reads
        if len(live):
            local = np.where(carried_rows[faults.row], -1, position[faults.row])  # carried: applied already
            _fault_buffers(frontier, op, groups, faults, local, fault_ops, model, golden, inputs, live)
            reads = [frontier[i] if i in frontier else _rows_of(golden[i], inputs[live]) for i in graph.inputs[op]]
            output, unchecked, before = _step(net, op, reads, groups, faults, local, fault_ops, model)
            frontier[op] = output
            if unchecked is not None or net.input_check(op) is not None:
                golden_in = _rows_of(golden[graph.inputs[op][0]], inputs[live])
                if unchecked is not None:
                    _detect(net.check(op), before != golden_in, unchecked, output,
                            _rows_of(unchecked_golden(net.engine, golden, op), inputs[live]), live, detected)
                checked_input = net.input_check(op)
                if checked_input is not None:
                    _detect(checked_input, before != golden_in, before, checked_input(before), golden_in, live,
                            detected)
                    # (the golden input is the buffer's content, unchecked: what a fault changed is what differs)
        if len(sparse):
            outputs = _sparse_step(net, op, golden, inputs, sparse, groups, faults, fault_ops, model)
            frontier, live = _join(frontier, live, {op: outputs}, sparse, golden, inputs)
            position[live] = np.arange(len(live))
        frontier = {i: t for i, t in frontier.items() if last_reader[i] > op or i == last_op}
        if not len(live):
            continue
        done = final[live] <= op
        if ((op < last_op and net.can_mask(op)) or net.input_check(op) is not None) and done.any():
            same = done.copy()   # only rows past their last fault can be let go
            for i, tensor in frontier.items():
                _still_golden(tensor, golden[i], inputs[live], same)
            keep = ~same
            if not keep.all():
                masked_by[live[~keep]] = _masked_by(net, op, golden, inputs, before, live, ~keep)
                index = torch.from_numpy(keep)
                frontier = {i: tensor[index] for i, tensor in frontier.items()}
                live = live[keep]
                position[:] = -1
                position[live] = np.arange(len(live))
                if not len(live):
                    frontier = {}  # nobody left; rows joining later start afresh
    if len(live):
        logits[torch.from_numpy(live)] = frontier[last_op]
    return _masked_at_logits(result, golden[last_op], inputs, n_faults)


def _carriable(net: Network, groups: Sequence[SiteGroup]) -> np.ndarray:
    """Say per group whether its single faults can be followed sparsely (`propagate`): an activation buffer
    whose first reader has a sparse step (`can_follow`)."""
    return np.array([g.hook == PRE and can_follow(net.engine, g.op_index) for g in groups], dtype=bool)



def _fault_buffers(frontier: dict[int, torch.Tensor], op: int, groups: Sequence[SiteGroup], faults: Faults,
                   local: np.ndarray, fault_ops: np.ndarray, model: str, golden: Sequence[torch.Tensor],
                   inputs: np.ndarray, live: np.ndarray) -> None:
    """Apply the activation-buffer faults that op `op` is the first to read, to the buffer itself (in the
    frontier), so every later read of the buffer sees them too."""
    js = [j for j in np.nonzero((fault_ops == op) & (local >= 0))[0].tolist()
          if groups[int(faults.group[j])].hook == PRE]
    for group_js in _per_group(js, faults):
        group = groups[int(faults.group[group_js[0]])]
        buffer = frontier[group.buffer] if group.buffer in frontier else _rows_of(golden[group.buffer], inputs[live])
        frontier[group.buffer] = _fault_tensor(buffer, group, local[group_js], faults.element[group_js],
                                               faults.bit[group_js], model)


def _masked_at_logits(result: Evaluated, golden_logits: torch.Tensor, inputs: np.ndarray, n_faults: np.ndarray
                      ) -> Evaluated:
    """Mark faulted rows with golden logits and no masking step yet as masked by the arithmetic of the
    logits layer (its changed inputs changed no logit)."""
    unmarked = np.nonzero((result.masked_by == kernels.LIVE) & (n_faults > 0))[0]
    if len(unmarked):
        index = torch.from_numpy(unmarked)
        same = (result.logits[index] == _rows_of(golden_logits, inputs[unmarked])).all(dim=1).numpy()
        result.masked_by[unmarked[same]] = kernels.ARITHMETIC
    return result


def _detect(check: Callable[[torch.Tensor], torch.Tensor] | None, changed: torch.Tensor, unchecked: torch.Tensor,
            checked: torch.Tensor, golden: torch.Tensor, live: np.ndarray, detected: np.ndarray) -> None:
    """Mark the rows where a protection acted on a value the faults changed: its input (accumulator, or
    the code read) was `changed` and its value before the check (`unchecked`) differs from the golden
    one before the check (`golden`), as the sparse path sees its changes."""
    assert check is not None
    fired = acted(check, unchecked, checked) & (unchecked != golden) & changed
    detected[live[fired.reshape(len(live), -1).any(dim=1).numpy()]] = True


def _masked_by(net: Network, op: int, golden: Sequence[torch.Tensor], inputs: np.ndarray,
               before: torch.Tensor | None, live: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Return which step of op `op` (max pool, output stage, or a weight op's input check) masked the
    faults of rows `live[rows]`, whose input to it was `before[rows]`."""
    assert before is not None
    picked = torch.from_numpy(np.nonzero(rows)[0])
    reference = golden[op] if net.check(op) is None else unchecked_golden(net.engine, golden, op)
    source = net.engine.model.inputs[op][0]
    return net.masked_by(op, before[picked], _rows_of(golden[source], inputs[live[rows]]),
                         _rows_of(reference, inputs[live[rows]]))


def _still_golden(tensor: torch.Tensor, golden: torch.Tensor, images: np.ndarray, same: np.ndarray) -> None:
    """Clear `same[r]` where row r of `tensor` differs from the golden run of image `images[r]`."""
    values = tensor.reshape(len(tensor), -1)
    if values.dtype != golden.dtype:   # (never in the engine's own runs: the same steps make both)
        same &= ~(values != _rows_of(golden, images).reshape(len(tensor), -1)).any(dim=1).numpy()
        return
    reference = golden_rows(golden)
    if values.shape[1] != reference.shape[1]:   # the kernel reads rows unchecked
        raise ValueError(f"A tensor of {values.shape[1]} values per image against golden rows of {reference.shape[1]}")
    kernels.still_golden(values.numpy(), reference, images, same)


def _rows_of(tensor: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    """Gather rows of a golden tensor (index_select: a fresh tensor, faster than advanced indexing)."""
    return torch.index_select(tensor, 0, torch.from_numpy(rows))


def _join(frontier: dict[int, torch.Tensor], live: np.ndarray, given: dict[int, torch.Tensor], rows: np.ndarray,
          golden: Sequence[torch.Tensor], inputs: np.ndarray) -> tuple[dict[int, torch.Tensor], np.ndarray]:
    """Add `rows` to the live rows: their tensors are `given` where named, else golden (they have no
    fault before here)."""
    joined = {}
    for index in frontier.keys() | given.keys():
        fresh = given[index] if index in given else _rows_of(golden[index], inputs[rows])
        if index in frontier:
            joined[index] = torch.cat([frontier[index], fresh])
        elif len(live):
            joined[index] = torch.cat([_rows_of(golden[index], inputs[live]), fresh])
        else:
            joined[index] = fresh
    return joined, np.concatenate([live, rows])


def _sparse_rows(net: Network, op: int, joining: np.ndarray, faults: Faults, fault_ops: np.ndarray,
                 pre: np.ndarray, n_rows: int) -> np.ndarray:
    """Return the joining rows whose faults at weight op `op` all sit in its input buffer, which no other op
    reads (else the other reads must see the fault: the dense path)."""
    weight_op = net.weight_op(op)
    if not len(joining) or weight_op is None or net.input_check(op) is not None \
            or (isinstance(weight_op, Conv2d) and weight_op.groups > 1) \
            or net.engine.model.consumers(net.engine.model.input_of(op)) != (op,):
        return np.zeros(0, dtype=np.int64)
    other = np.zeros(n_rows, dtype=bool)
    at_op = fault_ops == op
    other[faults.row[at_op & ~pre]] = True
    return joining[~other[joining]]


def _carry(net: Network, golden: Sequence[torch.Tensor], inputs: np.ndarray, js: np.ndarray,
           groups: Sequence[SiteGroup], faults: Faults, fault_ops: np.ndarray, model: str) -> Propagated:
    """Follow faults `js`, each its row's only fault and in an activation buffer, sparsely (`propagate`);
    `Join.rows` index `js`."""
    rows = faults.row[js]
    old = np.empty(len(js), dtype=np.int64)
    buffer = np.empty(len(js), dtype=np.int64)
    width, signed = np.empty(len(js), dtype=np.int64), np.empty(len(js), dtype=np.int64)
    for g in np.unique(faults.group[js]).tolist():
        mine = faults.group[js] == g
        group = groups[g]
        old[mine] = golden_rows(golden[group.buffer])[inputs[rows[mine]], faults.element[js[mine]]]
        width[mine], signed[mine], buffer[mine] = group.width, group.signed, group.buffer
    faulty = with_masks(old, np.left_shift(1, faults.bit[js]), model, width, signed)
    return propagate(net.engine, golden, inputs[rows], fault_ops[js], faults.element[js], faulty, buffer)


def _sparse_step(net: Network, op: int, golden: Sequence[torch.Tensor], inputs: np.ndarray, rows: np.ndarray,
                 groups: Sequence[SiteGroup], faults: Faults, fault_ops: np.ndarray, model: str) -> torch.Tensor:
    """Return op `op`'s accumulators for rows faulted only in its input: golden plus a sparse correction."""
    weight_op = net.weight_op(op)
    assert weight_op is not None
    local = np.full(len(inputs), -1, dtype=np.int64)
    local[rows] = np.arange(len(rows))
    js = np.nonzero((fault_ops == op) & (local[faults.row] >= 0))[0]
    group = groups[int(faults.group[js[0]])]
    r, e, m = combined_masks(local[faults.row[js]], faults.element[js], faults.bit[js], model)
    golden_in = _rows_of(golden[net.engine.model.input_of(op)], inputs[rows])
    old = golden_in.reshape(len(rows), -1)[torch.from_numpy(r), torch.from_numpy(e)].to(torch.int64)
    faulty = with_masks(old, torch.from_numpy(m), model, group.width, group.signed)
    return act_fault_accumulators(weight_op, net.weight_tensor(op), golden_in, _rows_of(golden[op], inputs[rows]),
                                  r, e, faulty)


def _step(net: Network, op: int, reads: list[torch.Tensor], groups: Sequence[SiteGroup], faults: Faults,
          local: np.ndarray, fault_ops: np.ndarray, model: str
          ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Run op `op` on the live rows' input tensors `reads` (its buffer faults already in them), with the
    faults that hit its weights, its PE registers or its output; return its output, where a protection
    follows the op the output before it, and its (first) input (before the op's input check, if any)."""
    by_hook: dict[Hook, list[int]] = {}
    for j in np.nonzero((fault_ops == op) & (local >= 0))[0].tolist():
        by_hook.setdefault(groups[int(faults.group[j])].hook, []).append(j)

    def where(js: list[int]) -> tuple[SiteGroup, np.ndarray, np.ndarray, np.ndarray]:
        return groups[int(faults.group[js[0]])], local[js], faults.element[js], faults.bit[js]

    faulted = op_input = reads[0]
    input_check = net.input_check(op)
    if input_check is not None:
        op_input = input_check(faulted)   # what the GEMM multiplies (run_op checks it again: the same)
    check = net.check(op)
    unchecked = None
    if check is None:
        tensor = net.run_op(op, *reads)
    else:
        unchecked = net.run_op(op, *reads, checked=False)
        tensor = check(unchecked)
    for hook, apply in STEP_HOOKS:
        for js in _per_group(by_hook.get(hook, []), faults):
            group, rows, elements, bits = where(js)
            tensor = apply(net, group, op_input, tensor, rows, elements, bits, model)
    return tensor, unchecked, faulted


def _pe_delta(net: Network, group: SiteGroup, op_input: torch.Tensor, acc: torch.Tensor, rows: np.ndarray,
              elements: np.ndarray, bits: np.ndarray, model: str) -> torch.Tensor:
    """Correct the accumulators for faults in PE registers (see `dsetool.faults.pe`)."""
    from dsetool.faults.pe import apply_pe_faults

    assert group.tiling is not None
    r, e, m = combined_masks(rows, elements, bits, model)
    weights = net.weight_matrix(group.op_index)
    operands = net.gemm_input(group.op_index, op_input)
    out = acc.reshape(acc.shape[0], weights.shape[0], -1)
    if group.one_gemm:   # one GEMM (a grouped conv's over all its input channels)
        op = net.weight_op(group.op_index)
        groups = op.groups if isinstance(op, Conv2d) and group.tiling.slice_orders is not None else 1
        return apply_pe_faults(group.site, group.tiling, operands, weights, out, r, e, m, model, group.width,
                               group.signed, group.acc_bits, groups).reshape(acc.shape)
    # A grouped conv as a GEMM per group: group g multiplies operand rows g*K.. by output channels g*N..
    per_group = math.prod(group.tiling.shape)
    k, n = group.tiling.k, group.tiling.n
    out = out.clone(memory_format=torch.contiguous_format)
    for g in np.unique(e // per_group).tolist():
        mine = e // per_group == g
        out[:, g * n:(g + 1) * n] = apply_pe_faults(
            group.site, group.tiling, operands[:, g * k:(g + 1) * k], weights[g * n:(g + 1) * n],
            out[:, g * n:(g + 1) * n], r[mine], e[mine] % per_group, m[mine], model,
            group.width, group.signed, group.acc_bits)
    return out.reshape(acc.shape)


def _output_fault(net: Network, group: SiteGroup, op_input: torch.Tensor, output: torch.Tensor, rows: np.ndarray,
                  elements: np.ndarray, bits: np.ndarray, model: str) -> torch.Tensor:
    """Fault the op's output codes (its requantizer's, or the logits layer's accumulators)."""
    return _fault_tensor(output, group, rows, elements, bits, model)


StepFault = Callable[[Network, SiteGroup, torch.Tensor, torch.Tensor, np.ndarray, np.ndarray, np.ndarray, str],
                     torch.Tensor]
# The faults an op's step applies (`_step`), by `site_registry` hook and in this order: the corrections of
# its accumulators for faulty weights and PE registers, then its output. A `pre` fault is in the buffer
# before the op runs (`_fault_buffers`, or followed sparsely: `_carry`, `_sparse_step`).
STEP_HOOKS: tuple[tuple[Hook, StepFault], ...] = ((WEIGHT, _weight_delta), (PE, _pe_delta), (POST, _output_fault))


def _per_group(js: list[int], faults: Faults) -> list[list[int]]:
    out: dict[int, list[int]] = {}
    for j in js:
        out.setdefault(int(faults.group[j]), []).append(j)
    return list(out.values())


def _missing_input(start: int) -> torch.Tensor:
    raise ValueError(f"faults at op {start} need the float input; the first op is the input quantizer")
