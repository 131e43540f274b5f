"""Where faults can land: the fault population of a network, derived from its integer export.

A *site group* is one tensor that a fault site kind can hit in one weight layer: the activation buffer
the layer reads (`act`), its stored weights (`weight`), or its requantized output (`out`). Each group
knows its shape, the register width and signedness of its values, and where in the op sequence a
fault must be applied, so a campaign can sample sites uniformly over the whole population (early,
large layers dominate, as in real hardware) and apply them to the engine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dsetool.engine.tiling import LayerTiling
from hw.arrayconfig import ArrayConfig

QUANT_OPS = ("quant_input", "quant_relu")
WEIGHT_OPS = ("conv2d", "linear")
SUPPORTED_SITES = ("act", "weight", "out", "pe.act", "pe.weight", "pe.psum")


class SiteError(ValueError):
    """A fault spec that does not fit the model (unknown layer, bit beyond the register)."""


@dataclass(frozen=True)
class SiteGroup:
    """One faultable tensor of one layer."""

    site: str            # act | weight | out
    layer: str           # weight layer name
    op_index: int        # the op whose input (act), weights or output (weight, out) is faulted
    hook: str            # "pre": the op's input; "post": its output; "weight": its weights; "pe": a PE register
    shape: tuple[int, ...]
    width: int
    signed: bool
    tiling: LayerTiling | None = None   # PE sites: the layer's schedule on the array
    acc_bits: int = 0                    # PE sites: the array's accumulator width (sums wrap there)

    @property
    def size(self) -> int:
        """Return the number of values (sites) in the group."""
        return math.prod(self.shape)


def weight_layer_ops(ops: Sequence[Mapping[str, Any]]) -> list[int]:
    """Return the indices of the conv/linear ops."""
    return [i for i, op in enumerate(ops) if op["op"] in WEIGHT_OPS]


def _producer(ops: Sequence[Mapping[str, Any]], index: int) -> Mapping[str, Any]:
    """Return the quantizer whose codes op `index` reads (pool and flatten keep the codes)."""
    for j in range(index - 1, -1, -1):
        if ops[j]["op"] in QUANT_OPS:
            return ops[j]
    raise SiteError(f"op {ops[index]['name']} reads no quantized activation")


def _consumer(ops: Sequence[Mapping[str, Any]], index: int) -> int | None:
    """Return the index of the requantizer right after weight op `index`, or None for the logits layer."""
    for j in range(index + 1, len(ops)):
        if ops[j]["op"] in WEIGHT_OPS:
            return None
        if ops[j]["op"] == "quant_relu":
            return j
    return None


def _input_shape(intmodel: Mapping[str, Any], index: int) -> tuple[int, ...]:
    ops = intmodel["ops"]
    return tuple(ops[index - 1]["out_shape"]) if index > 0 else tuple(intmodel["input_shape"])


def site_groups(intmodel: Mapping[str, Any], site: str, layers: Sequence[str], acc_bits: Mapping[str, int],
                array: ArrayConfig | None = None) -> list[SiteGroup]:
    """Return the site groups of `site` in the selected weight layers (all when `layers` is empty).

    `acc_bits` gives each layer's accumulator width: the register width of the logits for `out` faults
    on the last layer (which has no requantizer), and of partial sums unless the array fixes one.
    """
    if site not in SUPPORTED_SITES:
        raise SiteError(f"unknown fault site {site!r}; use one of {', '.join(SUPPORTED_SITES)}")
    if site.startswith("pe.") and array is None:
        raise SiteError(f"site {site!r} needs an array (rows, cols, dataflow)")
    ops = intmodel["ops"]
    indices = weight_layer_ops(ops)
    names = [ops[i]["name"] for i in indices]
    unknown = [name for name in layers if name not in names]
    if unknown:
        raise SiteError(f"the model has no weight layer {unknown[0]!r} (layers: {', '.join(names)})")
    chosen = [i for i in indices if not layers or ops[i]["name"] in layers]
    return [_group(intmodel, site, i, acc_bits, array) for i in chosen]


def gemm_shape(op: Mapping[str, Any]) -> tuple[int, int, int]:
    """Return a weight op's per-image GEMM shape (M, K, N): im2col positions, reduction, outputs."""
    if op["op"] == "conv2d":
        _, height, width = op["out_shape"]
        return height * width, op["in_channels"] * math.prod(op["kernel"]), op["out_channels"]
    return 1, op["in_features"], op["out_features"]


def _pe_group(ops: Sequence[Mapping[str, Any]], site: str, index: int, acc_bits: Mapping[str, int],
              array: ArrayConfig) -> SiteGroup:
    op = ops[index]
    tiling = LayerTiling(*gemm_shape(op), array.rows, array.cols, array.dataflow)
    accumulator = array.acc_bits or acc_bits[op["name"]]
    if site == "pe.act":
        producer = _producer(ops, index)
        width, signed = producer["bits"], producer["signed"]
    elif site == "pe.weight":
        width, signed = op["weight_bits"], True
    else:
        width, signed = accumulator, True
    return SiteGroup(site, op["name"], index, "pe", tiling.shape, width, signed, tiling, accumulator)


def _group(intmodel: Mapping[str, Any], site: str, index: int, acc_bits: Mapping[str, int],
           array: ArrayConfig | None) -> SiteGroup:
    ops = intmodel["ops"]
    op = ops[index]
    name = op["name"]
    if site.startswith("pe."):
        assert array is not None
        return _pe_group(ops, site, index, acc_bits, array)
    if site == "act":
        producer = _producer(ops, index)
        return SiteGroup(site, name, index, "pre", _input_shape(intmodel, index), producer["bits"],
                         producer["signed"])
    if site == "weight":
        shape = (op["out_channels"], op["in_channels"], *op["kernel"]) if op["op"] == "conv2d" else (
            op["out_features"], op["in_features"])
        return SiteGroup(site, name, index, "weight", shape, op["weight_bits"], True)
    consumer = _consumer(ops, index)
    if consumer is None:
        return SiteGroup(site, name, index, "post", tuple(op["out_shape"]), acc_bits[name], True)
    requant = ops[consumer]
    return SiteGroup(site, name, consumer, "post", tuple(requant["out_shape"]), requant["bits"],
                     requant["signed"])


def bit_choices(selection: str | Sequence[int], width: int, group: SiteGroup) -> list[int]:
    """Return the bit positions a fault may hit in a register of `width` bits."""
    if isinstance(selection, str):
        if selection == "all":
            return list(range(width))
        if selection == "msb":
            return [width - 1]
        if selection == "high":
            return list(range(width // 2, width))
        if selection == "low":
            return list(range(width // 2))
        raise SiteError(f"unknown bit selection {selection!r}")
    beyond = [b for b in selection if b >= width]
    if beyond:
        raise SiteError(f"bit {beyond[0]} is beyond the {width}-bit {group.site} register of {group.layer}")
    return sorted(set(selection))
