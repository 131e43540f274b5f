"""The integer export is complete and correct: a numpy executor of the exported ops reproduces Brevitas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dsetool.models.export import calibrate_activations, export_integer, export_qonnx  # noqa: E402
from dsetool.models.quant import QuantSpec  # noqa: E402
from dsetool.models.zoo import build_model  # noqa: E402

SHAPES = {"lenet5": (1, 32, 32), "mlp": (1, 8, 8)}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def calibrated(arch: str, spec: QuantSpec, batches: int = 2) -> Any:
    shape = SHAPES[arch]
    model = build_model(arch, in_channels=shape[0], num_classes=10, image_size=shape[1:], quant=spec)
    calibrate_activations(model, [torch.rand(16, *shape) for _ in range(batches)])
    return model.eval()


def exported(model: Any, arch: str, out: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    config = export_integer(model, out, arch=arch, input_shape=SHAPES[arch])
    assert json.loads((out / "intmodel.json").read_text()) == config
    with np.load(out / "intmodel.npz") as npz:
        return config, {key: npz[key] for key in npz.files}


# A reference executor of the exported ops, in float64 (exact for these integer sums).

def int_range(op: dict[str, Any]) -> tuple[int, int]:
    bits = op["bits"]
    if not op["signed"]:
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)) + op["narrow_range"], 2 ** (bits - 1) - 1


def quantize(x: np.ndarray, op: dict[str, Any]) -> np.ndarray:
    assert op["rounding"] == "half_even" and op["zero_point"] == 0
    return np.clip(np.round(x / op["scale"]), *int_range(op))  # np.round rounds half to even


def conv2d(x: np.ndarray, w: np.ndarray, op: dict[str, Any]) -> np.ndarray:
    (ph, pw), (sh, sw) = op["padding"], op["stride"]
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    windows = np.lib.stride_tricks.sliding_window_view(x, w.shape[2:], axis=(2, 3))[:, :, ::sh, ::sw]
    return np.einsum("nchwij,ocij->nohw", windows, w)


def maxpool2d(x: np.ndarray, op: dict[str, Any]) -> np.ndarray:
    (kh, kw), stride = op["kernel"], op["stride"]
    assert stride == op["kernel"] and op["padding"] == [0, 0]
    n, c, h, w = x.shape
    x = x[:, :, : h // kh * kh, : w // kw * kw]
    return x.reshape(n, c, h // kh, kh, w // kw, kw).max(axis=(3, 5))


def weight_layer(x: np.ndarray, op: dict[str, Any], arrays: dict[str, np.ndarray]) -> np.ndarray:
    w = arrays[op["weight"]].astype(np.float64)
    assert arrays[op["weight"]].dtype.kind == "i" and arrays[op["bias"]].dtype == np.int64
    if op["op"] == "conv2d":
        return conv2d(x, w, op) + arrays[op["bias"]].reshape(1, -1, 1, 1)
    return x @ w.T + arrays[op["bias"]]


def accumulator_scale(op: dict[str, Any], arrays: dict[str, np.ndarray], ndim: int) -> np.ndarray:
    scale = op["input_scale"] * arrays[op["weight_scale"]]
    return scale.reshape(1, -1, *([1] * (ndim - 2))) if scale.ndim else scale


def run_reference(config: dict[str, Any], arrays: dict[str, np.ndarray], x: np.ndarray,
                  trace: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Run the ops on integers; return the last layer's integer accumulator and the float logits.

    `trace`, if given, receives every op's integer output by op name.
    """
    ints, value, trace = None, x.astype(np.float64), {} if trace is None else trace
    for op in config["ops"]:
        kind = op["op"]
        if kind in ("quant_input", "quant_relu"):
            ints = quantize(np.maximum(value, 0) if kind == "quant_relu" else value, op)
        elif kind in ("conv2d", "linear"):
            ints = weight_layer(ints, op, arrays)
            value = ints * accumulator_scale(op, arrays, ints.ndim)
        elif kind == "maxpool2d":
            ints = maxpool2d(ints, op)
        elif kind == "flatten":
            ints = ints.reshape(len(ints), -1)
        else:
            raise AssertionError(f"unknown op {kind}")
        assert list(ints.shape[1:]) == op["out_shape"]
        trace[op["name"]] = ints
    return ints, value


