"""The protections a design point can name (`hw.protection`), and what each one is.

One registry owns the vocabulary: the config's choices, which protections read profiled bounds (and so
need stage `range-restrict`), which filter along channels, and, for the campaign summary and the report,
whether a protection *detects* faults or only *changes* values. (Which ones the RTL builds is
`hw.arrayconfig.PROTECTIONS`, read by `dsetool.arrays.rtl_protection`.)

A detector compares a value with something it knows to be right (a range check's profiled bounds) and
raises a flag: its `detected` rate and coverage (the share of SDCs it flagged) mean what they say. A
filter (channel median, anomalous-feature suppression) or a vote has no such comparison: it rewrites
values, faulty or not, and how often it altered a faulty value is reported as `changed`, never as a
detection, and with no coverage. Pure Python: the config imports it, so it must not pull in torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Protection:
    """One `hw.protection` choice.

    `detects`: it raises a flag on a value it finds wrong (detected rate and coverage are reported);
    otherwise only how often it changed a faulty value. `reads_bounds`: it needs the profiled bounds of
    stage range-restrict. `channel_filter`: it filters along the channel axis, which a linear layer's
    flattened input lacks (so it sits on the array's outputs only).
    """

    name: str
    help: str
    detects: bool
    reads_bounds: bool
    channel_filter: bool = False


REGISTRY: dict[str, Protection] = {p.name: p for p in (
    Protection("none", "no protection", detects=False, reads_bounds=False),
    Protection("clip", "range check: a code outside its profiled bounds becomes the nearer bound (the paper's)",
               detects=True, reads_bounds=True),
    Protection("zero", "range check: a code outside its profiled bounds becomes 0 (Ranger-style)",
               detects=True, reads_bounds=True),
    Protection("sed", "range check that only flags (symptom-based error detection), values unchanged",
               detects=True, reads_bounds=True),
    Protection("median3", "median of 3 neighbouring channels (Ozen), a filter", detects=False, reads_bounds=False,
               channel_filter=True),
    Protection("median5", "median of 5 neighbouring channels (Ozen), a filter", detects=False, reads_bounds=False,
               channel_filter=True),
    Protection("afd", "anomalous-feature suppression along channels (Ozen), a filter", detects=False,
               reads_bounds=False, channel_filter=True),
)}

NAMES: tuple[str, ...] = tuple(REGISTRY)
RANGE_PROTECTIONS: tuple[str, ...] = tuple(name for name, p in REGISTRY.items() if p.reads_bounds)
CHANNEL_FILTERS: tuple[str, ...] = tuple(name for name, p in REGISTRY.items() if p.channel_filter)


def detects(name: str) -> bool:
    """Tell whether a campaign under this protection reports detections (a range check fired). TMR adds
    no detector: its vote only changes values (`changes`)."""
    return REGISTRY[name].detects


def changes(name: str, tmr: bool = False) -> bool:
    """Tell whether a campaign under this protection reports how often it changed a faulty value: every
    filter does, and so does TMR's vote (on top of a range check's detections, when both are built)."""
    return tmr or (name != "none" and not REGISTRY[name].detects)
