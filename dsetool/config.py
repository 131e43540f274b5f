"""Experiment files: YAML -> validated, frozen dataclasses, with `--set` overrides and sweep expansion.

An experiment file describes one design point plus optional `sweep:` axes (dotted keys -> lists of
values, expanded to their grid product) and `zip:` axes (paired lists of equal length). Every design
point is validated on its own, so an axis value that is out of range is reported with its key.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsetool.data import DATASETS
from dsetool.faults import site_registry
from dsetool.models import zoo
from dsetool.protect import registry as protection_registry
from dsetool.validate import (
    ConfigError,
    Converter,
    did_you_mean,
    json_schema,
    resolve_field,
    spec,
    suggest_key,
    to_plain,
)
from dsetool.yamlfile import parse as parse_yaml
from dsetool.yamlfile import read_yaml

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ARCHITECTURES = zoo.ARCHITECTURES


@dataclass(frozen=True)
class DataConfig:
    """Which data set, where it lives, and how it is split."""

    name: str = spec("digits", choices=DATASETS, help="data set; digits is embedded (scikit-learn); folder and npz "
                                                      "are your own images under root")
    root: str = spec("data", help="directory holding torchvision-layout data sets; for folder, the folder with one "
                                  "sub-folder of images per class; for npz, the .npz file (arrays x, y)")
    download: bool = spec(False, help="let torchvision download a missing data set")
    val_fraction: float = spec(0.2, range=(0.01, 0.5), help="validation share (of all data for digits)")
    test_fraction: float = spec(0.2, range=(0.01, 0.5), help="test share (digits, folder, and npz without "
                                                             "x_test)")
    calib_size: int = spec(256, range=(1, 100_000), help="calibration images drawn from train (PTQ)")
    max_train: int = spec(0, range=(0, 10_000_000), help="cap on training images, 0 = all")
    split_seed: int = spec(0, range=(0, 2**31 - 1), help="seed of the stratified split")


@dataclass(frozen=True)
class ModelConfig:
    """The network architecture."""

    arch: str = spec("lenet5", choices=ARCHITECTURES, help="network architecture (built in)")
    mlp_hidden: tuple[int, ...] = spec((64, 32), range=(1, 65536), help="hidden widths of the mlp")
    factory: str = spec("", help="your own network instead of arch: FILE.py:FUNCTION or package.module:FUNCTION, "
                                 "called with in_channels, num_classes and image_size, returning a float "
                                 "torch.nn.Module (trained at the data's native size)")

    qonnx: str = spec("", help="a model quantized elsewhere, as a QONNX file (Brevitas or FINN export): imported as "
                               "the integer model, no training; its bit widths and scales replace quant.*")

    @property
    def label(self) -> str:
        """Return the network's name in reports: the architecture, the QONNX file's name, or the factory's
        file (or module) and function (`nets.make`: two files' `make` stay apart)."""
        if self.qonnx:
            return Path(self.qonnx).stem
        if not self.factory:
            return self.arch
        target, _, function = self.factory.rpartition(":")
        return f"{Path(target).stem if target.endswith('.py') else target}.{function}"


@dataclass(frozen=True)
class LayerQuantConfig:
    """Per-layer bit-width override; unset widths fall back to the experiment's widths."""

    weight_bits: int | None = spec(None, range=(2, 16), help="weight bit width of this layer")
    act_bits: int | None = spec(None, range=(2, 16), help="bit width of this layer's input activations")


@dataclass(frozen=True)
class QuantConfig:
    """How the network is quantized."""

    method: str = spec("qat", choices=("qat", "ptq"), help="quantization-aware training or post-training")
    bits: int | None = spec(None, range=(2, 16), help="shorthand: sets weight_bits and act_bits")
    weight_bits: int = spec(8, range=(2, 16), help="weight bit width")
    act_bits: int = spec(8, range=(2, 16), help="activation bit width")
    layers: Mapping[str, LayerQuantConfig] = spec(factory=dict, help="per-layer overrides by layer name")
    scaling: str = spec("po2", choices=("po2", "float"), help="power-of-two or float scale factors")
    weight_granularity: str = spec("per_tensor", choices=("per_tensor", "per_channel"))
    relu_unsigned: bool = spec(True, help="unsigned post-ReLU activations (one more bit of range)")


@dataclass(frozen=True)
class OptimConfig:
    """One training phase."""

    epochs: int = spec(10, range=(0, 10_000))
    optimizer: str = spec("adam", choices=("adam", "adamw", "sgd"))
    lr: float = spec(1e-3, range=(1e-8, 10.0))
    momentum: float = spec(0.9, range=(0.0, 1.0), help="SGD momentum")
    weight_decay: float = spec(0.0, range=(0.0, 1.0))
    batch_size: int = spec(64, range=(1, 65536))
    schedule: str = spec("cosine", choices=("constant", "cosine", "step"))
    step_epochs: int = spec(5, range=(1, 10_000), help="epochs between lr drops (step schedule)")
    step_gamma: float = spec(0.1, range=(0.0, 1.0), help="lr factor per drop (step schedule)")
    augment_shift: int = spec(0, range=(0, 16), help="random translation of training images, in pixels")


@dataclass(frozen=True)
class SaqConfig:
    """Sharpness-aware quantization (FlatENN): SAM inside QAT."""

    rho: float = spec(0.0, range=(0.0, 10.0), help="SAM perturbation radius on the latent weights, 0 = off")


REGULARIZERS = ("none", "l1", "l2", "max_magnitude", "max_squared")


TRAIN_THREADS = 2   # what every model in the README was trained with


@dataclass(frozen=True)
class TrainConfig:
    """Float pre-training (shared by every bit width) and QAT fine-tuning, and the penalties of both."""

    pretrain: OptimConfig = spec(factory=lambda: OptimConfig(epochs=12, lr=2e-3))
    qat: OptimConfig = spec(factory=lambda: OptimConfig(epochs=6, lr=5e-4))
    saq: SaqConfig = spec(factory=SaqConfig)
    regularizer: str = spec("none", choices=REGULARIZERS,
                            help="weight penalty in every phase: l1, l2, or each layer's largest weight "
                                 "(max_magnitude, max_squared: Ozen's outlier regularization)")
    alpha: float = spec(1e-4, range=(0.0, 100.0), help="weight of the regularizer")
    act_l1: float = spec(0.0, range=(0.0, 100.0), help="L1 penalty on post-ReLU activations (sparsity), 0 = off")
    threads: int = spec(TRAIN_THREADS, range=(1, 256),
                        help="torch threads of every phase that makes a model (training, calibration), fixed "
                             "rather than the machine's: the thread count changes the order of float sums and "
                             "so the trained weights; in the store key when not the default")


@dataclass(frozen=True)
class PtqConfig:
    """Post-training quantization calibration."""

    calibration: str = spec("maxabs", choices=("maxabs", "percentile"), help="activation range statistic")
    percentile: float = spec(99.99, range=(50.0, 100.0), help="percentile for percentile calibration")


SWEEP_STAGES = ("quantize", "range-restrict", "inject", "synth", "rtlsim")
PROTECTIONS = protection_registry.NAMES


@dataclass(frozen=True)
class HwConfig:
    """The systolic array the network runs on."""

    rows: int = spec(8, range=(1, 256), help="PE rows")
    cols: int = spec(8, range=(1, 256), help="PE columns")
    dataflow: str = spec("ws", choices=("ws", "os"), help="weight- or output-stationary")
    acc_bits: int = spec(0, range=(0, 64), help="accumulator width, 0 = just wide enough for the network")
    multiplier_bits: int = spec(24, range=(4, 32), help="fixed-point requantization multiplier width (float scales)")
    multiplier: str = spec("dsp", choices=("dsp", "lut"), help="PE multiplier: the FPGA's DSP blocks or LUT logic")
    target: str = spec("ecp5-45k", choices=("ecp5-25k", "ecp5-45k", "ecp5-85k", "ice40-up5k", "xc7z020"),
                       help="FPGA the synth stage builds for")
    freq_mhz: float = spec(100.0, range=(1.0, 1000.0), help="clock constraint given to place and route")
    pnr_seed: int = spec(1, range=(0, 2**31 - 1), help="place-and-route seed")
    placer: str = spec("auto", choices=("auto", "heap", "static"),
                       help="nextpnr placer: heap (analytic), static (electrostatic: about twice as fast on an "
                            "8x8 array), auto (static from 4,000 LUTs up); in the synth key when not heap")
    protection: str = spec("none", choices=PROTECTIONS, help=protection_registry.help_text())
    tmr: bool = spec(False, help="triplicate the datapath with bitwise majority voters (synth); campaigns run "
                                 "three independently faulted executions and vote their top-1")
    synth: str = spec("accelerator", choices=("accelerator", "datapath"),
                      help="what the synth stage builds: the whole accelerator that runs the network (where the "
                           "point has one: weight- or output-stationary, two rows or more, sides that divide one "
                           "another, no protection but range checks, SED and TMR; else the datapath), or only the "
                           "datapath (array, accumulator, output stage, protection), much faster")
    weight_buffers: int = spec(2, range=(1, 2),
                               help="weight registers per PE in the weight-stationary accelerator (the output-"
                                    "stationary one streams its weights): 2 loads the next tile's weights "
                                    "while the current one streams (tiles back to back; LeNet-5 runs 1.5x fewer "
                                    "cycles at up to 5% more LUTs), 1 loads, streams and drains each tile in turn")
    rtl_images: int = spec(32, range=(1, 100_000), help="test images the rtlsim stage runs through the simulated "
                                                        "accelerator (each must give the engine's logits)")
    rtl_faults: int = spec(64, range=(0, 100_000), help="single-bit faults the rtlsim stage injects into the simulated "
                                                        "accelerator's activation buffer (the layers' inputs and "
                                                        "outputs) and weight memory, each on one of those images "
                                                        "(each must give the engine's faulty logits; 0: none)")


FAULT_SITES = site_registry.NAMES
RANGE_MODES = ("profiled", "global", "global10")
BIT_SELECTIONS = ("all", "msb", "high", "low")


@dataclass(frozen=True)
class FaultConfig:
    """One fault campaign: where faults land, what they do, how many, and how the campaign is sized."""

    site: str | tuple[str, ...] = spec("act", choices=FAULT_SITES, help=site_registry.help_text())
    layers: tuple[str, ...] = spec((), help="weight layers to fault; empty = all")
    model: str = spec("bitflip", choices=("bitflip", "stuck0", "stuck1", "zero"), help="fault effect")
    bits: str | tuple[int, ...] = spec("all", choices=BIT_SELECTIONS, range=(0, 63),
                                       help="bit positions: all, msb, high (upper half), low, or a list")
    faults_per_inference: int = spec(1, range=(1, 1_000_000), help="faulty sites per inference (one bit each)")
    ber: float | None = spec(None, range=(0.0, 1.0), help="bit error rate instead of a fault count")
    samples: int | str = spec("auto", choices=("auto",), range=(1, 100_000_000),
                              help="faulty inferences, or auto: one fault per inference with an absolute margin "
                                   "is sized by Leveugle et al. over the (input, register, bit) population; "
                                   "otherwise the campaign runs until the SDC rate's interval reaches the margin "
                                   "(checked after every batch), at most max_samples")
    margin: float = spec(0.02, range=(1e-5, 0.5), help="target half-width of the SDC rate's interval: absolute "
                                                       "(0.01 = one percentage point) or, with margin_relative, "
                                                       "a fraction of the measured rate (0.1 = 10 %)")
    margin_relative: bool = spec(False, help="margin is relative to the measured SDC rate; samples: auto then stops "
                                             "on the measured interval, for single faults too")
    max_samples: int = spec(100_000, range=(1, 100_000_000),
                            help="most faulty inferences a campaign sized on its interval runs")
    confidence: float = spec(0.95, range=(0.5, 0.9999))
    early_stop: bool = spec(False, help="with explicit samples or Leveugle sizing: stop once the SDC rate's "
                                        "interval reaches the margin (checked after every batch)")
    golden_agreement: float = spec(0.99, range=(0.0, 1.0),
                                   help="float scales: least share of campaign inputs whose fault-free top-1 the "
                                        "integer engine and Brevitas must agree on (Brevitas rounds float32 sums, "
                                        "the engine is the hardware's fixed point); po2 scales must agree on every "
                                        "logit bit for bit")
    inputs: int = spec(256, range=(0, 10_000_000), help="test images the campaign draws from, 0 = all")
    seed: int = spec(0, range=(0, 2**31 - 1), help="seed of the fault list")
    shard_size: int = spec(2048, range=(1, 10_000_000), help="faulty inferences per resumable shard")
    batch_size: int = spec(256, range=(1, 65536), help="faulty inferences evaluated together")

    @property
    def sites(self) -> tuple[str, ...]:
        """Return the fault sites as a tuple (one or several)."""
        return (self.site,) if isinstance(self.site, str) else self.site


@dataclass(frozen=True)
class ProtectConfig:
    """Profiled activation bounds (stage range-restrict): which requantized layer outputs, how fine, how wide."""

    layers: tuple[str, ...] = spec((), help="weight layers whose requantized outputs are protected; empty = "
                                            "every layer whose output feeds another")
    granularity: str = spec("layer", choices=("layer", "channel"),
                            help="one [min, max] per protected tensor, or one per output channel")
    range: str = spec("profiled", choices=RANGE_MODES,
                      help="profiled per layer, one global bound over all protected layers, or 10x it")
    margin: float = spec(0.0, range=(0.0, 1e9), help="codes added beyond each bound")
    factor: float = spec(1.0, range=(1.0, 1000.0), help="bounds scaled away from zero first (SED: 1.1)")
    placement: str = spec("output", choices=("output", "input"),
                          help="where the protection checks a protected tensor: on the array's column outputs "
                               "(after requantization, the RTL's range check) or as the next layer reads it "
                               "(also catching faults in the activation buffer)")
    gamma: float = spec(2.0, range=(0.0625, 128.0), help="afd: a code may be gamma times its neighbour's "
                                                         "magnitude (a power of two)")
    gates: int = spec(2, range=(1, 2), help="afd: suppress a code above gamma x one neighbour (1) or both (2)")
    afd_action: str = spec("drop", choices=("drop", "clip"), help="afd: zero a suppressed code, or clip it")


@dataclass(frozen=True)
class RunConfig:
    """One fully specified design point."""

    name: str = spec("experiment", help="experiment name (folder under runs/experiments)")
    seed: int = spec(0, range=(0, 2**31 - 1), help="seed of training and campaigns")
    device: str = spec("auto", choices=("auto", "cpu", "cuda"), help="torch device; results do not depend on it")
    threads: int = spec(0, range=(0, 256), help="torch threads per process, 0 = all cores")
    stages: tuple[str, ...] = spec(("inject", "synth"), choices=SWEEP_STAGES,
                                   help="what `sweep` computes at every design point (each with what it needs): "
                                        "quantize (QAT or PTQ), range-restrict (range protections only), inject, "
                                        "synth (protections the RTL builds), rtlsim (the accelerator in compiled RTL "
                                        "simulation)")
    data: DataConfig = spec(factory=DataConfig)
    model: ModelConfig = spec(factory=ModelConfig)
    quant: QuantConfig = spec(factory=QuantConfig)
    train: TrainConfig = spec(factory=TrainConfig)
    ptq: PtqConfig = spec(factory=PtqConfig)
    hw: HwConfig = spec(factory=HwConfig)
    faults: FaultConfig = spec(factory=FaultConfig)
    protect: ProtectConfig = spec(factory=ProtectConfig)


@dataclass(frozen=True)
class FileSchema(RunConfig):
    """The experiment file: a design point plus the axes that vary it."""

    sweep: Mapping[str, tuple[Any, ...]] = spec(factory=dict, help="dotted key -> list of values (grid)")
    zip: Mapping[str, tuple[Any, ...]] = spec(factory=dict, help="dotted key -> list (paired, equal length)")


@dataclass(frozen=True)
class Point:
    """One design point of an experiment: the values its axes take, and its full config."""

    axes: Mapping[str, Any]
    config: RunConfig

    @property
    def label(self) -> str:
        """Name the point by its axis values, e.g. `quant.bits=4,quant.method=ptq`."""
        return ",".join(f"{k}={v}" for k, v in self.axes.items()) or "base"


@dataclass(frozen=True)
class Experiment:
    """A loaded experiment file: its name, source and expanded design points."""

    name: str
    source: str
    points: tuple[Point, ...]


def load_experiment(path: str | Path, overrides: Sequence[str] = ()) -> Experiment:
    """Read, validate and expand an experiment file; raise ConfigError on any problem."""
    source = str(path)
    raw = read_yaml(source)
    for item in overrides:
        apply_override(raw, item)
    return expand(raw, source)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one `dotted.key=value` override (value parsed as YAML) to the raw experiment data."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError("--set", item, "expected dotted.key=value")
    check_key(key, "--set")
    value = parse_yaml(text, "--set", key) if text.strip() else None
    target = raw
    parts = key.split(".")
    if parts[0] in ("sweep", "zip") and len(parts) > 1:
        parts = [parts[0], ".".join(parts[1:])]
    for part in parts[:-1]:
        child = target.get(part)
        if not isinstance(child, dict):
            child = target[part] = {}
        target = child
    target[parts[-1]] = value


def check_key(dotted: str, source: str) -> None:
    """Raise ConfigError unless `dotted` names a setting of the experiment schema."""
    parts = dotted.split(".")
    if parts[0] in ("sweep", "zip") and len(parts) > 1:
        check_axis_key(".".join(parts[1:]), source, parts[0])
        return
    if resolve_field(FileSchema, dotted) is None:
        raise ConfigError(source, dotted, suggest_key(FileSchema, dotted))


def check_axis_key(dotted: str, source: str, section: str) -> None:
    """Raise ConfigError unless a sweep axis names a design-point setting that can vary."""
    if dotted in ("name", "sweep", "zip") or resolve_field(RunConfig, dotted) is None:
        reason = "cannot be a sweep axis" if dotted == "name" else suggest_key(RunConfig, dotted)
        raise ConfigError(source, f"{section}.{dotted}", reason)


def expand(raw: dict[str, Any], source: str) -> Experiment:
    """Validate the file, then build and validate every design point of its sweep grid."""
    file_cfg = Converter(source).dataclass_from(FileSchema, raw, "")
    if not NAME_PATTERN.match(file_cfg.name) or ".." in file_cfg.name:
        raise ConfigError(source, "name", f"expected letters, digits, '.', '_' or '-' (no path), "
                                          f"got {file_cfg.name!r}")
    axes = _axes(file_cfg, source)
    base = {k: v for k, v in raw.items() if k not in ("sweep", "zip")}
    points = []
    for combo in axes:
        point_raw = _deep_copy(base)
        for key, value in combo.items():
            _set_dotted(point_raw, key, value)
        config = Converter(source).dataclass_from(RunConfig, point_raw, "")
        points.append(Point(axes=combo, config=normalize(config, source)))
    return Experiment(name=file_cfg.name, source=source, points=tuple(_unique(points)))


def _axes(file_cfg: FileSchema, source: str) -> list[dict[str, Any]]:
    grid_axes: list[list[tuple[str, Any]]] = []
    for key, values in file_cfg.sweep.items():
        check_axis_key(key, source, "sweep")
        grid_axes.append([(key, v) for v in _nonempty(values, source, f"sweep.{key}")])
    zipped = file_cfg.zip
    if zipped:
        lengths = {len(_nonempty(v, source, f"zip.{k}")) for k, v in zipped.items()}
        if len(lengths) != 1:
            raise ConfigError(source, "zip", f"expected lists of equal length, got lengths {sorted(lengths)}")
        for key in zipped:
            check_axis_key(key, source, "zip")
        rows = zip(*[[(k, v) for v in vals] for k, vals in zipped.items()], strict=True)
        grid_axes.append([tuple(row) for row in rows])
    combos = []
    for choice in itertools.product(*grid_axes):
        combo: dict[str, Any] = {}
        for item in choice:
            pairs = item if isinstance(item[0], tuple) else (item,)
            combo.update(dict(pairs))
        combos.append(combo)
    return combos


def _nonempty(values: Any, source: str, key: str) -> tuple[Any, ...]:
    if not values:
        raise ConfigError(source, key, "expected a non-empty list of values")
    return tuple(values)


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = raw.get(part)
        if not isinstance(child, dict):
            child = raw[part] = {}
        raw = child
    raw[leaf] = value


def network_layers(config: RunConfig, source: str = "") -> list[str]:
    """Return the weight-layer names of the design point's network, in execution order (a factory network
    is built and checked once per file content and data geometry: torch is imported only then)."""
    from dsetool.models.zoo import weight_layer_names

    if config.model.qonnx:
        return list(qonnx_info(config, source).weight_layers)
    if not config.model.factory:
        return weight_layer_names(config.model.arch, config.model.mlp_hidden)
    return list(factory_info(config, source).weight_layers)


def logits_layer(config: RunConfig, source: str = "") -> str | None:
    """Return the weight layer whose accumulators are the logits: a built-in network's last, a factory's or an
    imported model's when its last op is one (None when the logits are a pool's sums, as SqueezeNet's)."""
    if config.model.qonnx:
        return qonnx_info(config, source).logits_layer
    if config.model.factory:
        return factory_info(config, source).logits_layer
    return network_layers(config, source)[-1]


def qonnx_info(config: RunConfig, source: str = "") -> Any:
    """Return the `dsetool.models.qonnx_import.QonnxInfo` of an imported model; a file that cannot be
    imported is a ConfigError on `model.qonnx`."""
    from dsetool.models.qonnx_import import QonnxError, describe_qonnx, file_digest

    try:
        return describe_qonnx(config.model.qonnx, file_digest(config.model.qonnx))
    except QonnxError as error:
        raise ConfigError(source or str(config.name), "model.qonnx", str(error)) from None


def _from_qonnx(config: RunConfig, source: str) -> RunConfig:
    """Take the widths and scale format from the imported model (they are the file's, not the
    experiment's), after checking that it reads the data set's images and classes."""
    from dsetool.data import geometry_of

    if config.model.factory:
        raise ConfigError(source, "model.qonnx", "give either model.factory or model.qonnx, not both")
    info = qonnx_info(config, source)
    channels, _, classes = geometry_of(config.data.name, config.data.root)
    c, h, w = info.input_shape
    if c != channels or classes != info.num_classes or h != w:
        raise ConfigError(source, "model.qonnx",
                          f"{config.model.qonnx} reads {c}x{h}x{w} images into {info.num_classes} classes; "
                          f"{config.data.name} has {channels}-channel images of {classes} classes (and the input "
                          "must be square)")
    quant = dataclasses.replace(config.quant, weight_bits=info.weight_bits, act_bits=info.act_bits, bits=None,
                                layers={}, scaling=info.scaling, weight_granularity=info.weight_granularity,
                                relu_unsigned=info.relu_unsigned)
    return dataclasses.replace(config, quant=quant)


def factory_info(config: RunConfig, source: str = "") -> Any:
    """Return the `dsetool.models.factory.FactoryInfo` of a factory network; a broken factory is a
    ConfigError on `model.factory`."""
    from dsetool.data import geometry_of
    from dsetool.models.factory import FactoryError, describe, source_digest

    try:
        channels, native, classes = geometry_of(config.data.name, config.data.root)
        return describe(config.model.factory, source_digest(config.model.factory), channels, tuple(native), classes)
    except FactoryError as error:
        raise ConfigError(source or str(config.name), "model.factory", str(error)) from None


def normalize(config: RunConfig, source: str) -> RunConfig:
    """Resolve shorthands so equal design points compare (and hash) equal; check cross-field rules."""

    if config.model.qonnx:
        config = _from_qonnx(config, source)
    quant = config.quant
    if config.model.factory and quant.layers:
        raise ConfigError(source, "quant.layers", "per-layer bit widths are not offered for model.factory networks "
                                                  "(Brevitas's graph quantizer applies one width per layer kind)")
    layers = network_layers(config, source)
    for key, names in (("quant.layers", list(quant.layers)), ("faults.layers", list(config.faults.layers)),
                       ("protect.layers", list(config.protect.layers))):
        for name in names:
            if name not in layers:
                raise ConfigError(source, f"{key}.{name}" if key == "quant.layers" else key,
                                  f"{config.model.label} has no layer {name!r}" + did_you_mean(name, layers))
    if quant.bits is not None:
        quant = dataclasses.replace(quant, weight_bits=quant.bits, act_bits=quant.bits, bits=None)
    config = dataclasses.replace(config, quant=quant)
    if isinstance(config.faults.site, tuple) and len(config.faults.site) == 1:   # [act] is act, same key
        config = dataclasses.replace(config, faults=dataclasses.replace(config.faults, site=config.faults.site[0]))
    _check_faults(config, layers, source)
    if math.log2(config.protect.gamma) != round(math.log2(config.protect.gamma)):
        raise ConfigError(source, "protect.gamma", f"must be a power of two (a shift in hardware), not "
                                                   f"{config.protect.gamma:g}")
    if config.protect.placement == "input" and config.hw.protection in protection_registry.CHANNEL_FILTERS:
        raise ConfigError(source, "protect.placement", f"{config.hw.protection} filters along channels, which a "
                                                       "linear layer's flattened input lacks; use output")
    if config.protect.range != "profiled" and config.protect.granularity == "channel":
        raise ConfigError(source, "protect.range", f"{config.protect.range} bounds are one range per layer; "
                                                   "use protect.granularity: layer")
    logits = logits_layer(config, source)
    if logits in config.protect.layers:
        raise ConfigError(source, "protect.layers", f"{logits} computes the logits: it has no requantized "
                                                    "output to protect")
    return config


def _check_faults(config: RunConfig, layers: list[str], source: str) -> None:
    """Reject fault specs the model cannot take: a rate outside (0, 1), a bit beyond the register."""
    faults = config.faults
    if faults.ber is not None and not 0.0 < faults.ber < 1.0:
        raise ConfigError(source, "faults.ber", f"expected a bit error rate in (0, 1), got {faults.ber!r}")
    if not faults.sites:
        raise ConfigError(source, "faults.site", "expected at least one fault site, got an empty list")
    twice = next((site for i, site in enumerate(faults.sites) if site in faults.sites[:i]), None)
    if twice is not None:
        raise ConfigError(source, "faults.site", f"{twice} is listed twice (each register counts once)")
    shadows = [site for site in faults.sites if site_registry.site(site).register is site_registry.FINISHED]
    if shadows and config.hw.dataflow != "os":
        raise ConfigError(source, "faults.site", f"{shadows[0]} is the output-stationary accelerator's shadow "
                                                 f"registers; hw.dataflow is {config.hw.dataflow!r}")
    if isinstance(faults.bits, str):
        return
    chosen = [name for name in layers if not faults.layers or name in faults.layers]
    for site in faults.sites:
        known = [w for w in (_register_width(config, layers, name, site, source) for name in chosen) if w is not None]
        if not known:
            continue
        width = min(known)
        beyond = [b for b in faults.bits if b >= width]
        if beyond:
            raise ConfigError(source, "faults.bits", f"bit {beyond[0]} is beyond the {width}-bit {site} "
                                                     f"register (bits 0..{width - 1})")


def _register_width(config: RunConfig, layers: list[str], name: str, site: str, source: str = "") -> int | None:
    """Return the width of the register fault site `site` reads in layer `name` (None: the wide logits,
    or an accumulator sized for the network)."""
    register = site_registry.site(site).register
    if register.quant_bits is None:
        return config.hw.acc_bits or None
    if register.next_layer and name == logits_layer(config, source):
        return None
    position = layers.index(name) + (1 if register.next_layer else 0)
    # past the last layer (its output requantized: logits from a pool) only the experiment's widths apply
    override = config.quant.layers.get(layers[position]) if position < len(layers) else None
    value = getattr(override, register.quant_bits) if override is not None else None
    return int(value or getattr(config.quant, register.quant_bits))


def _unique(points: list[Point]) -> list[Point]:
    """Drop points whose configs coincide (e.g. `quant.bits` and `quant.weight_bits` axes that agree)."""
    seen: set[str] = set()
    out = []
    for point in points:
        key = json.dumps(to_plain(point.config), sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(point)
    return out


def schema() -> dict[str, Any]:
    """Return the JSON Schema of experiment files."""
    return json_schema(FileSchema, "dsetool experiment")