def brevitas_codes(model: Any, x: Any) -> dict[str, np.ndarray]:
    """Return the integer codes Brevitas's activation quantizers produce on `x`, by module name."""
    codes: dict[str, np.ndarray] = {}
    hooks = [module.register_forward_hook(
        lambda m, i, out, name=name: codes.__setitem__(name, out.int().double().numpy()))
        for name, module in model.named_children() if hasattr(module, "act_quant")]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return codes


@pytest.mark.parametrize("arch", ["lenet5", "mlp"])
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
def test_po2_export_reproduces_brevitas_bit_exactly(tmp_path: Path, arch: str, bits: int,
                                                    granularity: str) -> None:
    model = calibrated(arch, QuantSpec(weight_bits=bits, act_bits=bits, weight_granularity=granularity))
    config, arrays = exported(model, arch, tmp_path)
    x = torch.rand(32, *SHAPES[arch])
    with torch.no_grad():
        logits = model(x).double().numpy()
    trace: dict[str, np.ndarray] = {}
    acc, ref = run_reference(config, arrays, x.numpy(), trace)
    np.testing.assert_allclose(ref, logits, rtol=1e-6, atol=0)
    for name, codes in brevitas_codes(model, x).items():
        np.testing.assert_array_equal(trace[name], codes, err_msg=name)
    last = config["ops"][-1]
    integer_logits = logits / accumulator_scale(last, arrays, 2)
    np.testing.assert_array_equal(integer_logits, np.round(integer_logits))
    np.testing.assert_array_equal(integer_logits, acc)
    assert config["scaling"] == "po2" and config["weight_granularity"] == granularity


@pytest.mark.parametrize("arch", ["lenet5", "mlp"])
def test_float_scaling_export_agrees_on_top1(tmp_path: Path, arch: str) -> None:
    model = calibrated(arch, QuantSpec(scaling="float", weight_granularity="per_channel"))
    config, arrays = exported(model, arch, tmp_path)
    x = torch.rand(64, *SHAPES[arch])
    with torch.no_grad():
        logits = model(x).double().numpy()
    trace: dict[str, np.ndarray] = {}
    _, ref = run_reference(config, arrays, x.numpy(), trace)
    np.testing.assert_array_equal(ref.argmax(1), logits.argmax(1))
    np.testing.assert_allclose(ref, logits, rtol=0, atol=1e-2 * np.abs(logits).max())
    # Brevitas rounds float32 products and sums, so a rare tie lands one code away; never more.
    for name, codes in brevitas_codes(model, x).items():
        differ = trace[name] != codes
        assert differ.mean() < 1e-3 and np.abs(trace[name] - codes).max() <= 1, name
    assert config["scaling"] == "float" and all("scale_exp" not in op for op in config["ops"])


@pytest.mark.parametrize("bits", range(2, 9))
def test_weights_are_narrow_range_integers_with_po2_scales(tmp_path: Path, bits: int) -> None:
    model = calibrated("lenet5", QuantSpec(weight_bits=bits, act_bits=8), batches=1)
    config, arrays = exported(model, "lenet5", tmp_path)
    limit = 2 ** (bits - 1) - 1
    for op in config["ops"]:
        if op["op"] in ("conv2d", "linear"):
            weight, scale = arrays[op["weight"]], arrays[op["weight_scale"]]
            assert weight.dtype == np.int8 and np.abs(weight).max() <= limit
            assert op["weight_bits"] == bits and op["weight_narrow_range"] and op["bias_bits"] == 32
            assert scale == 2.0 ** op["weight_scale_exp"]
            assert op["input_scale"] == 2.0 ** op["input_scale_exp"]
            dequantized = torch.from_numpy(weight).float() * torch.from_numpy(scale).float()
            assert torch.equal(dequantized, getattr(model, op["name"]).quant_weight().value.detach())
        elif "scale" in op:
            assert op["scale"] == 2.0 ** op["scale_exp"]


