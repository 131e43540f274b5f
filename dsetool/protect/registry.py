"""The protections a design point can name (`hw.protection`), and what each one is.

One registry owns the vocabulary: the config's choices, which protections read profiled bounds (and so
need stage `range-restrict`), which filter along channels, which read the channel-scheme settings (and
so put them in the inject key), which the RTL builds (`rtl`: synth runs only for those), how the engine
check is built (`build`), and, for the campaign summary and the report, whether a protection *detects*
faults or only *changes* values.

A detector compares a value with something it knows to be right (a range check's profiled bounds) and
raises a flag: its `detected` rate and coverage (the share of SDCs it flagged) mean what they say. A
filter (channel median, anomalous-feature suppression) or a vote has no such comparison: it rewrites
values, faulty or not, and how often it altered a faulty value is reported as `changed`, never as a
detection, and with no coverage. Pure Python: the config imports it, so it must not pull in torch (the
builders import the checks when they run).

Adding a protection is one `Protection` entry below plus its implementation: a check (a callable from a
requantized code tensor to the checked one, in `dsetool.protect`) and a builder here that places it on
the protected output stages from `CheckSettings` (the model, the profiled bounds when `reads_bounds`,
the scheme settings when `reads_scheme`). Say `rtl=True` only when `hw.arrayconfig.PROTECTIONS` (the
RTL generator's list: `hw` cannot import this module) names it and `hw.protect` builds it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dsetool.config import RunConfig
    from dsetool.engine.intmodel import IntModel
    from dsetool.protect.check import Check


@dataclass(frozen=True)
class CheckSettings:
    """What building a protection's engine checks reads besides the model: one object, so that the inject
    key (`scheme_key`) and the checks the campaign runs read the same settings.

    `layers`: the protected layers (`protect.layers`, empty: all); `chunk`: the array width a median
    window is cut at (`hw.cols`); `gamma`, `gates`, `action`: AFD's; `bounds`: stage range-restrict's
    `bounds.json` document, for the protections that read bounds (None otherwise).
    """

    layers: tuple[str, ...]
    chunk: int
    gamma: float
    gates: int
    action: str
    bounds: Mapping[str, Any] | None = None

    def scheme_key(self) -> dict[str, Any]:
        """Return the scheme settings as the inject key holds them (for the protections that read them)."""
        return {"layers": list(self.layers), "chunk": self.chunk, "gamma": self.gamma, "gates": self.gates,
                "action": self.action}


def check_settings(cfg: RunConfig, bounds: Mapping[str, Any] | None = None) -> CheckSettings:
    """Return the settings a design point's protection is built from (`bounds`: its profiled bounds)."""
    p = cfg.protect
    return CheckSettings(tuple(p.layers), cfg.hw.cols, p.gamma, p.gates, p.afd_action, bounds)


Builder = Callable[["IntModel", CheckSettings], "dict[int, Check]"]


def _range_check(mode: str) -> Builder:
    """Build a range check in `mode` (`dsetool.protect.check.MODES`) on every tensor the bounds cover."""

    def build(model: IntModel, settings: CheckSettings) -> dict[int, Check]:
        from dsetool.protect.check import range_checks

        if settings.bounds is None:
            raise ValueError(f"a {mode} range check needs the profiled bounds of stage range-restrict")
        channels = {index: model.ops[index].out_shape[0] for index in range(len(model.ops))}
        return dict(range_checks(settings.bounds, mode, channels))

    return build


def _on_protected_ops(make: Callable[[CheckSettings], Check]) -> Builder:
    """Build one channel filter, made from the settings, after every protected output stage."""

    def build(model: IntModel, settings: CheckSettings) -> dict[int, Check]:
        from dsetool.protect.bounds import protected_ops

        check = make(settings)
        return {index: check for _, index in protected_ops(model, settings.layers)}

    return build


