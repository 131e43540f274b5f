"""The user's own network (`model.factory`): quantized by Brevitas's graph quantizer and run bit for bit on
the engine (residual adds, batch norms, a depthwise and a strided conv, global average pooling); a broken
factory is a one-line configuration error; its source is part of the store key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from click.testing import CliRunner

from dsetool.cli import main
from dsetool.config import RunConfig, load_experiment
from dsetool.stages import stage_key

NETWORK = '''
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, groups=cout, bias=False)   # depthwise
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) \\
            if stride != 1 or cin != cout else nn.Identity()
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + self.short(x))


class Net(nn.Module):
    def __init__(self, in_channels, num_classes):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.Sequential(Block(8, 8, 1), Block(8, 16, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def make(in_channels, num_classes, image_size):
    return Net(in_channels, num_classes)
'''


@pytest.fixture
def network_file(tmp_path: Path) -> Path:
    path = tmp_path / "net.py"
    path.write_text(NETWORK)
    return path


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_a_factory_network_runs_bit_for_bit_on_the_engine(tmp_path: Path, network_file: Path, bits: int) -> None:
    torch = pytest.importorskip("torch")
    from tests.fixtures.engines import assert_equals_brevitas, digits, engine_of, quantized_factory

    torch.set_num_threads(1)
    quantized = quantized_factory(f"{network_file}:make", bits, 16, norms=True)
    engine = engine_of(quantized, tmp_path / "export", 16, "make")
    kinds = [op.kind for op in engine.model.ops]
    assert {"add", "avgpool2d", "quant_identity"} <= set(kinds) and not engine.model.is_chain()
    convs = [op for op in engine.model.ops if op.kind == "conv2d"]
    assert any(op.groups == op.out_features > 1 for op in convs) and any(op.stride == (2, 2) for op in convs)
    for x in (torch.rand(16, 1, 16, 16), digits(16).test.x[:64]):
        assert_equals_brevitas(engine, quantized, x)
    if bits == 8:   # planning's view of the network (from the untrained trial export) has the same vector passes
        from dsetool.models.factory import describe, source_digest

        info = describe(f"{network_file}:make", source_digest(f"{network_file}:make"), 1, (16, 16), 10)
        assert info.vector_passes == tuple(engine.model.vector_passes())
        assert [p.layer for p in info.vector_passes if p.window > 1] == ["pool"]   # the global average pool
        assert sum(op.kind == "add" for op in engine.model.ops) == 2 <= len(info.vector_passes) - 1


BROKEN = {
    "no such file": (None, "missing.py:make", r"missing.py: no such file"),
    "not a spec": (NETWORK, "{file}", r"is not FILE.py:FUNCTION"),
    "no such function": (NETWORK, "{file}:build", r"net.py: defines no function 'build'"),
    "raises on import": ("raise RuntimeError('boom')\n", "{file}:make",
                         r"net.py: importing it raised RuntimeError: boom"),
    "raises when called": ("def make(**kw):\n    raise ValueError('no')\n", "{file}:make",
                           r"net.py: make\(in_channels=1, num_classes=10, image_size=\(8, 8\)\) raised ValueError: no"),
    "not a module": ("def make(**kw):\n    return 3\n", "{file}:make",
                     r"net.py: make returned a int, not a torch.nn.Module"),
    "unsupported module": (NETWORK.replace("nn.ReLU())\n        self.blocks", "nn.GELU())\n        self.blocks"),
                           "{file}:make", r"net.py: module 'stem.2' is a GELU, which the integer engine does not run"),
    "ceil-mode average pool": (NETWORK.replace("self.pool = nn.AdaptiveAvgPool2d(1)", "self.pool = nn.Sequential("
                                               "nn.AvgPool2d(3, 2, ceil_mode=True), nn.AdaptiveAvgPool2d(1))"),
                               "{file}:make", r"net.py: the quantized network cannot be exported .*floor-mode"),
    "constant added": (NETWORK.replace("return self.relu2(self.bn2", "return self.relu2(1.0 + self.bn2"),
                       "{file}:make", r"net.py: .* adds a constant to a tensor"),
    "unsupported function": (NETWORK.replace("torch.flatten(self.pool(", "torch.flatten(torch.sigmoid(self.pool("
                                             ).replace("self.stem(x))), 1))", "self.stem(x)))), 1))"),
                             "{file}:make", r"net.py: .*sigmoid.*which the integer engine does not run"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_factory_is_a_one_line_error_and_writes_nothing(tmp_path: Path, write_experiment, case: str) -> None:
    source, spec, message = BROKEN[case]
    if source is not None:
        (tmp_path / "net.py").write_text(source)
    spec = spec.format(file=tmp_path / "net.py")
    if case == "no such file":
        spec = f"{tmp_path / 'missing.py'}:make"
    path = write_experiment({"name": "mine", "model": {"factory": spec}})
    runs = tmp_path / "runs"
    result = CliRunner().invoke(main, ["sweep", str(path), "--runs", str(runs)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith(f"Error: {path}: model.factory: "), lines[0]
    assert __import__("re").search(message, lines[0]), lines[0]
    assert not runs.exists()


def test_per_layer_widths_are_refused_for_a_factory(network_file: Path, write_experiment) -> None:
    path = write_experiment({"name": "mine", "model": {"factory": f"{network_file}:make"},
                             "quant": {"layers": {"fc": {"weight_bits": 4}}}})
    with pytest.raises(Exception, match=r"quant.layers: per-layer bit widths are not offered"):
        load_experiment(path)


def test_the_factory_source_is_part_of_the_key(network_file: Path) -> None:
    config = RunConfig()
    mine = dataclasses.replace(config, model=dataclasses.replace(config.model, factory=f"{network_file}:make"))
    first = stage_key("pretrain", mine)[0]
    assert stage_key("pretrain", mine)[0] == first != stage_key("pretrain", config)[0]
    network_file.write_text(NETWORK.replace("8, 3, padding=1", "12, 3, padding=1").replace("Block(8, 8", "Block(12, 8"))
    assert stage_key("pretrain", mine)[0] != first


def test_a_factory_network_runs_through_the_stages(tmp_path: Path, network_file: Path, write_experiment) -> None:
    """Pretrain, QAT, bounds and a protected campaign on the user's network, reported under its name."""
    import json

    experiment = write_experiment({
        "name": "mine", "threads": 1, "data": {"name": "digits", "calib_size": 32, "max_train": 300},
        "model": {"factory": f"{network_file}:make"}, "quant": {"bits": 4},
        "train": {"pretrain": {"epochs": 2, "batch_size": 64}, "qat": {"epochs": 1, "batch_size": 64}},
        "hw": {"protection": "clip"}, "faults": {"samples": 150, "inputs": 48, "site": ["act", "pe.psum"]}})
    runs = tmp_path / "runs"
    result = CliRunner().invoke(main, ["inject", str(experiment), "--json", "--runs", str(runs)])
    assert result.exit_code == 0, result.output
    metrics = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")][0]["metrics"]
    assert metrics["golden_agreement"] == 1.0 and metrics["max_lsb_deviation"] == 0.0
    assert (metrics["weight_bits"], metrics["act_bits"]) == (4, 4) and metrics["planned_inferences"] == 150
    model = json.loads(next((runs / "train-qat").glob("*/*/intmodel.json")).read_text())
    assert model["arch"] == "net.make" and {"add", "avgpool2d"} <= {op["op"] for op in model["ops"]}


