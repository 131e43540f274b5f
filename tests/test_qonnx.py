"""A model quantized elsewhere (`model.qonnx`): dsetool's QONNX export imports to the same integer model
and logits (a round trip, every built-in network), QONNX's own executor gives the engine's logits on it,
an imported model runs through the stages with the executor as its golden reference, and a file that is
not QONNX, or uses an op the engine lacks, is a one-line configuration error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from dsetool.cli import main  # noqa: E402
from dsetool.engine import Engine, load_intmodel, parse_intmodel  # noqa: E402
from dsetool.models.export import calibrate_activations, export_integer, export_qonnx  # noqa: E402
from dsetool.models.qonnx_import import describe_qonnx, file_digest, import_qonnx  # noqa: E402
from dsetool.models.quant import QuantSpec  # noqa: E402
from dsetool.models.zoo import build_model  # noqa: E402

GEOMETRY = {"lenet5": (1, 32), "mlp": (1, 8), "alexnet32": (3, 32), "resnet8": (1, 32), "resnet20": (1, 32),
            "mobilenet": (1, 32), "vgg11": (1, 32)}


def exported(arch: str, directory: Path, spec: QuantSpec = QuantSpec(weight_bits=4, act_bits=4)) -> Path:  # noqa: B008
    """Write a calibrated random-weight model's QONNX (`model.onnx`) and integer export to `directory`."""
    torch.manual_seed(0)
    channels, side = GEOMETRY[arch]
    model = build_model(arch, in_channels=channels, num_classes=10, image_size=(side, side), quant=spec)
    calibrate_activations(model, [torch.rand(16, channels, side, side)])
    model.eval()
    export_qonnx(model, directory / "model.onnx", input_shape=(channels, side, side))
    export_integer(model, directory, arch=arch, input_shape=(channels, side, side))
    return directory / "model.onnx"


CASES = [(arch, QuantSpec(weight_bits=4, act_bits=4)) for arch in GEOMETRY] + [
    ("resnet8", QuantSpec(weight_bits=8, act_bits=8, scaling="float")),
    ("lenet5", QuantSpec(weight_bits=6, act_bits=6, weight_granularity="per_channel"))]


@pytest.mark.parametrize("arch, spec", CASES, ids=[f"{a}-{s.scaling}-{s.weight_granularity}" for a, s in CASES])
def test_a_round_trip_gives_the_same_integer_model_and_logits(tmp_path: Path, arch: str, spec: QuantSpec) -> None:
    path = exported(arch, tmp_path, spec)
    ours = load_intmodel(tmp_path)
    imported = parse_intmodel(*import_qonnx(path))
    assert imported.inputs == ours.inputs
    assert (imported.scaling, imported.weight_granularity, imported.input_shape, imported.num_classes) == \
        (ours.scaling, ours.weight_granularity, ours.input_shape, ours.num_classes)
    for mine, theirs in zip(imported.ops, ours.ops, strict=True):
        assert (mine.kind, mine.out_shape) == (theirs.kind, theirs.out_shape)
        for field in ("scale", "bits", "signed", "kernel", "stride", "padding", "groups", "input_scale"):
            assert getattr(mine, field, None) == getattr(theirs, field, None), (theirs.name, field)
        for array in ("weight", "weight_scale", "bias"):
            if hasattr(theirs, array):
                assert np.array_equal(getattr(mine, array), getattr(theirs, array)), (theirs.name, array)
    x = torch.rand(8, *ours.input_shape)
    assert torch.equal(Engine(imported).run(x), Engine(ours).run(x))
    planned = describe_qonnx(path, file_digest(path)).vector_passes   # what the cycle model counts
    assert [(p.channels, p.positions, p.window) for p in planned] == \
        [(p.channels, p.positions, p.window) for p in ours.vector_passes()]


@pytest.mark.parametrize("arch", sorted(GEOMETRY))
def test_qonnx_executor_gives_the_engine_logits(tmp_path: Path, arch: str) -> None:
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    path = exported(arch, tmp_path)
    engine = Engine(load_intmodel(tmp_path))
    wrapper = ModelWrapper(str(path)).transform(InferShapes())
    for seed in range(2):
        x = torch.rand(1, *engine.model.input_shape, generator=torch.Generator().manual_seed(seed))
        out = execute_onnx(wrapper, {wrapper.graph.input[0].name: x.numpy()})[wrapper.graph.output[0].name]
        assert np.array_equal(out.astype(np.float64), engine.dequantized_logits(x).numpy()), seed


def _run(args: list[str], runs: Path):
    return CliRunner().invoke(main, [*args, "--runs", str(runs)])


def test_an_imported_model_runs_through_the_stages(tmp_path: Path, write_experiment) -> None:
    path = exported("mlp", tmp_path)
    experiment = write_experiment({"name": "imported", "data": {"name": "digits", "calib_size": 32},
                                   "model": {"qonnx": str(path)}, "hw": {"protection": "clip"},
                                   "faults": {"samples": 200, "inputs": 64}})
    result = _run(["inject", str(experiment), "--json"], tmp_path / "runs")
    assert result.exit_code == 0, result.output
    metrics = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")][0]["metrics"]
    assert metrics["golden_agreement"] == 1.0 and metrics["max_lsb_deviation"] == 0.0
    assert (metrics["weight_bits"], metrics["act_bits"]) == (4, 4)   # the file's widths, not quant.*'s 8
    stages = {json.loads(line)["stage"] for line in _run(["runs", "ls", "--json"], tmp_path / "runs").stdout
              .splitlines() if line.startswith("{")}
    assert stages == {"import-qonnx", "range-restrict", "inject"}   # no training


