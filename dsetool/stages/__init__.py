"""The stage registry and dependency graph.

A stage is a named function from (context, config) to artifacts. Its store key is derived from exactly
the config subset it reads, its code version and the keys of its upstream stages, so deciding whether
a whole chain is cached needs only this module and the store: no torch import. Stage implementations
live in their own modules and are imported only when something must actually be computed.
"""

from __future__ import annotations

import functools
import importlib
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsetool.config import TRAIN_THREADS, RunConfig
from dsetool.faults import site_registry
from dsetool.progress import Reporter, SilentReporter
from dsetool.protect import registry as protections
from dsetool.store import Entry, Result, Store, make_key
from dsetool.validate import ConfigError, to_plain

if TYPE_CHECKING:
    from dsetool.design import Design
    from dsetool.gemm import Gemm
    from hw.arrayconfig import ArrayConfig


@dataclass(frozen=True)
class StageContext:
    """Everything a stage implementation may use; it writes only into `out`."""

    config: RunConfig
    out: Path
    upstream: dict[str, Entry]
    scratch: Path
    reporter: Reporter
    cache: Path = Path(".")   # a build cache shared by every key of the stage (`Store.cache_dir`)


@dataclass(frozen=True)
class StageDef:
    """A registered stage: what it reads, what it needs, where its code is."""

    name: str
    version: str
    reads: Callable[[RunConfig], dict[str, Any]]
    needs: Callable[[RunConfig], tuple[str, ...]]  # upstream stages at a design point
    impl: str  # "module:function", imported lazily

    def load(self) -> Callable[[StageContext], Result]:
        """Import the implementation (this is where torch gets imported)."""
        module, _, func = self.impl.partition(":")
        return getattr(importlib.import_module(module), func)


def _pretrain_reads(cfg: RunConfig) -> dict[str, Any]:
    data = to_plain(cfg.data)
    for name in ("calib_size", "root", "download"):  # where the files live must not change the key
        data.pop(name)
    model = to_plain(cfg.model)
    if cfg.model.arch != "mlp" or cfg.model.factory:
        model.pop("mlp_hidden")
    if cfg.model.factory:   # the user's network: its source, not the built-in arch, says what it is
        from dsetool.models.factory import FactoryError, source_digest

        model.pop("arch")
        try:
            model["factory_source"] = source_digest(cfg.model.factory)
        except FactoryError as error:
            raise ConfigError(str(cfg.name), "model.factory", str(error)) from None
    else:
        model.pop("factory")   # absent from keys made before factories existed
    model.pop("qonnx")         # an imported model is never pretrained
    content = _data_content(cfg.data.name, cfg.data.root)
    if content is not None:   # a user's images: what they are, not where they live (built-in sets: the name)
        data["content"] = content
    return {"seed": cfg.seed, "data": data, "model": model, "train": to_plain(cfg.train.pretrain),
            **_penalties(cfg)}


@functools.lru_cache(maxsize=16)
def _data_content(name: str, root: str) -> str | None:
    """Return the digest of a user data set's files, once per process (a sweep asks for every key)."""
    from dsetool.data import content_fingerprint

    return content_fingerprint(name, root)


def _penalties(cfg: RunConfig) -> dict[str, Any]:
    """Return the training penalties a phase reads, and its thread count, only when not the default (so
    default keys stay as they were)."""
    t = cfg.train
    out: dict[str, Any] = {}
    if t.threads != TRAIN_THREADS:
        out["threads"] = t.threads
    if t.regularizer != "none" and t.alpha:
        out["regularizer"] = {"kind": t.regularizer, "alpha": t.alpha}
    if t.act_l1:
        out["act_l1"] = t.act_l1
    return out


def _quant_reads(cfg: RunConfig) -> dict[str, Any]:
    quant = to_plain(cfg.quant)
    for name in ("method", "bits"):  # method picks the stage; bits is resolved into the widths
        quant.pop(name)
    return quant


