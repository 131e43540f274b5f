"""The engine is Brevitas in integers: bit for bit under po2 scaling, within one LSB under float scaling.

Models are the zoo's, with float weights trained for a few epochs on the embedded digits (so weights are not
the init), calibrated on digits, exported with `export_integer` and loaded with `load_intmodel`. Each check
runs a random batch in [0, 1] and the first digits test images, and compares every quantizer's codes, not
only the logits.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dsetool.data import DataSplits, load_dataset  # noqa: E402
from dsetool.engine import Engine, IntModel, QuantAct, load_intmodel  # noqa: E402
from dsetool.models.export import calibrate_activations, export_integer  # noqa: E402
from dsetool.models.quant import LayerBits, QuantSpec  # noqa: E402
from dsetool.models.zoo import build_model, load_float_weights  # noqa: E402

SIDE = 32
CHANNELS = {"lenet5": 1, "mlp": 1, "alexnet32": 3}
DIGITS_IMAGES = {"lenet5": 200, "mlp": 200, "alexnet32": 32}  # AlexNet costs ~20 ms per image per run
CALIBRATION_IMAGES = {"lenet5": 128, "mlp": 128, "alexnet32": 64}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> None:
    """One thread, before the module fixtures train: the thread count changes float rounding in training."""
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_dataset("digits", image_size=SIDE)


@pytest.fixture(scope="module")
def float_weights(digits: DataSplits) -> dict[str, dict[str, Any]]:
    """Float LeNet-5 and MLP trained four epochs on digits (about 86 % test accuracy), keyed by arch."""
    torch.manual_seed(0)
    return {arch: _train_float(arch, digits, epochs=4) for arch in ("lenet5", "mlp")}


def _train_float(arch: str, digits: DataSplits, epochs: int) -> dict[str, Any]:
    model = build_model(arch, in_channels=1, num_classes=10, image_size=(SIDE, SIDE))
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(epochs):
        order = torch.randperm(len(digits.train.y))
        for start in range(0, len(order), 64):
            index = order[start:start + 64]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(digits.train.x[index]), digits.train.y[index]).backward()
            optimizer.step()
    return model.state_dict()


def _images(arch: str, x: Any) -> Any:
    return x.expand(-1, CHANNELS[arch], -1, -1)


@dataclass
class Pair:
    """A calibrated Brevitas model and the engine running its export."""

    arch: str
    brevitas: Any
    model: IntModel
    engine: Engine
    directory: Path


def make_pair(arch: str, spec: QuantSpec, digits: DataSplits, weights: dict[str, Any] | None, out: Path,
              **engine_options: Any) -> Pair:
    brevitas = build_model(arch, in_channels=CHANNELS[arch], num_classes=10, image_size=(SIDE, SIDE), quant=spec)
    if weights is not None:
        load_float_weights(brevitas, weights)
    calibrate_activations(brevitas, [_images(arch, digits.calib.x[:CALIBRATION_IMAGES[arch]])])
    brevitas.eval()
    export_integer(brevitas, out, arch=arch, input_shape=(CHANNELS[arch], SIDE, SIDE))
    model = load_intmodel(out)
    return Pair(arch, brevitas, model, Engine(model, **engine_options), out)


def brevitas_run(brevitas: Any, x: Any) -> tuple[Any, dict[str, Any]]:
    """Return Brevitas's float logits and every activation quantizer's integer codes, by module name."""
    codes: dict[str, Any] = {}
    hooks = [module.register_forward_hook(
        lambda m, i, out, name=name: codes.__setitem__(name, out.int().double()))
        for name, module in brevitas.named_children() if hasattr(module, "act_quant")]
    try:
        with torch.no_grad():
            logits = brevitas(x).double()
    finally:
        for hook in hooks:
            hook.remove()
    return logits, codes


def batches(arch: str, digits: DataSplits) -> Iterator[tuple[str, Any]]:
    yield "random", torch.rand(32, CHANNELS[arch], SIDE, SIDE)
    yield "digits", _images(arch, digits.test.x[:DIGITS_IMAGES[arch]])


def integer_logits(pair: Pair, logits: Any) -> Any:
    """Return Brevitas's logits in accumulator units (exact integers under po2 scaling)."""
    return logits / pair.engine.acc_scale(pair.engine.weight_layers[-1])


