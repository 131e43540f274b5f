"""Load an integer export (`intmodel.json` + `intmodel.npz`) into frozen, validated dataclasses.

The format is written by `dsetool.models.export.export_integer`, whose docstring is its specification. This
module does not import it (that would import Brevitas); it checks everything the engine relies on instead,
so a malformed export fails here with a message naming the file, the op and the key, never halfway through a
fault campaign: op kinds, the graph (each op names the ops it reads, earlier ops only, every op but the
logits read by another), shapes (re-derived op by op from each op's input), integer dtypes and ranges of
weights and biases, positive scales, power-of-two exponents under `po2` scaling, and the wiring of scales
(each weight op's `input_scale` is the scale of the quantizer feeding it; an add's two inputs are codes of
one scale, exactly).

It is the one reader of the export: the rest of the tool asks the `IntModel` for an op's input
(`input_of`), the quantizer or weight layer behind it (`producer`) and its readers (`consumers`), never
the JSON. Version 1 files (a chain: each op reads the one before) load as the graph they imply.

Each op class speaks the `OpKind` protocol: which export kinds load as it, how many tensors it reads,
its output shape from its inputs', the scale of its integers, the GEMM it puts on the array and its
role on the datapath (one derivation each, `dsetool.gemm`), and its wiring checks. `KINDS` maps the
export's kinds to these classes; the engine and the sparse fault path look an op's step up by its class
(`Engine._BUILDERS`, `dsetool.faults.propagate._SPARSE_STEPS`), so an op the sparse path lacks goes dense
and an op the engine lacks is refused by name.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from dsetool import gemm as datapath
from dsetool.engine.ops import int_range
from dsetool.gemm import Gemm, VectorPass, window_side

FORMAT = "dsetool-intmodel"  # what the writers (`models.export`, `models.qonnx_import`) put in the header
VERSION = 2
VERSIONS = (1, 2)   # 1: a chain without `inputs`, read as the graph it implies
GRAPH_INPUT = "input"   # what the first op reads: the images
INPUT = -1   # `IntModel.inputs` index of the graph input
SCALINGS = ("po2", "float")
GRANULARITIES = ("per_tensor", "per_channel")


Shape = tuple[int, ...]
Scales = tuple[Fraction, ...]


class OpKind:
    """What every op of the integer model tells the rest of the tool about itself, so that adding an op
    is its class here (with `parse` and the methods below), its step in the engine
    (`dsetool.engine.executor.Engine`) and, optionally, its step on the sparse fault path
    (`dsetool.faults.propagate`; an op without one sends the faults that reach it to the dense path).

    Class attributes: `KINDS`, the `op` strings of the export that load as this class; `ARITY`, how many
    tensors it reads (at least, when `VARIADIC`); `PASSTHROUGH`, whether it keeps its inputs' values (max
    pool, flatten, concat: a weight layer behind it still reads quantizers' codes); `ROLE`, what it is to
    the datapath (`dsetool.gemm.ROLES`:
    whether it costs a pass of the vector unit after the array, `vector_pass`).
    """

    KINDS: ClassVar[tuple[str, ...]] = ()
    ARITY: ClassVar[int] = 1
    VARIADIC: ClassVar[bool] = False   # reads ARITY tensors or more
    PASSTHROUGH: ClassVar[bool] = False
    ROLE: ClassVar[str] = ""   # each class names its own: a missing one is refused by `vector_pass`

    name: str
    out_shape: Shape
    if TYPE_CHECKING:
        @property
        def kind(self) -> str:
            """The op's kind, as the export names it (one of `KINDS`)."""

    @classmethod
    def parse(cls, fields: _Fields, arrays: Mapping[str, np.ndarray], scaling: str, kind: str) -> OpKind:
        """Return the op from its JSON fields (`name`, `out_shape` and its kind's own)."""
        return cls(name=fields.get("name", str), out_shape=fields.shape("out_shape"))  # type: ignore[call-arg]

    def output_shape(self, inputs: Sequence[Shape]) -> Shape:
        """Return the per-image output shape the op gives for inputs of these shapes; raise ValueError
        when it cannot read them. The loader compares it with `out_shape`."""
        return inputs[0]

    def output_scale(self, inputs: Sequence[Scales]) -> Scales:
        """Return the exact float scale of the op's integer outputs (one per channel, or one shared), given
        its inputs' (`IntModel.scale_of`)."""
        return inputs[0]

    @property
    def gemm(self) -> Gemm | None:
        """Return the GEMM the op puts on the systolic array, or None (it runs after the output stage)."""
        return None

    def vector_pass(self, source_role: str) -> VectorPass | None:
        """Return the pass the op costs on the vector unit when it reads a tensor of `source_role`, or None
        (`dsetool.gemm.vector_pass`)."""
        return datapath.vector_pass(self.name, self.ROLE, source_role, self.out_shape)

    def check_wiring(self, model: IntModel, index: int, where: str) -> None:
        """Raise ValueError when the ops the op reads cannot give it what it needs (beyond shapes)."""


