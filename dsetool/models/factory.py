"""The user's own network: `model.factory: "FILE.py:FUNCTION"` or `"package.module:FUNCTION"`.

The function is called as `FUNCTION(in_channels=..., num_classes=..., image_size=(H, W))` and returns a float
`torch.nn.Module`. dsetool trains it as it is (the float baseline), then quantizes it with Brevitas's graph
quantization: `preprocess_for_quantize` traces it (torch.fx), turns functional calls into modules and merges
each batch norm into the conv before it; `quantize` puts a quantizer at the input, a `QuantReLU` for every
ReLU, Brevitas conv/linear layers with the experiment's weight quantizer, and one shared quantizer on both
inputs of every residual add (so the add's inputs share a scale, which the integer model requires). The
quantizers are the experiment's (`models.quant` presets: po2 or float scales, its bit widths); the output
layer is not requantized (the engine's logits are its accumulators).

Before anything trains, the traced graph is checked against what the integer engine runs: a module or
function outside that set is a configuration error naming the file, the module's path in the model and
the op. Per-layer bit widths (`quant.layers`) are not offered for factory models: the graph quantizer
applies one width per kind of layer.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import operator
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsetool.gemm import Gemm, VectorPass

if TYPE_CHECKING:
    from torch import nn

    from dsetool.models.quant import QuantSpec


class FactoryError(ValueError):
    """A factory that cannot give a network the engine runs; the message names the file and the reason."""


@dataclass(frozen=True)
class FactoryInfo:
    """What planning needs of a factory network, derived once per factory, file content and geometry."""

    name: str                        # the function's name (the network's label)
    weight_layers: tuple[str, ...]   # module paths of the conv / linear layers, in execution order
    gemms: tuple[Gemm, ...]
    vector_passes: tuple[VectorPass, ...]   # of the post-GEMM ops (from the trial export)
    logits_layer: str | None = None  # the weight layer whose accumulators are the logits (None: a pool's sums)


def split_spec(spec: str) -> tuple[str, str]:
    """Return (file or module, function) of a factory spec; raise FactoryError when malformed."""
    target, sep, function = spec.rpartition(":")
    if not sep or not target or not function.isidentifier():
        raise FactoryError(f"{spec!r} is not FILE.py:FUNCTION or package.module:FUNCTION")
    return target, function


def source_file(spec: str) -> Path:
    """Return the file that defines the factory (a module is found without running it)."""
    target, _ = split_spec(spec)
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise FactoryError(f"{target}: no such file")
        return path
    try:
        found = importlib.util.find_spec(target)
    except (ImportError, ValueError) as error:
        raise FactoryError(f"{target}: cannot find the module ({error})") from None
    if found is None or found.origin is None or not Path(found.origin).is_file():
        raise FactoryError(f"{target}: no such module")
    return Path(found.origin)


def source_digest(spec: str) -> str:
    """Return the SHA-256 of the factory's source file: a changed model is a new store key."""
    return hashlib.sha256(source_file(spec).read_bytes()).hexdigest()


def load_function(spec: str) -> Any:
    """Import the factory's file or module and return the function."""
    target, function = split_spec(spec)
    path = source_file(spec)
    try:
        if target.endswith(".py"):
            name = f"dsetool_factory_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
            loader_spec = importlib.util.spec_from_file_location(name, path)
            assert loader_spec is not None and loader_spec.loader is not None
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[name] = module   # dataclasses and pickling look modules up by name
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except Exception as error:   # the user's code may raise anything while it loads
        raise FactoryError(f"{path}: importing it raised {type(error).__name__}: {error}") from None
    found = getattr(module, function, None)
    if not callable(found):
        raise FactoryError(f"{path}: defines no function {function!r}")
    return found


