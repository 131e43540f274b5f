"""Where faults can land: the fault population of a network, derived from its integer model (`IntModel`).

A *site group* is one tensor that a fault site kind can hit in one weight layer: the activation buffer
the layer reads (`act`), its stored weights (`weight`), or its requantized output (`out`). Each group
knows its shape, the register width and signedness of its values, and where in the op sequence a
fault must be applied, so a campaign can sample sites uniformly over the whole population (early,
large layers dominate, as in real hardware) and apply them to the engine.

An activation buffer read by several ops (a residual block's input, read by its first conv and by its
shortcut) is one group, named after the first weight layer reading it: a fault there is seen by every
read. It is applied when the first op reading the buffer runs (`op_index`), to the buffer itself
(`buffer`, the op whose output it is), so the later reads see it too.

Which sites exist, and what each one corrupts, is `dsetool.faults.site_registry`; this module turns an
entry into groups with the builder of its hook (`GROUP_BUILDERS`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

from dsetool.engine.intmodel import IntModel, QuantAct, WeightOp
from dsetool.engine.tiling import LayerTiling
from dsetool.faults import site_registry
from dsetool.faults.site_registry import (
    ACCUMULATOR,
    FINISHED,
    INPUT,
    PE,
    POST,
    PRE,
    WEIGHT,
    WEIGHTS,
    FaultSite,
    Hook,
)
from dsetool.machine.tiling import machine_k_order, machine_lead, machine_slice_orders
from hw.arrayconfig import ArrayConfig
from hw.cycles import DEFAULT_WEIGHT_BUFFERS, machine_stream_period, machine_tile_period


class SiteError(ValueError):
    """A fault spec that does not fit the model (unknown layer, bit beyond the register)."""


@dataclass(frozen=True)
class SiteGroup:
    """One faultable tensor of one layer."""

    site: str            # a `site_registry` name
    layer: str           # weight layer name
    op_index: int        # the op whose input (act), weights or output (weight, out) is faulted
    hook: Hook           # the site's `site_registry` hook: where the campaign applies the fault
    shape: tuple[int, ...]
    width: int
    signed: bool
    tiling: LayerTiling | None = None   # PE sites: the layer's schedule on the array
    acc_bits: int = 0                    # PE sites: the array's accumulator width (sums wrap there)
    buffer: int = -1                     # act sites: the op whose output the buffer holds

    @property
    def size(self) -> int:
        """Return the number of values (sites) in the group."""
        return math.prod(self.shape)

    @property
    def stationary_weights(self) -> bool:
        """Tell whether this is a weight-stationary layer's PE weight register (`LayerTiling.decode`)."""
        return self.tiling is not None and site_registry.stationary(site_registry.site(self.site).register,
                                                                    self.tiling.dataflow)

    @property
    def shadow(self) -> bool:
        """Tell whether this is the output-stationary PE's shadow register (`LayerTiling.decode_shadow`)."""
        return site_registry.site(self.site).register is FINISHED

    @property
    def one_gemm(self) -> bool:
        """Tell whether a PE group's sites are the layer's one GEMM on the array (`LayerTiling.site_shape`),
        not a grouped conv's GEMM per group, one after the other."""
        return self.tiling is not None and \
            self.shape == self.tiling.site_shape(self.stationary_weights, self.shadow)


def weight_layer_ops(model: IntModel) -> list[int]:
    """Return the indices of the conv/linear ops."""
    return [i for i, op in enumerate(model.ops) if isinstance(op, WeightOp)]


def _producer(model: IntModel, index: int) -> QuantAct:
    """Return the quantizer whose codes op `index` reads (pool and flatten keep the codes)."""
    source = model.producer(index)
    found = model.ops[source] if source is not None else None
    if not isinstance(found, QuantAct):
        raise SiteError(f"op {model.ops[index].name} reads no quantized activation")
    return found


def _consumer(model: IntModel, index: int) -> int | None:
    """Return the index of the requantizer of weight op `index` (the first, if several read it), or None
    for the logits layer."""
    return next((j for j, op in enumerate(model.ops) if isinstance(op, QuantAct) and op.kind != "quant_input"
                 and model.producer(j) == index), None)