class _OneKind(OpKind):
    """An op class that loads from one export kind, its `kind`."""

    @property
    def kind(self) -> str:
        return self.KINDS[0]


@dataclass(frozen=True)
class QuantAct(OpKind):
    """A quantizer: codes = clamp(round(relu?(x) / scale), qmin, qmax).

    `quant_input` reads the float images; `quant_relu` (ReLU first) and `quant_identity` read the integers
    of another op (a layer's accumulators, an add's sums, a pool's sums or another quantizer's codes) and
    requantize them from that op's scale to theirs.
    """

    KINDS: ClassVar[tuple[str, ...]] = ("quant_input", "quant_relu", "quant_identity")
    ROLE: ClassVar[str] = datapath.REQUANTIZE

    name: str
    out_shape: tuple[int, ...]
    kind: str   # one of KINDS
    scale: float
    bits: int
    signed: bool
    narrow_range: bool
    scale_exp: int | None  # scale == 2**scale_exp under po2 scaling, else None

    @property
    def relu(self) -> bool:
        return self.kind == "quant_relu"

    @property
    def qrange(self) -> tuple[int, int]:
        return int_range(self.bits, self.signed, self.narrow_range)

    @classmethod
    def parse(cls, fields: _Fields, arrays: Mapping[str, np.ndarray], scaling: str, kind: str) -> QuantAct:
        if fields.raw.get("zero_point") != 0 or fields.raw.get("rounding") != "half_even":
            raise ValueError(f"{fields.where}: only zero_point 0 and rounding 'half_even' are supported, not "
                             f"{fields.raw.get('zero_point')!r} and {fields.raw.get('rounding')!r}")
        scale = fields.number("scale")
        return QuantAct(name=fields.get("name", str), out_shape=fields.shape("out_shape"), kind=kind, scale=scale,
                        bits=fields.bits("bits"), signed=fields.get("signed", bool),
                        narrow_range=fields.get("narrow_range", bool),
                        scale_exp=_exponent(fields, "scale_exp", [scale], scaling)[0] if scaling == "po2" else None)

    def output_scale(self, inputs: Sequence[Scales]) -> Scales:
        return (Fraction(self.scale),)

    def check_wiring(self, model: IntModel, index: int, where: str) -> None:
        if self.kind != "quant_input" and model.producer(index) is None:
            raise ValueError(f"{where}: a {self.kind} must read the integers of an op, not the images")


@dataclass(frozen=True, eq=False)
class WeightOp(_OneKind):
    """A conv2d or linear layer: acc = sum(x * weight) + bias; its float value is acc * acc_scale.

    `weight` is the int array in torch layout (read-only), `weight_scale` float64 of shape () per tensor or
    (out,) per channel, `bias` int64 (out,) already at the accumulator scale input_scale * weight_scale.
    """

    ROLE: ClassVar[str] = datapath.GEMM

    name: str
    out_shape: tuple[int, ...]
    weight: np.ndarray
    weight_scale: np.ndarray
    bias: np.ndarray
    weight_bits: int
    weight_signed: bool
    weight_narrow_range: bool
    input_scale: float
    bias_bits: int
    bias_signed: bool
    weight_scale_exp: tuple[int, ...] | None  # per output channel under po2 scaling, else None
    input_scale_exp: int | None

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    @property
    def reduction(self) -> int:
        """K, the length of each dot product."""
        return math.prod(self.weight.shape[1:])

    @property
    def weight_range(self) -> tuple[int, int]:
        return int_range(self.weight_bits, self.weight_signed, self.weight_narrow_range)

    def acc_scale(self) -> np.ndarray:
        """Return the float scale of each output channel's accumulator, shape (out,)."""
        return self.input_scale * np.broadcast_to(self.weight_scale, (self.out_features,))

    def output_scale(self, inputs: Sequence[Scales]) -> Scales:
        return tuple(Fraction(float(s)) for s in self.acc_scale())

    @classmethod
    def _weight_fields(cls, fields: _Fields, arrays: Mapping[str, np.ndarray], scaling: str) -> dict[str, Any]:
        return {"name": fields.get("name", str), "out_shape": fields.shape("out_shape"),
                **_parse_weights(fields, arrays, scaling)}

    def check_wiring(self, model: IntModel, index: int, where: str) -> None:
        """A weight layer reads a quantizer's codes (through max-pools and flattens) at its own input scale,
        with the model's weight-scale granularity."""
        source = model.producer(index)
        feeds = model.ops[source] if source is not None else None
        if not isinstance(feeds, QuantAct):
            raise ValueError(f"{where}: a {self.kind} must read a quantizer's codes (through maxpool2d / "
                             f"flatten only), not {feeds.kind if feeds else 'nothing'}")
        if self.input_scale != feeds.scale:
            raise ValueError(f"{where}: input_scale {self.input_scale!r} is not the scale {feeds.scale!r} "
                             f"of {feeds.name!r}, which feeds it")
        per_channel = self.weight_scale.ndim == 1
        if per_channel != (model.weight_granularity == "per_channel"):
            raise ValueError(f"{where}: weight_scale of shape {self.weight_scale.shape} contradicts "
                             f"weight_granularity {model.weight_granularity!r}")


