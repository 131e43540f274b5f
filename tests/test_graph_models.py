"""The graph-shaped built-in networks (residual adds, depthwise and strided convs, global average pooling,
batch norms folded) run on the engine bit for bit as Brevitas runs them, and their export is a graph.

Weights are seeded random with batch-norm statistics taken from data (so folding changes the weights),
calibrated on digits; each check runs a random batch and digits test images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from dsetool.engine import Engine, load_intmodel  # noqa: E402
from dsetool.models.export import calibrate_activations, export_integer  # noqa: E402
from dsetool.models.fold import fold_batch_norms, folded_state  # noqa: E402
from dsetool.models.graphs import GRAPHS  # noqa: E402
from dsetool.models.quant import QuantSpec  # noqa: E402
from dsetool.models.shapes import gemm_shapes  # noqa: E402
from dsetool.models.zoo import build_model, load_float_weights, weight_layer_names  # noqa: E402
from tests.fixtures.engines import digits  # noqa: E402

SIDES = {"resnet8": 16, "resnet20": 16, "mobilenet": 16, "vgg11": 32}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def float_model(arch: str, side: int | None = None) -> Any:
    """A float model whose batch norms have seen data (running statistics far from 0 and 1)."""
    side = side or SIDES[arch]
    model = build_model(arch, in_channels=1, num_classes=10, image_size=(side, side))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(digits(side).train.x[:64] * 3)
    return model.eval()


def quantized(arch: str, spec: QuantSpec, out: Path, side: int | None = None) -> tuple[Any, Engine]:
    side = side or SIDES[arch]
    brevitas = build_model(arch, in_channels=1, num_classes=10, image_size=(side, side), quant=spec)
    load_float_weights(brevitas, folded_state(float_model(arch, side)))
    calibrate_activations(brevitas, [digits(side).calib.x[:64]])
    brevitas.eval()
    export_integer(brevitas, out, arch=arch, input_shape=(1, side, side))
    return brevitas, Engine(load_intmodel(out))


CASES = [(arch, bits) for arch in SIDES for bits in (8, 6, 4, 2)]


@pytest.mark.parametrize("arch, bits", CASES, ids=[f"{a}-W{b}A{b}" for a, b in CASES])
def test_po2_engine_equals_brevitas_bit_for_bit(tmp_path: Path, arch: str, bits: int) -> None:
    brevitas, engine = quantized(arch, QuantSpec(weight_bits=bits, act_bits=bits), tmp_path)
    side = SIDES[arch]
    for label, x in (("random", torch.rand(16, 1, side, side)), ("digits", digits(side).test.x[:64])):
        with torch.no_grad():
            logits = brevitas(x).double()
        acc = engine.run(x)
        expected = logits / engine.acc_scale(engine.weight_layers[-1])
        assert torch.equal(expected, expected.round()), f"{label}: Brevitas logits are not integers"
        assert torch.equal(acc, expected), f"{label}: logits differ in {int((acc != expected).sum())} places"


def test_float_scaling_is_within_one_lsb_with_the_same_top1(tmp_path: Path) -> None:
    brevitas, engine = quantized("resnet8", QuantSpec(weight_bits=8, act_bits=8, scaling="float"), tmp_path)
    x = digits(16).test.x[:128]
    with torch.no_grad():
        logits = brevitas(x).double()
    scaled = engine.run(x) * engine.acc_scale(engine.weight_layers[-1])
    assert (engine.top1(engine.run(x)) == logits.argmax(1)).float().mean() >= 0.99
    assert float((scaled - logits).abs().max()) < 0.05 * float(logits.abs().max())


def test_resnet_export_is_a_graph_with_one_scale_per_add(tmp_path: Path) -> None:
    _, engine = quantized("resnet8", QuantSpec(weight_bits=4, act_bits=4), tmp_path)
    model = engine.model
    names = [op.name for op in model.ops]
    add = names.index("layer2.0.add")
    left, right = (model.ops[i] for i in model.inputs[add])
    assert (left.name, right.name) == ("layer2.0.addq:2", "layer2.0.addq") and left.scale == right.scale
    assert model.ops[model.producer(names.index("layer2.0.addq"))].name == "layer2.0.shortcut"
    assert model.inputs[add][0] == add - 1   # the residual path is a chain into the add
    block_input = model.input_of(names.index("layer1.0.conv1"))
    assert len(model.consumers(block_input)) == 2   # the first conv and, through the add quantizer, the shortcut
    assert model.ops[names.index("pool")].kind == "avgpool2d" and model.ops[names.index("pool")].window == 16
    assert [model.ops[i].name for i in engine.weight_layers] == weight_layer_names("resnet8")
    stride2 = model.ops[names.index("layer2.0.conv1")]
    assert stride2.stride == (2, 2) and stride2.out_shape == (32, 8, 8)


def test_gemm_shapes_follow_the_exported_model(tmp_path: Path) -> None:
    """The torch-free shapes (synth, cycles) equal the exported layers' GEMMs, depthwise groups included,
    and those are what the op's own GEMM says (one derivation: `dsetool.gemm.Gemm`)."""
    _, engine = quantized("mobilenet", QuantSpec(weight_bits=4, act_bits=4), tmp_path, side=32)
    shapes = {g.layer: g for g in gemm_shapes("mobilenet", 1, (8, 8), 10)}   # resized to its 32 x 32
    for index in engine.weight_layers:
        op = engine.model.ops[index]
        gemm = shapes[op.name]
        assert op.gemm == gemm
        groups = getattr(op, "groups", 1)
        m = op.out_shape[1] * op.out_shape[2] if len(op.out_shape) == 3 else 1
        assert (gemm.m, gemm.k, gemm.n * gemm.groups, gemm.groups) == (m, op.reduction, op.out_features, groups)
    assert shapes["block1.dw"].groups == 32 and shapes["block1.dw"].n == 1


@pytest.mark.parametrize("arch", sorted(GRAPHS))
def test_folding_batch_norms_keeps_the_float_model(arch: str) -> None:
    model = float_model(arch)
    folded = fold_batch_norms(model)
    x = torch.rand(8, 1, SIDES[arch], SIDES[arch])
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), rtol=1e-4, atol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())   # the original is untouched


def test_a_batch_norm_without_its_conv_cannot_be_folded() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.BatchNorm2d(2))
    with pytest.raises(ValueError, match=r"Batch norm '2' does not follow a conv"):
        fold_batch_norms(model)