def build_float(spec: str, in_channels: int, num_classes: int, image_size: tuple[int, int]) -> nn.Module:
    """Call the factory and return its float network (checked to be a torch module)."""
    from torch import nn

    function = load_function(spec)
    path = source_file(spec)
    try:
        model = function(in_channels=in_channels, num_classes=num_classes, image_size=tuple(image_size))
    except Exception as error:
        raise FactoryError(f"{path}: {split_spec(spec)[1]}(in_channels={in_channels}, num_classes={num_classes}, "
                           f"image_size={tuple(image_size)}) raised {type(error).__name__}: {error}") from None
    if not isinstance(model, nn.Module):
        raise FactoryError(f"{path}: {split_spec(spec)[1]} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def prepared(model: nn.Module, path: Path, input_shape: tuple[int, ...]) -> Any:
    """Return Brevitas's preprocessed graph of a float model for (C, H, W) inputs (traced with its sizes
    as constants, `models.tracing`; batch norms merged) after checking every node against the ops the
    integer engine runs."""
    from brevitas.graph.quantize import preprocess_for_quantize

    from dsetool.models.tracing import static_graph

    model.eval()
    try:
        graph = preprocess_for_quantize(static_graph(model, input_shape), trace_model=True, merge_bn=True)
    except Exception as error:   # torch.fx raises many kinds on code it cannot trace
        raise FactoryError(f"{path}: the model cannot be traced into a graph (torch.fx): "
                           f"{type(error).__name__}: {error}") from None
    _check_supported(graph, path)
    return graph


def _allowed_modules() -> tuple[type, ...]:
    from torch import nn

    return (nn.Conv2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten,
            nn.Identity, nn.Dropout)


SUPPORTED = ("conv2d (any stride, padding, groups), linear, relu, max pool, average pool, flatten, add, "
             "torch.cat along the channels")


def _check_supported(graph: Any, path: Path) -> None:
    import torch
    from torch import nn

    modules = dict(graph.named_modules())
    functions = (operator.add, torch.add, torch.flatten, torch.cat)
    for node in graph.graph.nodes:
        if node.op == "call_module":
            module = modules[node.target]
            if not isinstance(module, _allowed_modules()):
                raise FactoryError(f"{path}: module {node.target!r} is a {type(module).__name__}, which the "
                                   f"integer engine does not run (it runs {SUPPORTED})")
            if isinstance(module, nn.Conv2d) and (module.dilation != (1, 1) or module.padding_mode != "zeros"
                                                  or isinstance(module.padding, str)):
                raise FactoryError(f"{path}: module {node.target!r}: only dilation-1 convs with numeric zero "
                                   "padding run on the engine")
        elif node.op == "call_function" and node.target in (operator.add, torch.add) and \
                sum(isinstance(arg, type(node)) for arg in node.args) != 2:
            raise FactoryError(f"{path}: {node.name!r} adds a constant to a tensor; the integer engine adds two "
                               "quantized tensors only (fold the constant into a bias)")
        elif node.op == "call_function" and node.target not in functions:
            name = getattr(node.target, "__name__", repr(node.target))
            raise FactoryError(f"{path}: {node.name!r} calls {name}, which the integer engine does not run "
                               f"(it runs {SUPPORTED})")
        elif node.op == "call_method" and node.target != "flatten":
            raise FactoryError(f"{path}: {node.name!r} calls the tensor method .{node.target}(), which the integer "
                               "engine does not run (use torch.flatten(x, 1) to flatten)")
        elif node.op == "get_attr":
            raise FactoryError(f"{path}: {node.name!r} reads the tensor attribute {node.target!r} in forward, which "
                               "the integer engine does not run")


def quantize(model: nn.Module, spec: QuantSpec, path: Path | str, input_shape: tuple[int, ...]) -> Any:
    """Return the Brevitas graph model of a float model for (C, H, W) inputs at `spec`'s widths and scale
    format (`path`: the factory's file, named in errors)."""
    from brevitas.graph.quantize import quantize as graph_quantize
    from brevitas.nn import QuantConv2d, QuantIdentity, QuantLinear, QuantReLU
    from torch import nn

    from dsetool.models.quant import act_quantizer, bias_quantizer, weight_quantizer

    if spec.per_layer:
        raise FactoryError(f"{path}: per-layer bit widths (quant.layers) are not offered for factory models")
    graph = prepared(model, Path(path), input_shape)
    bits = spec.weight_bits

    def weights() -> dict[str, Any]:
        return {"weight_quant": weight_quantizer(spec, bits), "bias_quant": bias_quantizer(),
                "return_quant_tensor": True}

    def identity(signed: bool) -> tuple[type, dict[str, Any]]:
        return QuantIdentity, {"act_quant": act_quantizer(spec, spec.act_bits, signed=signed),
                               "return_quant_tensor": True}

    layers = {nn.AvgPool2d: None, nn.Conv2d: (QuantConv2d, weights()), nn.Linear: (QuantLinear, weights())}
    relu = {nn.ReLU: (QuantReLU, {"act_quant": act_quantizer(spec, spec.act_bits, signed=not spec.relu_unsigned),
                                  "return_quant_tensor": True})}
    quantized = graph_quantize(graph, quant_identity_map={"signed": identity(True), "unsigned": identity(False)},
                               compute_layer_map=layers, quant_act_map=relu, requantize_layer_handler_output=False)
    # Aligning a concatenation's ReLU inputs shares their scale and leaves the quantizer Brevitas made for
    # the alignment unused: calibrating it would find no data.
    quantized.delete_all_unused_submodules()
    return quantized


@functools.lru_cache(maxsize=16)
def describe(spec: str, digest: str, in_channels: int, image_size: tuple[int, int], num_classes: int) -> FactoryInfo:
    """Build the float network once, check it, and return its weight layers and GEMMs (`digest`: the
    source's, so an edited file is described afresh)."""
    import torch

    model = build_float(spec, in_channels, num_classes, image_size)
    path = source_file(spec)
    graph = prepared(model, path, (in_channels, *image_size))
    shapes: dict[str, tuple[int, ...]] = {}
    modules = dict(graph.named_modules())
    hooks = [modules[node.target].register_forward_hook(_recorder(shapes, node.name))
             for node in graph.graph.nodes if node.op == "call_module"]
    try:
        with torch.no_grad():
            logits = graph(torch.zeros(1, in_channels, *image_size))
    except Exception as error:
        raise FactoryError(f"{path}: running the model on one {in_channels}x{image_size[0]}x{image_size[1]} image "
                           f"raised {type(error).__name__}: {error}") from None
    finally:
        for hook in hooks:
            hook.remove()
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape[1:]) != (num_classes,):
        shape = list(logits.shape[1:]) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise FactoryError(f"{path}: the model returns {shape} per image, not the {num_classes} class logits")
    passes, logits_layer = _trial_export(spec, path, in_channels, num_classes, image_size)
    return FactoryInfo(split_spec(spec)[1], *_weight_gemms(graph, shapes), passes, logits_layer)


