"""The architectures: LeNet-5, AlexNet-32 (CIFAR-10 variant) and an MLP, float or Brevitas-quantized.

Each architecture is a torch-free list of layer specs, so configs and the fault engine can ask for layer names
without importing torch. `build_model` walks the list with a layer factory (`FloatLayers` or
`quant.QuantLayers`), giving an `nn.Sequential` whose children have stable names:

    input_quant, conv1, relu1, pool1, ..., flatten, fc1, relu<k>, ..., fc<n>

ReLUs and pools are numbered in order of appearance. The float and the quantized model share the names of
every weight and bias (`conv1.weight`, `fc3.bias`, ...), so float weights copy over. In the float model
`input_quant` is an `nn.Identity`.

Shapes (no padding in LeNet-5; 3x3 kernels with padding 1 in AlexNet-32; 2x2 max pools with stride 2):

- lenet5: 1x32x32 -> conv1 6@5x5 -> 6x28x28 -> pool 6x14x14 -> conv2 16@5x5 -> 16x10x10 -> pool 16x5x5
  -> flatten 400 -> fc1 120 -> fc2 84 -> fc3 classes. ReLU after every layer but fc3.
- alexnet32: 3x32x32 -> conv1 64 -> pool 16x16 -> conv2 192 -> pool 8x8 -> conv3 384 -> conv4 256 -> conv5 256
  -> pool 4x4 -> flatten 4096 -> fc1 256 -> fc2 256 -> fc3 classes (no dropout, no batch norm: the integer
  array runs exactly this graph). ReLU after every layer but fc3.
- mlp: flatten -> fc1 hidden[0] -> fc2 hidden[1] ... -> fc<n> classes, ReLU between, at the native size.

resnet8, resnet20, mobilenet and vgg11 are graphs (`models.graphs`): `build_model` gives a `GraphNet` whose
modules are named by their node (`layer1.0.conv1`, `block3.dw`, `fc`), with batch norms only in the float
model (they are folded into the convs before quantization).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dsetool.models.graphs import GRAPH_INPUT, GRAPHS, Node, first_weight_reader, module_name, weight_nodes
from dsetool.models.graphs import INPUT_SIZES as GRAPH_INPUT_SIZES

if TYPE_CHECKING:
    import torch

    from dsetool.models.quant import QuantSpec

CHAIN_ARCHITECTURES = ("lenet5", "alexnet32", "mlp")
ARCHITECTURES = (*CHAIN_ARCHITECTURES, *GRAPHS)
DEFAULT_MLP_HIDDEN = (64, 32)

_INPUT_SIZES: Mapping[str, int | None] = {"lenet5": 32, "alexnet32": 32, "mlp": None, **GRAPH_INPUT_SIZES}


@dataclass(frozen=True)
class Conv:
    name: str
    out_channels: int
    kernel: int
    padding: int = 0


@dataclass(frozen=True)
class Linear:
    """A fully connected layer; `out_features=None` means the number of classes."""

    name: str
    out_features: int | None = None


@dataclass(frozen=True)
class ReLU:
    pass


@dataclass(frozen=True)
class Pool:
    kernel: int = 2


@dataclass(frozen=True)
class Flatten:
    pass


Layer = Conv | Linear | ReLU | Pool | Flatten

_LENET5: tuple[Layer, ...] = (
    Conv("conv1", 6, 5), ReLU(), Pool(),
    Conv("conv2", 16, 5), ReLU(), Pool(),
    Flatten(), Linear("fc1", 120), ReLU(), Linear("fc2", 84), ReLU(), Linear("fc3"),
)

_ALEXNET32: tuple[Layer, ...] = (
    Conv("conv1", 64, 3, 1), ReLU(), Pool(),
    Conv("conv2", 192, 3, 1), ReLU(), Pool(),
    Conv("conv3", 384, 3, 1), ReLU(),
    Conv("conv4", 256, 3, 1), ReLU(),
    Conv("conv5", 256, 3, 1), ReLU(), Pool(),
    Flatten(), Linear("fc1", 256), ReLU(), Linear("fc2", 256), ReLU(), Linear("fc3"),
)


def _mlp(hidden: tuple[int, ...]) -> tuple[Layer, ...]:
    layers: list[Layer] = [Flatten()]
    for index, width in enumerate(hidden, start=1):
        layers += [Linear(f"fc{index}", width), ReLU()]
    return (*layers, Linear(f"fc{len(hidden) + 1}"))


def layers(arch: str, mlp_hidden: tuple[int, ...] = DEFAULT_MLP_HIDDEN) -> tuple[Layer, ...]:
    """Return the layer specs of `arch`, in execution order (after the input quantizer)."""
    if arch == "mlp":
        return _mlp(tuple(mlp_hidden))
    table = {"lenet5": _LENET5, "alexnet32": _ALEXNET32}
    if arch not in table:
        raise ValueError(f"Architecture must be one of {', '.join(map(repr, ARCHITECTURES))}, not {arch!r}")
    return table[arch]


def input_size(arch: str, native: tuple[int, int]) -> int | None:
    """Return the square side the images must be resized to for `arch`, or None to keep `native`."""
    if arch not in GRAPHS:
        layers(arch)
    return _INPUT_SIZES[arch]


def weight_layer_names(arch: str, mlp_hidden: tuple[int, ...] = DEFAULT_MLP_HIDDEN) -> list[str]:
    """Return the names of the weight layers of `arch`, in execution order (no torch import)."""
    if arch in GRAPHS:
        return [node.name for node in weight_nodes(arch)]
    return [layer.name for layer in layers(arch, mlp_hidden) if isinstance(layer, (Conv, Linear))]


class FloatLayers:
    """Build the float baseline's layers: plain torch modules named like the quantized ones."""

    def input(self, first_layer: str) -> Any:
        from torch import nn

        return nn.Identity()

    def conv(self, name: str, in_channels: int, out_channels: int, kernel: int, padding: int, stride: int = 1,
             groups: int = 1) -> Any:
        from torch import nn

        return nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding, groups=groups)

    def batch_norm(self, channels: int) -> Any:
        """Return the norm after a conv (the quantized model has none: it is folded into the conv)."""
        from torch import nn

        return nn.BatchNorm2d(channels)

    def shared_quant(self, next_layer: str) -> Any:
        """Return the quantizer both inputs of an add pass through (the float model: nothing)."""
        from torch import nn

        return nn.Identity()

    def linear(self, name: str, in_features: int, out_features: int) -> Any:
        from torch import nn

        return nn.Linear(in_features, out_features)

    def relu(self, next_layer: str) -> Any:
        from torch import nn

        return nn.ReLU()


