"""Import a QONNX model (a Brevitas or FINN export: `Quant` nodes around float ONNX ops) as the integer model.

What it reads (ONNX nodes in the file's topological order):

- `Quant(x, scale, zero_point, bitwidth)` with zero point 0, a scalar scale and `rounding_mode` ROUND (half
  to even): on the graph input it is the input quantizer; after a `Relu` a `quant_relu` of the ReLU's
  input; elsewhere a `quant_identity`; on an initializer it quantizes a weight (scalar or per-output-channel
  scale) or a bias (its integers taken at the layer's accumulator scale, input scale x weight scale);
- `Conv` (any stride, symmetric zero padding, `group`, dilation 1), `Gemm` (alpha = beta = 1, weight
  transposed as torch stores it), `MaxPool`, `AveragePool`, `GlobalAveragePool`, `Flatten` (axis 1) or a
  `Reshape` to (batch, -1), `Add` of two quantized tensors, `Identity`;
- the graph output is the last linear layer's output (the logits, not requantized).

Anything else is an error naming the node and its op type. Op names: a weight layer takes its weight's
initializer name (`layer1.0.conv1`); a quantizer its node path (`/relu/act_quant/export_handler_1/Quant`
becomes `relu:2`). The numbers are the file's: weight codes are round_half_even(w / scale) computed in
float32, as QONNX's executor does, so a Brevitas export imports to the very integers Brevitas ran.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dsetool.engine.intmodel import FORMAT, GRAPH_INPUT, VERSION, stored_ints
from dsetool.engine.ops import int_range
from dsetool.gemm import Gemm, VectorPass, window_side

_ROUNDING = {"ROUND": "half_even", "HALF_EVEN": "half_even"}


class QonnxError(ValueError):
    """A file that is not QONNX, or uses an op the integer engine lacks; the message names the file."""


@dataclass
class _Quantized:
    """A quantized initializer: its integers and how they were made."""

    ints: np.ndarray
    scale: np.ndarray
    bits: int
    signed: bool
    narrow: bool


@dataclass
class _Importer:
    path: Path
    inits: dict[str, np.ndarray]
    ops: list[dict[str, Any]] = field(default_factory=list)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)          # tensor -> op name reading it
    shapes: dict[str, list[int]] = field(default_factory=dict)   # tensor -> per-image shape
    code_scale: dict[str, float] = field(default_factory=dict)   # tensor -> scale of the codes it holds
    relu_of: dict[str, str] = field(default_factory=dict)        # Relu output -> its input tensor
    quantized: dict[str, _Quantized] = field(default_factory=dict)
    weight_names: dict[str, str] = field(default_factory=dict)   # quantized initializer -> its source name
    taken: set[str] = field(default_factory=set)
    po2: bool = True
    per_channel: set[bool] = field(default_factory=set)
    acc_scale: dict[str, np.ndarray] = field(default_factory=dict)   # weight layer -> its accumulator scales
    biasable: dict[str, int] = field(default_factory=dict)   # MatMul output -> its op (an Add may bring the bias)
    readers: dict[str, int] = field(default_factory=dict)    # tensor -> how many nodes read it

    def fail(self, node: Any, reason: str) -> QonnxError:
        return QonnxError(f"{self.path}: node {node.name or node.output[0]!r} ({node.op_type}): {reason}")

    def name_for(self, base: str) -> str:
        name, count = base, 1
        while name in self.taken or name == GRAPH_INPUT:
            count += 1
            name = f"{base}:{count}"
        self.taken.add(name)
        return name

    def add(self, node: Any, kind: str, name: str, reads: list[str], shape: list[int], **fields: Any) -> None:
        missing = [t for t in reads if t not in self.names]
        if missing:
            raise self.fail(node, f"reads {missing[0]!r}, which no supported op produced")
        self.ops.append({"op": kind, "name": name, "inputs": [self.names[t] for t in reads], **fields,
                         "out_shape": shape})
        self.names[node.output[0]] = name
        self.shapes[node.output[0]] = shape

    # -- nodes --------------------------------------------------------------------------------------------

    def node(self, node: Any) -> None:
        handler = getattr(self, f"_{node.op_type.lower()}", None)
        if handler is None:
            raise self.fail(node, "not an op the integer engine runs (it runs Quant, Conv, Gemm, MatMul with the Add "
                                  "of its bias and a Transpose of its weights, Relu before a Quant, MaxPool, "
                                  "AveragePool, GlobalAveragePool, Flatten, Reshape, Add, Concat)")
        try:
            handler(node)
        except QonnxError:
            raise
        except Exception as error:   # a malformed node (missing inputs or attributes) of an op we know
            raise self.fail(node, f"malformed ({type(error).__name__}: {error})") from None

    def _constant(self, node: Any) -> None:
        from onnx import numpy_helper

        value = next(a for a in node.attribute if a.name == "value")
        self.inits[node.output[0]] = numpy_helper.to_array(value.t)

    def _identity(self, node: Any) -> None:
        source = node.input[0]
        if source in self.biasable:
            self.biasable[node.output[0]] = self.biasable.pop(source)
        if source in self.quantized:
            self.quantized[node.output[0]] = self.quantized[source]
            return
        self.names[node.output[0]] = self.names[source]
        self.shapes[node.output[0]] = self.shapes[source]
        if source in self.code_scale:
            self.code_scale[node.output[0]] = self.code_scale[source]

    def _relu(self, node: Any) -> None:
        self.relu_of[node.output[0]] = node.input[0]

    def _quant(self, node: Any) -> None:
        source, scale_name, zero_name, bits_name = node.input
        attrs = _attributes(node)
        rounding = attrs.get("rounding_mode", b"ROUND")
        rounding = rounding.decode() if isinstance(rounding, bytes) else str(rounding)
        if rounding not in _ROUNDING:
            raise self.fail(node, f"rounding_mode {rounding!r} (the engine rounds half to even: ROUND)")
        scale = self._constant_input(node, scale_name).astype(np.float64)
        zero = self._constant_input(node, zero_name)
        bits_value = self._constant_input(node, bits_name)
        if np.any(zero != 0):
            raise self.fail(node, "a non-zero zero point (the engine's quantizers have none)")
        if bits_value.size != 1 or float(bits_value) != int(bits_value) or not 1 <= int(bits_value) <= 32:
            raise self.fail(node, f"bit width {bits_value.reshape(-1).tolist()} is not one integer in 1..32")
        bits, signed, narrow = int(bits_value), bool(attrs.get("signed", 1)), bool(attrs.get("narrow", 0))
        if not np.all(np.isfinite(scale) & (scale > 0)):
            raise self.fail(node, "scales must be positive and finite")
        self.po2 &= bool(np.all(np.exp2(np.round(np.log2(scale))) == scale))
        if source in self.inits:   # a weight or a bias
            values = self.inits[source].astype(np.float32)
            low, high = int_range(bits, signed, narrow)
            ints = np.clip(np.round(values / scale.astype(np.float32)), low, high)
            self.quantized[node.output[0]] = _Quantized(ints.astype(np.int64), scale, bits, signed, narrow)
            self.weight_names[node.output[0]] = source
            return
        if scale.size != 1:
            raise self.fail(node, "activation scales must be one number (per-tensor)")
        if source in self.relu_of:
            kind, reads = "quant_relu", [self.relu_of[source]]
        elif self.names.get(source) == GRAPH_INPUT:
            kind, reads = "quant_input", [source]
        else:
            kind, reads = "quant_identity", [source]
        value = float(scale.reshape(()))
        fields: dict[str, Any] = {"scale": value, "bits": bits, "signed": signed, "narrow_range": narrow,
                                  "zero_point": 0, "rounding": _ROUNDING[rounding]}
        if self.po2:
            fields["scale_exp"] = int(np.log2(value))
        if reads[0] not in self.shapes:
            raise self.fail(node, f"reads {reads[0]!r}, which no supported op produced")
        self.add(node, kind, self.name_for(_quantizer_name(node)), reads, self.shapes[reads[0]], **fields)
        self.code_scale[node.output[0]] = value

    def _constant_input(self, node: Any, name: str) -> np.ndarray:
        if name not in self.inits:
            raise self.fail(node, f"input {name!r} must be a constant")
        return np.asarray(self.inits[name])

    def _weights(self, node: Any, source: str) -> dict[str, Any]:
        """The weight and bias fields of a Conv or Gemm, and the arrays they name."""
        weight_name = node.input[1]
        if weight_name not in self.quantized:
            raise self.fail(node, "its weights must pass through a Quant node (a float weight is not quantized)")
        if source not in self.code_scale:
            raise self.fail(node, "its input must be a quantizer's codes (put a Quant node before it)")
        weight = self.quantized[weight_name]
        input_scale = self.code_scale[source]
        out = weight.ints.shape[0]
        scale = weight.scale.reshape(-1)
        if scale.size not in (1, out):
            raise self.fail(node, f"weight scale of shape {weight.scale.shape} is neither per tensor nor per "
                                  "output channel")
        per_channel = scale.size > 1
        self.per_channel.add(per_channel)
        base = self.weight_names[weight_name]
        name = self.name_for(base[:-len(".weight")] if base.endswith(".weight") else base)
        acc_scale = (np.float32(input_scale) * scale.astype(np.float32)).astype(np.float64)
        bias_name = node.input[2] if len(node.input) > 2 else ""
        bias_ints, bias_bits, bias_signed = self._bias(node, bias_name, acc_scale, out)
        self.arrays[f"{name}.weight"] = stored_ints(weight.ints, weight.bits)
        self.arrays[f"{name}.weight_scale"] = scale.astype(np.float64).reshape(-1 if per_channel else ())
        self.arrays[f"{name}.bias"] = bias_ints
        self.acc_scale[name] = acc_scale
        fields = {"weight_bits": weight.bits, "weight_signed": weight.signed, "weight_narrow_range": weight.narrow,
                  "weight": f"{name}.weight", "weight_scale": f"{name}.weight_scale", "weight_rounding": "half_even",
                  "input_scale": input_scale, "bias": f"{name}.bias", "bias_bits": bias_bits,
                  "bias_signed": bias_signed}
        if self.po2:
            exps = [int(np.log2(s)) for s in scale]
            fields["weight_scale_exp"] = exps if per_channel else exps[0]
            fields["input_scale_exp"] = int(np.log2(input_scale))
        return {"name": name, **fields}

    def _bias(self, node: Any, bias_name: str, acc_scale: np.ndarray, out: int) -> tuple[np.ndarray, int, bool]:
        """Return a layer's bias as integers at its accumulator scale, their width and signedness: a
        quantized bias must be at that scale; a float one is rounded to it, as Brevitas's Int32Bias does."""
        if not bias_name:
            return np.zeros(out, dtype=np.int64), 32, True
        if bias_name in self.quantized:
            bias = self.quantized[bias_name]
            if not np.allclose(bias.scale.reshape(-1), acc_scale, rtol=1e-6, atol=0):
                raise self.fail(node, "its bias is quantized at another scale than input x weight scale")
            ints, bits, signed = bias.ints.reshape(-1), bias.bits, bias.signed
        elif bias_name in self.inits:
            values = self.inits[bias_name].astype(np.float32).reshape(-1)
            ints, bits, signed = np.round(values / acc_scale.astype(np.float32)).astype(np.int64), 32, True
        else:
            raise self.fail(node, "its bias must be a constant")
        if ints.size not in (1, out):
            raise self.fail(node, f"a bias of {ints.size} values does not fit {out} outputs")
        return np.broadcast_to(ints, (out,)).astype(np.int64), bits, signed

    def _conv(self, node: Any) -> None:
        attrs = _attributes(node)
        source = node.input[0]
        fields = self._weights(node, source)
        name = fields.pop("name")
        weight = self.arrays[f"{name}.weight"]
        kernel = list(attrs.get("kernel_shape", weight.shape[2:]))
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        strides = list(attrs.get("strides", [1, 1]))
        if list(attrs.get("dilations", [1, 1])) != [1, 1] or len(pads) != 4 or pads[:2] != pads[2:]:
            raise self.fail(node, "only dilation 1 and symmetric padding run on the engine")
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise self.fail(node, "auto_pad is not supported (export explicit pads)")
        channels, height, width = self.shapes[source]
        group = int(attrs.get("group", 1))
        sides = [window_side(s, k, st, p) for s, k, st, p in zip((height, width), kernel, strides, pads[:2],
                                                                      strict=True)]
        self.add(node, "conv2d", name, [source], [int(weight.shape[0]), *sides], in_channels=channels,
                 out_channels=int(weight.shape[0]), kernel=kernel, stride=strides, padding=pads[:2], groups=group,
                 **fields)

    def _matmul(self, node: Any) -> None:
        """A linear layer as FINN's flow and older exports write it: x @ W with W stored (in, out), its bias
        (if any) in the Add that follows (`_add`)."""
        self._linear(node, transposed=False)
        if self.readers.get(node.output[0], 0) == 1:   # its product feeds one node only: that may add the bias
            self.biasable[node.output[0]] = len(self.ops) - 1

    def _transpose(self, node: Any) -> None:
        """A transposed quantized weight matrix: qonnx's GemmToMatMul (FINN's flow) turns a Gemm with transB
        into Quant -> Transpose -> MatMul."""
        source = node.input[0]
        perm = list(_attributes(node).get("perm", []))
        quantized = self.quantized.get(source)
        if quantized is None or quantized.ints.ndim != 2 or perm not in ([], [1, 0]):
            raise self.fail(node, "only the transpose of a quantized weight matrix runs (a linear layer's)")
        scale = quantized.scale.T if quantized.scale.ndim == 2 else quantized.scale
        self.quantized[node.output[0]] = _Quantized(np.ascontiguousarray(quantized.ints.T), scale, quantized.bits,
                                                    quantized.signed, quantized.narrow)
        self.weight_names[node.output[0]] = self.weight_names[source]

    def _gemm(self, node: Any) -> None:
        attrs = _attributes(node)
        if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA", 0):
            raise self.fail(node, "only alpha = beta = 1 without transA is a linear layer")
        self._linear(node, transposed=bool(attrs.get("transB", 0)))

    def _linear(self, node: Any, transposed: bool) -> None:
        if node.input[1] not in self.quantized:
            raise self.fail(node, "its weights must pass through a Quant node (a float weight is not quantized)")
        if not transposed:   # weights stored (in, out): the engine's layout is torch's (out, in)
            stored = self.quantized[node.input[1]]
            self.quantized[node.input[1]] = _Quantized(stored.ints.T, stored.scale, stored.bits, stored.signed,
                                                       stored.narrow)
        source = node.input[0]
        fields = self._weights(node, source)
        name = fields.pop("name")
        weight = self.arrays[f"{name}.weight"]
        self.add(node, "linear", name, [source], [int(weight.shape[0])], in_features=int(weight.shape[1]),
                 out_features=int(weight.shape[0]), **fields)

    def _pool(self, node: Any, kind: str, kernel: list[int], strides: list[int], pads: list[int],
              ceil_mode: bool = False) -> None:
        source = node.input[0]
        if source not in self.shapes:
            raise self.fail(node, f"reads {source!r}, which no supported op produced")
        channels, height, width = self.shapes[source]
        if len(pads) != 4 or pads[:2] != pads[2:]:
            raise self.fail(node, "only symmetric padding runs on the engine")
        sides = [window_side(s, k, st, p, ceil_mode) for s, k, st, p in zip((height, width), kernel, strides,
                                                                                 pads[:2], strict=True)]
        extra = {"ceil_mode": True} if ceil_mode else {}
        self.add(node, kind, self.name_for(_node_name(node)), [source], [channels, *sides], kernel=kernel,
                 stride=strides, padding=pads[:2], **extra)
        if kind == "maxpool2d" and source in self.code_scale:
            self.code_scale[node.output[0]] = self.code_scale[source]

    def _maxpool(self, node: Any) -> None:
        attrs = _attributes(node)
        if list(attrs.get("dilations", [1, 1])) != [1, 1]:
            raise self.fail(node, "only dilation-1 max pools run on the engine")
        kernel = list(attrs["kernel_shape"])
        self._pool(node, "maxpool2d", kernel, list(attrs.get("strides", kernel)), list(attrs.get("pads", [0] * 4)),
                   bool(attrs.get("ceil_mode", 0)))

    def _averagepool(self, node: Any) -> None:
        attrs = _attributes(node)
        pads = list(attrs.get("pads", [0] * 4))
        if attrs.get("ceil_mode", 0) or (any(pads) and not attrs.get("count_include_pad", 0)):
            raise self.fail(node, "only floor-mode average pools dividing by the whole window run on the engine")
        kernel = list(attrs["kernel_shape"])
        self._pool(node, "avgpool2d", kernel, list(attrs.get("strides", kernel)), pads)

    def _globalaveragepool(self, node: Any) -> None:
        if node.input[0] not in self.shapes:
            raise self.fail(node, f"reads {node.input[0]!r}, which no supported op produced")
        kernel = list(self.shapes[node.input[0]][1:])
        self._pool(node, "avgpool2d", kernel, kernel, [0, 0, 0, 0])

    def _flatten(self, node: Any) -> None:
        if _attributes(node).get("axis", 1) != 1:
            raise self.fail(node, "only a flatten from axis 1 runs on the engine")
        self._flatten_to(node)

    def _flatten_to(self, node: Any) -> None:
        source = node.input[0]
        if source not in self.shapes:
            raise self.fail(node, f"reads {source!r}, which no supported op produced")
        self.add(node, "flatten", self.name_for(_node_name(node)), [source], [math.prod(self.shapes[source])],
                 start_dim=1, order="chw")
        if source in self.code_scale:
            self.code_scale[node.output[0]] = self.code_scale[source]

    def _reshape(self, node: Any) -> None:
        target = self._constant_input(node, node.input[1]).reshape(-1).tolist()
        size = math.prod(self.shapes.get(node.input[0], [0]))
        if len(target) != 2 or target[1] not in (-1, size) or target[0] not in (-1, 0, 1):
            raise self.fail(node, f"a reshape to {target} is not a flatten to (batch, features)")
        self._flatten_to(node)

    def _add(self, node: Any) -> None:
        first, second = node.input
        constant = [name for name in (first, second) if name in self.quantized or name in self.inits]
        layer = next((self.biasable[name] for name in (first, second) if name in self.biasable), None)
        if constant and layer is not None:   # a MatMul's bias
            self._add_bias(node, layer, constant[0])
            return
        if constant:
            raise self.fail(node, f"adds the constant {constant[0]!r} to something other than a MatMul's product "
                                  "(only a linear layer's bias may be added as a constant)")
        if first not in self.shapes or second not in self.shapes:
            raise self.fail(node, "adds a tensor that no supported op produced (both inputs must be quantized)")
        self.add(node, "add", self.name_for(_node_name(node)), [first, second], self.shapes[first])

    def _concat(self, node: Any) -> None:
        parts = list(node.input)
        missing = [name for name in parts if name not in self.shapes]
        if missing:
            raise self.fail(node, f"joins {missing[0]!r}, which no supported op produced (every input must be "
                                  "quantized)")
        rank = len(self.shapes[parts[0]]) + 1   # with the batch
        if len(parts) < 2 or _attributes(node).get("axis", 0) % rank != 1:
            raise self.fail(node, "only a concatenation of two or more tensors along the channels (axis 1) runs "
                                  "on the engine")
        shapes = [self.shapes[name] for name in parts]
        self.add(node, "concat", self.name_for(_node_name(node)), parts,
                 [sum(shape[0] for shape in shapes), *shapes[0][1:]], axis=1)
        if parts[0] in self.code_scale:
            self.code_scale[node.output[0]] = self.code_scale[parts[0]]   # the loader checks the others agree

    def _add_bias(self, node: Any, layer: int, bias_name: str) -> None:
        """Put the bias an Add gives a MatMul's output into that linear layer (its accumulators are the sum)."""
        op = self.ops[layer]
        out = int(op["out_features"])
        ints, bits, signed = self._bias(node, bias_name, self.acc_scale[op["name"]], out)
        self.arrays[op["bias"]] = ints
        op.update(bias_bits=bits, bias_signed=signed)
        source = next(name for name in node.input if name in self.biasable)
        del self.biasable[source]
        self.names[node.output[0]] = op["name"]
        self.shapes[node.output[0]] = self.shapes[source]


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _node_name(node: Any) -> str:
    """`/layer1/add/Add` -> `layer1.add`: a node's path without its op type."""
    parts = [p for p in (node.name or node.output[0]).split("/") if p]
    if len(parts) > 1 and parts[-1] == node.op_type:
        parts = parts[:-1]
    return ".".join(parts) or node.op_type.lower()