CIFAR_RESNET = "tests.fixtures.cifar_resnet:make"


@pytest.mark.parametrize("bits", [8, 4])
def test_a_network_that_reads_its_own_sizes_runs_bit_for_bit(tmp_path: Path, bits: int) -> None:
    """`F.avg_pool2d(out, out.size()[3])` and `out.view(out.size(0), -1)`, the CIFAR-code idiom: the sizes
    become constants (the pool a global average pool) and the view a flatten, then as any factory net."""
    torch = pytest.importorskip("torch")
    from dsetool.models.factory import describe, source_digest
    from tests.fixtures.engines import assert_equals_brevitas, digits, engine_of, quantized_factory

    torch.set_num_threads(1)
    quantized = quantized_factory(CIFAR_RESNET, bits, 16, norms=True)
    engine = engine_of(quantized, tmp_path, 16, "cifar")
    assert [op.kind for op in engine.model.ops][-4:] == ["avgpool2d", "flatten", "quant_identity", "linear"]
    assert engine.model.ops[-4].kernel == (8, 8)
    for x in (torch.rand(16, 1, 16, 16), digits(16).test.x[:64]):
        assert_equals_brevitas(engine, quantized, x)
    info = describe(CIFAR_RESNET, source_digest(CIFAR_RESNET), 1, (16, 16), 10)
    assert info.vector_passes == tuple(engine.model.vector_passes())