# -- po2: bit for bit -------------------------------------------------------------------------------------

PO2_SPECS = [
    *[("lenet5", QuantSpec(weight_bits=b, act_bits=b)) for b in range(2, 9)],
    *[("mlp", QuantSpec(weight_bits=b, act_bits=b)) for b in range(2, 9)],
    ("lenet5", QuantSpec(weight_bits=4, act_bits=8)),
    ("lenet5", QuantSpec(weight_bits=8, act_bits=2)),
    ("mlp", QuantSpec(weight_bits=3, act_bits=7)),
    ("lenet5", QuantSpec(weight_bits=5, act_bits=6, per_layer={
        "conv1": LayerBits(8, 8), "fc1": LayerBits(2, 4), "fc3": LayerBits(6, 3)})),
    ("lenet5", QuantSpec(weight_bits=8, act_bits=8, weight_granularity="per_channel")),
    ("lenet5", QuantSpec(weight_bits=4, act_bits=4, weight_granularity="per_channel")),
    ("mlp", QuantSpec(weight_bits=3, act_bits=5, weight_granularity="per_channel")),
    ("lenet5", QuantSpec(weight_bits=4, act_bits=4, relu_unsigned=False)),
    ("mlp", QuantSpec(weight_bits=8, act_bits=8, relu_unsigned=False, weight_granularity="per_channel")),
    *[("alexnet32", QuantSpec(weight_bits=b, act_bits=b)) for b in (8, 4, 2)],
]


def _spec_id(case: tuple[str, QuantSpec]) -> str:
    arch, spec = case
    tags = [spec.weight_granularity] if spec.weight_granularity != "per_tensor" else []
    tags += ["signed-relu"] if not spec.relu_unsigned else []
    tags += ["per-layer"] if spec.per_layer else []
    return "-".join([arch, f"W{spec.weight_bits}A{spec.act_bits}", *tags])


@pytest.mark.parametrize("case", PO2_SPECS, ids=map(_spec_id, PO2_SPECS))
def test_po2_engine_equals_brevitas_bit_for_bit(tmp_path: Path, digits: DataSplits,
                                                float_weights: dict[str, dict[str, Any]],
                                                case: tuple[str, QuantSpec]) -> None:
    arch, spec = case
    pair = make_pair(arch, spec, digits, float_weights.get(arch), tmp_path)
    names = [op.name for op in pair.model.ops]
    for label, x in batches(arch, digits):
        logits, codes = brevitas_run(pair.brevitas, x)
        outputs = pair.engine.run(x, keep=True)
        for name, expected in codes.items():
            assert torch.equal(outputs[names.index(name)], expected), f"{label}: codes of {name}"
        expected_acc = integer_logits(pair, logits)
        assert torch.equal(expected_acc, expected_acc.round()), f"{label}: Brevitas logits are not integers"
        assert torch.equal(outputs[-1], expected_acc), f"{label}: logits"
        scale = pair.engine.acc_scale(pair.engine.weight_layers[-1])
        assert torch.equal(outputs[-1] * scale, logits), f"{label}: dequantized logits"


def test_po2_engine_equals_brevitas_after_qat_steps(tmp_path: Path, digits: DataSplits,
                                                    float_weights: dict[str, dict[str, Any]]) -> None:
    """A few QAT steps move the learned (log2-domain) scales off their calibrated values; still exact."""
    pair = make_pair("lenet5", QuantSpec(weight_bits=4, act_bits=4), digits, float_weights["lenet5"], tmp_path)
    model = pair.brevitas.train()
    before = {op.name: op.scale for op in pair.model.ops if isinstance(op, QuantAct)}
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    for start in range(0, 640, 64):
        optimizer.zero_grad()
        x, y = digits.train.x[start:start + 64], digits.train.y[start:start + 64]
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    export_integer(model, tmp_path / "qat", arch="lenet5", input_shape=(1, SIDE, SIDE))
    engine = Engine(load_intmodel(tmp_path / "qat"))
    after = {op.name: op.scale for op in engine.model.ops if isinstance(op, QuantAct)}
    assert before != after
    x = digits.test.x[:200]
    logits, _ = brevitas_run(model, x)
    assert torch.equal(engine.dequantized_logits(x), logits)


