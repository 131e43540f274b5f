"""The fault sites a campaign can name (`faults.site`), and what each one is.

One registry owns the vocabulary: the config's choices and help, the register width a `faults.bits`
list is checked against, whether a site lives in the array (so it needs the array's geometry, which then
enters the inject key), how the campaign applies a fault there (`hook`), and, through the hook, which
group builder of `dsetool.faults.sites` lays out its population. Pure Python: the config imports it, so
it must not pull in torch.

Adding a fault site is one `FaultSite` entry below, naming
- the `register` it corrupts (one of `REGISTERS`: a layer's input codes, its weights, its requantized
  output, a partial sum, or a finished one): this gives its width in the config's bit check and in the
  report;
- its `hook`, one of `HOOKS`: where `dsetool.faults.apply` puts the fault into the op sequence; hook
  `pe` makes it a PE register (`in_array`: the array's rows, columns and dataflow say which values it
  holds at a cycle, so they enter the inject key), the others a buffer the array reads or writes.
A buffer site (hook `pre`, `weight` or `post`) needs nothing else: `dsetool.faults.sites` builds its
groups with the builder of its hook (`sites.GROUP_BUILDERS`), and `dsetool.faults.apply` applies them by
hook. A PE site on one of the registers a PE holds (input, weights, accumulator, and the output-
stationary accelerator's shadow of a finished sum) needs nothing else either:
`dsetool.faults.pe.apply_pe_faults` follows a value through the schedule by its register.
A new register kind is a `Register` (the config's bit check and the report read its width from its
fields) and its engine width in `sites._pe_register`; a new hook needs its group builder in
`sites.GROUP_BUILDERS` and its application in `dsetool.faults.apply`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Hook = Literal["pre", "weight", "post", "pe"]
PRE: Hook = "pre"          # the buffer an op reads, faulted before the first op reading it runs
WEIGHT: Hook = "weight"    # the op's stored weights: a correction of its accumulators
POST: Hook = "post"        # the op's (requantized) output, after it runs
PE: Hook = "pe"            # a register inside the array at one cycle: a correction of the accumulators
HOOKS: tuple[Hook, ...] = (PRE, WEIGHT, POST, PE)


@dataclass(frozen=True)
class Register:
    """The value a fault site corrupts, and where its width comes from.

    `quant_bits`: the quantization width that sizes it (`act_bits` or `weight_bits`, per-layer overrides
    included), or None for the accumulator (`hw.acc_bits`, or as wide as the network needs). `next_layer`:
    the width is the next layer's (a layer's requantized output is the next layer's input; the logits
    layer's output is the wide accumulator).
    """

    name: str
    quant_bits: Literal["act_bits", "weight_bits"] | None
    next_layer: bool = False


INPUT = Register("input", "act_bits")
WEIGHTS = Register("weights", "weight_bits")
OUTPUT = Register("output", "act_bits", next_layer=True)
ACCUMULATOR = Register("accumulator", None)
FINISHED = Register("finished sum", None)   # a tile's complete sum, held until it is read out of the array
REGISTERS: tuple[Register, ...] = (INPUT, WEIGHTS, OUTPUT, ACCUMULATOR, FINISHED)

# What each hook can corrupt: a buffer hook fixes its register; a PE register holds an operand or a sum.
HOOK_REGISTERS: dict[Hook, tuple[Register, ...]] = {PRE: (INPUT,), WEIGHT: (WEIGHTS,), POST: (OUTPUT,),
                                                   PE: (INPUT, WEIGHTS, ACCUMULATOR, FINISHED)}


@dataclass(frozen=True)
class FaultSite:
    """One `faults.site` choice: what it corrupts, whether it sits in the array, how a fault is applied."""

    name: str
    help: str
    register: Register
    hook: Hook

    def __post_init__(self) -> None:
        """Refuse an entry the campaign could not lay out: a register its hook cannot reach."""
        if self.register not in HOOK_REGISTERS[self.hook]:
            raise ValueError(f"fault site {self.name}: hook {self.hook!r} cannot corrupt the {self.register.name}")

    @property
    def in_array(self) -> bool:
        """Tell whether the site is a PE register: which values it holds at a cycle depends on the array's
        rows, columns and dataflow, so the campaign needs them (and they enter its key)."""
        return self.hook == PE


REGISTRY: dict[str, FaultSite] = {s.name: s for s in (
    FaultSite("act", "the activation buffer a layer reads (every layer reading it sees the fault)", INPUT, PRE),
    FaultSite("weight", "a layer's stored weights", WEIGHTS, WEIGHT),
    FaultSite("pe.act", "a PE's activation register at one cycle (the value moves on along its row)", INPUT, PE),
    FaultSite("pe.weight", "a PE's weight register at one cycle (stationary or moving, by dataflow; both banks of a "
                           "double-buffered PE)", WEIGHTS, PE),
    FaultSite("pe.psum", "a PE's partial-sum register at one cycle (sums wrap at the accumulator width)",
              ACCUMULATOR, PE),
    FaultSite("pe.shadow", "a PE's shadow register (output-stationary accelerator): a tile's finished sum until "
                           "the drain reads it", FINISHED, PE),
    FaultSite("out", "a layer's requantized output (the logits layer: its accumulators)", OUTPUT, POST),
)}

NAMES: tuple[str, ...] = tuple(REGISTRY)

PE_MODEL = 3
"""The version of the PE-register fault model (`dsetool.faults.pe`, `dsetool.engine.tiling`), in the key of
every campaign at a PE site: raise it when a PE fault's outcome changes (2: sums wrap with their bias, as
the accelerator's accumulators add it; a flip of the first tile's weights before they are written is
overwritten; the output-stationary tiles stream back to back, each finished sum latched into a shadow.
3: on arrays wider than the double-buffered period, the bank in use holds the tile after next once it
is written)."""


class UnknownSite(ValueError):
    """A fault site name the registry does not list."""


def site(name: str) -> FaultSite:
    """Return the registry entry of a fault site; raise UnknownSite for a name it does not list."""
    found = REGISTRY.get(name)
    if found is None:
        raise UnknownSite(f"unknown fault site {name!r}; use one of {', '.join(NAMES)}")
    return found


def stationary(register: Register, dataflow: str) -> bool:
    """Tell whether a PE register keeps its value between a tile's rows: the weight-stationary weights (two
    banks per PE on the double-buffered machine, `LayerTiling.site_shape`)."""
    return dataflow == "ws" and register is WEIGHTS


def in_array(names: tuple[str, ...] | list[str]) -> bool:
    """Tell whether any of these sites is a PE register: only those depend on the array's geometry (so it
    enters the campaign's key only then)."""
    return any(site(name).in_array for name in names)


def help_text() -> str:
    """Return the help of `faults.site`: each choice with what it hits."""
    choices = "; ".join(f"{s.name}: {s.help}" for s in REGISTRY.values())
    return f"register or buffer the faults hit, a list: uniform over all of them. {choices}"
