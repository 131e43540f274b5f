"""Architectures, quant specs, float-weight loading and activation calibration."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from dsetool.models.quant import LayerBits, QuantSpec
from dsetool.models.zoo import ARCHITECTURES, input_size, weight_layer_names

torch = pytest.importorskip("torch")

from dsetool.models.export import calibrate_activations  # noqa: E402
from dsetool.models.zoo import build_model, load_float_weights  # noqa: E402

INPUTS = [("lenet5", 1, (32, 32)), ("alexnet32", 1, (32, 32)), ("alexnet32", 3, (32, 32)), ("mlp", 1, (8, 8))]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def make(arch: str = "lenet5", quant: QuantSpec | None = None, channels: int = 1,
         size: tuple[int, int] = (32, 32), **kwargs: Any) -> Any:
    return build_model(arch, in_channels=channels, num_classes=10, image_size=size, quant=quant, **kwargs)


def scale_of(module: Any) -> float:
    return float(module.act_quant.scale().detach())


def test_import_does_not_pull_in_torch() -> None:
    code = ("import sys, dsetool.models, dsetool.models.quant\n"
            "from dsetool.models.zoo import weight_layer_names, ARCHITECTURES\n"
            "assert [weight_layer_names(a) for a in ARCHITECTURES]\n"
            "heavy = sorted(m for m in ('torch', 'brevitas') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_layer_names_and_input_sizes() -> None:
    assert ARCHITECTURES == ("lenet5", "alexnet32", "mlp", "resnet8", "resnet20", "mobilenet", "vgg11")
    assert len(weight_layer_names("resnet20")) == 1 + 3 * 3 * 2 + 2 + 1   # stem, 9 blocks, 2 shortcuts, fc
    assert weight_layer_names("mobilenet")[:3] == ["conv1", "block1.dw", "block1.pw"]
    assert weight_layer_names("lenet5") == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert weight_layer_names("alexnet32") == [f"conv{i}" for i in range(1, 6)] + ["fc1", "fc2", "fc3"]
    assert weight_layer_names("mlp") == ["fc1", "fc2", "fc3"]
    assert weight_layer_names("mlp", (16,)) == ["fc1", "fc2"]
    assert [input_size(a, (8, 8)) for a in ARCHITECTURES] == [32, 32, None, 32, 32, 32, 32]
    message = r"^Architecture must be one of 'lenet5', 'alexnet32', 'mlp', 'resnet8', .*, 'vgg11', not 'vgg'$"
    with pytest.raises(ValueError, match=message):
        weight_layer_names("vgg")


@pytest.mark.parametrize(("arch", "channels", "size"), INPUTS)
@pytest.mark.parametrize("quantized", [False, True])
def test_logits_shape(arch: str, channels: int, size: tuple[int, int], quantized: bool) -> None:
    model = make(arch, QuantSpec() if quantized else None, channels, size).eval()
    with torch.no_grad():
        logits = model(torch.rand(3, channels, *size))
    assert type(logits) is torch.Tensor and logits.shape == (3, 10)


def test_module_names_are_stable() -> None:
    names = [name for name, _ in make().named_children()]
    assert names == ["input_quant", "conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "flatten",
                     "fc1", "relu3", "fc2", "relu4", "fc3"]
    assert make("lenet5", size=(28, 28)).fc1.in_features == 16 * 4 * 4
    assert make("alexnet32", channels=3).fc1.in_features == 256 * 4 * 4


def test_float_and_quant_models_share_weight_names() -> None:
    float_keys = set(make().state_dict())
    quant_keys = {k for k in make(quant=QuantSpec()).state_dict() if k.endswith((".weight", ".bias"))}
    assert float_keys == quant_keys == {f"{layer}.{p}" for layer in weight_layer_names("lenet5")
                                        for p in ("weight", "bias")}


def test_load_float_weights_copies_exactly() -> None:
    source = make("mlp", size=(8, 8))
    target = make("mlp", QuantSpec(weight_bits=4, act_bits=4), size=(8, 8))
    load_float_weights(target, source.state_dict())
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)
    with pytest.raises(ValueError, match=r"^Float 'fc1.weight' has shape \(64, 64\), the model needs"):
        load_float_weights(make("mlp", QuantSpec(), size=(4, 4)), source.state_dict())
    with pytest.raises(KeyError, match="Float state dict has no 'fc3.weight'"):
        load_float_weights(target, {k: v for k, v in source.state_dict().items() if k != "fc3.weight"})


def test_per_layer_overrides_take_effect() -> None:
    spec = QuantSpec(weight_bits=4, act_bits=4, per_layer={"conv1": LayerBits(8, 8)})
    model = make(quant=spec)
    weight_bits = {name: int(getattr(model, name).quant_weight().bit_width)
                   for name in weight_layer_names("lenet5")}
    assert weight_bits == {"conv1": 8, "conv2": 4, "fc1": 4, "fc2": 4, "fc3": 4}
    # input_quant feeds conv1 (8 bits); relu1 feeds conv2 (4 bits)
    assert int(model.input_quant.act_quant.bit_width()) == 8
    assert int(model.relu1.act_quant.bit_width()) == 4
    with pytest.raises(ValueError, match=r"^Per-layer bits name unknown layers \['conv9'\] of 'lenet5'"):
        make(quant=QuantSpec(per_layer={"conv9": LayerBits(8, 8)}))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"weight_bits": 1}, r"^Weight bit width must be an integer in 2\.\.16, not 1$"),
    ({"act_bits": 17}, r"^Activation bit width must be an integer in 2\.\.16, not 17$"),
    ({"scaling": "log"}, r"^Quant scaling must be one of 'po2', 'float', not 'log'$"),
    ({"weight_granularity": "per_group"}, r"^Weight granularity must be one of 'per_tensor', 'per_channel'"),
])
def test_quant_spec_rejects_bad_values(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        QuantSpec(**kwargs)


def test_weight_bits_up_to_16() -> None:
    model = make("mlp", QuantSpec(weight_bits=16, act_bits=8), size=(8, 8))
    largest = int(model.fc1.quant_weight().int().abs().max())
    assert 2**13 < largest <= 2**15 - 1  # a po2 scale leaves the largest weight in the top octave


def test_calibration_sets_po2_scales_from_the_data() -> None:
    model = make(quant=QuantSpec(weight_bits=8, act_bits=8))
    calibrate_activations(model, [torch.rand(4, 1, 32, 32) * 0.7, torch.full((4, 1, 32, 32), 1.0)])
    # maxabs of the input is 1.0: unsigned 8-bit po2 scale is 2**ceil(log2(1.0)) / 2**8
    assert scale_of(model.input_quant) == 2.0**-8
    scales = [scale_of(m) for m in model if hasattr(m, "act_quant")]
    assert all(s == 2.0 ** round(torch.log2(torch.tensor(s)).item()) for s in scales)


def test_calibration_is_saved_and_reloads() -> None:
    model = make("mlp", QuantSpec(scaling="float"), size=(8, 8))
    calibrate_activations(model, [torch.rand(16, 1, 8, 8)], method="percentile", percentile=99.0)
    calibrate_activations(model, [torch.rand(16, 1, 8, 8) * 2])  # recalibration replaces the scales
    assert abs(scale_of(model.input_quant) * 255 - 2.0) < 0.05
    fresh = make("mlp", QuantSpec(scaling="float"), size=(8, 8))
    fresh.load_state_dict(model.state_dict())
    x = torch.rand(8, 1, 8, 8)
    assert torch.equal(fresh.eval()(x), model.eval()(x))


def test_calibration_rejects_bad_input() -> None:
    message = r"^Calibration method must be one of 'maxabs', 'percentile', not 'mse'$"
    with pytest.raises(ValueError, match=message):
        calibrate_activations(make(quant=QuantSpec()), [], method="mse")
    with pytest.raises(ValueError, match=r"^Model has no activation quantizers"):
        calibrate_activations(make(), [torch.rand(1, 1, 32, 32)])
    with pytest.raises(ValueError, match=r"^Calibration saw no data at 'input_quant'"):
        calibrate_activations(make(quant=QuantSpec()), [])