def site_groups(model: IntModel, site: str, layers: Sequence[str], acc_bits: Mapping[str, int],
                array: ArrayConfig | None = None, weight_buffers: int = DEFAULT_WEIGHT_BUFFERS) -> list[SiteGroup]:
    """Return the site groups of `site` in the selected weight layers (all when `layers` is empty).

    `acc_bits` gives each layer's accumulator width: the register width of `out` faults on a layer without
    a requantizer (the one whose accumulators are the logits), and of partial sums unless the array fixes one.
    `weight_buffers`: the accelerator's weight registers per PE (`hw.weight_buffers`); with two, a weight-
    stationary layer's PE sites lie on the tiles' shared timeline (`LayerTiling.period`).
    """
    try:
        kind = site_registry.site(site)
    except site_registry.UnknownSite as error:
        raise SiteError(str(error)) from None
    if kind.in_array and array is None:
        raise SiteError(f"site {site!r} needs an array (rows, cols, dataflow)")
    indices = weight_layer_ops(model)
    names = [model.ops[i].name for i in indices]
    unknown = [name for name in layers if name not in names]
    if unknown:
        raise SiteError(f"the model has no weight layer {unknown[0]!r} (layers: {', '.join(names)})")
    chosen = [i for i in indices if not layers or model.ops[i].name in layers]
    if kind.hook == PRE:   # one group per buffer, however many weight layers read it (named after the first)
        chosen = sorted({_first_weight_reader(model, model.input_of(i)) for i in chosen})
    build = partial(_pe_group, weight_buffers=weight_buffers) if kind.hook == PE else GROUP_BUILDERS[kind.hook]
    groups = [build(model, kind, i, acc_bits, array) for i in chosen]
    if kind.register == FINISHED:   # shadow registers: the output-stationary accelerator's streaming layers
        groups = [g for g in groups if g.tiling is not None and g.tiling.dataflow == "os" and g.tiling.period
                  and g.one_gemm]
        if not groups:
            raise SiteError(f"site {site!r} is the output-stationary accelerator's shadow registers: no selected "
                            f"layer streams on it (dataflow os, an array the accelerator builds, K' >= cols, "
                            f"not a grouped conv whose N slices stream different K')")
    return groups


def _first_weight_reader(model: IntModel, buffer: int) -> int:
    return min(j for j in model.consumers(buffer) if isinstance(model.ops[j], WeightOp))


def _weight_op(model: IntModel, index: int) -> WeightOp:
    op = model.ops[index]
    assert isinstance(op, WeightOp)
    return op


