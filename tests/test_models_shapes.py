"""The torch-free GEMM shapes agree with the layers the quantized models actually export."""

from __future__ import annotations

import pytest

from dsetool.engine.intmodel import parse_intmodel
from dsetool.faults.sites import weight_layer_ops
from dsetool.models.export import integer_model
from dsetool.models.quant import QuantSpec
from dsetool.models.shapes import gemm_shapes
from dsetool.models.zoo import build_model, input_size


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