def _qat_reads(cfg: RunConfig) -> dict[str, Any]:
    return {"seed": cfg.seed, "quant": _quant_reads(cfg), "calib_size": cfg.data.calib_size,
            "train": to_plain(cfg.train.qat), **_penalties(cfg),
            **({"saq_rho": cfg.train.saq.rho} if cfg.train.saq.rho else {})}


def _ptq_reads(cfg: RunConfig) -> dict[str, Any]:
    return {"quant": _quant_reads(cfg), "calib_size": cfg.data.calib_size, "ptq": to_plain(cfg.ptq),
            **({"threads": cfg.train.threads} if cfg.train.threads != TRAIN_THREADS else {})}


def _inject_reads(cfg: RunConfig) -> dict[str, Any]:
    from dsetool.design import protection_of

    protection = protection_of(cfg)
    hw: dict[str, Any] = {"acc_bits": cfg.hw.acc_bits, "multiplier_bits": cfg.hw.multiplier_bits,
                          "protection": protection.name, "tmr": protection.tmr}
    if protection.entry.protects:
        hw["placement"] = protection.placement
    if protection.entry.reads_scheme:   # median, afd: their parameters, the array width
        hw["scheme"] = protection.scheme.scheme_key()
    if site_registry.in_array(cfg.faults.sites):  # only PE registers depend on the array
        from dsetool.design import design_of

        design = design_of(cfg)
        hw["array"] = to_plain(design.machine_array)   # the accelerator's: accumulators with room for the bias
        hw["k_order"] = "accelerator"   # PE sites stream K as the accelerator does (`machine_k_order`)
        hw["weight_buffers"] = design.weight_buffers   # two: the sites lie on the tiles' shared timeline
        hw["pe_model"] = site_registry.PE_MODEL
        hw.update(_grouped_reads(design.gemms))
        if "pe.weight" in cfg.faults.sites:
            hw.update(_weight_bank_reads(design.weight_buffers, design.array))
        if "pe.shadow" in cfg.faults.sites:
            hw.update(_shadow_reads(design.array))
    return {"faults": to_plain(cfg.faults), "hw": hw}


def _grouped_reads(gemms: Sequence[Gemm]) -> dict[str, str]:
    """PE sites of a grouped conv are the accelerator's GEMM over all its input channels, each N slice
    with its own K slices (`machine_slice_orders`; once one GEMM per group): said in the keys of networks
    that have one, so the others keep theirs."""
    return {"grouped_convs": "accelerator"} if any(g.groups > 1 for g in gemms) else {}


def _weight_bank_reads(weight_buffers: int, array: ArrayConfig) -> dict[str, str]:
    """The double-buffered machine's `pe.weight` sites are both weight banks of each PE (once only the bank
    in use): said in the keys of campaigns and RTL checks that draw them, so every other key stays. Arrays
    whose sides do not divide one another keep one window per tile and one weight register (no machine
    tiling: `dsetool.machine.tiling.machine_k_order`), and their keys."""
    from dsetool.machine.compiler import UnsupportedOp, lanes_of

    try:
        lanes_of(array.rows, array.cols)
    except UnsupportedOp:
        return {}
    return {"weight_sites": "both banks"} if weight_buffers == 2 else {}   # (1 for the output-stationary machine)


def _shadow_reads(array: ArrayConfig) -> dict[str, str]:
    """The output-stationary machine's `pe.shadow` sites run to the drain of the last tile's last row, a
    cycle past the streaming timeline (once they ended with it): said in the keys of campaigns and RTL
    checks that draw them, so every other key stays."""
    return {"shadow_sites": "to the last drain"} if array.dataflow == "os" else {}


def _inject_needs(cfg: RunConfig) -> tuple[str, ...]:
    """A protected campaign needs the profiled bounds as well as the quantized model."""
    reads_bounds = protections.REGISTRY[cfg.hw.protection].reads_bounds
    return (quant_stage(cfg),) + (("range-restrict",) if reads_bounds else ())


def _restrict_reads(cfg: RunConfig) -> dict[str, Any]:
    from dsetool.design import protection_of

    # the bounds' settings only: where a check sits and the AFD knobs do not change them
    return {"protect": protection_of(cfg).bounds_key(), "calib_size": cfg.data.calib_size,
            "multiplier_bits": cfg.hw.multiplier_bits}