class _Window(_OneKind):
    """A sliding window over each channel (dilation 1; floor mode unless a max pool says otherwise):
    `kernel`, `stride`, `padding`."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]

    def window_shape(self, shape: Shape, channels: int | None = None, ceil_mode: bool = False) -> Shape:
        """Return (channels, H_out, W_out) of the window slid over a (C, H, W) input (C kept unless given)."""
        if len(shape) != 3:
            raise ValueError(f"a {self.kind} needs a (C, H, W) input, not {list(shape)}")
        sides = [window_side(side, k, s, p, ceil_mode)
                 for side, k, s, p in zip(shape[1:], self.kernel, self.stride, self.padding, strict=True)]
        if min(sides) < 1:
            raise ValueError(f"kernel {list(self.kernel)} does not fit the input {list(shape)}")
        return (shape[0] if channels is None else channels, *sides)

    @staticmethod
    def window_fields(fields: _Fields) -> dict[str, Any]:
        return {"kernel": _pair(fields, "kernel", 1), "stride": _pair(fields, "stride", 1),
                "padding": _pair(fields, "padding", 0)}


@dataclass(frozen=True, eq=False)
class Conv2d(WeightOp, _Window):
    """A convolution; with `groups` g, output channel n reads only input channels of its group
    (n // (out / g)), and `weight` is (out, in / g, kh, kw): g = in channels is a depthwise conv."""

    KINDS: ClassVar[tuple[str, ...]] = ("conv2d",)

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int = 1

    @classmethod
    def parse(cls, fields: _Fields, arrays: Mapping[str, np.ndarray], scaling: str, kind: str) -> Conv2d:
        groups = fields.raw.get("groups", 1)   # absent in exports written before grouped convolutions
        if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
            raise fields.error("groups", "an integer >= 1")
        return Conv2d(**cls._weight_fields(fields, arrays, scaling), **cls.window_fields(fields), groups=groups)

    def output_shape(self, inputs: Sequence[Shape]) -> Shape:
        shape = inputs[0]
        channels = shape[0] if len(shape) == 3 else 0
        if len(shape) == 3 and (channels % self.groups or self.out_features % self.groups):
            raise ValueError(f"{self.groups} groups do not divide {channels} input and {self.out_features} output "
                             "channels")
        if len(shape) == 3 and self.weight.shape != (self.out_features, channels // self.groups, *self.kernel):
            groups = f" in {self.groups} groups" if self.groups > 1 else ""
            raise ValueError(f"weight of shape {self.weight.shape} does not match kernel {list(self.kernel)} "
                             f"on {channels} input channels{groups}")
        return self.window_shape(shape, self.out_features)

    @property
    def gemm(self) -> Gemm:
        return Gemm.conv(self.name, self.out_shape, int(self.weight.shape[1]) * self.groups, self.kernel, self.groups)


@dataclass(frozen=True, eq=False)
class Linear(WeightOp):
    KINDS: ClassVar[tuple[str, ...]] = ("linear",)

    @classmethod
    def parse(cls, fields: _Fields, arrays: Mapping[str, np.ndarray], scaling: str, kind: str) -> Linear:
        return Linear(**cls._weight_fields(fields, arrays, scaling))

    def output_shape(self, inputs: Sequence[Shape]) -> Shape:
        if self.weight.ndim != 2 or inputs[0] != (self.weight.shape[1],):
            raise ValueError(f"weight of shape {self.weight.shape} cannot read an input of shape {list(inputs[0])}")
        return (self.out_features,)

    @property
    def gemm(self) -> Gemm:
        return Gemm.linear(self.name, int(self.weight.shape[1]), self.out_features)


@dataclass(frozen=True)
class _Pool(_Window):
    ROLE: ClassVar[str] = datapath.WINDOW

    name: str
    out_shape: tuple[int, ...]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]

    @classmethod
    def parse(cls, fields: _Fields, arrays: Mapping[str, np.ndarray], scaling: str, kind: str) -> _Pool:
        return cls(name=fields.get("name", str), out_shape=fields.shape("out_shape"), **cls.window_fields(fields))

    def output_shape(self, inputs: Sequence[Shape]) -> Shape:
        return self.window_shape(inputs[0])

    def vector_pass(self, source_role: str) -> VectorPass | None:
        return datapath.vector_pass(self.name, self.ROLE, source_role, self.out_shape, math.prod(self.kernel),
                                    self.divisor)

    @property
    def divisor(self) -> int:
        """Return what the quantizer reading the pool divides its results by (1: a max pool's are codes)."""
        return 1


@dataclass(frozen=True)
class MaxPool2d(_Pool):
    """Max pooling; in `ceil_mode` a last window that runs past the far edge is kept (torchvision's
    SqueezeNet pools so) and takes the maximum of the values it covers, as padding counts as -inf."""

    KINDS: ClassVar[tuple[str, ...]] = ("maxpool2d",)
    PASSTHROUGH: ClassVar[bool] = True

    ceil_mode: bool = False

    @classmethod
    def parse(cls, fields: _Fields, arrays: Mapping[str, np.ndarray], scaling: str, kind: str) -> MaxPool2d:
        ceil_mode = fields.raw.get("ceil_mode", False)   # absent in exports written before ceil mode
        if not isinstance(ceil_mode, bool):
            raise fields.error("ceil_mode", "a boolean")
        return MaxPool2d(name=fields.get("name", str), out_shape=fields.shape("out_shape"),
                         **cls.window_fields(fields), ceil_mode=ceil_mode)

    def output_shape(self, inputs: Sequence[Shape]) -> Shape:
        return self.window_shape(inputs[0], ceil_mode=self.ceil_mode)


@dataclass(frozen=True)
class AvgPool2d(_Pool):
    """Average pooling as the hardware computes it: the integer sum of each window (zeros where padding),
    at the input's scale divided by the window size; the quantizer reading it does the division as part
    of its requantization (Brevitas's rule for a pooled QuantTensor). A global average pool is the one
    window covering the map."""

    KINDS: ClassVar[tuple[str, ...]] = ("avgpool2d",)

    @property
    def window(self) -> int:
        """Return the number of values each sum adds (the divisor of the average)."""
        return self.kernel[0] * self.kernel[1]

    @property
    def divisor(self) -> int:
        return self.window

    def output_scale(self, inputs: Sequence[Scales]) -> Scales:
        return tuple(s / self.window for s in inputs[0])


@dataclass(frozen=True)
class Add(_OneKind):
    """The elementwise sum of two quantizers' codes that share one scale (exact integers at that scale);
    a quantizer reading it requantizes the sum, as a residual block's output quantizer does."""

    KINDS: ClassVar[tuple[str, ...]] = ("add",)
    ARITY: ClassVar[int] = 2
    ROLE: ClassVar[str] = datapath.ADD

    name: str
    out_shape: tuple[int, ...]

    def output_shape(self, inputs: Sequence[Shape]) -> Shape:
        if inputs[0] != inputs[1]:
            raise ValueError(f"adds tensors of shapes {list(inputs[0])} and {list(inputs[1])}")
        return inputs[0]

    def check_wiring(self, model: IntModel, index: int, where: str) -> None:
        """Both inputs are quantizers' codes (through maxpool2d / flatten) of one scale, exactly: the sum is
        then an integer at that scale. Brevitas enforces the same when it adds two QuantTensors; a residual
        block meets it by passing both branches through one quantizer."""
        first, second = _quantizers_feeding(model, index, where, "an add must read two")
        if first.scale != second.scale:
            raise ValueError(f"{where}: adds {first.name!r} and {second.name!r}, whose scales {first.scale!r} and "
                             f"{second.scale!r} differ (the sum of codes is exact only at one shared scale)")


def _quantizers_feeding(model: IntModel, index: int, where: str, must: str) -> list[QuantAct]:
    """Return the quantizers whose codes op `index` reads, one per input (through max pools, flattens and
    concats); raise ValueError (`where`: `must` read quantizers' codes) when an input holds none."""
    feeds = [model.ops[p] if p is not None else None for p in model.producers(index)]
    quantizers = [feed for feed in feeds if isinstance(feed, QuantAct)]
    if len(quantizers) != len(feeds):
        raise ValueError(f"{where}: {must} quantizers' codes (through maxpool2d / flatten / concat only), not "
                         f"{[feed.kind if feed else 'the images' for feed in feeds]}")
    return quantizers


@dataclass(frozen=True)
class Concat(_OneKind):
    """Two or more quantizers' codes joined along the channels (torch.cat(dim=1)): the producers write
    adjacent channel ranges of one activation buffer, which the next layer reads as one tensor.

    The codes keep their values, so they must mean the same at every channel: every input is a
    quantizer's codes (through max pools and flattens) of one format, scale, width and sign alike.
    Brevitas's graph quantization gives the inputs of a concatenation one shared quantizer for this
    reason (sign included), as it does for an add; `check_wiring` holds an export to it."""

    KINDS: ClassVar[tuple[str, ...]] = ("concat",)
    ARITY: ClassVar[int] = 2
    VARIADIC: ClassVar[bool] = True
    PASSTHROUGH: ClassVar[bool] = True
    ROLE: ClassVar[str] = datapath.RESHAPE   # addressing: where each producer writes in the buffer

    name: str
    out_shape: tuple[int, ...]

    @classmethod
    def parse(cls, fields: _Fields, arrays: Mapping[str, np.ndarray], scaling: str, kind: str) -> Concat:
        if fields.get("axis", int) != 1:
            raise ValueError(f"{fields.where}: only concatenation along the channels (axis 1) is supported")
        return Concat(name=fields.get("name", str), out_shape=fields.shape("out_shape"))

    def output_shape(self, inputs: Sequence[Shape]) -> Shape:
        # feature maps only: a flattened input's channel runs differ in length from input to input, which the
        # per-channel bounds of the range checks (one pair per channel, each over one plane) cannot describe
        if any(len(shape) != 3 for shape in inputs):
            raise ValueError(f"concatenates {' and '.join(str(list(s)) for s in inputs)}: only feature maps (C, H, W) "
                             "are joined (concatenate before flattening)")
        rest = {tuple(shape[1:]) for shape in inputs}
        if len(rest) != 1:
            raise ValueError(f"concatenates tensors of shapes {' and '.join(str(list(s)) for s in inputs)}, which "
                             "differ beyond the channels")
        return (sum(shape[0] for shape in inputs), *rest.pop())

    def check_wiring(self, model: IntModel, index: int, where: str) -> None:
        feeds = _quantizers_feeding(model, index, where, "a concat must read")
        formats = {(feed.scale, feed.bits, feed.signed, feed.narrow_range) for feed in feeds}
        if len(formats) > 1:
            raise ValueError(f"{where}: concatenates the codes of {[feed.name for feed in feeds]}, whose "
                             "(scale, bits, signed, narrow_range) differ: "
                             f"{sorted(formats)} (one shared quantizer gives them one format)")


@dataclass(frozen=True)
class Flatten(_OneKind):
    KINDS: ClassVar[tuple[str, ...]] = ("flatten",)
    PASSTHROUGH: ClassVar[bool] = True
    ROLE: ClassVar[str] = datapath.RESHAPE

    name: str
    out_shape: tuple[int, ...]

    @classmethod
    def parse(cls, fields: _Fields, arrays: Mapping[str, np.ndarray], scaling: str, kind: str) -> Flatten:
        if fields.get("start_dim", int) != 1 or fields.get("order", str) != "chw":
            raise ValueError(f"{fields.where}: only flatten from dim 1 in 'chw' order is supported")
        return Flatten(name=fields.get("name", str), out_shape=fields.shape("out_shape"))

    def output_shape(self, inputs: Sequence[Shape]) -> Shape:
        return (math.prod(inputs[0]),)


Op = QuantAct | Conv2d | Linear | MaxPool2d | AvgPool2d | Add | Concat | Flatten

# The export's op kinds and the class each loads as: the one list of what the integer model can hold.
OP_CLASSES: tuple[type[OpKind], ...] = (QuantAct, Conv2d, Linear, MaxPool2d, AvgPool2d, Add, Concat, Flatten)
KINDS: dict[str, type[OpKind]] = {kind: cls for cls in OP_CLASSES for kind in cls.KINDS}
PASSTHROUGH: tuple[str, ...] = tuple(kind for kind, cls in KINDS.items() if cls.PASSTHROUGH)


@dataclass(frozen=True, eq=False)
class IntModel:
    """A validated integer export: header fields, the ops in topological order (ops[0] is quant_input)
    and, per op, the indices of the ops it reads (`INPUT` for the images)."""

    arch: str
    scaling: str
    weight_granularity: str
    input_shape: tuple[int, ...]
    num_classes: int
    logits: str
    ops: tuple[Op, ...]
    inputs: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        if not self.inputs:   # built in code as a chain
            object.__setattr__(self, "inputs", tuple((index - 1,) for index in range(len(self.ops))))

    def input_of(self, index: int) -> int:
        """Return the index of the one op whose output op `index` reads (`INPUT`: the images)."""
        reads = self.inputs[index]
        if len(reads) != 1:
            raise ValueError(f"op {index} ({self.ops[index].name!r}) reads {len(reads)} tensors, not one")
        return reads[0]

    def input_shape_of(self, index: int) -> tuple[int, ...]:
        """Return the per-image shape of op `index`'s input."""
        source = self.input_of(index)
        return self.input_shape if source == INPUT else self.ops[source].out_shape

    def producer(self, index: int) -> int | None:
        """Return the op whose values op `index` (of one input) reads through max-pools, flattens and
        concats (which keep them): a quantizer for a weight op, the op whose integers it requantizes for a
        quantizer; None for the images. Behind a concat, its first input's quantizer, which stands for all
        (`Concat`: one format); `quantizers_read` gives each."""
        return self._through_passthrough(self.input_of(index))

    def producers(self, index: int) -> tuple[int | None, ...]:
        """Return `producer` of each of op `index`'s inputs, in order (an add has two)."""
        return tuple(self._through_passthrough(source) for source in self.inputs[index])

    def _through_passthrough(self, source: int) -> int | None:
        while source != INPUT and self.ops[source].kind in PASSTHROUGH:
            source = self.inputs[source][0]
        return None if source == INPUT else source

    def logits_layer(self) -> str | None:
        """Return the weight layer whose accumulators are the logits (through flattens and max pools), or
        None when the logits are another op's integers (a flattened pool of codes, as SqueezeNet ends)."""
        source = self._through_passthrough(len(self.ops) - 1)
        return self.ops[source].name if source is not None and self.ops[source].gemm is not None else None

    def quantizers_read(self, index: int) -> tuple[tuple[int, int], ...]:
        """Return (quantizer op, channels) for each channel range of the codes op `index` (of one input)
        reads, in channel order: one range, except behind a concat (each input's, in order). Empty when
        it reads the images or a tensor that holds no codes."""
        return self._codes_behind(self.input_of(index))

    def _codes_behind(self, source: int) -> tuple[tuple[int, int], ...]:
        if source == INPUT:
            return ()
        op = self.ops[source]
        if isinstance(op, Concat):
            return tuple(part for read in self.inputs[source] for part in self._codes_behind(read))
        if op.kind in PASSTHROUGH:
            return self._codes_behind(self.inputs[source][0])
        return ((source, op.out_shape[0]),) if isinstance(op, QuantAct) else ()

    @property
    def bit_exact(self) -> bool:
        """Say whether the engine must equal Brevitas bit for bit: po2 scales, and every average pool over a
        power-of-two window (another window divides by a fixed-point multiplier in the engine and by a
        float32 division in Brevitas, which can round a tie the other way: within one LSB, as float
        scales are)."""
        windows = [op.window for op in self.ops if isinstance(op, AvgPool2d)]
        return self.scaling == "po2" and all(w & (w - 1) == 0 for w in windows)

    def is_chain(self) -> bool:
        """Say whether every op reads the op before it (the three original architectures are chains)."""
        return all(reads == (index - 1,) for index, reads in enumerate(self.inputs))

    def scale_of(self, index: int) -> tuple[Fraction, ...]:
        """Return the exact float scale of op `index`'s integer outputs, one per channel, or a single
        one when every channel shares it: a quantizer's scale, a weight layer's accumulator scales, an
        add's common input scale, a pool's input scale (an average pool's divided by its window)."""
        return self._scales[index]

    @functools.cached_property
    def _scales(self) -> tuple[tuple[Fraction, ...], ...]:
        """Every op's `scale_of`, derived once in topological order (each op from its inputs' scales; only
        quant_input reads the images, and it ignores their scale)."""
        scales: list[tuple[Fraction, ...]] = []
        for op, reads in zip(self.ops, self.inputs, strict=True):
            scales.append(op.output_scale([scales[source] if source != INPUT else (Fraction(1),) for source in reads]))
        return tuple(scales)

    def last_readers(self) -> dict[int, int]:
        """Return, per op (and `INPUT`), the index of the last op that reads its output (-1: none): when a
        run may let go of a tensor."""
        last = {index: -1 for index in range(INPUT, len(self.ops))}
        for index, reads in enumerate(self.inputs):
            for source in reads:
                last[source] = index
        return last

    def consumers(self, index: int) -> tuple[int, ...]:
        """Return the ops that read op `index`'s output, in order."""
        return tuple(j for j, reads in enumerate(self.inputs) if index in reads)

    def vector_passes(self) -> list[VectorPass]:
        """Return the passes the network's post-GEMM ops cost on the vector unit, in execution order
        (`dsetool.gemm.vector_pass`; a reshape is looked through to the tensor it reshapes)."""
        roles: list[str] = []
        passes = []
        for op, reads in zip(self.ops, self.inputs, strict=True):
            source = datapath.INPUT if reads[0] == INPUT else roles[reads[0]]
            vector = op.vector_pass(source)
            if vector is not None:
                passes.append(vector)
            roles.append(source if op.ROLE == datapath.RESHAPE else op.ROLE)
        return passes


def load_intmodel(directory: Path | str) -> IntModel:
    """Read `directory/intmodel.json` and `directory/intmodel.npz`; raise ValueError if malformed."""
    directory = Path(directory)
    path = directory / "intmodel.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"Cannot read {path}: {error}") from error
    try:
        with np.load(directory / "intmodel.npz", allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as error:
        raise ValueError(f"Cannot read {directory / 'intmodel.npz'}: {error}") from error
    return parse_intmodel(config, arrays, source=str(path))


def parse_intmodel(config: Any, arrays: Mapping[str, np.ndarray], source: str = "intmodel.json") -> IntModel:
    """Validate an export given as (json dict, npz arrays), as `export.integer_model` returns them."""
    header = _Fields(config, source)
    if header.get("format", str) != FORMAT or header.get("version", int) not in VERSIONS:
        raise ValueError(f"{source}: not a {FORMAT} file of version {' or '.join(map(str, VERSIONS))} (format "
                         f"{config.get('format')!r}, version {config.get('version')!r})")
    raw_ops = header.get("ops", list)
    if not raw_ops:
        raise ValueError(f"{source}: key 'ops' must list at least one op")
    scaling = header.choice("scaling", SCALINGS)
    ops = tuple(_parse_op(_Fields(raw, f"{source}: op {index}"), arrays, scaling)
                for index, raw in enumerate(raw_ops))
    inputs = _parse_inputs(raw_ops, ops, header.get("version", int), source)
    model = IntModel(arch=header.get("arch", str), scaling=scaling,
                     weight_granularity=header.choice("weight_granularity", GRANULARITIES),
                     input_shape=header.shape("input_shape"), num_classes=header.get("num_classes", int),
                     logits=header.get("logits", str), ops=ops, inputs=inputs)
    _check_structure(model, source)
    _check_graph(model, source)
    _check_shapes(model, source)
    return model


_KIND_NAMES = {int: "an integer", str: "a string", bool: "a boolean", list: "a list", dict: "an object"}


class _Fields:
    """Typed access to one JSON object, with errors that say where the bad value is."""

    def __init__(self, raw: Any, where: str) -> None:
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: expected a JSON object, not {type(raw).__name__}")
        self.raw, self.where = raw, where
        name = raw.get("name")
        if isinstance(name, str):
            self.where = f"{where} ({name!r})"

    def error(self, key: str, expected: str) -> ValueError:
        shown = repr(self.raw[key]) if key in self.raw else "nothing"
        return ValueError(f"{self.where}: key {key!r} must be {expected}, not {shown}")

    def get(self, key: str, kind: type) -> Any:
        value = self.raw.get(key)
        # bool is an int in Python; a JSON true must not pass as a bit width.
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise self.error(key, _KIND_NAMES.get(kind, kind.__name__))
        return value

    def number(self, key: str) -> float:
        value = self.raw.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value <= 0:
            raise self.error(key, "a positive finite number")
        return float(value)

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.raw.get(key)
        if value not in choices:
            raise self.error(key, f"one of {', '.join(map(repr, choices))}")
        return str(value)

    def ints(self, key: str, length: int | None = None, low: int = 0) -> tuple[int, ...]:
        value = self.raw.get(key)
        if not isinstance(value, list) or (length is not None and len(value) != length) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= low for v in value):
            size = f"{length} " if length is not None else ""
            raise self.error(key, f"a list of {size}integers >= {low}")
        return tuple(value)

    def shape(self, key: str) -> tuple[int, ...]:
        shape = self.ints(key, low=1)
        if not shape:
            raise self.error(key, "a non-empty shape")
        return shape

    def bits(self, key: str) -> int:
        bits = self.get(key, int)
        if not 1 <= bits <= 32:
            raise self.error(key, "a bit width in 1..32")
        return int(bits)

    def array(self, key: str, arrays: Mapping[str, np.ndarray], kind: str) -> np.ndarray:
        name = self.get(key, str)
        if name not in arrays:
            raise ValueError(f"{self.where}: intmodel.npz has no array {name!r} (named by key {key!r})")
        array = np.array(arrays[name])  # a private copy, then frozen
        if array.dtype.kind not in kind:
            raise ValueError(f"{self.where}: array {name!r} must have dtype kind {kind!r}, not {array.dtype}")
        array.setflags(write=False)
        return array


def stored_ints(values: np.ndarray, bits: int) -> np.ndarray:
    """Return integer weights in the narrowest dtype the npz stores them in (int8, int16, int32)."""
    return values.astype(np.int8 if bits <= 8 else np.int16 if bits <= 16 else np.int32)


def _parse_op(fields: _Fields, arrays: Mapping[str, np.ndarray], scaling: str) -> Op:
    kind = fields.choice("op", tuple(KINDS))
    op = KINDS[kind].parse(fields, arrays, scaling, kind)
    return op  # type: ignore[return-value]   # every class of KINDS is one of Op


def _pair(fields: _Fields, key: str, low: int) -> tuple[int, int]:
    first, second = fields.ints(key, 2, low)
    return first, second


def _parse_weights(fields: _Fields, arrays: Mapping[str, np.ndarray], scaling: str) -> dict[str, Any]:
    if fields.raw.get("weight_rounding") != "half_even":
        raise fields.error("weight_rounding", "'half_even'")
    weight = fields.array("weight", arrays, "iu")
    scale = fields.array("weight_scale", arrays, "f")
    bias = fields.array("bias", arrays, "i")
    out = int(weight.shape[0]) if weight.ndim else 0
    if scale.shape not in ((), (out,)) or not np.all(np.isfinite(scale) & (scale > 0)):
        raise ValueError(f"{fields.where}: weight_scale must be positive, of shape () or ({out},), "
                         f"not {scale.shape}")
    if bias.shape != (out,):
        raise ValueError(f"{fields.where}: bias must have shape ({out},), not {bias.shape}")
    result = {"weight": weight, "weight_scale": scale, "bias": bias, "weight_bits": fields.bits("weight_bits"),
              "weight_signed": fields.get("weight_signed", bool),
              "weight_narrow_range": fields.get("weight_narrow_range", bool),
              "input_scale": fields.number("input_scale"), "bias_bits": fields.bits("bias_bits"),
              "bias_signed": fields.get("bias_signed", bool), "weight_scale_exp": None, "input_scale_exp": None}
    _check_range(fields, "weight", weight, int_range(result["weight_bits"], result["weight_signed"],
                                                     result["weight_narrow_range"]))
    _check_range(fields, "bias", bias, int_range(result["bias_bits"], result["bias_signed"]))
    if scaling == "po2":
        result["weight_scale_exp"] = _exponent(fields, "weight_scale_exp", scale.reshape(-1).tolist(), scaling)
        result["input_scale_exp"] = _exponent(fields, "input_scale_exp", [result["input_scale"]], scaling)[0]
    return result


def _check_range(fields: _Fields, what: str, values: np.ndarray, bounds: tuple[int, int]) -> None:
    if values.size and not (bounds[0] <= int(values.min()) and int(values.max()) <= bounds[1]):
        raise ValueError(f"{fields.where}: {what} values span [{int(values.min())}, {int(values.max())}], "
                         f"outside the {bounds} range of its bit width")


def _exponent(fields: _Fields, key: str, scales: list[float], scaling: str) -> tuple[int, ...]:
    """Read the po2 exponent(s) of `scales` under `key` (an int, or a list per channel) and check them."""
    raw = fields.raw.get(key)
    exps = raw if isinstance(raw, list) else [raw]
    if len(exps) != len(scales) or not all(isinstance(e, int) and not isinstance(e, bool) for e in exps):
        raise fields.error(key, f"{'a list of ' if len(scales) > 1 else ''}{len(scales)} integer exponent(s) "
                                "under po2 scaling")
    if any(scale != 2.0**exp for scale, exp in zip(scales, exps, strict=True)):
        raise ValueError(f"{fields.where}: scales {scales} are not 2**{key} = 2**{exps}")
    return tuple(exps)


def _parse_inputs(raw_ops: list[Any], ops: tuple[Op, ...], version: int, source: str) -> tuple[tuple[int, ...], ...]:
    """Return each op's input indices: version 2 names them (`inputs`), version 1 is a chain."""
    if version == 1:
        return tuple((index - 1,) for index in range(len(ops)))
    index_of: dict[str, int] = {}
    out = []
    for index, (raw, op) in enumerate(zip(raw_ops, ops, strict=True)):
        where = f"{source}: op {index} ({op.name!r})"
        names = _Fields(raw, f"{source}: op {index}").get("inputs", list)
        unknown = [n for n in names if not isinstance(n, str) or (n != GRAPH_INPUT and n not in index_of)]
        if unknown:
            raise ValueError(f"{where}: inputs {unknown} name no earlier op (ops are in topological order; the "
                             f"images are {GRAPH_INPUT!r})")
        if len(names) < op.ARITY if op.VARIADIC else len(names) != op.ARITY:
            least = "at least " if op.VARIADIC else ""
            raise ValueError(f"{where}: a {op.kind} reads {least}{op.ARITY} tensor(s), not {len(names)}")
        out.append(tuple(INPUT if n == GRAPH_INPUT else index_of[n] for n in names))
        if op.name in index_of or op.name == GRAPH_INPUT:
            raise ValueError(f"{where}: the name is taken (op names are the graph's tensor names)")
        index_of[op.name] = index
    return tuple(out)


def _check_graph(model: IntModel, source: str) -> None:
    """Only the input quantizer reads the images, and every op but the logits feeds another."""
    for index, reads in enumerate(model.inputs):
        if (INPUT in reads) != (model.ops[index].kind == "quant_input"):
            raise ValueError(f"{source}: op {index} ({model.ops[index].name!r}): only quant_input reads the images")
    for index, op in enumerate(model.ops[:-1]):
        if not model.consumers(index):
            raise ValueError(f"{source}: op {index} ({op.name!r}) feeds no op (only the logits end the graph)")


def _check_structure(model: IntModel, source: str) -> None:
    ops = model.ops
    kinds = [op.kind for op in ops]
    if kinds[0] != "quant_input" or "quant_input" in kinds[1:]:
        raise ValueError(f"{source}: the first op, and only it, must be quant_input; got {kinds}")
    last = ops[-1]
    if last.name != model.logits or last.out_shape != (model.num_classes,) or len(ops) == 1:
        raise ValueError(f"{source}: the last op must be {model.logits!r}, giving the num_classes "
                         f"({model.num_classes}) logits of each image, not {last.kind} {last.name!r} of shape "
                         f"{list(last.out_shape)}")
    for index, op in enumerate(ops):
        op.check_wiring(model, index, f"{source}: op {index} ({op.name!r})")


def _check_shapes(model: IntModel, source: str) -> None:
    """Re-derive each op's output shape from its inputs' shapes and parameters; it must match `out_shape`."""
    for index, op in enumerate(model.ops):
        shapes = [model.input_shape if i == INPUT else model.ops[i].out_shape for i in model.inputs[index]]
        try:
            derived = op.output_shape(shapes)
        except ValueError as error:
            raise ValueError(f"{source}: op {index} ({op.name!r}): {error}") from None
        if derived != op.out_shape:
            raise ValueError(f"{source}: op {index} ({op.name!r}): out_shape {list(op.out_shape)} does not "
                             f"follow from input shape{'s' if len(shapes) > 1 else ''} "
                             f"{' and '.join(str(list(shape)) for shape in shapes)} (expected {list(derived)})")