# -- float scaling: one LSB at most, same top-1 ---------------------------------------------------------

FLOAT_SPECS = [
    ("lenet5", QuantSpec(scaling="float")),
    ("lenet5", QuantSpec(scaling="float", weight_granularity="per_channel")),
    ("lenet5", QuantSpec(weight_bits=4, act_bits=4, scaling="float", weight_granularity="per_channel")),
    ("mlp", QuantSpec(scaling="float")),
    ("mlp", QuantSpec(weight_bits=4, act_bits=5, scaling="float", weight_granularity="per_channel")),
]


@dataclass
class Mismatch:
    """Code mismatches between engine and Brevitas at one quantizer, given identical inputs."""

    name: str
    count: int
    total: int
    worst: int


def layer_mismatches(engine: Engine, x: Any, codes: dict[str, Any]) -> list[Mismatch]:
    """Feed Brevitas's codes into the engine one quantizer at a time and compare the next quantizer's codes.

    Teacher forcing isolates each output stage: an upstream one-LSB difference does not propagate.
    """
    names = [op.name for op in engine.model.ops]
    quant = [i for i, op in enumerate(engine.model.ops) if isinstance(op, QuantAct)]
    result = [_mismatch(names[0], engine.quantize_input(x), codes[names[0]])]
    for previous, index in zip(quant, quant[1:], strict=False):
        got = engine.run(codes[names[previous]], start=previous + 1, stop=index + 1)
        result.append(_mismatch(names[index], got, codes[names[index]]))
    return result


def _mismatch(name: str, got: Any, expected: Any) -> Mismatch:
    differ = got != expected
    worst = int((got - expected).abs().max()) if bool(differ.any()) else 0
    return Mismatch(name, int(differ.sum()), got.numel(), worst)


@pytest.mark.parametrize("case", FLOAT_SPECS, ids=map(_spec_id, FLOAT_SPECS))
def test_float_scaling_is_within_one_lsb_with_the_same_top1(tmp_path: Path, digits: DataSplits,
                                                            float_weights: dict[str, dict[str, Any]],
                                                            case: tuple[str, QuantSpec]) -> None:
    arch, spec = case
    pair = make_pair(arch, spec, digits, float_weights[arch], tmp_path)
    x = digits.test.x  # the whole test split
    logits, codes = brevitas_run(pair.brevitas, x)
    mismatches = layer_mismatches(pair.engine, x, codes)
    acc = pair.engine.logits(x)
    last_codes = codes[pair.model.ops[pair.engine.weight_layers[-1] - 1].name]
    forced = pair.engine.run(last_codes, start=pair.engine.weight_layers[-1])
    logit_error = float((forced - integer_logits(pair, logits)).abs().max())
    end_to_end = int((acc != integer_logits(pair, logits).round()).any(1).sum())
    print(f"\n{_spec_id(case)} on {len(x)} digits: code mismatches per quantizer (teacher-forced) "
          + ", ".join(f"{m.name} {m.count}/{m.total} (max {m.worst})" for m in mismatches)
          + f"; logits off by at most {logit_error:.3g} acc LSB given the same inputs; "
          f"{end_to_end} images with some differing logit end to end")
    assert mismatches[0].count == 0, "the input quantizer must match exactly (same float32 arithmetic)"
    for mismatch in mismatches:
        assert mismatch.worst <= 1 and mismatch.count <= max(2, 1e-3 * mismatch.total), mismatch
    assert logit_error < 1.0
    accuracy = float((pair.engine.top1(acc) == digits.test.y).double().mean())
    assert accuracy > 0.8, f"the model should be trained-ish, got {accuracy:.1%}"
    # A 16-bit multiplier (relative error up to 2**-16, against float32's 2**-24) can tip a near tie at
    # low bit widths; 24 bits reproduce Brevitas's top-1 everywhere.
    flips = top1_flips(pair.engine, acc, logits)
    print(f"top-1 differs on {len(flips)} images, Brevitas margins {flips}")
    assert len(flips) <= 0.01 * len(x) and all(margin < 0.02 * float(logits.abs().max()) for margin in flips)
    if spec.weight_bits == spec.act_bits == 8:
        assert not flips
    wide = Engine(pair.model, multiplier_bits=24)
    assert not top1_flips(wide, wide.logits(x), logits)