def _synth_reads(cfg: RunConfig) -> dict[str, Any]:
    from dsetool.design import design_of
    from hw.flow import HARNESS_VERSION, get_target, needs_harness, tool_fingerprint

    hw = cfg.hw
    design = design_of(cfg)
    reads = {"array": to_plain(design.array), "acc_depth": design.acc_depth, **_output_stage_reads(design),
             "target": hw.target, "freq_mhz": hw.freq_mhz, "pnr_seed": hw.pnr_seed, "tools": tool_fingerprint()}
    if not design.unbuilt:
        reads["machine"] = _machine_reads(cfg, design)
    elif design.datapath_placement != "output":   # the check on the array's inputs (output keys as they were)
        reads["placement"] = design.datapath_placement
    if hw.placer != "heap":   # heap was the only placer once: its syntheses keep their keys
        reads["placer"] = hw.placer
    if needs_harness(get_target(hw.target)):  # only these targets' keys see the harness, so others stay cached
        reads["io_harness"] = HARNESS_VERSION
    return reads


def _machine_reads(cfg: RunConfig, design: Design) -> dict[str, Any]:
    """Return what the accelerator's shape depends on beyond the datapath's reads: the network (what it is
    and the geometry of its input and output, not a trained model: `dsetool.stages.skeleton`), the
    accumulator and the per-layer widths. Weight and bound values never change the machine, so neither do
    the quantization method, the scales' granularity, the seed or the bounds."""
    from dsetool.machine.build import MACHINE_VERSION, machine_acc_bits, part_versions

    reads = {"version": MACHINE_VERSION, "network": _network_reads(cfg), "acc_bits": machine_acc_bits(design),
             "weight_buffers": design.weight_buffers,
             **part_versions(design.array.dataflow, design.weight_buffers, design.machine_checks_inputs)}
    protection = design.protection
    if protection.entry.protects:   # which tensors are checked, where, and how (sed only flags)
        checks: dict[str, Any] = {"protection": protection.name, "placement": protection.placement,
                                  "layers": list(protection.layers)}
        if design.datapath_placement == "input":   # the datapath synth falls back to when the compiler
            checks["datapath"] = "input"           # refuses the network checks its inputs too
        reads["checks"] = checks
    if not cfg.model.qonnx:   # an imported model fixes its own widths and quantizers
        reads["relu_unsigned"] = cfg.quant.relu_unsigned
        reads["layers"] = {name: to_plain(layer) for name, layer in sorted(cfg.quant.layers.items())}
    return reads


def _network_reads(cfg: RunConfig) -> dict[str, Any]:
    """Return what identifies the point's network: a QONNX file's content; a factory's source and function;
    a built-in's arch; with the input's channels and size and the classes."""
    from dsetool.data import geometry_of

    if cfg.model.qonnx:
        return {"qonnx_source": _import_reads(cfg)["qonnx_source"]}
    channels, native, classes = geometry_of(cfg.data.name, cfg.data.root)
    geometry = {"channels": channels, "classes": classes}
    if cfg.model.factory:
        from dsetool.models.factory import FactoryError, source_digest

        try:
            source = source_digest(cfg.model.factory)
        except FactoryError as error:
            raise ConfigError(str(cfg.name), "model.factory", str(error)) from None
        function = cfg.model.factory.rpartition(":")[2]
        return {"factory_source": source, "function": function, "size": list(native), **geometry}
    from dsetool.models.zoo import input_size

    side = input_size(cfg.model.arch, native)
    network = {"arch": cfg.model.arch, "size": [side, side] if side else list(native), **geometry}
    if cfg.model.arch == "mlp":
        network["mlp_hidden"] = list(cfg.model.mlp_hidden)
    return network