def _pe_group(model: IntModel, kind: FaultSite, index: int, acc_bits: Mapping[str, int],
              array: ArrayConfig | None, weight_buffers: int = DEFAULT_WEIGHT_BUFFERS) -> SiteGroup:
    """A PE register of the layer's schedule on the array: an operand (its input codes or weights) or a
    partial sum (the array's accumulator width)."""
    assert array is not None
    op = _weight_op(model, index)
    gemm = op.gemm
    assert gemm is not None   # every weight op puts a GEMM on the array
    # The accelerator's K order and columns where it has them (`machine_k_order`, `machine_lead`): a grouped
    # conv is one GEMM over all input channels whose N slices stream their own K slices
    # (`machine_slice_orders`). Arrays no accelerator has stream K in im2col order from column 0, and a
    # grouped conv there runs as one GEMM per group, one after the other.
    k_order = machine_k_order(model, index, array.rows, array.cols)
    slice_orders = machine_slice_orders(model, index, array.rows, array.cols)
    if slice_orders is not None and array.dataflow == "os" and len({len(o) for o in slice_orders}) > 1:
        slice_orders = None   # N slices streaming different K' would wait for one another: no one timeline
    m, k, n = gemm.tile_shape
    groups = 1
    if slice_orders is not None:
        k, n = gemm.k * gemm.groups, gemm.n * gemm.groups
    elif k_order is None:
        groups = gemm.groups
    lead = machine_lead(model, index, array.cols) if k_order is not None or slice_orders is not None else 0
    # The double-buffered weight-stationary accelerator starts a tile every `machine_tile_period` cycles,
    # while the one before still streams: its PE sites are each register at each cycle of that timeline.
    # The output-stationary accelerator streams its tiles back to back where K' >= C.
    streamed = len(k_order) if k_order is not None else len(slice_orders[0]) if slice_orders is not None else 0
    if not streamed:
        period = 0
    elif array.dataflow == "ws":
        period = machine_tile_period(m, array.rows, array.cols) if weight_buffers == 2 else 0
    else:
        period = machine_stream_period(streamed, array.cols)
    tiling = LayerTiling(m, k, n, array.rows, array.cols, array.dataflow, k_order, lead, period, slice_orders)
    accumulator = array.acc_bits or acc_bits[op.name]
    width, signed = _pe_register(model, kind, index, accumulator)
    # The double-buffered machine's weight registers are both banks of each PE, and the shadows are read up
    # to a cycle past the streaming timeline (`LayerTiling.site_shape`).
    shape = tiling.site_shape(site_registry.stationary(kind.register, array.dataflow), kind.register is FINISHED) \
        if groups == 1 else (groups, *tiling.shape)
    return SiteGroup(kind.name, op.name, index, kind.hook, shape, width, signed, tiling, accumulator)


def _pe_register(model: IntModel, kind: FaultSite, index: int, accumulator: int) -> tuple[int, bool]:
    """Return the (width, signed) of the PE register a site hits in weight op `index`."""
    if kind.register == INPUT:
        producer = _producer(model, index)
        return producer.bits, producer.signed
    if kind.register == WEIGHTS:
        return _weight_op(model, index).weight_bits, True
    if kind.register in (ACCUMULATOR, FINISHED):
        return accumulator, True
    raise SiteError(f"no PE register holds the {kind.register.name} of a layer (site {kind.name!r})")


def _pre_group(model: IntModel, kind: FaultSite, index: int, acc_bits: Mapping[str, int],
               array: ArrayConfig | None) -> SiteGroup:
    """The activation buffer weight op `index` reads, faulted as the first op reading it runs."""
    op = _weight_op(model, index)
    producer = _producer(model, index)
    buffer = model.input_of(index)
    first = min(model.consumers(buffer))   # the first op reading the buffer applies the fault
    return SiteGroup(kind.name, op.name, first, kind.hook, model.input_shape_of(index), producer.bits,
                     producer.signed, buffer=buffer)


def _weight_group(model: IntModel, kind: FaultSite, index: int, acc_bits: Mapping[str, int],
                  array: ArrayConfig | None) -> SiteGroup:
    """The stored weights of weight op `index`."""
    op = _weight_op(model, index)
    return SiteGroup(kind.name, op.name, index, kind.hook, tuple(op.weight.shape), op.weight_bits, True)


def _post_group(model: IntModel, kind: FaultSite, index: int, acc_bits: Mapping[str, int],
                array: ArrayConfig | None) -> SiteGroup:
    """The requantized output of weight op `index` (its requantizer's codes), or the logits layer's
    accumulators."""
    op = _weight_op(model, index)
    consumer = _consumer(model, index)
    if consumer is None:
        return SiteGroup(kind.name, op.name, index, kind.hook, op.out_shape, acc_bits[op.name], True)
    requant = model.ops[consumer]
    assert isinstance(requant, QuantAct)
    return SiteGroup(kind.name, op.name, consumer, kind.hook, requant.out_shape, requant.bits, requant.signed)


GroupBuilder = Callable[[IntModel, FaultSite, int, Mapping[str, int], ArrayConfig | None], SiteGroup]
GROUP_BUILDERS: dict[Hook, GroupBuilder] = {PRE: _pre_group, WEIGHT: _weight_group, POST: _post_group, PE: _pe_group}
"""How the sites of each `site_registry` hook are laid out in one weight layer."""


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