def test_export_records_each_op_kind(tmp_path: Path) -> None:
    model = calibrated("lenet5", QuantSpec(weight_bits=4, act_bits=4), batches=1)
    config, arrays = exported(model, "lenet5", tmp_path)
    assert [op["op"] for op in config["ops"]] == [
        "quant_input", "conv2d", "quant_relu", "maxpool2d", "conv2d", "quant_relu", "maxpool2d", "flatten",
        "linear", "quant_relu", "linear", "quant_relu", "linear"]
    header = {k: v for k, v in config.items() if k != "ops"}
    assert header == {"format": "dsetool-intmodel", "version": 2, "arch": "lenet5",
                      "input_shape": [1, 32, 32], "num_classes": 10, "scaling": "po2",
                      "weight_granularity": "per_tensor", "logits": "fc3"}
    first = config["ops"][0]
    assert (first["bits"], first["signed"], first["narrow_range"]) == (4, False, False)
    assert config["ops"][3] == {"op": "maxpool2d", "name": "pool1", "inputs": ["relu1"], "kernel": [2, 2],
                                "stride": [2, 2], "padding": [0, 0], "out_shape": [6, 14, 14]}
    assert config["ops"][0]["inputs"] == ["input"]   # the images
    ops = config["ops"]
    assert all(ops[i]["inputs"] == [ops[i - 1]["name"]] for i in range(1, len(ops)))   # a Sequential: a chain
    assert sorted(arrays) == sorted(f"{layer}.{part}" for layer in ["conv1", "conv2", "fc1", "fc2", "fc3"]
                                    for part in ["weight", "weight_scale", "bias"])


def test_signed_relu_uses_half_the_codes(tmp_path: Path) -> None:
    model = calibrated("mlp", QuantSpec(weight_bits=4, act_bits=4, relu_unsigned=False), batches=1)
    config, arrays = exported(model, "mlp", tmp_path)
    relus = [op for op in config["ops"] if op["op"] == "quant_relu"]
    assert relus and all(op["signed"] and not op["narrow_range"] for op in relus)
    x = torch.rand(16, *SHAPES["mlp"])
    _, ref = run_reference(config, arrays, x.numpy())
    np.testing.assert_allclose(ref, model(x).detach().double().numpy(), rtol=1e-6)


def test_export_refuses_the_float_baseline(tmp_path: Path) -> None:
    model = build_model("mlp", in_channels=1, num_classes=10, image_size=(8, 8))
    message = r"^Cannot export 'flatten', a flatten: the first op must be the input quantizer .* \(is it the float " \
              r"baseline\?\)$"
    with pytest.raises(TypeError, match=message):
        export_integer(model, tmp_path, arch="mlp", input_shape=(1, 8, 8))


def test_qonnx_export_writes_a_valid_model(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxoptimizer", reason="Brevitas 0.13 exports QONNX only with onnxoptimizer")
    model = calibrated("lenet5", QuantSpec(weight_bits=4, act_bits=4), batches=1)
    export_qonnx(model, tmp_path / "model.onnx", input_shape=(1, 32, 32))
    proto = onnx.load(tmp_path / "model.onnx")
    onnx.checker.check_model(proto)
    quant_nodes = [node for node in proto.graph.node if node.op_type == "Quant"]
    assert quant_nodes and {node.domain for node in quant_nodes} == {"qonnx.custom_op.general"}
    assert sum(node.op_type == "Conv" for node in proto.graph.node) == 2
    assert not model.training


def test_every_kind_the_exporter_writes_is_one_the_integer_model_loads() -> None:
    """The exporter's table of Brevitas modules (plus quant_input, the first quantizer's kind, and concat, a
    torch.cat call) writes exactly
    the kinds `intmodel.KINDS` loads: no mapping writes an op the loader lacks, and no op loads that a
    Brevitas model cannot give."""
    from dsetool.engine.intmodel import KINDS
    from dsetool.models.export import _Exporter

    written = {kind for _, kind, _ in _Exporter.KINDS} | {"quant_input", "concat"}   # concat: from torch.cat
    assert written == set(KINDS)