def _output_stage_reads(design: Design) -> dict[str, Any]:
    """Return what the output stage is built from beyond the array: the requantization multiplier's width.
    A shift-only stage is `scaling: po2`, as every po2 point's key said when that was the only datapath po2
    scales got, so their syntheses stay valid. The constants' layout is not read: the synthesized datapath
    holds one constant set per layer whatever the design's layout (the accelerator, `hw.machine`, holds
    them per channel), so it changes no netlist."""
    from dsetool.design import SHIFT

    if design.multiplier_bits == SHIFT:
        return {"scaling": "po2"}
    return {"multiplier_bits": design.multiplier_bits}


def _rtlsim_reads(cfg: RunConfig) -> dict[str, Any]:
    """The machine is built from the design (array, widths, the protection it checks with; its RTL's
    version) and runs the quantized model (an upstream key) on the first `hw.rtl_images` test images, then
    `hw.rtl_faults` faults drawn with the experiment's seed (read only when there are faults)."""
    from dsetool.design import design_of
    from dsetool.machine.build import MACHINE_VERSION, part_versions
    from hw.rtlsim import SimulatorNotFound, require_toolchain, verilator_fingerprint

    try:
        require_toolchain()
        verilator = verilator_fingerprint()
    except SimulatorNotFound as missing:
        raise ConfigError(str(cfg.name), "stages", str(missing)) from None
    design = design_of(cfg)
    protection = design.protection
    array = design.array   # the machine's operand and accumulator widths follow the model (upstream key)
    return {"rows": array.rows, "cols": array.cols, "dataflow": array.dataflow, "multiplier": array.multiplier,
            "acc_bits": cfg.hw.acc_bits, "multiplier_bits": design.multiplier_bits,
            "protection": protection.name, "tmr": protection.tmr, "placement": protection.placement,
            "weight_buffers": design.weight_buffers, "images": cfg.hw.rtl_images, "faults": cfg.hw.rtl_faults,
            **(_rtl_fault_reads(cfg.seed, design.gemms, design.weight_buffers, array) if cfg.hw.rtl_faults else {}),
            "machine": MACHINE_VERSION,
            **part_versions(array.dataflow, design.weight_buffers, design.machine_checks_inputs),
            "data": _test_data_reads(cfg), "verilator": verilator}


def _rtl_fault_reads(seed: int, gemms: Sequence[Gemm], weight_buffers: int, array: ArrayConfig) -> dict[str, Any]:
    """The faults the rtlsim stage draws: their seed, the sites they are drawn from, PE registers included
    (`dsetool.machine.faults.machine_groups`; a TMR machine's too, in one replica, since 2026-12-07), and
    the PE model they are checked against (`_grouped_reads`, `_weight_bank_reads`, `_shadow_reads`)."""
    return {"seed": seed, "fault_sites": list(site_registry.NAMES), "pe_model": site_registry.PE_MODEL,
            **_grouped_reads(gemms), **_weight_bank_reads(weight_buffers, array), **_shadow_reads(array)}


def _test_data_reads(cfg: RunConfig) -> dict[str, Any]:
    data = to_plain(cfg.data)
    for name in ("calib_size", "root", "download"):
        data.pop(name)
    return data


def _rtlsim_needs(cfg: RunConfig) -> tuple[str, ...]:
    """The quantized model, and the profiled bounds when the point's protection reads them."""
    return _inject_needs(cfg)


def quant_stage(cfg: RunConfig) -> str:
    """Name the stage that produces the quantized model of a design point."""
    if cfg.model.qonnx:
        return "import-qonnx"
    return "train-qat" if cfg.quant.method == "qat" else "ptq"


def _import_reads(cfg: RunConfig) -> dict[str, Any]:
    """The file's content is the model; the data the accuracy is measured on (where it lives aside)."""
    from dsetool.models.qonnx_import import QonnxError, file_digest

    data = to_plain(cfg.data)
    for name in ("calib_size", "root", "download"):
        data.pop(name)
    content = _data_content(cfg.data.name, cfg.data.root)
    if content is not None:
        data["content"] = content
    try:
        return {"qonnx_source": file_digest(cfg.model.qonnx), "data": data,
                "multiplier_bits": cfg.hw.multiplier_bits}   # the engine measures the accuracy
    except QonnxError as error:
        raise ConfigError(str(cfg.name), "model.qonnx", str(error)) from None


