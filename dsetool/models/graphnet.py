"""The torch module that runs a built-in graph network (`models.graphs`), and the add as a module."""

from __future__ import annotations

from typing import Any

from torch import nn

from dsetool.models.graphs import GRAPH_INPUT, Node, module_name


class Add(nn.Module):
    """The sum of two tensors, as a module so the integer export names it after its place in the network
    (Brevitas adds two QuantTensors of one scale exactly, keeping the scale)."""

    def forward(self, first: Any, second: Any) -> Any:
        return first + second


class GraphNet(nn.Module):
    """A built-in graph network: runs its nodes in order, each on the outputs of the nodes it reads.

    Modules hang at their node's dotted name (`layer1.0.conv1`), batch norms beside their conv
    (`layer1.0.conv1_bn`, float model only). A node named `module:k` is another call of `module` (the
    shared quantizer of an add's second input).
    """

    def __init__(self, nodes: tuple[Node, ...], modules: dict[str, nn.Module]) -> None:
        super().__init__()
        self.nodes = nodes
        for name, module in modules.items():
            _attach(self, name, module)
        self.norms = {node.name for node in nodes if f"{node.name}_bn" in modules}

    def forward(self, x: Any) -> Any:
        values = {GRAPH_INPUT: x}
        for node in self.nodes:
            out = self.get_submodule(module_name(node))(*(values[name] for name in node.inputs))
            if node.name in self.norms:
                out = self.get_submodule(f"{node.name}_bn")(out)
            values[node.name] = out
        return values[self.nodes[-1].name]


def _attach(root: nn.Module, path: str, module: nn.Module) -> None:
    """Register `module` at dotted `path` under `root`, creating plain containers on the way."""
    *parents, leaf = path.split(".")
    for part in parents:
        if not hasattr(root, part):
            root.add_module(part, nn.Module())
        root = getattr(root, part)
    root.add_module(leaf, module)