def _trial_export(spec: str, path: Path, in_channels: int, num_classes: int, image_size: tuple[int, int]
                  ) -> tuple[tuple[VectorPass, ...], str | None]:
    """Quantize and export the untrained network once, so what only the export can refuse (a ceil-mode
    pool, a constant added to a tensor, unequal adaptive-pool windows) is refused before any training;
    return the vector-unit passes of its integer model (they depend on shapes only, not on widths) and the
    weight layer whose accumulators are the logits (None when the last op is not a weight layer)."""
    from dsetool.engine.intmodel import parse_intmodel
    from dsetool.models.export import integer_model
    from dsetool.models.quant import QuantSpec

    quantized = quantize(build_float(spec, in_channels, num_classes, image_size), QuantSpec(), path,
                         (in_channels, *image_size))
    try:
        exported, arrays = integer_model(quantized, arch="trial", input_shape=(in_channels, *image_size))
        model = parse_intmodel(exported, arrays)
        return tuple(model.vector_passes()), model.logits_layer()
    except (ValueError, TypeError) as error:
        raise FactoryError(f"{path}: the quantized network cannot be exported to the integer engine: {error}") \
            from None


def _recorder(shapes: dict[str, tuple[int, ...]], name: str) -> Any:
    def record(module: Any, inputs: Any, output: Any) -> None:
        shapes[name] = tuple(output.shape[1:])
    return record


def _weight_gemms(graph: Any, shapes: dict[str, tuple[int, ...]]) -> tuple[tuple[str, ...], tuple[Gemm, ...]]:
    from torch import nn

    modules = dict(graph.named_modules())
    names, gemms = [], []
    for node in graph.graph.nodes:
        module = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(module, nn.Conv2d):
            gemms.append(Gemm.conv(node.target, shapes[node.name], module.in_channels, module.kernel_size,
                                   module.groups))
            names.append(node.target)
        elif isinstance(module, nn.Linear):
            gemms.append(Gemm.linear(node.target, module.in_features, module.out_features))
            names.append(node.target)
    return tuple(names), tuple(gemms)