def top1_flips(engine: Engine, acc: Any, logits: Any) -> list[float]:
    """Return Brevitas's top-2 margin on each image where the engine predicts another class."""
    # Per-channel weight scales give each class its own accumulator scale: `top1` dequantizes.
    differ = engine.top1(acc) != logits.argmax(1)
    top2 = logits[differ].topk(2, dim=1).values
    return [round(float(margin), 4) for margin in top2[:, 0] - top2[:, 1]]


def test_more_multiplier_bits_never_add_mismatches(tmp_path: Path, digits: DataSplits,
                                                   float_weights: dict[str, dict[str, Any]]) -> None:
    spec = QuantSpec(scaling="float", weight_granularity="per_channel")
    pair = make_pair("lenet5", spec, digits, float_weights["lenet5"], tmp_path / "export")
    x = digits.test.x
    _, codes = brevitas_run(pair.brevitas, x)
    counts = {}
    for bits in (4, 6, 8, 12, 16, 24):
        engine = Engine(pair.model, multiplier_bits=bits)
        counts[bits] = sum(m.count for m in layer_mismatches(engine, x, codes))
    print(f"\nteacher-forced code mismatches by multiplier bits (LeNet-5 W8A8 per-channel, 360 digits): {counts}")
    values = list(counts.values())
    assert values == sorted(values, reverse=True) and values[0] > values[-1]


def test_input_quantizer_matches_brevitas_on_rounding_ties(tmp_path: Path, digits: DataSplits) -> None:
    """Values at and one float32 ulp around every tie k + 1/2 land on Brevitas's codes (float32 division)."""
    pair = make_pair("mlp", QuantSpec(scaling="float", act_bits=8), digits, None, tmp_path)
    scale = torch.tensor(pair.model.ops[0].scale, dtype=torch.float32)
    ties = (torch.arange(0, 256, dtype=torch.float32) + 0.5) * scale
    x = torch.cat([ties, torch.nextafter(ties, ties + 1), torch.nextafter(ties, ties - 1)]).clamp(0, 1)
    x = torch.cat([x, torch.zeros(3 * SIDE * SIDE - len(x))]).reshape(3, 1, SIDE, SIDE)
    _, codes = brevitas_run(pair.brevitas, x)
    assert torch.equal(pair.engine.quantize_input(x), codes["input_quant"])
    float64 = torch.round(x.double() / float(scale)).clamp(0, 255)
    print(f"\nfloat64 division would put {int((float64 != codes['input_quant']).sum())} of {3 * 256} "
          "near-tie inputs on another code")


# -- the executor's structure, as the fault layer uses it --------------------------------------------------

def test_run_from_an_op_reuses_the_prefix(tmp_path: Path, digits: DataSplits,
                                          float_weights: dict[str, dict[str, Any]]) -> None:
    pair = make_pair("lenet5", QuantSpec(weight_bits=6, act_bits=6), digits, float_weights["lenet5"], tmp_path)
    engine, x = pair.engine, digits.test.x[:16]
    golden = engine.run(x, keep=True)
    assert len(golden) == len(pair.model.ops)
    for index in range(1, len(golden)):
        assert torch.equal(engine.run(golden[index - 1], start=index), golden[-1])
        suffix = engine.run(golden[index - 1], start=index, keep=True)
        assert all(torch.equal(a, b) for a, b in zip(suffix, golden[index:], strict=True))
    with pytest.raises(ValueError, match=r"^Op 1 reads per-image shape \[1, 32, 32\], not \[6, 28, 28\]$"):
        engine.run(golden[1], start=1)