STAGES: dict[str, StageDef] = {
    s.name: s
    for s in (
        StageDef("pretrain", "2", _pretrain_reads, lambda cfg: (), "dsetool.stages.pretrain:run"),
        StageDef("train-qat", "2", _qat_reads, lambda cfg: ("pretrain",), "dsetool.stages.quantize:run_qat"),
        StageDef("ptq", "2", _ptq_reads, lambda cfg: ("pretrain",), "dsetool.stages.quantize:run_ptq"),
        StageDef("import-qonnx", "1", _import_reads, lambda cfg: (), "dsetool.stages.qonnx:run"),
        StageDef("inject", "9", _inject_reads, _inject_needs, "dsetool.stages.inject:run"),
        StageDef("range-restrict", "1", _restrict_reads, lambda cfg: (quant_stage(cfg),),
                 "dsetool.stages.restrict:run"),
        StageDef("synth", "6", _synth_reads, lambda cfg: (), "dsetool.stages.synth:run"),
        StageDef("rtlsim", "3", _rtlsim_reads, _rtlsim_needs, "dsetool.stages.rtlsim:run"),
    )
}


def point_stages(cfg: RunConfig) -> tuple[str, ...]:
    """Return the stages a sweep computes at design point `cfg`, upstream first, each once.

    `cfg.stages` names what to compute; every stage brings the stages it needs. A range-restrict
    request at a point whose protection reads no bounds, and synth of a protection the RTL does not build
    (sed, median, afd), are skipped: those points have nothing to compute there.
    """
    protection = protections.REGISTRY[cfg.hw.protection]
    wanted = {"quantize": quant_stage(cfg), "range-restrict": "range-restrict", "inject": "inject", "synth": "synth",
              "rtlsim": "rtlsim"}
    skip = set()
    if not protection.reads_bounds:
        skip.add("range-restrict")
    if not protection.rtl and _datapath_synth(cfg):   # sed has an accelerator's unit, not a datapath's
        skip.add("synth")
    ordered: list[str] = []

    def visit(name: str) -> None:
        for up in STAGES[name].needs(cfg):
            visit(up)
        if name not in ordered:
            ordered.append(name)

    for request in cfg.stages:
        if request not in skip:
            visit(wanted[request])
    return tuple(ordered)


def _datapath_synth(cfg: RunConfig) -> bool:
    from dsetool.design import design_of

    return bool(design_of(cfg).unbuilt)


def stage_key(name: str, cfg: RunConfig) -> tuple[str, dict[str, Any]]:
    """Return (key, inputs) of stage `name` at design point `cfg`, recursing into upstream stages."""
    stage = STAGES[name]
    upstream = {up: stage_key(up, cfg)[0] for up in stage.needs(cfg)}
    inputs = {"version": stage.version, "config": stage.reads(cfg), "upstream": upstream}
    return make_key(name, inputs), inputs


def ensure(store: Store, name: str, cfg: RunConfig, reporter: Reporter | None = None) -> tuple[Entry, bool]:
    """Return (entry, cached) for stage `name` at `cfg`, computing it and any missing upstream."""
    key, inputs = stage_key(name, cfg)
    found = store.get(name, key)
    if found is not None:
        return found, True
    reporter = reporter or SilentReporter()
    upstream = {up: ensure(store, up, cfg, reporter)[0] for up in STAGES[name].needs(cfg)}
    impl = STAGES[name].load()

    def build(out: Path) -> Result:
        ctx = StageContext(cfg, out, upstream, store.scratch_dir(name, key), reporter, store.cache_dir(name))
        result = impl(ctx)
        result.extra.setdefault("versions", software_versions())
        return result

    entry, cached = store.compute(name, key, inputs, build)
    store.drop_scratch(name, key)
    return entry, cached


def software_versions() -> dict[str, str]:
    """Record the versions that produced a result (kept in the manifest, not in the key)."""
    versions = {"python": platform.python_version()}
    for package in ("dsetool", "torch", "brevitas", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    return versions
