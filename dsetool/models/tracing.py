"""The user's forward pass as a static graph: sizes read from tensors become the constants they are.

Networks written for PyTorch read their own tensors' sizes: `F.avg_pool2d(out, out.size()[3])` pools the
whole map, `out.view(out.size(0), -1)` flattens it (the CIFAR ResNets most papers start from do both).
torch.fx traces such a size as a graph value, and Brevitas cannot turn a pool whose kernel is a graph
value into a module. Every image a design point sees has one shape, so each size but the batch is a
constant: a size-derived value that no batch dimension enters (followed through indexing and arithmetic)
is put in as the constant it is, which a run of the graph gives (and a second run, at another batch size,
confirms). A view or reshape to (batch, features), the one reshape the engine runs, becomes
`torch.flatten(x, 1)`, and a mean over the height and width a global average pool (flattened unless it
keeps the dimensions). What depends on the batch stays, for the op check to name.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

PROBE_BATCHES = (2, 3)   # two batch sizes: a value equal in both does not depend on the batch
RESHAPES = ("view", "reshape")


def static_graph(model: nn.Module, input_shape: tuple[int, ...]) -> torch.fx.GraphModule:
    """Return the traced model with its size-derived constants folded and its flattening views and
    reshapes as `torch.flatten(x, 1)` (the same function on every input of `input_shape`)."""
    import torch

    traced = torch.fx.symbolic_trace(model)
    runs = [_values(traced, torch.zeros(batch, *input_shape)) for batch in PROBE_BATCHES]
    graph = traced.graph
    batch: dict[torch.fx.Node, bool | tuple[bool, ...]] = {}   # which parts of a size-derived value are the batch
    for node in list(graph.nodes):
        first, second = (run.get(node) for run in runs)
        if _from_sizes(node) and _is_size(first):
            batch[node] = _batch_parts(node, first, runs[0], batch)
            if not _any(batch[node]) and _sizes_equal(first, second):
                _put_in(node, tuple(first) if isinstance(first, torch.Size) else first)
        elif _flattens(node, first, second):
            with graph.inserting_before(node):
                flat = graph.call_function(torch.flatten, (node.args[0], 1))
            node.replace_all_uses_with(flat)
            graph.erase_node(node)
        elif (keepdim := _spatial_mean(node, runs[0])) is not None:
            with graph.inserting_before(node):
                pooled = graph.call_function(torch.nn.functional.adaptive_avg_pool2d, (node.args[0], 1))
                if not keepdim:
                    pooled = graph.call_function(torch.flatten, (pooled, 1))
            node.replace_all_uses_with(pooled)
            graph.erase_node(node)
    graph.eliminate_dead_code()
    graph.lint()
    traced.recompile()
    return traced


def _batch_parts(node: torch.fx.Node, value: Any, values: dict[Any, Any],
                 batch: dict[Any, bool | tuple[bool, ...]]) -> bool | tuple[bool, ...]:
    """Return whether a size-derived value comes from a batch dimension (per element, for a tuple): a whole
    size's first element, `size(0)`, and whatever indexing or arithmetic takes from them."""
    if node.op == "call_method" and node.target == "dim":
        return False
    if node.op == "call_method" and node.target == "size" or node.op == "call_function" and node.target is getattr:
        dim = node.args[1] if node.target == "size" and len(node.args) > 1 else node.kwargs.get("dim")
        if dim is None:   # the whole size (or shape): its first element is the batch
            return tuple(i == 0 for i in range(len(value)))
        return dim % values[node.args[0]].dim() == 0
    if node.target is operator.getitem and isinstance(batch.get(node.args[0]), tuple):
        parts = batch[node.args[0]]
        assert isinstance(parts, tuple)
        return parts[node.args[1]]   # type: ignore[index]   # an int or a slice
    return any(_any(batch.get(arg, False)) for arg in node.args)


def _any(parts: Any) -> bool:
    return any(parts) if isinstance(parts, tuple) else bool(parts)


def _spatial_mean(node: torch.fx.Node, values: dict[Any, Any]) -> bool | None:
    """Return keepdim when the node is the mean of a (B, C, H, W) tensor over H and W (`x.mean([2, 3])`,
    `torch.mean(x, (2, 3))`: a global average pool, as many MobileNet and EfficientNet codes write it),
    else None."""
    import torch

    if not (node.op == "call_method" and node.target == "mean" or
            node.op == "call_function" and node.target is torch.mean):
        return None
    source = values.get(node.args[0]) if node.args else None
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if not isinstance(source, torch.Tensor) or source.dim() != 4 or not isinstance(dims, list | tuple) or \
            not isinstance(keepdim, bool) or set(node.kwargs) - {"dim", "keepdim"}:
        return None
    return keepdim if sorted(d % 4 for d in dims if isinstance(d, int)) == [2, 3] and len(dims) == 2 else None


def _put_in(node: torch.fx.Node, constant: Any) -> None:
    """Replace every use of `node` by `constant`."""
    import torch

    def swap(arg: Any) -> Any:
        return constant if arg is node else arg

    for user in list(node.users):
        user.args = torch.fx.node.map_aggregate(user.args, swap)
        user.kwargs = torch.fx.node.map_aggregate(user.kwargs, swap)


def _values(traced: torch.fx.GraphModule, x: torch.Tensor) -> dict[Any, Any]:
    """Run the graph on `x` (eval mode, no grad) and return every node's value."""
    import torch

    values: dict[Any, Any] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            values[n] = result = super().run_node(n)
            return result

    was_training = traced.training
    traced.eval()
    try:
        with torch.no_grad():
            Recorder(traced).run(x)
    finally:
        traced.train(was_training)
    return values


def _is_size(value: Any) -> bool:
    import torch

    return isinstance(value, int | torch.Size) and not isinstance(value, bool) or \
        isinstance(value, tuple) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _sizes_equal(first: Any, second: Any) -> bool:
    return _is_size(second) and tuple(first if not isinstance(first, int) else (first,)) == \
        tuple(second if not isinstance(second, int) else (second,))


def _from_sizes(node: torch.fx.Node) -> bool:
    """Say whether the node reads a tensor's size (`x.size()`, `x.size(d)`, `x.shape`, `x.dim()`) or
    computes from such values (indexing, arithmetic)."""
    if node.op == "call_method" and node.target in ("size", "dim"):
        return True
    if node.op == "call_function" and node.target is getattr and node.args[1:] == ("shape",):
        return True
    return node.op == "call_function" and node.target in (operator.getitem, operator.floordiv, operator.mul,
                                                          operator.add, operator.sub) and \
        not any(_tensor_arg(arg) for arg in node.args)


def _tensor_arg(arg: Any) -> bool:
    """Say whether a node argument is a tensor-valued node (not a size)."""
    import torch

    return isinstance(arg, torch.fx.Node) and not _from_sizes(arg) and arg.op != "get_attr" or \
        isinstance(arg, torch.Tensor)


def _flattens(node: torch.fx.Node, first: Any, second: Any) -> bool:
    """Say whether a view / reshape turns each image's tensor into one row of its features."""
    import torch

    if not (node.op == "call_method" and node.target in RESHAPES or
            node.op == "call_function" and node.target is torch.reshape):
        return False
    if not (isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor)):
        return False
    batches = PROBE_BATCHES
    return first.dim() == second.dim() == 2 and (first.shape[0], second.shape[0]) == batches and \
        first.shape[1] == second.shape[1]