def test_only_sizes_that_do_not_depend_on_the_batch_become_constants() -> None:
    torch = pytest.importorskip("torch")
    from torch import nn

    from dsetool.models.tracing import static_graph

    class Sized(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            pooled = torch.nn.functional.avg_pool2d(x, x.shape[2] // 2)
            # the factor depends on the batch, and so does a half batch, though batches 2 and 3 both give 1
            return pooled.reshape(x.size(0), -1) * x.size(0) + x.reshape(x.size()[0] // 2, -1)[:1, :1].sum()

    graph = static_graph(Sized(), (3, 8, 8))
    calls = [(node.op, node.target) for node in graph.graph.nodes]
    assert ("call_function", torch.flatten) in calls
    pool = next(node for node in graph.graph.nodes if "avg_pool2d" in str(node.target))
    assert pool.args[1] == 4
    assert sum(target == "size" for _, target in calls) == 2   # x.size(0) for the factor, x.size() halved
    for batch in (4, 5):
        x = torch.rand(batch, 3, 8, 8)
        assert torch.equal(graph(x), Sized()(x))


@pytest.mark.parametrize("name", ["squeezenet", "resnet18", "mobilenet_v2"])
def test_torchvision_networks_run_bit_for_bit(tmp_path: Path, name: str) -> None:
    """torchvision's SqueezeNet 1.1 (ceil-mode pools, concatenations, logits from a pool), ResNet-18 and
    MobileNetV2, given as factories with a one-channel stem: Brevitas's W8A8 logits, bit for bit."""
    torch = pytest.importorskip("torch")
    from tests.fixtures.engines import assert_equals_brevitas, digits, engine_of, quantized_factory

    torch.set_num_threads(2)
    quantized = quantized_factory(f"tests.fixtures.torchvision_nets:{name}", 8, 32, norms=True)
    assert_equals_brevitas(engine_of(quantized, tmp_path, 32, name), quantized, digits(32).test.x[:8])


def test_a_spatial_mean_is_a_global_average_pool(tmp_path: Path) -> None:
    """`x.mean([2, 3])` (MobileNet and EfficientNet code pool so) becomes a global average pool and a
    flatten; the network then runs bit for bit."""
    pytest.importorskip("torch")
    from tests.fixtures.engines import assert_equals_brevitas, digits, engine_of, quantized_factory

    network = tmp_path / "meaned.py"
    network.write_text("import torch\nfrom torch import nn\n\n\nclass Net(nn.Module):\n"
                       "    def __init__(self, c, n):\n        super().__init__()\n"
                       "        self.body = nn.Sequential(nn.Conv2d(c, 8, 3, 2, 1), nn.ReLU())\n"
                       "        self.fc = nn.Linear(8, n)\n\n"
                       "    def forward(self, x):\n        return self.fc(self.body(x).mean([2, 3]))\n\n\n"
                       "def make(in_channels, num_classes, image_size):\n    return Net(in_channels, num_classes)\n")
    quantized = quantized_factory(f"{network}:make", 4, 16)
    engine = engine_of(quantized, tmp_path / "export", 16, "meaned")
    assert [op.kind for op in engine.model.ops][-4:] == ["avgpool2d", "flatten", "quant_identity", "linear"]
    assert_equals_brevitas(engine, quantized, digits(16).test.x[:32])