def test_weight_layers_expose_the_gemm_and_the_output_stage(tmp_path: Path, digits: DataSplits,
                                                            float_weights: dict[str, dict[str, Any]]) -> None:
    pair = make_pair("lenet5", QuantSpec(weight_bits=4, act_bits=5, weight_granularity="per_channel"), digits,
                     float_weights["lenet5"], tmp_path)
    engine = pair.engine
    golden = engine.run(digits.test.x[:4], keep=True)
    assert [pair.model.ops[i].name for i in engine.weight_layers] == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    conv2 = engine.layers[4]
    columns = conv2.im2col(golden[3])
    assert columns.shape == (4, 100, 150) and conv2.weight.shape == (150, 16)
    acc = conv2.gemm(columns)
    assert torch.equal(conv2.fold(acc), golden[4])
    relu = engine.requantize(4, golden[4])
    assert torch.equal(relu, golden[5])
    # a sparse subset: every 7th accumulator with its output channel
    channel = torch.arange(16).reshape(1, 16, 1, 1).expand_as(golden[4])
    pick = torch.zeros(golden[4].numel(), dtype=torch.bool)
    pick[::7] = True
    pick = pick.reshape(golden[4].shape)
    assert torch.equal(engine.requantize(4, golden[4][pick], channel[pick]), relu[pick])
    widths = conv2.widths
    assert (widths.act_bits, widths.act_signed, widths.weight_bits, widths.weight_signed) == (5, False, 4, True)
    bias = pair.model.ops[4].bias  # type: ignore[union-attr]
    assert widths.acc_range == (150 * 31 * -8 + min(0, int(bias.min())), 150 * 31 * 7 + max(0, int(bias.max())))
    assert 2 ** (widths.acc_bits - 2) <= max(map(abs, widths.acc_range)) < 2 ** (widths.acc_bits - 1)
    assert torch.equal(engine.layers[8].im2col(golden[7]), golden[7].reshape(4, 1, 400))
    with pytest.raises(ValueError, match=r"^Op 12 is not a weight layer with an output stage"):
        engine.requantize(12, golden[12])


# -- the loader -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lenet_export(tmp_path_factory: pytest.TempPathFactory, digits: DataSplits) -> Path:
    out = tmp_path_factory.mktemp("lenet")
    make_pair("lenet5", QuantSpec(weight_bits=4, act_bits=4), digits, None, out)
    return out


def _corrupt(source: Path, target: Path, edit: Any = None, arrays: Any = None) -> Path:
    shutil.copytree(source, target)
    if edit is not None:
        config = json.loads((target / "intmodel.json").read_text())
        edit(config)
        (target / "intmodel.json").write_text(json.dumps(config))
    if arrays is not None:
        with np.load(target / "intmodel.npz") as npz:
            data = {key: npz[key] for key in npz.files}
        arrays(data)
        np.savez(target / "intmodel.npz", **data)
    return target


def _set(path: list[Any], value: Any) -> Any:
    def edit(config: dict[str, Any]) -> None:
        node = config
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