def _quantizer_name(node: Any) -> str:
    """`/relu/act_quant/export_handler_1/Quant` -> `relu:2` (the second call of module `relu`)."""
    match = re.match(r"^/?(.*?)/act_quant/export_handler(?:_(\d+))?/Quant$", node.name or "")
    if not match:
        return _node_name(node)
    base = match.group(1).replace("/", ".")
    return base if match.group(2) is None else f"{base}:{int(match.group(2)) + 1}"


def import_qonnx(path: Path | str, arch: str | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Return the integer export (json dict, npz arrays) of the QONNX model at `path`, as
    `dsetool.models.export.integer_model` gives it for a Brevitas model; raise QonnxError when it cannot."""
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    try:
        model = onnx.load(str(path))
    except Exception as error:   # onnx raises DecodeError, OSError, ...
        raise QonnxError(f"{path}: not an ONNX file ({type(error).__name__}: {error})") from None
    graph = model.graph
    inits = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise QonnxError(f"{path}: the graph must have one input (the images) and one output (the logits)")
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or not all(dims[1:]):
        raise QonnxError(f"{path}: the input must be (batch, channels, height, width), not {dims}")
    if not any(node.op_type == "Quant" for node in graph.node):
        raise QonnxError(f"{path}: has no Quant node: not a QONNX model (export it with Brevitas's export_qonnx)")
    importer = _Importer(path, inits)
    for node in graph.node:
        for name in node.input:
            importer.readers[name] = importer.readers.get(name, 0) + 1
    importer.names[inputs[0].name] = GRAPH_INPUT
    importer.shapes[inputs[0].name] = dims[1:]
    for node in graph.node:
        importer.node(node)
    unused = [out for out, source in importer.relu_of.items()
              if not any(out in n.input and n.op_type == "Quant" for n in graph.node)]
    if unused:
        raise QonnxError(f"{path}: a Relu ({unused[0]!r}) is not followed by a Quant; the engine requantizes every "
                         "ReLU output")
    output = graph.output[0].name
    if not importer.ops or importer.names.get(output) != importer.ops[-1]["name"] or \
            len(importer.ops[-1]["out_shape"]) != 1:
        raise QonnxError(f"{path}: the graph output must be the last op, one logit per class (a Gemm's, not "
                         "requantized, or a flattened pool's)")
    last = importer.ops[-1]
    header = {"format": FORMAT, "version": VERSION, "arch": arch or path.stem, "input_shape": dims[1:],
              "num_classes": last["out_shape"][0], "scaling": "po2" if importer.po2 else "float",
              "weight_granularity": "per_channel" if True in importer.per_channel else "per_tensor",
              "logits": last["name"]}
    if importer.po2 is False:   # po2 exponents were written while every scale so far was a power of two
        for op in importer.ops:
            for key in ("scale_exp", "weight_scale_exp", "input_scale_exp"):
                op.pop(key, None)
    return {**header, "ops": importer.ops}, importer.arrays


@dataclass(frozen=True)
class QonnxInfo:
    """What planning needs of an imported QONNX model (derived once per file content)."""

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    weight_layers: tuple[str, ...]
    gemms: tuple[Gemm, ...]         # of each weight layer
    vector_passes: tuple[VectorPass, ...]   # of the post-GEMM ops
    weight_bits: int
    act_bits: int                   # the widest activation a weight layer reads
    scaling: str
    weight_granularity: str
    relu_unsigned: bool
    logits_layer: str | None = None   # the weight layer whose accumulators are the logits (None: a pool's sums)


def file_digest(path: Path | str) -> str:
    """Return the SHA-256 of a QONNX file (its content is the model: part of every key), read once per
    file state: a sweep asks for it at every point and stage."""
    try:
        stat = Path(path).stat()
    except OSError as error:
        raise QonnxError(f"{path}: cannot read it ({error.strerror or error})") from None
    return _digest(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _digest(path: str, mtime_ns: int, size: int) -> str:
    import hashlib

    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as error:
        raise QonnxError(f"{path}: cannot read it ({error.strerror or error})") from None


def describe_qonnx(path: Path | str, digest: str) -> QonnxInfo:
    """Import and validate the model once per file content; return what planning needs."""
    return _describe(str(path), digest)


@functools.lru_cache(maxsize=8)
def _describe(path: str, digest: str) -> QonnxInfo:
    from dsetool.engine.intmodel import QuantAct, WeightOp, parse_intmodel

    config, arrays = import_qonnx(path)
    try:
        model = parse_intmodel(config, arrays, source=path)
    except ValueError as error:
        raise QonnxError(str(error)) from None
    weights = [(i, op) for i, op in enumerate(model.ops) if isinstance(op, WeightOp)]
    gemms = [op.gemm for _, op in weights]
    feeding = [model.ops[source] for i, _ in weights if (source := model.producer(i)) is not None]
    relus = [op for op in model.ops if isinstance(op, QuantAct) and op.relu]
    channels, height, width = model.input_shape
    return QonnxInfo(Path(path).stem, (channels, height, width), model.num_classes,
                     tuple(op.name for _, op in weights), tuple(gemms), tuple(model.vector_passes()),
                     max(op.weight_bits for _, op in weights),
                     max(op.bits for op in feeding if isinstance(op, QuantAct)), model.scaling,
                     model.weight_granularity, all(not op.signed for op in relus),
                     model.logits_layer())
