"""Calibrate a Brevitas model's activation scales, and export it as integers (the engine's contract) or QONNX.

The integer export is what the integer engine and the hardware stage read: `intmodel.npz` holds integer
weights and biases plus float scales, `intmodel.json` the ordered ops (see `export_integer`). Every number is
read back from the Brevitas quantizers themselves, so the export is the model Brevitas runs, not a copy of
its recipe.
"""

from __future__ import annotations

import importlib.util
import json
import math
import operator
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx
from brevitas.core.function_wrapper import RoundSte
from brevitas.core.restrict_val import PowerOfTwoRestrictValue
from brevitas.core.scaling import ParameterFromRuntimeStatsScaling
from brevitas.core.stats import AbsPercentile
from brevitas.graph.calibrate import quantization_status_manager
from brevitas.nn import QuantConv2d, QuantIdentity, QuantLinear, QuantReLU
from torch import nn

from dsetool.engine.intmodel import FORMAT, GRAPH_INPUT, VERSION, stored_ints
from dsetool.models.graphnet import Add

CALIBRATION_METHODS = ("maxabs", "percentile")

# Brevitas's RoundSte is torch.round, which rounds half to even; any other rounding must be added here
# on purpose, with its name, so the engine never silently rounds differently.
_ROUNDING_NAMES = {RoundSte: "half_even"}