MALFORMED = {
    "format": (_set(["format"], "onnx"), None,
               r"not a dsetool-intmodel file of version 1 or 2 \(format 'onnx', version 2\)$"),
    "unknown input": (_set(["ops", 4, "inputs"], ["nope"]), None,
                      r"op 4 \('conv2'\): inputs \['nope'\] name no earlier op"),
    "later input": (_set(["ops", 4, "inputs"], ["fc1"]), None,
                    r"op 4 \('conv2'\): inputs \['fc1'\] name no earlier op"),
    "two inputs": (_set(["ops", 4, "inputs"], ["relu1", "pool1"]), None,
                   r"op 4 \('conv2'\): a conv2d reads 1 tensor\(s\), not 2$"),
    "dead end": (_set(["ops", 4, "inputs"], ["relu1"]), None, r"op 3 \('pool1'\) feeds no op"),
    "op kind": (_set(["ops", 2, "op"], "gelu"), None,
                r"op 2 \('relu1'\): key 'op' must be one of .*, not 'gelu'$"),
    "bits": (_set(["ops", 0, "bits"], True), None, r"op 0 \('input_quant'\): key 'bits' must be an integer, not True$"),
    "out_shape": (_set(["ops", 3, "out_shape"], [6, 13, 14]), None,
                  r"op 3 \('pool1'\): out_shape \[6, 13, 14\] does not follow from input shape \[6, 28, 28\] "
                  r"\(expected \[6, 14, 14\]\)$"),
    "po2 exponent": (_set(["ops", 2, "scale_exp"], 3), None, r"op 2 \('relu1'\): scales \[.*\] are not 2\*\*"),
    "input scale": (lambda config: config["ops"][4].update(input_scale=0.5, input_scale_exp=-1), None,
                    r"op 4 \('conv2'\): input_scale 0.5 is not the scale .* of 'relu1', which feeds it$"),
    "missing array": (None, lambda data: data.pop("fc2.bias"),
                      r"op 10 \('fc2'\): intmodel.npz has no array 'fc2.bias' \(named by key 'bias'\)$"),
    "weight range": (None, lambda data: data["fc1.weight"].__setitem__((0, 0), 8),
                     r"op 8 \('fc1'\): weight values span \[-\d, 8\], outside the \(-7, 7\) range of its bit width$"),
    "weight shape": (None, lambda data: data.__setitem__("conv1.weight", data["conv1.weight"][:, :, :3]),
                     r"op 1 \('conv1'\): weight of shape \(6, 1, 3, 5\) does not match kernel \[5, 5\]"),
    "no relu": (lambda config: (config["ops"].pop(9), config["ops"][9].update(inputs=[config["ops"][8]["name"]])),
                None,
                r"op 9 \('fc2'\): a linear must read a quantizer's codes .*, not linear$"),
}


@pytest.mark.parametrize("fault", sorted(MALFORMED))
def test_loader_rejects_a_malformed_export_naming_op_and_key(tmp_path: Path, lenet_export: Path,
                                                             fault: str) -> None:
    edit, arrays, message = MALFORMED[fault]
    broken = _corrupt(lenet_export, tmp_path / "broken", edit, arrays)
    with pytest.raises(ValueError, match=message):
        load_intmodel(broken)


def test_a_version_1_chain_loads_as_the_graph_it_implies(tmp_path: Path, lenet_export: Path) -> None:
    def to_version_1(config: dict[str, Any]) -> None:
        config["version"] = 1
        for op in config["ops"]:
            del op["inputs"]

    old, new = load_intmodel(_corrupt(lenet_export, tmp_path / "v1", to_version_1, None)), load_intmodel(lenet_export)
    assert old.inputs == new.inputs == tuple((i - 1,) for i in range(len(new.ops)))
    assert [new.producer(i) for i in (1, 2, 4)] == [0, 1, 2]   # conv1 reads input_quant; conv2 reads relu1
    assert new.consumers(3) == (4,) and new.input_shape_of(4) == new.ops[3].out_shape   # through pool1


def test_loader_freezes_the_model(lenet_export: Path) -> None:
    model = load_intmodel(lenet_export)
    conv1 = model.ops[1]
    with pytest.raises(ValueError, match="read-only"):
        conv1.weight[0, 0, 0, 0] = 1  # type: ignore[union-attr]
    with pytest.raises(AttributeError):
        model.ops = ()  # type: ignore[misc]
    assert [op.kind for op in model.ops][:4] == ["quant_input", "conv2d", "quant_relu", "maxpool2d"]