def _next_weight_layer(specs: tuple[Layer, ...], start: int) -> str:
    return next(s.name for s in specs[start:] if isinstance(s, (Conv, Linear)))


class _Builder:
    """Walk the specs once, tracking the activation shape so flatten sizes follow the image size."""

    def __init__(self, factory: Any, in_channels: int, image_size: tuple[int, int], num_classes: int):
        self.factory = factory
        self.shape: tuple[int, ...] = (in_channels, *image_size)
        self.num_classes = num_classes
        self.counts = {"relu": 0, "pool": 0}
        self.children: list[tuple[str, Any]] = []

    def build(self, specs: tuple[Layer, ...]) -> list[tuple[str, Any]]:
        self.children.append(("input_quant", self.factory.input(_next_weight_layer(specs, 0))))
        for index, spec in enumerate(specs):
            self.children.append(self._add(spec, specs, index))
        return self.children

    def _add(self, spec: Layer, specs: tuple[Layer, ...], index: int) -> tuple[str, Any]:
        from torch import nn

        if isinstance(spec, Conv):
            return spec.name, self._conv(spec)
        if isinstance(spec, Linear):
            return spec.name, self._linear(spec)
        if isinstance(spec, ReLU):
            return self._numbered("relu"), self.factory.relu(_next_weight_layer(specs, index))
        if isinstance(spec, Pool):
            channels, height, width = self.shape
            self.shape = (channels, height // spec.kernel, width // spec.kernel)
            return self._numbered("pool"), nn.MaxPool2d(spec.kernel, spec.kernel)
        self.shape = (_product(self.shape),)
        return "flatten", nn.Flatten()

    def _conv(self, spec: Conv) -> Any:
        channels, height, width = self.shape
        side = 2 * spec.padding - spec.kernel + 1
        if height + side < 1 or width + side < 1:
            raise ValueError(f"Image size {self.shape[1:]} is too small for {spec.name} ({spec.kernel}x"
                             f"{spec.kernel}, padding {spec.padding})")
        self.shape = (spec.out_channels, height + side, width + side)
        return self.factory.conv(spec.name, channels, spec.out_channels, spec.kernel, spec.padding)

    def _linear(self, spec: Linear) -> Any:
        out = self.num_classes if spec.out_features is None else spec.out_features
        (features,) = self.shape
        self.shape = (out,)
        return self.factory.linear(spec.name, features, out)

    def _numbered(self, kind: str) -> str:
        self.counts[kind] += 1
        return f"{kind}{self.counts[kind]}"


def _product(values: tuple[int, ...]) -> int:
    result = 1
    for value in values:
        result *= value
    return result


def _graph_modules(nodes: tuple[Node, ...], factory: Any, in_channels: int, image_size: tuple[int, int],
                   num_classes: int) -> dict[str, Any]:
    """Build every node's module, tracking shapes so the linear layer's width follows the image size."""
    from torch import nn

    from dsetool.models.graphnet import Add

    shapes: dict[str, tuple[int, ...]] = {GRAPH_INPUT: (in_channels, *image_size)}
    modules: dict[str, Any] = {}
    first = weight_nodes_of(nodes)[0]
    modules["input_quant"] = factory.input(first)
    for node in nodes:
        shape = shapes[node.inputs[0]]
        reader = first_weight_reader(nodes, node.name) or nodes[-1].name
        if node.kind == "conv":
            channels, height, width = shape
            groups = channels if node.groups == 0 else node.groups
            out = node.out or num_classes
            modules[node.name] = factory.conv(node.name, channels, out, node.kernel, node.padding, node.stride,
                                              groups)
            if node.bn and isinstance(factory, FloatLayers):
                modules[f"{node.name}_bn"] = factory.batch_norm(out)
            side = [(s + 2 * node.padding - node.kernel) // node.stride + 1 for s in (height, width)]
            shape = (out, *side)
        elif node.kind == "linear":
            out = node.out or num_classes
            modules[node.name] = factory.linear(node.name, _product(shape), out)
            shape = (out,)
        elif node.kind == "relu":
            modules[node.name] = factory.relu(reader)
        elif node.kind == "addq":
            if module_name(node) not in modules:
                modules[module_name(node)] = factory.shared_quant(reader)
        elif node.kind == "add":
            modules[node.name] = Add()
        elif node.kind == "maxpool":
            modules[node.name] = nn.MaxPool2d(node.kernel, node.stride)
            shape = (shape[0], *(s // node.stride for s in shape[1:]))
        elif node.kind == "gap":
            modules[node.name] = nn.AdaptiveAvgPool2d(1)
            shape = (shape[0], 1, 1)
        elif node.kind == "flatten":
            modules[node.name] = nn.Flatten()
            shape = (_product(shape),)
        if min(shape) < 1:
            raise ValueError(f"Image size {image_size} is too small for {node.name}")
        shapes[node.name] = shape
    return modules


def weight_nodes_of(nodes: tuple[Node, ...]) -> list[str]:
    """Return the names of the weight nodes among `nodes`, in order."""
    return [node.name for node in nodes if node.kind in ("conv", "linear")]


def _build_graph(arch: str, factory: Any, in_channels: int, num_classes: int, image_size: tuple[int, int]) -> Any:
    from dsetool.models.graphnet import GraphNet

    nodes = GRAPHS[arch]
    modules = _graph_modules(nodes, factory, in_channels, image_size, num_classes)
    input_quant = modules.pop("input_quant")
    graph = (Node("input_quant", "input", (GRAPH_INPUT,)),   # the input quantizer runs first, on the images
             *(Node(n.name, n.kind, tuple("input_quant" if i == GRAPH_INPUT else i for i in n.inputs), n.out,
                    n.kernel, n.stride, n.padding, n.groups, n.bn) for n in nodes))
    return GraphNet(graph, {"input_quant": input_quant, **modules})


def build_model(arch: str, *, in_channels: int, num_classes: int, image_size: tuple[int, int],
                quant: QuantSpec | None = None, mlp_hidden: tuple[int, ...] = DEFAULT_MLP_HIDDEN
                ) -> torch.nn.Module:
    """Build `arch` as an `nn.Sequential` returning (N, num_classes) float logits.

    `quant=None` gives the float baseline; a `QuantSpec` gives the Brevitas model, whose per-layer overrides
    must name weight layers of `arch`.
    """
    from collections import OrderedDict

    from torch import nn

    from dsetool.models.quant import QuantLayers

    if quant is not None:
        _check_overrides(arch, quant, weight_layer_names(arch, mlp_hidden))
    factory = FloatLayers() if quant is None else QuantLayers(quant)
    if arch in GRAPHS:
        return _build_graph(arch, factory, in_channels, num_classes, image_size)
    specs = layers(arch, mlp_hidden)
    height, width = image_size
    children = _Builder(factory, in_channels, (height, width), num_classes).build(specs)
    return nn.Sequential(OrderedDict(children))


def _check_overrides(arch: str, quant: QuantSpec, names: list[str]) -> None:
    unknown = sorted(set(quant.per_layer) - set(names))
    if unknown:
        raise ValueError(f"Per-layer bits name unknown layers {unknown} of {arch!r}; "
                         f"expected some of {names}")


def load_float_weights(quant_model: torch.nn.Module, float_state_dict: Mapping[str, Any]) -> None:
    """Copy the weight and bias of every weight layer into `quant_model`; quantizer state stays as it is.

    Raises KeyError naming the missing tensor and ValueError on a shape mismatch, so a float checkpoint of
    another architecture or size is never half-loaded silently.
    """
    import torch

    targets = _weight_tensors(quant_model)
    for key, target in targets.items():
        if key not in float_state_dict:
            raise KeyError(f"Float state dict has no {key!r} (expected the weight layers {sorted(targets)})")
        source = float_state_dict[key]
        if tuple(source.shape) != tuple(target.shape):
            raise ValueError(f"Float {key!r} has shape {tuple(source.shape)}, the model needs "
                             f"{tuple(target.shape)}")
    with torch.no_grad():
        for key, target in targets.items():
            target.copy_(float_state_dict[key])


def _weight_tensors(model: torch.nn.Module) -> dict[str, Any]:
    from torch import nn

    tensors = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            tensors[f"{name}.weight"] = module.weight
            if module.bias is not None:
                tensors[f"{name}.bias"] = module.bias
    return tensors