class _Statistic:
    """Accumulate one activation quantizer's statistic over the calibration batches."""

    def __init__(self, method: str, percentile: float) -> None:
        self.method = method
        self.percentile = AbsPercentile(percentile, stats_reduce_dim=None)
        self.total = 0.0
        self.batches = 0

    def update(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        output = output.detach().float()
        if self.method == "maxabs":
            self.total = max(self.total, float(output.abs().max()))
        else:
            self.total += float(self.percentile(output))
        self.batches += 1

    def value(self) -> float:
        return self.total if self.method == "maxabs" else self.total / max(self.batches, 1)


def calibrate_activations(model: nn.Module, batches: Iterable[torch.Tensor], method: str = "maxabs",
                          percentile: float = 99.99) -> None:
    """Set every activation quantizer's scale from data, as the start of QAT or the whole of PTQ.

    Statistics are taken on the float network (all quantization off), as Brevitas's `calibration_mode`
    does, at the output of each quantizer's activation (after the ReLU). `maxabs` takes the max |x| over
    all batches; `percentile` the per-batch `percentile` of |x|, averaged over batches (Brevitas's
    convention). The result is written through Brevitas's own initialisation of the learned scale, so
    `state_dict()` saves it and QAT trains it. Calling it again recalibrates.
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"Calibration method must be one of {', '.join(map(repr, CALIBRATION_METHODS))}, "
                         f"not {method!r}")
    proxies = _act_proxies(model)
    # Quantizers sharing one scale (Brevitas aligns the inputs of a concatenation so) share one statistic.
    impls = {name: _scaling_impl(proxy, name) for name, proxy in proxies.items()}
    shared = {id(impl): _Statistic(method, percentile) for impl in impls.values()}
    stats = {name: shared[id(impl)] for name, impl in impls.items()}
    hooks = [proxy.fused_activation_quant_proxy.activation_impl.register_forward_hook(stats[name].update)
             for name, proxy in proxies.items()]
    try:
        _run_float(model, batches)
    finally:
        for hook in hooks:
            hook.remove()
    for name, impl in impls.items():
        if stats[name].batches == 0:
            raise ValueError(f"Calibration saw no data at {name!r}: the batches were empty")
        _set_runtime_scale(impl, stats[name].value())


def _act_proxies(model: nn.Module) -> dict[str, Any]:
    proxies = {name: module.act_quant for name, module in model.named_modules()
               if isinstance(module, (QuantIdentity, QuantReLU))}
    if not proxies:
        raise ValueError("Model has no activation quantizers to calibrate (is it the float baseline?)")
    return proxies


def _run_float(model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    was_training = model.training
    model.eval()
    manager = quantization_status_manager(model, disable_act_quant=True, disable_weight_quant=True,
                                          disable_bias_quant=True, is_training=False)
    device = _device(model)
    try:
        with torch.no_grad(), manager:
            for batch in batches:
                model(batch.to(device))
    finally:
        model.train(was_training)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _scaling_impl(proxy: nn.Module, name: str) -> ParameterFromRuntimeStatsScaling:
    impls = [m for m in proxy.modules() if isinstance(m, ParameterFromRuntimeStatsScaling)]
    if len(impls) != 1:
        raise TypeError(f"Activation quantizer {name!r} has no learned runtime-statistics scale to calibrate")
    return impls[0]


def _set_runtime_scale(impl: ParameterFromRuntimeStatsScaling, statistic: float) -> None:
    """Feed one collected statistic through Brevitas's own init path (log2 domain for po2 and all)."""
    with torch.no_grad():
        stat = impl.clamp_scaling(torch.tensor(statistic, dtype=impl.buffer.dtype))
        impl.buffer.copy_(stat.expand_as(impl.buffer))
        impl.value.fill_(1.0)
        impl.counter = 1
        impl.init_scale()



def _quantizer_fields(proxy: Any, scale: torch.Tensor) -> dict[str, Any]:
    """Describe an activation quantizer: y_int = clamp(round(x / scale), min, max), zero point 0."""
    zero_point = float(proxy.zero_point())
    if zero_point != 0.0:
        raise ValueError(f"Only zero-point-free quantizers can be exported, not zero_point={zero_point}")
    fields = {"scale": float(scale), "bits": int(proxy.bit_width()), "signed": bool(proxy.is_signed),
              "narrow_range": bool(proxy.is_narrow_range), "zero_point": 0, "rounding": _rounding(proxy)}
    if _is_po2(proxy):
        fields["scale_exp"] = _exponent(float(scale))
    return fields


def _rounding(proxy: nn.Module) -> str:
    kinds = {type(m) for m in proxy.modules()} & set(_ROUNDING_NAMES)
    if len(kinds) != 1:
        raise TypeError(f"Cannot tell the rounding of quantizer {type(proxy).__name__}")
    return _ROUNDING_NAMES[kinds.pop()]


def _is_po2(proxy: nn.Module) -> bool:
    return any(isinstance(m, PowerOfTwoRestrictValue) for m in proxy.modules())


def _exponent(scale: float) -> int:
    mantissa, exp = math.frexp(scale)
    if mantissa != 0.5:
        raise ValueError(f"Power-of-two scale expected, got {scale!r}")
    return exp - 1


class _Exporter:
    """Turn the traced graph of a quantized model into ops and arrays, node by node in execution order.

    Each op records the names of the ops it reads; a module called twice (the shared quantizer of a
    residual add) gives one op per call, the later ones named `module:2`, `module:3`, ...
    """

    # module type -> (op kind, method name); the first match wins, so subclasses come first.
    KINDS: tuple[tuple[type, str, str], ...] = (
        (QuantIdentity, "quant_identity", "_activation"), (QuantReLU, "quant_relu", "_activation"),
        (QuantConv2d, "conv2d", "_conv2d"), (QuantLinear, "linear", "_linear"),
        (nn.MaxPool2d, "maxpool2d", "_maxpool2d"), (nn.AvgPool2d, "avgpool2d", "_avgpool2d"),
        (nn.AdaptiveAvgPool2d, "avgpool2d", "_adaptive_avgpool2d"), (nn.Flatten, "flatten", "_flatten"),
        (Add, "add", "_add"))
    ALIASES = (nn.Identity, nn.Dropout)   # no op in eval mode: the node is its input

    def __init__(self, model: nn.Module, shapes: dict[str, list[int]]) -> None:
        self.modules = dict(model.named_modules())
        self.shapes = shapes   # fx node name -> per-image output shape
        self.ops: list[dict[str, Any]] = []
        self.arrays: dict[str, np.ndarray] = {}
        self.po2: set[bool] = set()
        self.granularity: set[str] = set()
        self.names: dict[str, str] = {}          # fx node name -> op name (the tensor it reads)
        self.code_scale: dict[str, torch.Tensor] = {}   # op name -> scale of the codes it holds
        self.calls: dict[str, int] = {}

    def node(self, node: torch.fx.Node) -> None:
        """Export one node of the traced graph."""
        if node.op == "placeholder":
            self.names[node.name] = GRAPH_INPUT
        elif node.op == "call_module":
            self._module_node(node)
        elif node.op in ("call_function", "call_method"):
            self._function_node(node)
        elif node.op == "output":
            self.logits = self._read(node.args[0], node)
        else:
            raise ValueError(f"Cannot export node {node.name!r} ({node.op} {node.target!r})")

    def _read(self, arg: Any, node: torch.fx.Node) -> str:
        if not isinstance(arg, torch.fx.Node) or arg.name not in self.names:
            raise ValueError(f"{node.name!r} reads {arg!r}, which is not a tensor of the network")
        return self.names[arg.name]

    def _module_node(self, node: torch.fx.Node) -> None:
        target = str(node.target)
        module = self.modules[target]
        reads = [self._read(arg, node) for arg in node.args]
        if isinstance(module, self.ALIASES):
            self.names[node.name] = reads[0]
            return
        kind, method = self._kind(target, module)
        count = self.calls[target] = self.calls.get(target, 0) + 1
        name = target if count == 1 else f"{target}:{count}"
        if kind == "quant_identity" and reads == [GRAPH_INPUT]:
            kind = "quant_input"
        fields = getattr(self, method)(name, module, reads)
        self._append(node, kind, name, reads, fields)

    def _function_node(self, node: torch.fx.Node) -> None:
        function = node.target
        if function is torch.cat:
            self._concat(node)
            return
        tensors = [arg for arg in node.args if isinstance(arg, torch.fx.Node)]
        reads = [self._read(arg, node) for arg in tensors]
        if function in (operator.add, torch.add) and len(tensors) == 2 and not node.kwargs:
            self._append(node, "add", node.name, reads, self._add(node.name, None, reads))
        elif function in (torch.flatten, "flatten") and len(tensors) == 1 \
                and tuple(node.args[1:]) in ((1,), (1, -1)) and not node.kwargs:
            self._append(node, "flatten", node.name, reads, self._flatten(node.name, nn.Flatten(), reads))
        else:
            what = function if isinstance(function, str) else getattr(function, "__name__", repr(function))
            raise ValueError(f"Cannot export {node.name!r}: {what!r} is not an op the integer engine runs "
                             f"(it runs {', '.join(sorted({kind for _, kind, _ in self.KINDS}))})")

    def _append(self, node: torch.fx.Node, kind: str, name: str, reads: list[str], fields: dict[str, Any]) -> None:
        if not self.ops and kind != "quant_input":
            raise TypeError(f"Cannot export {name!r}, a {kind}: the first op must be the input quantizer (a "
                            "QuantIdentity reading the images) (is it the float baseline?)")
        self.names[node.name] = name
        self.ops.append({"op": kind, "name": name, "inputs": reads, **fields, "out_shape": self.shapes[node.name]})

    def _kind(self, name: str, module: nn.Module) -> tuple[str, str]:
        for cls, kind, method in self.KINDS:
            if isinstance(module, cls):
                return kind, method
        raise TypeError(f"Cannot export {name!r}, a {type(module).__name__}: the integer format knows "
                        f"{', '.join(sorted({kind for _, kind, _ in self.KINDS}))} (is it the float baseline, or "
                        "a batch norm not folded?)")

    def _activation(self, name: str, module: Any, reads: list[str]) -> dict[str, Any]:
        scale = module.act_quant.scale().detach()
        self.code_scale[name] = scale
        self.po2.add(_is_po2(module.act_quant))
        return _quantizer_fields(module.act_quant, scale)

    def _passes_codes(self, name: str, reads: list[str]) -> None:
        """A max pool or flatten of codes holds codes of the same scale."""
        if reads[0] in self.code_scale:
            self.code_scale[name] = self.code_scale[reads[0]]

    def _maxpool2d(self, name: str, module: nn.MaxPool2d, reads: list[str]) -> dict[str, Any]:
        if _pair(module.dilation) != [1, 1]:
            raise ValueError(f"{name!r}: only dilation-1 max pools are exported")
        self._passes_codes(name, reads)
        stride = module.stride if module.stride is not None else module.kernel_size
        fields = {"kernel": _pair(module.kernel_size), "stride": _pair(stride), "padding": _pair(module.padding)}
        return {**fields, "ceil_mode": True} if module.ceil_mode else fields

    def _avgpool2d(self, name: str, module: nn.AvgPool2d, reads: list[str]) -> dict[str, Any]:
        padding = _pair(module.padding)
        if module.ceil_mode or module.divisor_override is not None or \
                (padding != [0, 0] and not module.count_include_pad):
            raise ValueError(f"{name!r}: only floor-mode average pools dividing by the whole window are exported")
        stride = module.stride if module.stride is not None else module.kernel_size
        return {"kernel": _pair(module.kernel_size), "stride": _pair(stride), "padding": padding}

    def _adaptive_avgpool2d(self, name: str, module: nn.AdaptiveAvgPool2d, reads: list[str]) -> dict[str, Any]:
        in_shape = self._shape_of(reads[0])
        size = module.output_size
        out_size = [size, size] if isinstance(size, int) or size is None else list(size)
        sides = [side if out is None else out for side, out in zip(in_shape[1:], out_size, strict=True)]
        if any(side % out for side, out in zip(in_shape[1:], sides, strict=True)):
            raise ValueError(f"{name!r}: adaptive average pool from {in_shape[1:]} to {sides} has unequal windows")
        kernel = [side // out for side, out in zip(in_shape[1:], sides, strict=True)]
        return {"kernel": kernel, "stride": kernel, "padding": [0, 0]}

    def _shape_of(self, op_name: str) -> list[int]:
        return next(op["out_shape"] for op in self.ops if op["name"] == op_name)

    def _add(self, name: str, module: Any, reads: list[str]) -> dict[str, Any]:
        return {}

    def _concat(self, node: torch.fx.Node) -> None:
        """torch.cat of two or more tensors along the channels: an op reading them all, holding the codes
        of their (one, shared) quantizer."""
        parts = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        rank = len(self.shapes[node.name]) + 1   # with the batch
        if not isinstance(parts, list | tuple) or len(parts) < 2 or not isinstance(dim, int) or dim % rank != 1:
            raise ValueError(f"Cannot export {node.name!r}: only torch.cat of two or more tensors along the "
                             f"channels (dim 1) is an op the integer engine runs")
        reads = [self._read(part, node) for part in parts]
        if reads[0] in self.code_scale:
            self.code_scale[node.name] = self.code_scale[reads[0]]   # the loader checks the others agree
        self._append(node, "concat", node.name, reads, {"axis": 1})

    def _flatten(self, name: str, module: nn.Flatten, reads: list[str]) -> dict[str, Any]:
        if module.start_dim != 1 or module.end_dim != -1:
            raise ValueError(f"{name!r}: only flatten from dim 1 to the end is exported")
        self._passes_codes(name, reads)
        return {"start_dim": 1, "order": "chw"}

    def _conv2d(self, name: str, module: QuantConv2d, reads: list[str]) -> dict[str, Any]:
        if _pair(module.dilation) != [1, 1] or module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise ValueError(f"{name!r}: only dilation-1 convolutions with numeric zero padding are exported")
        fields = {"in_channels": module.in_channels, "out_channels": module.out_channels,
                  "kernel": _pair(module.kernel_size), "stride": _pair(module.stride),
                  "padding": _pair(module.padding), "groups": module.groups}
        return {**fields, **self._weights(name, module, reads)}

    def _linear(self, name: str, module: QuantLinear, reads: list[str]) -> dict[str, Any]:
        fields = {"in_features": module.in_features, "out_features": module.out_features}
        return {**fields, **self._weights(name, module, reads)}

    def _weights(self, name: str, module: Any, reads: list[str]) -> dict[str, Any]:
        """Integer weights and bias; the layer's output is accumulator * input_scale * weight_scale."""
        input_scale = self.code_scale.get(reads[0])
        if input_scale is None:
            raise ValueError(f"{name!r} reads {reads[0]!r}, which holds no quantizer's codes, so its input and "
                             "bias scales are unknown (put a quantizer before it)")
        weight = module.quant_weight()
        per_channel = weight.scale.dim() > 1  # per-tensor scales are 0-d, per-channel ones (out, 1, ...)
        scale = weight.scale.detach().reshape(-1)
        bits = int(weight.bit_width)
        self.arrays[f"{name}.weight"] = _integers(weight.int(), bits)
        self.arrays[f"{name}.weight_scale"] = scale.cpu().numpy().astype(np.float64).reshape(
            -1 if per_channel else ())
        fields = {"weight_bits": bits, "weight_signed": bool(weight.signed),
                  "weight_narrow_range": bool(module.weight_quant.is_narrow_range),
                  "weight": f"{name}.weight", "weight_scale": f"{name}.weight_scale",
                  "weight_rounding": _rounding(module.weight_quant),
                  "input_scale": float(input_scale)}
        po2 = _is_po2(module.weight_quant)
        self.po2.add(po2)
        self.granularity.add("per_channel" if per_channel else "per_tensor")
        if po2:
            exps = [_exponent(float(s)) for s in scale]
            fields["weight_scale_exp"] = exps if per_channel else exps[0]
            fields["input_scale_exp"] = _exponent(float(input_scale))
        return {**fields, **self._bias(name, module, scale * input_scale.reshape(-1))}

    def _bias(self, name: str, module: Any, bias_scale: torch.Tensor) -> dict[str, Any]:
        """Quantize the bias as Int32Bias does, at the float32 product weight_scale * input_scale."""
        quant = module.bias_quant.tensor_quant
        bits = quant.msb_clamp_bit_width_impl()
        bias = module.bias if module.bias is not None else torch.zeros(module.weight.shape[0])
        bias_int = quant.int_quant.to_int(bias_scale, torch.zeros_like(bias_scale), bits, bias.detach())
        self.arrays[f"{name}.bias"] = bias_int.cpu().numpy().astype(np.int64)
        return {"bias": f"{name}.bias", "bias_bits": int(bits),
                "bias_signed": bool(module.bias_quant.is_signed)}


def _pair(value: int | tuple[int, ...]) -> list[int]:
    return [value, value] if isinstance(value, int) else list(value)


def _integers(values: torch.Tensor, bits: int) -> np.ndarray:
    array = values.detach().cpu().numpy()
    if not np.array_equal(array, np.round(array)):
        raise ValueError("Quantized weights are not integers")
    return stored_ints(array, bits)


class _Leaves(torch.fx.Tracer):
    """Trace a model down to the modules the exporter knows (Brevitas layers are not torch.nn's, so the
    default tracer would trace into them)."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, tuple(cls for cls, _, _ in _Exporter.KINDS) + _Exporter.ALIASES) \
            or super().is_leaf_module(module, qualified_name)


def trace(model: nn.Module) -> torch.fx.GraphModule:
    """Return the model's graph as a GraphModule whose call_module nodes are the exported ops."""
    try:
        graph = _Leaves().trace(model)
    except Exception as error:   # torch.fx raises many kinds (TraceError, TypeError, ...) on dynamic code
        raise ValueError(f"Cannot trace the model into a graph (torch.fx): {error}") from error
    return torch.fx.GraphModule(model, graph)


def _output_shapes(module: torch.fx.GraphModule, input_shape: tuple[int, int, int]) -> dict[str, list[int]]:
    """Run one zero image through the traced model to record every node's output shape (batch dim dropped)."""
    shapes: dict[str, list[int]] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, node: torch.fx.Node) -> Any:
            result = super().run_node(node)
            value = getattr(result, "value", result)   # a Brevitas QuantTensor holds its tensor in .value
            if isinstance(value, torch.Tensor):
                shapes[node.name] = list(value.shape[1:])
            return result

    with torch.no_grad():
        Recorder(module).run(torch.zeros(1, *input_shape, device=_device(module)))
    return shapes


def _one(values: set[Any], what: str) -> Any:
    if len(values) != 1:
        raise ValueError(f"All layers must share one {what}, found {sorted(map(str, values))}")
    return next(iter(values))


def integer_model(model: nn.Module, *, arch: str, input_shape: tuple[int, int, int]
                  ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Return the integer export of `model` as (json dict, npz arrays) without writing files."""
    was_training = model.training
    model.eval()
    try:
        traced = trace(model)
        exporter = _Exporter(model, _output_shapes(traced, input_shape))
        with torch.no_grad():
            for node in traced.graph.nodes:
                exporter.node(node)
    finally:
        model.train(was_training)
    last = exporter.ops[-1]
    if exporter.logits != last["name"] or len(last["out_shape"]) != 1:
        raise ValueError(f"The network's output must be its last op giving one logit per class (a linear layer, "
                         f"or a flattened pool), not {last['op']!r} of shape {last['out_shape']}")
    header = {"format": FORMAT, "version": VERSION, "arch": arch, "input_shape": list(input_shape),
              "num_classes": last["out_shape"][0],
              "scaling": "po2" if _one(exporter.po2, "scaling") else "float",
              "weight_granularity": _one(exporter.granularity, "weight granularity"),
              "logits": last["name"]}
    return {**header, "ops": exporter.ops}, exporter.arrays


def export_integer(model: nn.Module, out_dir: Path, *, arch: str, input_shape: tuple[int, int, int]) -> dict:
    """Write `out_dir/intmodel.npz` and `out_dir/intmodel.json` and return the json dict.

    The header: `format` "dsetool-intmodel", `version` 2, `arch`, `input_shape`, `num_classes`, `scaling`
    (po2 | float), `weight_granularity` (per_tensor | per_channel), `logits` (the last op's name), `ops`.
    Each op has `op` (its kind), `name` (unique; also the name of its output tensor), `inputs` (the names
    of the ops it reads, `"input"` for the images; ops are in topological order, so every name is an
    earlier op's) and `out_shape`, plus its kind's fields.

    The ops (shapes are per image, channels first; torch layouts throughout):

    - `quant_input`, `quant_relu`, `quant_identity`: y = clamp(round(x / scale), min, max) at `bits`
      (`signed`, `narrow_range`, `zero_point` 0, `rounding` "half_even"); quant_relu applies ReLU to x
      first. `scale` is a float, with `scale_exp` (scale == 2**scale_exp) when scaling is po2.
      quant_input reads the images; the others read another op's integers, x being those integers times
      that op's scale (a requantization).
    - `conv2d`, `linear`: acc = sum(x_int * w_int) + bias_int, exactly; the float output is
      acc * input_scale * weight_scale (per output channel when `weight_granularity` is per_channel). npz
      keys `<name>.weight` (int8 / int16), `<name>.weight_scale` (float64, shape () or (out,)),
      `<name>.bias` (int64, in the accumulator scale, clamped to `bias_bits`). A conv has `groups`
      (weight (out, in / groups, kh, kw); absent means 1), `stride` and `padding` (zeros).
    - `maxpool2d` (kernel, stride, padding; `ceil_mode` true keeps a last window past the far edge, which
      takes the maximum of what it covers) and `flatten` (channels-height-width order) act on the integers.
    - `avgpool2d` (kernel, stride, padding): the integer sum of each window (zeros where padding), at the
      input's scale divided by kh * kw; a global average pool is one window over the whole map. The
      quantizer reading it divides as part of its requantization, as Brevitas scales a pooled QuantTensor.
    - `add`: the sum of two quantizers' codes of one scale (exactly equal: the loader checks), an integer
      at that scale; read by a quantizer, as a residual block's output quantizer reads it.
    - `concat` (`axis` 1): the codes of two or more quantizers of one format (scale, bits, sign: the
      loader checks) joined along the channels, in the order of `inputs`.

    The last op gives the logits, one integer per class at that op's scale (`logits` names it): a linear
    layer's accumulators, or, as SqueezeNet ends, a flattened global average pool's sums.
    """
    config, arrays = integer_model(model, arch=arch, input_shape=input_shape)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(out_dir / "intmodel.npz", **arrays)  # type: ignore[arg-type]
    (out_dir / "intmodel.json").write_text(json.dumps(config, indent=1) + "\n")
    return config


def export_qonnx(model: nn.Module, path: Path, *, input_shape: tuple[int, int, int]) -> None:
    """Write the model as QONNX (Quant nodes, as FINN reads it) to `path`.

    Raises RuntimeError naming the cause when the exporter itself fails (torch / onnx tool versions).
    """
    from brevitas.export import export_qonnx as brevitas_export_qonnx

    if importlib.util.find_spec("onnxoptimizer") is None:
        raise RuntimeError("QONNX export needs the onnxoptimizer package: Brevitas 0.13 refuses to export "
                           "without it (pip install onnxoptimizer)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        # The TorchScript exporter (dynamo=False) still works in torch 2.14, takes 0.3 s instead of 5 s,
        # and keeps Flatten as a Flatten node, as FINN expects.
        brevitas_export_qonnx(model, torch.zeros(1, *input_shape, device=_device(model)),
                              export_path=str(path), dynamo=False)
    except Exception as error:
        raise RuntimeError(f"QONNX export to {path} failed in Brevitas/torch.onnx "
                           f"(torch {torch.__version__}): {error}") from error
    finally:
        model.train(was_training)
