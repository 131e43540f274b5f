"""An IO harness that puts a design with wide ports behind six pins, for FPGAs placed with every port on a pin.

nextpnr-ice40 has no out-of-context mode: every top-level port bit of the netlist must go to a package pin,
and an iCE40 UP5K in the SG48 package has 39 of them, while even a 2x2 datapath has well over a hundred port
bits. `IOHarness` wraps the design in shift registers so that only ``clk``, ``rst``, ``sin``, ``shift``,
``apply`` and ``sout`` need pins; every output bit of the design still reaches ``sout``, so Yosys cannot
optimise any of the design away.

The harness is not part of the accelerator, so its cost is reported separately. The design is its own
submodule (``top.design`` in the netlist, `DESIGN_MODULE`); synthesized with that hierarchy kept,
`split_resources` divides the netlist's cells exactly into the design's and the harness's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from amaranth.hdl import Cat, Module, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.flow import Family, count_resources, parse_stat

DESIGN_MODULE = "top.design"  # the design's module name in the netlist of a harness emitted as ``top``


def _port_bits(design: wiring.Component, flow: wiring.Flow) -> Value:
    return Cat(*(value for _, member, value in design.signature.flatten(design) if member.flow == flow))


class IOHarness(wiring.Component):
    """Feed every input port bit of `design` from a serial-in chain and capture every output bit into a
    parallel-load, serial-out chain; the design runs in the ``sync`` domain, in step with the harness.

    Protocol: with `shift` high, each clock edge shifts `sin` into the input chain (its last bit ends up in
    the design's port bit 0: send the bits of the concatenated input ports, in signature order, least
    significant first) and shifts the output chain one bit towards `sout`. A pulse on `apply` copies the
    input chain to the register that drives the design's inputs, all bits at once. With `shift` low, the
    output chain loads every output bit of the design on each edge; `sout` then shows output bit 0, and each
    later edge with `shift` high shows the next one (the output ports concatenated in signature order).

    Parameters
    ----------
    design : wiring.Component
        The design to wrap; it must have at least one input and one output port bit.

    Members
    -------
    sin : In(1), shift : In(1), apply : In(1) : serial data, shift enable and the apply strobe.
    sout : Out(1) : serial data out.

    `design` is the wrapped component, `in_bits` and `out_bits` the widths of its input and output ports.
    """

    def __init__(self, design: wiring.Component) -> None:
        if not isinstance(design, wiring.Component):
            raise TypeError(f"Harnessed design must be a wiring.Component, not {design!r}")
        self.design = design
        self.in_bits = len(_port_bits(design, wiring.Flow.In))
        self.out_bits = len(_port_bits(design, wiring.Flow.Out))
        if self.in_bits == 0 or self.out_bits == 0:
            raise ValueError(f"Harnessed design must have input and output port bits, not {self.in_bits} "
                             f"in and {self.out_bits} out")
        super().__init__({"sin": In(1), "shift": In(1), "apply": In(1), "sout": Out(1)})

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.design = design = self.design
        chain_in = Signal(self.in_bits)
        applied = Signal(self.in_bits)
        chain_out = Signal(self.out_bits)
        with m.If(self.shift):
            m.d.sync += chain_in.eq(Cat(chain_in[1:], self.sin))
            m.d.sync += chain_out.eq(chain_out[1:])
        with m.Else():
            m.d.sync += chain_out.eq(_port_bits(design, wiring.Flow.Out))
        with m.If(self.apply):
            m.d.sync += applied.eq(chain_in)
        m.d.comb += _port_bits(design, wiring.Flow.In).eq(applied)
        m.d.comb += self.sout.eq(chain_out[0])
        return m


def split_resources(stat: Mapping[str, Any], family: Family) -> tuple[dict[str, int], dict[str, int]]:
    """Return (design, harness) resources of a harness netlist's Yosys `stat -json`, by `count_resources`.

    The harness's are the cells of the top module itself; the design's are everything else, so the two add
    up to the whole netlist. The design's module must have been kept apart (``keep_hierarchy`` on
    `DESIGN_MODULE`), else Yosys flattens it into the top module and it counts as harness.
    """
    top = {name: section for name, section in stat.get("modules", {}).items() if name.lstrip("\\") == "top"}
    if len(top) != 1:
        raise ValueError(f"Yosys stat must have one module 'top', not {sorted(stat.get('modules', {}))!r}")
    harness_cells = parse_stat({"modules": stat.get("modules", {}), "design": next(iter(top.values()))})
    harness = count_resources(harness_cells, family)
    total = count_resources(parse_stat(stat), family)
    return {k: total[k] - harness[k] for k in total}, harness
