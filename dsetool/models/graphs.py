"""The built-in graph-shaped architectures (ResNet-8/20, MobileNet, VGG-11), described torch-free as nodes.

A network is a tuple of `Node`s in execution order, each naming the nodes it reads (`"input"`: the
images). The same description builds the float model and the Brevitas model (`zoo.build_model`, through a
layer factory), gives the weight-layer names configs validate against, and gives every layer's GEMM for
the hardware model (`models.shapes`), so none of them imports torch.

Conventions the integer export relies on:

- every conv is followed by its batch norm in the float model (`bn=True`); the quantized model has none:
  the norm is folded into the conv's weights and bias before quantization-aware training
  (`models.fold.fold_batch_norms`), so QAT and the integer engine see one conv with a bias;
- a `relu` node is a quantization point (`QuantReLU` in the quantized model) and an `addq` node a signed
  quantizer (`QuantIdentity`); the two inputs of an `add` pass through the *same* `addq` quantizer, so
  they share one scale and their sum is an exact integer at it (the integer format checks this);
- `gap` is a global average pool: a window sum, requantized by the quantizer that reads it.

Shapes: resnet8 / resnet20 (He et al. 2016, the CIFAR variants): a 3x3 conv to 16 channels, three stages of
1 or 3 basic blocks at 16/32/64 channels (stride 2 entering stages 2 and 3, with a 1x1 strided conv and
its norm on the shortcut), global average pool, a linear layer. mobilenet: MobileNet-v1 depthwise-separable
blocks for 32x32 inputs: a 3x3 conv to 32 channels, then (depthwise 3x3, pointwise 1x1) pairs to
64, 128 (stride 2), 128, 256 (stride 2), 256, 512 (stride 2), global average pool, linear. vgg11: the
CIFAR VGG-11 (eight 3x3 convs with batch norm at 64, 128, 256, 256, 512, 512, 512, 512 channels, five 2x2
max pools), one linear layer.
"""

from __future__ import annotations

from dataclasses import dataclass

GRAPH_INPUT = "input"
NODE_KINDS = ("input", "conv", "linear", "relu", "addq", "add", "maxpool", "gap", "flatten")
WEIGHT_KINDS = ("conv", "linear")


@dataclass(frozen=True)
class Node:
    """One op of a built-in network. `out` is a weight layer's output channels (None: the classes);
    `groups` 0 means depthwise (one group per input channel)."""

    name: str
    kind: str
    inputs: tuple[str, ...]
    out: int | None = None
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    groups: int = 1
    bn: bool = False

    def __post_init__(self) -> None:
        if self.kind not in NODE_KINDS:
            raise ValueError(f"Node {self.name!r}: kind must be one of {NODE_KINDS}, not {self.kind!r}")


class _Graph:
    """Append nodes, each reading the previous one unless told otherwise."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.last = GRAPH_INPUT

    def add(self, name: str, kind: str, *inputs: str, **fields: object) -> str:
        self.nodes.append(Node(name, kind, tuple(inputs) or (self.last,), **fields))  # type: ignore[arg-type]
        self.last = name
        return name

    def conv_relu(self, name: str, out: int, kernel: int, stride: int = 1, groups: int = 1,
                  relu: str | None = None) -> str:
        self.add(name, "conv", out=out, kernel=kernel, stride=stride, padding=kernel // 2, groups=groups, bn=True)
        return self.add(relu or f"{name}_relu", "relu")

    def head(self) -> tuple[Node, ...]:
        self.add("pool", "gap")
        self.add("pool_quant", "relu")   # the averages of ReLU outputs are >= 0: a ReLU quantizer keeps all bits
        self.add("flatten", "flatten")
        self.add("fc", "linear")
        return tuple(self.nodes)


def _resnet(blocks_per_stage: int) -> tuple[Node, ...]:
    graph = _Graph()
    graph.conv_relu("conv1", 16, 3)
    channels = 16
    for stage, width in enumerate((16, 32, 64), start=1):
        for block in range(blocks_per_stage):
            stride = 2 if stage > 1 and block == 0 else 1
            prefix = f"layer{stage}.{block}"
            entry = graph.last
            # The shortcut first, so the residual path conv1 -> conv2 -> its quantizer -> add -> relu is a
            # chain of ops each only its successor reads: single faults cross it on the sparse fault path.
            shortcut = entry
            if stride != 1 or width != channels:
                shortcut = graph.add(f"{prefix}.shortcut", "conv", entry, out=width, kernel=1, stride=stride,
                                     bn=True)
            # One quantizer (one scale) for both inputs of the add: two calls of the same module.
            right = graph.add(f"{prefix}.addq", "addq", shortcut)
            graph.add(f"{prefix}.conv1", "conv", entry, out=width, kernel=3, stride=stride, padding=1, bn=True)
            graph.add(f"{prefix}.conv1_relu", "relu")
            residual = graph.add(f"{prefix}.conv2", "conv", out=width, kernel=3, padding=1, bn=True)
            left = graph.add(f"{prefix}.addq:2", "addq", residual)
            graph.add(f"{prefix}.add", "add", left, right)
            graph.add(f"{prefix}.relu", "relu")
            channels = width
    return graph.head()


def _mobilenet() -> tuple[Node, ...]:
    graph = _Graph()
    graph.conv_relu("conv1", 32, 3)
    channels = 32
    for index, (width, stride) in enumerate(((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)),
                                            start=1):
        graph.conv_relu(f"block{index}.dw", channels, 3, stride, groups=0)
        graph.conv_relu(f"block{index}.pw", width, 1)
        channels = width
    return graph.head()


def _vgg11() -> tuple[Node, ...]:
    graph = _Graph()
    plan = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
    convs = pools = 0
    for item in plan:
        if item == "M":
            pools += 1
            graph.add(f"pool{pools}", "maxpool", kernel=2, stride=2)
        else:
            convs += 1
            assert isinstance(item, int)
            graph.conv_relu(f"conv{convs}", item, 3, relu=f"relu{convs}")
    graph.add("flatten", "flatten")
    graph.add("fc", "linear")
    return tuple(graph.nodes)


GRAPHS: dict[str, tuple[Node, ...]] = {
    "resnet8": _resnet(1), "resnet20": _resnet(3), "mobilenet": _mobilenet(), "vgg11": _vgg11()}
INPUT_SIZES = {"resnet8": 32, "resnet20": 32, "mobilenet": 32, "vgg11": 32}


def module_name(node: Node) -> str:
    """Return the module that runs a node: `addq:2` is the second call of `addq`'s quantizer."""
    return node.name.split(":", 1)[0]


def weight_nodes(arch: str) -> list[Node]:
    """Return the conv and linear nodes of `arch`, in execution order."""
    return [node for node in GRAPHS[arch] if node.kind in WEIGHT_KINDS]


def first_weight_reader(nodes: tuple[Node, ...], name: str) -> str | None:
    """Return the first weight node (in execution order) that reads `name`'s output, directly or through
    non-weight nodes: the layer whose input bit width a quantizer at `name` takes."""
    reached = {name}
    for node in nodes:
        if reached & set(node.inputs):
            if node.kind in WEIGHT_KINDS:
                return node.name
            reached.add(node.name)
    return None
