"""Concatenation along the channels (SqueezeNet's fire modules): a factory network with `torch.cat` runs bit
for bit on the engine, imports from its QONNX export to the same integer model, loads only when its
inputs share one code format, and a layer reading it checks each input's channels with that input's
protection. Campaign exactness on it: `tests/test_graph_faults.py` (the `squeezenet` case)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dsetool.engine import Concat, Engine, MaxPool2d, load_intmodel, parse_intmodel  # noqa: E402
from dsetool.models.export import export_integer, export_qonnx  # noqa: E402
from dsetool.models.qonnx_import import import_qonnx  # noqa: E402
from dsetool.protect.check import ChannelChecks, RangeCheck, at_inputs  # noqa: E402
from tests.fixtures.engines import SQUEEZENET, assert_equals_brevitas, digits, engine_of  # noqa: E402
from tests.fixtures.engines import quantized_factory as quantized_squeezenet  # noqa: E402

SIDE = 16


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    directory = tmp_path_factory.mktemp("squeezenet")
    torch.set_num_threads(1)
    model = quantized_squeezenet(SQUEEZENET, 4, SIDE)
    export_integer(model, directory, arch="squeezenet", input_shape=(1, SIDE, SIDE))
    return model, directory


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_a_network_with_concatenations_runs_bit_for_bit(tmp_path: Path, bits: int) -> None:
    """Two fire modules, and the logits a flattened global average pool of ReLU codes (no linear layer)."""
    torch.set_num_threads(1)
    model = quantized_squeezenet(SQUEEZENET, bits, SIDE)
    engine = engine_of(model, tmp_path, SIDE, "squeezenet")
    assert [op.kind for op in engine.model.ops][-2:] == ["avgpool2d", "flatten"]
    concats = [i for i, op in enumerate(engine.model.ops) if isinstance(op, Concat)]
    assert len(concats) == 2
    for index in concats:   # the two expands' ReLUs, one shared quantizer's format
        first, second = (engine.model.ops[q] for q in engine.model.producers(index))
        assert first.name != second.name and (first.scale, first.bits, first.signed) == \
            (second.scale, second.bits, second.signed)
    for x in (torch.rand(16, 1, SIDE, SIDE), digits(SIDE).test.x[:64]):
        assert_equals_brevitas(engine, model, x)


def test_planning_sees_the_exported_vector_passes() -> None:
    from dsetool.models.factory import describe, source_digest

    info = describe(SQUEEZENET, source_digest(SQUEEZENET), 1, (SIDE, SIDE), 10)
    assert [layer for layer in info.weight_layers if "expand" in layer] == \
        ["fire1.expand1.0", "fire1.expand3.0", "fire2.expand1.0", "fire2.expand3.0"]
    # a concat is addressing (each expand writes its channels of one buffer): the 3x3 max pool after fire1
    # (ceil mode: 8x8 to 4x4) and the head's global average pool over 4x4 are the only passes
    assert [(p.window, p.positions) for p in info.vector_passes] == [(9, 16), (16, 1)]


def test_a_qonnx_round_trip_gives_the_same_model_and_the_executor_agrees(exported, tmp_path: Path) -> None:
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    model, directory = exported
    export_qonnx(model, tmp_path / "model.onnx", input_shape=(1, SIDE, SIDE))
    ours = load_intmodel(directory)
    imported = parse_intmodel(*import_qonnx(tmp_path / "model.onnx"))
    assert imported.inputs == ours.inputs
    assert [(op.kind, op.out_shape) for op in imported.ops] == [(op.kind, op.out_shape) for op in ours.ops]
    x = torch.rand(8, 1, SIDE, SIDE)
    engine = Engine(ours)
    assert torch.equal(Engine(imported).run(x), engine.run(x))
    wrapper = ModelWrapper(str(tmp_path / "model.onnx")).transform(InferShapes())
    out = execute_onnx(wrapper, {wrapper.graph.input[0].name: x[:1].numpy()})[wrapper.graph.output[0].name]
    assert np.array_equal(out.astype(np.float64), engine.dequantized_logits(x[:1]).numpy())


def _edited(directory: Path, edit) -> tuple[dict, dict]:
    config = json.loads((directory / "intmodel.json").read_text())
    with np.load(directory / "intmodel.npz") as npz:
        arrays = {key: npz[key] for key in npz.files}
    edit(next(op for op in config["ops"] if op["op"] == "concat"), config)
    return config, arrays


def _rescaled(concat: dict, config: dict) -> None:
    second = next(op for op in config["ops"] if op["name"] == concat["inputs"][1])
    second["scale"] *= 2
    second["scale_exp"] += 1


BAD = {
    "another scale": (_rescaled, r"whose \(scale, bits, signed, narrow_range\) differ"),
    "another axis": (lambda concat, config: concat.update(axis=2), r"only concatenation along the channels"),
    "one input": (lambda concat, config: concat.update(inputs=concat["inputs"][:1]), r"reads at least 2 tensor"),
    "wrong shape": (lambda concat, config: concat.update(out_shape=[7, 4, 4]), r"does not follow from input shapes"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_the_loader_refuses_a_concat_it_cannot_run(exported, case: str) -> None:
    edit, message = BAD[case]
    with pytest.raises(ValueError, match=message):
        parse_intmodel(*_edited(exported[1], edit))


def test_a_layer_reading_a_concat_checks_each_input_with_its_own_protection(exported) -> None:
    _, directory = exported
    model = load_intmodel(directory)
    reader = next(i for i, op in enumerate(model.ops) if op.gemm is not None and len(model.quantizers_read(i)) == 2)
    assert isinstance(model.ops[model.input_of(reader)], Concat | MaxPool2d)   # fire2's squeeze reads it pooled
    (first, channels), (second, _) = model.quantizers_read(reader)
    bounds = RangeCheck("clip", np.full(channels, 1), np.full(channels, 2))
    check = at_inputs(model, {first: bounds})[reader]   # the second expand unprotected: its full range
    assert isinstance(check, RangeCheck)
    low, high = model.ops[second].qrange
    assert check.lo.tolist() == [1] * channels + [low] * channels
    assert check.hi.tolist() == [2] * channels + [high] * channels

    def halve(codes: torch.Tensor) -> torch.Tensor:
        return torch.div(codes, 2, rounding_mode="floor")

    mixed = at_inputs(model, {first: bounds, second: halve})[reader]   # not range checks: each on its channels
    assert isinstance(mixed, ChannelChecks)
    codes = torch.arange(2 * 2 * channels * 4, dtype=torch.float32).reshape(2, 2 * channels, 2, 2)
    out = mixed(codes)
    assert torch.equal(out[:, :channels], codes[:, :channels].clamp(1, 2))
    assert torch.equal(out[:, channels:], halve(codes[:, channels:]))


def test_a_network_with_concatenations_runs_through_the_stages(tmp_path: Path, write_experiment) -> None:
    """Pretrain, QAT, bounds and a campaign checked where the layers read their inputs (so fire2's squeeze
    checks the two expands' channels each against its own bounds), bit-exact against Brevitas."""
    from click.testing import CliRunner

    from dsetool.cli import main

    network = Path(__file__).parent / "fixtures" / "squeezenet.py"
    experiment = write_experiment({
        "name": "fire", "threads": 1, "data": {"name": "digits", "calib_size": 32, "max_train": 300},
        "model": {"factory": f"{network}:make"}, "quant": {"bits": 4},
        "train": {"pretrain": {"epochs": 1, "batch_size": 64}, "qat": {"epochs": 1, "batch_size": 64}},
        "hw": {"protection": "clip"}, "protect": {"placement": "input"},
        "faults": {"samples": 120, "inputs": 32, "site": ["act", "pe.psum"]}})
    runs = tmp_path / "runs"
    result = CliRunner().invoke(main, ["inject", str(experiment), "--json", "--runs", str(runs)])
    assert result.exit_code == 0, result.output
    metrics = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")][0]["metrics"]
    assert metrics["golden_agreement"] == 1.0 and metrics["max_lsb_deviation"] == 0.0
    assert metrics["planned_inferences"] == 120
    model = json.loads(next((runs / "train-qat").glob("*/*/intmodel.json")).read_text())
    assert sum(op["op"] == "concat" for op in model["ops"]) == 2


def test_the_last_weight_layer_is_protectable_when_a_pool_gives_the_logits(write_experiment) -> None:
    """SqueezeNet's last conv is requantized (its ReLU codes are pooled into the logits): it can be named in
    `protect.layers`, where a linear logits layer cannot."""
    from dsetool.config import load_experiment

    network = Path(__file__).parent / "fixtures" / "squeezenet.py"
    base = {"name": "fire", "data": {"name": "digits"}, "model": {"factory": f"{network}:make"},
            "hw": {"protection": "clip"}}
    (point,) = load_experiment(write_experiment({**base, "protect": {"layers": ["head.0"]}})).points
    config = point.config
    assert config.protect.layers == ("head.0",)
    resnet = Path(__file__).parent / "fixtures" / "cifar_resnet.py"
    with pytest.raises(Exception, match=r"protect.layers: linear computes the logits"):
        load_experiment(write_experiment({**base, "model": {"factory": f"{resnet}:make"},
                                          "protect": {"layers": ["linear"]}}))


def test_only_feature_maps_are_concatenated() -> None:
    """Flattened inputs would give channel runs of different lengths, which per-channel bounds cannot
    describe: the loader refuses them (concatenate before flattening)."""
    with pytest.raises(ValueError, match=r"only feature maps \(C, H, W\)"):
        Concat(name="joined", out_shape=(12,)).output_shape([(8,), (4,)])
    assert Concat(name="joined", out_shape=(6, 2, 2)).output_shape([(4, 2, 2), (2, 2, 2)]) == (6, 2, 2)


def test_logits_read_through_a_flatten_keep_their_layer(tmp_path: Path, write_experiment) -> None:
    """An all-conv classifier (a conv over the whole map to one value per class, flattened) computes the
    logits: that conv cannot be protected, and its `out` faults are the wide logits'; SqueezeNet's last
    conv is requantized, so a bit beyond its codes' width is refused there."""
    from dsetool.config import load_experiment
    from dsetool.models.factory import describe, source_digest

    network = tmp_path / "allconv.py"
    network.write_text("import torch\nfrom torch import nn\n\n\nclass Net(nn.Module):\n"
                       "    def __init__(self, c, n):\n        super().__init__()\n"
                       "        self.body = nn.Sequential(nn.Conv2d(c, 8, 3, 2, 1), nn.ReLU())\n"
                       "        self.head = nn.Conv2d(8, n, 4)\n\n"
                       "    def forward(self, x):\n        return torch.flatten(self.head(self.body(x)), 1)\n\n\n"
                       "def make(in_channels, num_classes, image_size):\n    return Net(in_channels, num_classes)\n")
    spec = f"{network}:make"
    assert describe(spec, source_digest(spec), 1, (8, 8), 10).logits_layer == "head"
    base = {"name": "x", "data": {"name": "digits"}, "hw": {"protection": "clip"}}
    with pytest.raises(Exception, match=r"protect.layers: head computes the logits"):
        load_experiment(write_experiment({**base, "model": {"factory": spec}, "protect": {"layers": ["head"]}}))
    squeezenet = Path(__file__).parent / "fixtures" / "squeezenet.py"
    with pytest.raises(Exception, match=r"faults.bits: bit 6 is beyond the 4-bit out register"):
        load_experiment(write_experiment({**base, "model": {"factory": f"{squeezenet}:make"}, "quant": {"bits": 4},
                                          "faults": {"site": "out", "layers": ["head.0"], "bits": [6]}}))