def _median(window: int) -> Builder:
    def make(settings: CheckSettings) -> Check:
        from dsetool.protect.schemes import MedianFilter

        return MedianFilter(window, settings.chunk)

    return _on_protected_ops(make)


def _afd(settings: CheckSettings) -> Check:
    from dsetool.protect.schemes import AnomalySuppression

    return AnomalySuppression(settings.gamma, settings.gates, settings.action)


@dataclass(frozen=True)
class Protection:
    """One `hw.protection` choice.

    `detects`: it raises a flag on a value it finds wrong (detected rate and coverage are reported);
    otherwise only how often it changed a faulty value. `reads_bounds`: it needs the profiled bounds of
    stage range-restrict. `channel_filter`: it filters along the channel axis, which a linear layer's
    flattened input lacks (so it sits on the array's outputs only). `reads_scheme`: its checks read the
    scheme settings (`CheckSettings.scheme_key`), which then enter the inject key. `rtl`: the array's RTL
    builds it (synth runs only then). `build`: makes its engine checks, by output-stage op index; None
    only for `none`.
    """

    name: str
    help: str
    detects: bool
    reads_bounds: bool
    build: Builder | None
    channel_filter: bool = False
    reads_scheme: bool = False
    rtl: bool = False

    @property
    def protects(self) -> bool:
        """Tell whether anything runs after the output stages (every choice but `none`)."""
        return self.build is not None


NONE = "none"   # the choice that protects nothing (and the array's protection when the RTL lacks the chosen one)

REGISTRY: dict[str, Protection] = {p.name: p for p in (
    Protection(NONE, "no protection", detects=False, reads_bounds=False, build=None, rtl=True),
    Protection("clip", "range check: a code outside its profiled bounds becomes the nearer bound (the paper's)",
               detects=True, reads_bounds=True, build=_range_check("clip"), rtl=True),
    Protection("zero", "range check: a code outside its profiled bounds becomes 0 (Ranger-style)",
               detects=True, reads_bounds=True, build=_range_check("zero"), rtl=True),
    Protection("sed", "range check that only flags (symptom-based error detection), values unchanged",
               detects=True, reads_bounds=True, build=_range_check("detect")),
    Protection("median3", "median of 3 neighbouring channels (Ozen), a filter", detects=False, reads_bounds=False,
               build=_median(3), channel_filter=True, reads_scheme=True),
    Protection("median5", "median of 5 neighbouring channels (Ozen), a filter", detects=False, reads_bounds=False,
               build=_median(5), channel_filter=True, reads_scheme=True),
    Protection("afd", "anomalous-feature suppression along channels (Ozen), a filter", detects=False,
               reads_bounds=False, build=_on_protected_ops(_afd), channel_filter=True, reads_scheme=True),
)}

NAMES: tuple[str, ...] = tuple(REGISTRY)
RANGE_PROTECTIONS: tuple[str, ...] = tuple(name for name, p in REGISTRY.items() if p.reads_bounds)
CHANNEL_FILTERS: tuple[str, ...] = tuple(name for name, p in REGISTRY.items() if p.channel_filter)
RTL_PROTECTIONS: tuple[str, ...] = tuple(name for name, p in REGISTRY.items() if p.rtl)


def detects(name: str) -> bool:
    """Tell whether a campaign under this protection reports detections (a range check fired). TMR adds
    no detector: its vote only changes values (`changes`)."""
    return REGISTRY[name].detects


def changes(name: str, tmr: bool = False) -> bool:
    """Tell whether a campaign under this protection reports how often it changed a faulty value: every
    filter does, and so does TMR's vote (on top of a range check's detections, when both are built)."""
    return tmr or (REGISTRY[name].protects and not REGISTRY[name].detects)


def help_text() -> str:
    """Return the help of `hw.protection`: each choice with what it does, and which ones synth builds."""
    choices = "; ".join(f"{p.name}: {p.help}" for p in REGISTRY.values())
    return f"what runs after each protected output stage. {choices}. Synth builds {', '.join(RTL_PROTECTIONS)}"
