"""The torch-free shapes (GEMMs and vector-unit passes) agree with what the quantized models actually export;
which post-GEMM ops cost a pass of their own."""

from __future__ import annotations

import pytest

from dsetool import gemm as datapath
from dsetool.engine.intmodel import OP_CLASSES, OpKind, parse_intmodel
from dsetool.faults.sites import weight_layer_ops
from dsetool.models.export import integer_model
from dsetool.models.quant import QuantSpec
from dsetool.models.shapes import gemm_shapes, network_shapes
from dsetool.models.zoo import ARCHITECTURES, build_model, input_size


@pytest.mark.parametrize("arch, channels, native", [("lenet5", 1, (8, 8)), ("alexnet32", 3, (32, 32)),
                                                    ("mlp", 1, (8, 8)), ("lenet5", 1, (28, 28))])
def test_gemm_shapes_match_the_export(arch, channels, native):
    side = input_size(arch, native)
    size = native if side is None else (side, side)
    model = build_model(arch, in_channels=channels, num_classes=10, image_size=size, quant=QuantSpec())
    model.eval()
    exported, arrays = integer_model(model, arch=arch, input_shape=(channels, *size))
    parsed = parse_intmodel(exported, arrays)
    expected = [parsed.ops[i].gemm for i in weight_layer_ops(parsed)]
    assert gemm_shapes(arch, channels, native, 10) == expected


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_network_shapes_match_the_export_for_every_built_in(arch):
    native = (8, 8)
    side = input_size(arch, native)
    size = native if side is None else (side, side)
    model = build_model(arch, in_channels=1, num_classes=10, image_size=size, quant=QuantSpec())
    model.eval()
    parsed = parse_intmodel(*integer_model(model, arch=arch, input_shape=(1, *size)))
    shapes = network_shapes(arch, 1, native, 10)
    assert shapes.gemms == tuple(parsed.ops[i].gemm for i in weight_layer_ops(parsed))
    assert shapes.vector_passes == tuple(parsed.vector_passes())


def test_which_ops_cost_a_vector_pass():
    passes = network_shapes("resnet20", 1, (8, 8), 10).vector_passes
    by_kind = {"add": [p for p in passes if p.layer.endswith(".add")],
               "requantized shortcut": [p for p in passes if p.layer.endswith(".addq")],
               "pool": [p for p in passes if p.layer == "pool"]}
    # nine residual adds; the seven identity shortcuts re-quantize the block input's codes (the two strided
    # ones read a 1x1 conv, whose output stage requantizes them); the global average pool reads 8x8 values
    assert {k: len(v) for k, v in by_kind.items()} == {"add": 9, "requantized shortcut": 7, "pool": 1}
    assert len(passes) == 17
    assert by_kind["pool"] == [datapath.VectorPass("pool", 64, 1, window=64, divisor=64)]   # sums: averaged
    assert by_kind["add"][0] == datapath.VectorPass("layer1.0.add", 16, 32 * 32, 1)
    assert network_shapes("mlp", 1, (8, 8), 10).vector_passes == ()   # its ReLUs are in the output stage


@pytest.mark.parametrize(("role", "source", "costs"), [
    (datapath.WINDOW, datapath.REQUANTIZE, True), (datapath.ADD, datapath.REQUANTIZE, True),
    (datapath.REQUANTIZE, datapath.REQUANTIZE, True), (datapath.REQUANTIZE, datapath.GEMM, False),
    (datapath.REQUANTIZE, datapath.ADD, False), (datapath.REQUANTIZE, datapath.WINDOW, False),
    (datapath.REQUANTIZE, datapath.INPUT, False), (datapath.RESHAPE, datapath.REQUANTIZE, False),
    (datapath.GEMM, datapath.REQUANTIZE, False)])
def test_vector_pass_rule(role, source, costs):
    vector = datapath.vector_pass("x", role, source, (4, 3, 3), 2)
    assert (vector is not None) == costs
    if costs:
        assert vector == datapath.VectorPass("x", 4, 9, 2)


def test_every_op_class_names_its_role_and_a_class_without_one_is_refused():
    assert all(cls.ROLE in datapath.ROLES for cls in OP_CLASSES)
    with pytest.raises(ValueError, match=r"^Layer 'odd': role must be one of .*, not ''$"):
        datapath.vector_pass("odd", OpKind.ROLE, datapath.GEMM, (1,))