def _edited(path: Path, edit) -> Path:
    model = onnx.load(str(path))
    edit(model)
    out = path.with_name("edited.onnx")
    onnx.save(model, str(out))
    return out


def _first(op_type: str):
    def edit(model) -> None:
        next(n for n in model.graph.node if n.op_type == op_type).op_type = "Sigmoid"
    return edit


BROKEN = {
    "not onnx": (lambda path: path.with_name("junk.onnx").write_bytes(b"not a model") and path.with_name("junk.onnx"),
                 r"not an ONNX file"),
    "no quant nodes": (lambda path: _edited(path, lambda m: [setattr(n, "op_type", "Identity") for n in m.graph.node
                                                             if n.op_type == "Quant"]),
                       r"has no Quant node: not a QONNX model"),
    "unsupported op": (lambda path: _edited(path, _first("Relu")),
                       r"\(Sigmoid\): not an op the integer engine runs"),
    "missing file": (lambda path: path.with_name("missing.onnx"), r"missing.onnx: cannot read it"),
    "malformed quant": (lambda path: _edited(path, lambda m: next(n for n in m.graph.node if n.op_type == "Quant")
                                             .input.pop()), r"\(Quant\): malformed \(ValueError"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_bad_qonnx_file_is_a_one_line_error(tmp_path: Path, write_experiment, case: str) -> None:
    make, message = BROKEN[case]
    bad = make(exported("mlp", tmp_path))
    experiment = write_experiment({"name": "bad", "model": {"qonnx": str(bad)}})
    result = _run(["sweep", str(experiment)], tmp_path / "runs")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {experiment}: model.qonnx: "), result.output
    assert __import__("re").search(message, lines[0]), lines[0]
    assert not (tmp_path / "runs").exists()


def test_a_model_for_other_images_is_refused(tmp_path: Path, write_experiment) -> None:
    path = exported("lenet5", tmp_path)   # 1x32x32 images: digits has them, after resizing; CIFAR's 3 channels do not
    experiment = write_experiment({"name": "bad", "data": {"name": "npz", "root": str(tmp_path / "rgb.npz")},
                                   "model": {"qonnx": str(path)}})
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "rgb.npz", x=rng.integers(0, 255, (20, 3, 8, 8)).astype(np.uint8), y=np.arange(20) % 10)
    result = _run(["sweep", str(experiment)], tmp_path / "runs")
    assert result.exit_code == 2 and "reads 1x32x32 images into 10 classes" in result.output, result.output


def test_the_imported_model_and_the_engine_width_are_in_the_key(tmp_path: Path) -> None:
    import dataclasses

    from dsetool.config import RunConfig
    from dsetool.stages import stage_key

    path = exported("mlp", tmp_path)
    config = RunConfig()
    mine = dataclasses.replace(config, model=dataclasses.replace(config.model, qonnx=str(path)))
    wider = dataclasses.replace(mine, hw=dataclasses.replace(mine.hw, multiplier_bits=16))
    first = stage_key("import-qonnx", mine)[0]
    assert stage_key("import-qonnx", wider)[0] != first
    path.write_bytes(path.read_bytes() + b" ")   # another file content (onnx ignores trailing bytes)
    assert stage_key("import-qonnx", mine)[0] != first


def _as_matmul_and_add(path: Path, fold_transpose: bool) -> Path:
    """Rewrite every Gemm as FINN's flow does (qonnx's GemmToMatMul: Quant -> Transpose -> MatMul, then an Add
    of the bias), with the transpose left in or folded into the weights (FoldTransposeIntoQuantInit)."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.gemm_to_matmul import GemmToMatMul
    from qonnx.transformation.infer_shapes import InferShapes
    from qonnx.transformation.quant_constant_folding import FoldTransposeIntoQuantInit

    model = ModelWrapper(str(path)).transform(InferShapes()).transform(GemmToMatMul())
    if fold_transpose:
        model = model.transform(FoldTransposeIntoQuantInit())
    out = path.with_name(f"matmul_{fold_transpose}.onnx")
    model.save(str(out))
    return out


@pytest.mark.parametrize("fold_transpose", [False, True])
@pytest.mark.parametrize("arch, spec", [
    ("lenet5", QuantSpec(weight_bits=4, act_bits=4)),
    ("mlp", QuantSpec(weight_bits=6, act_bits=6, weight_granularity="per_channel"))])
def test_linear_layers_as_matmul_and_add_import_as_gemm_does(tmp_path: Path, arch: str, spec: QuantSpec,
                                                              fold_transpose: bool) -> None:
    path = exported(arch, tmp_path, spec)
    rewritten = _as_matmul_and_add(path, fold_transpose)
    kinds = {node.op_type for node in onnx.load(str(rewritten)).graph.node}
    assert "Gemm" not in kinds and "MatMul" in kinds and ("Transpose" in kinds) != fold_transpose
    ours, imported = load_intmodel(tmp_path), parse_intmodel(*import_qonnx(rewritten))
    assert any(np.any(op.bias) for op in ours.ops if hasattr(op, "bias"))   # the Adds carried real biases
    assert [op.kind for op in imported.ops] == [op.kind for op in ours.ops]
    for mine, theirs in zip(imported.ops, ours.ops, strict=True):
        for array in ("weight", "weight_scale", "bias"):
            if hasattr(theirs, array):
                assert np.array_equal(getattr(mine, array), getattr(theirs, array)), (theirs.name, array)
    x = torch.rand(8, *ours.input_shape)
    assert torch.equal(Engine(imported).run(x), Engine(ours).run(x))
