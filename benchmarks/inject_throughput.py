"""Print fault-injection throughput of our integer-engine campaigns next to PyTorchFI's, on LeNet-5, AlexNet-32,
ResNet-20 and MobileNet.

Run: `.venv/bin/python benchmarks/inject_throughput.py` (a few minutes on 2 idle cores; `--help` lists the
knobs; `--archs resnet20,mobilenet` measures some). The clean integer engine is also timed against
Brevitas's forward pass of the same quantized model (the reference it is bit-exact with), the two
alternating call by call after one warm-up call each (`paired_rates`).
PyTorchFI is a benchmark-only dependency: `.venv/bin/pip install --no-deps pytorchfi`; without it its lines
say so and the rest is printed.

Both sides start from the same float network, trained briefly on the embedded digits (32x32). Ours is its
W8A8 (po2) quantization run on the bit-exact integer engine: `run_campaign` with single-bit `act` flips
(one per inference, sites uniform over the chosen layers' input activation codes), batches of `--batch`
on `--threads` worker threads, Parquet rows written to a temp dir, all timed. PyTorchFI (0.6) runs the
*float* network, PyTorch's fastest path and so its most favourable case (it cannot hook the Brevitas
model itself: it injects only into leaf modules, and a Brevitas QuantConv2d holds its quantizers as child
modules), with one neuron fault per inference, sites uniform over every conv/linear output value, each
flipping one random bit of the value's int8 code (per-layer max-abs scale): (a) batch 1, one
`declare_neuron_fi` per fault; (b) one fault per element of a `--batch` batch, declared
again for every batch as its documentation does. The uniform campaign and PyTorchFI's faster batched mode
are then timed once more, alternately (`paired_rates`): their ratio is the one to read on a shared machine,
whose speed drifts between the minutes the separate figures are taken in. Every figure is the median of at
least `--repeats` timed runs and of as many as fit in 2 seconds.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dsetool.data import DataSplits, Split, load_dataset
from dsetool.engine import Engine, load_intmodel, ops
from dsetool.faults.campaign import CampaignSpec, Golden, run_campaign
from dsetool.faults.network import EngineNetwork
from dsetool.faults.sites import site_groups
from dsetool.models.export import calibrate_activations, export_integer
from dsetool.models.fold import folded_state
from dsetool.models.quant import QuantSpec
from dsetool.models.zoo import build_model, load_float_weights

SHAPE = (1, 32, 32)
INT8 = 8
WIDTH = 52  # of the label column


@dataclass(frozen=True)
class Plan:
    """What to measure on one architecture."""

    arch: str
    train_epochs: int
    samples: int            # faults per campaign
    per_layer: bool         # also one campaign per weight layer
    pfi_single: int         # faults of PyTorchFI's batch-1 mode (its batched mode injects `samples`)


@dataclass
class Setup:
    """One architecture: the float network, its integer engine, the campaign inputs and their golden run."""

    arch: str
    float_model: nn.Module
    quant_model: nn.Module
    net: EngineNetwork
    intmodel: dict[str, Any]
    x: torch.Tensor
    golden: Golden
    accuracy: tuple[float, float]   # float, integer engine (on x)


# Every figure keeps timing until this much time has passed (and `--repeats` runs): on a shared virtual
# machine single runs of a tenth of a second vary by 2x from one process to the next.
MIN_SECONDS = 2.0


def median_rate(run: Callable[[], Any], work: int, repeats: int) -> float:
    """Return the median of `work / seconds` over timed calls of `run`: at least `repeats` of them, and
    as many more as fit in `MIN_SECONDS` (at most 100)."""
    rates: list[float] = []
    spent = 0.0
    while len(rates) < repeats or (spent < MIN_SECONDS and len(rates) < 100):
        began = time.perf_counter()
        run()
        seconds = time.perf_counter() - began
        spent += seconds
        rates.append(work / seconds)
    return statistics.median(rates)


def paired_rates(first: Callable[[], Any], second: Callable[[], Any], work: int, repeats: int
                 ) -> tuple[float, float, list[float]]:
    """Return the median `work / seconds` of `first` and of `second`, timed alternately (after one untimed
    call each) so that both see the same machine, and the ratio first / second of each pair: this shared
    VM's speed drifts between seconds, and a ratio of figures taken one after the other inherits the
    drift; the pairs' spread shows what is left of it. At least `repeats` pairs, and as many more as fit
    in 2 * `MIN_SECONDS` (at most 100)."""
    first()
    second()
    rates: tuple[list[float], list[float]] = ([], [])
    spent = 0.0
    while len(rates[0]) < repeats or (spent < 2 * MIN_SECONDS and len(rates[0]) < 100):
        for run, out in ((first, rates[0]), (second, rates[1])):
            began = time.perf_counter()
            run()
            seconds = time.perf_counter() - began
            spent += seconds
            out.append(work / seconds)
    return statistics.median(rates[0]), statistics.median(rates[1]), [a / b for a, b in zip(*rates, strict=True)]


def row(label: str, value: float, unit: str, note: str = "") -> None:
    """Print one figure of the table (ratios with two decimals)."""
    number = f"{value:>10.2f}" if unit == "x" else f"{value:>10,.0f}"
    print(f"  {label:<{WIDTH}} {number} {unit:<9} {note}".rstrip())


def changed(wrong: int, total: int) -> str:
    """Return the note giving the share of faults that changed the top-1 class."""
    return f"top-1 changed {100 * wrong / total:.1f}%"


def train_float(arch: str, data: DataSplits, epochs: int) -> nn.Module:
    """Return the float network after `epochs` of Adam on the train split (seeded), in eval mode."""
    torch.manual_seed(0)
    model = build_model(arch, in_channels=1, num_classes=10, image_size=SHAPE[1:])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        order = torch.randperm(len(data.train.y))
        for begin in range(0, len(order), 64):
            pick = order[begin:begin + 64]
            loss = nn.functional.cross_entropy(model(data.train.x[pick]), data.train.y[pick])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def quantize(arch: str, float_model: nn.Module, calib: Split, directory: Path) -> tuple[nn.Module, Engine, dict]:
    """Quantize the float network to W8A8 po2 (PTQ); export it; return it, its engine and the export."""
    quant = build_model(arch, in_channels=1, num_classes=10, image_size=SHAPE[1:],
                        quant=QuantSpec(weight_bits=8, act_bits=8, scaling="po2"))
    load_float_weights(quant, folded_state(float_model))   # batch norms (graph models) folded into the convs
    calibrate_activations(quant, [calib.x])
    quant.eval()
    intmodel = export_integer(quant, directory, arch=arch, input_shape=SHAPE)
    return quant, Engine(load_intmodel(directory)), intmodel


def prepare(plan: Plan, data: DataSplits, batch: int) -> Setup:
    """Train, quantize and export `plan.arch`; run the golden pass on the first `batch` test images."""
    float_model = train_float(plan.arch, data, plan.train_epochs)
    with tempfile.TemporaryDirectory() as out:
        quant_model, engine, intmodel = quantize(plan.arch, float_model, data.calib, Path(out))
    x, y = data.test.x[:batch], data.test.y[:batch]
    net = EngineNetwork(engine)
    golden = Golden(engine.run(x, keep=True), y, net.logit_scale())
    with torch.no_grad():
        float_acc = float((float_model(x).argmax(1) == y).float().mean())
    int_acc = float((golden.top1 == y).float().mean())
    return Setup(plan.arch, float_model, quant_model, net, intmodel, x, golden, (float_acc, int_acc))


def campaign_runner(setup: Setup, layers: Sequence[str], samples: int, batch: int
                    ) -> tuple[Callable[[], None], Callable[[], str]]:
    """Return a call running one single-bit `act` flip campaign of `samples` faults (a new seed and scratch
    each time), and one giving a note on the outcomes of the last."""
    groups = site_groups(setup.net.engine.model, "act", layers, setup.net.acc_bits())
    seeds = itertools.count()
    counts: dict[str, int] = {}

    def run() -> None:
        spec = CampaignSpec(model="bitflip", bits="all", faults_per_inference=1, ber=None, samples=samples,
                            margin=0.02, confidence=0.95, early_stop=False, seed=next(seeds),
                            shard_size=samples, batch_size=batch)
        with tempfile.TemporaryDirectory() as scratch:
            tally, _, _ = run_campaign(setup.net, setup.golden, groups, spec, Path(scratch), lambda *_: None)
        counts.update(tally.counts)

    def note() -> str:
        return f"masked {100 * counts['masked'] / counts['n']:.0f}%, {changed(counts['sdc'], counts['n'])}"

    return run, note


def campaign_rate(setup: Setup, layers: Sequence[str], samples: int, batch: int, repeats: int) -> tuple[float, str]:
    """Return the median faults/s of a campaign (`campaign_runner`) and a note on the outcomes of the last."""
    run, note = campaign_runner(setup, layers, samples, batch)
    return median_rate(run, samples, repeats), note()


def measure_ours(setup: Setup, plan: Plan, batch: int, repeats: int) -> float:
    """Print the clean and campaign figures; return the uniform campaign's faults/s."""
    engine = setup.net.engine
    with torch.no_grad():
        clean, brevitas, _ = paired_rates(lambda: engine.run(setup.x), lambda: setup.quant_model(setup.x), len(setup.x),
                                       repeats)
    row("ours: clean integer-engine inference", clean, "images/s")
    row("brevitas: W8A8 forward of the same model", brevitas, "images/s")
    row("ratio: clean engine / brevitas forward", clean / brevitas, "x")
    names = [layer.name for layer in engine.layers.values()]
    campaign_rate(setup, [], batch, batch, 1)  # warm-up: Parquet writer, allocator, compiled fault kernels
    for name in names if plan.per_layer else []:
        rate, note = campaign_rate(setup, [name], plan.samples, batch, repeats)
        row(f"ours: act bit-flip campaign, {name} (N={plan.samples})", rate, "faults/s", note)
    uniform, note = campaign_rate(setup, [], plan.samples, batch, repeats)
    row(f"ours: act bit-flip campaign, uniform (N={plan.samples})", uniform, "faults/s", note)
    row("ours: uniform faults/s / clean images/s", uniform / clean, "x")
    return uniform


def weight_modules(model: nn.Module) -> list[nn.Module]:
    """Return the conv/linear modules in PyTorchFI's layer order (depth-first over children)."""
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def layer_outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Return every conv/linear output of a clean forward pass."""
    outputs: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out.detach().clone()))
               for m in weight_modules(model)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def flip_int8(values: torch.Tensor, scale: float, bits: torch.Tensor) -> torch.Tensor:
    """Return `values` after flipping bit `bits` of their symmetric int8 code at `scale`."""
    codes = torch.clamp(torch.round(values / scale), -128, 127).to(torch.int64)
    pattern = torch.bitwise_xor(codes & 0xFF, torch.bitwise_left_shift(torch.ones_like(codes), bits))
    return (pattern - 256 * (pattern >= 128)).to(values.dtype) * scale


class NeuronSites:
    """Sample neuron fault sites uniformly over every value of the injectable layers' outputs."""

    def __init__(self, shapes: Sequence[Sequence[int]], seed: int) -> None:
        self.shapes = [tuple(shape[1:]) for shape in shapes]
        sizes = np.array([int(np.prod(shape)) for shape in self.shapes])
        self.starts, self.total = np.cumsum(sizes) - sizes, int(sizes.sum())
        self.rng = np.random.default_rng(seed)

    def draw(self, n: int) -> dict[str, list[Any]]:
        """Return `declare_neuron_fi` coordinates of n sites (dim2/dim3 None for linear layers)."""
        flat = self.rng.integers(self.total, size=n)
        layers = np.searchsorted(self.starts, flat, side="right") - 1
        dims = np.full((3, n), None, dtype=object)
        for layer in np.unique(layers).tolist():
            mine = layers == layer
            for axis, coords in enumerate(np.unravel_index(flat[mine] - self.starts[layer], self.shapes[layer])):
                dims[axis, mine] = coords.tolist()
        return {"layer_num": layers.tolist(), "dim1": dims[0].tolist(), "dim2": dims[1].tolist(),
                "dim3": dims[2].tolist()}


class BitFlipHook:
    """A PyTorchFI `function=` hook: flip one random bit of the int8 code of every declared neuron of the
    layer it runs on, vectorised (the fastest custom hook we can write; PyTorchFI's own loops in Python)."""

    def __init__(self, pfi: Any, scales: Sequence[float], seed: int) -> None:
        self.pfi, self.scales = pfi, scales
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        pfi = self.pfi
        layer = pfi.get_current_layer()
        picks = [j for j, target in enumerate(pfi.corrupt_layer) if target == layer]
        if picks:
            lists = (pfi.corrupt_batch, pfi.corrupt_dim1, pfi.corrupt_dim2, pfi.corrupt_dim3)[:output.dim()]
            index = tuple(torch.tensor([values[j] for j in picks]) for values in lists)
            bits = torch.randint(INT8, (len(picks),), generator=self.generator)
            output[index] = flip_int8(output[index], self.scales[layer], bits)
        pfi.updateLayer()
        if pfi.get_current_layer() >= pfi.get_total_layers():
            pfi.reset_current_layer()


@dataclass(frozen=True)
class FloatCase:
    """What PyTorchFI injects into: the float network, the inputs, and their clean run."""

    model: nn.Module
    x: torch.Tensor
    top1: torch.Tensor                  # the float network's own clean predictions
    outputs: list[torch.Tensor]         # every conv/linear output of the clean run
    scales: list[float]                 # per layer: max |output| / 127, the int8 step

    @classmethod
    def of(cls, model: nn.Module, x: torch.Tensor) -> FloatCase:
        """Run `model` cleanly on `x` and keep what the injections compare with."""
        outputs = layer_outputs(model, x)
        with torch.no_grad():
            top1 = model(x).argmax(1)
        return cls(model, x, top1, outputs, [max(float(out.abs().max()), 1e-12) / 127 for out in outputs])


def pfi_injector(model: nn.Module, batch: int) -> Any:
    """Return PyTorchFI's injector for conv/linear neurons of `model` on CPU."""
    from pytorchfi.core import fault_injection

    return fault_injection(model, batch, input_shape=list(SHAPE), layer_types=[nn.Conv2d, nn.Linear],
                           use_cuda=False)


def declare(pfi: Any, **injection: Any) -> nn.Module:
    """Return `pfi.declare_neuron_fi(**injection)`, the corrupted copy of the model.

    PyTorchFI 0.6 never empties its list of hook handles and every declaration removes all of them again,
    so the n-th costs O(n) (mode (a) on LeNet-5 slows by a third over 900 declarations). The stale
    handles belong to discarded copies of the model: dropping them changes nothing but that cost.
    """
    pfi.handles.clear()
    return pfi.declare_neuron_fi(**injection)


def pfi_single_rate(case: FloatCase, faults: int, repeats: int) -> tuple[float, str]:
    """Return PyTorchFI's faults/s with one fault per batch-1 forward pass (declared anew each time), and a
    note on the outcomes of the last repeat."""
    pfi = pfi_injector(case.model, 1)
    sites, hook = NeuronSites(pfi.get_output_size(), seed=1), BitFlipHook(pfi, case.scales, seed=1)
    size, wrong = len(case.x), [0]

    def run() -> None:
        drawn = sites.draw(faults)
        wrong[0] = 0
        for i in range(faults):
            corrupted = declare(pfi, batch=[0], function=hook, **{key: [values[i]] for key, values in drawn.items()})
            with torch.no_grad():
                wrong[0] += int(corrupted(case.x[i % size][None]).argmax(1) != case.top1[i % size])

    return median_rate(run, faults, repeats), changed(wrong[0], faults)


def pfi_batched_rate(case: FloatCase, batches: int, repeats: int, precomputed: bool) -> tuple[float, str]:
    """Return PyTorchFI's faults/s with one fault per batch element (`pfi_batched_runner`) and a note on
    the outcomes of the last repeat."""
    run, wrong = pfi_batched_runner(case, batches, precomputed)
    size = len(case.x)
    return median_rate(run, batches * size, repeats), changed(wrong[0], batches * size)


def pfi_batched_runner(case: FloatCase, batches: int, precomputed: bool) -> tuple[Callable[[], None], list[int]]:
    """Return a call injecting one fault per batch element over `batches` batches, declared anew for every
    batch, and the count of top-1 changes of its last call.

    `precomputed`: the flipped values are computed ahead from the clean outputs and declared with `value=`
    (PyTorchFI's built-in hook); else the `BitFlipHook` computes them during the forward pass.
    """
    size = len(case.x)
    pfi = pfi_injector(case.model, size)
    sites, hook = NeuronSites(pfi.get_output_size(), seed=2), BitFlipHook(pfi, case.scales, seed=2)
    generator = torch.Generator().manual_seed(2)
    wrong = [0]

    def run() -> None:
        wrong[0] = 0
        for _ in range(batches):
            drawn = sites.draw(size)
            if precomputed:
                values = flipped_values(case, drawn, torch.randint(INT8, (size,), generator=generator))
                corrupted = declare(pfi, batch=list(range(size)), value=values, **drawn)
            else:
                corrupted = declare(pfi, batch=list(range(size)), function=hook, **drawn)
            with torch.no_grad():
                wrong[0] += int((corrupted(case.x).argmax(1) != case.top1).sum())

    return run, wrong


def flipped_values(case: FloatCase, drawn: dict[str, list[Any]], bits: torch.Tensor) -> list[float]:
    """Return the faulty value of each drawn site (site b in batch element b), from the clean outputs."""
    layers = torch.tensor(drawn["layer_num"])
    values = torch.empty(len(layers))
    for layer in layers.unique().tolist():
        picks = torch.nonzero(layers == layer).flatten()
        clean = case.outputs[layer]
        coords = [torch.tensor([drawn[key][j] for j in picks.tolist()]) for key in ("dim1", "dim2", "dim3")
                  [:clean.dim() - 1]]
        values[picks] = flip_int8(clean[(picks, *coords)], case.scales[layer], bits[picks])
    return values.tolist()


def measure_pfi(setup: Setup, plan: Plan, batch: int, repeats: int) -> tuple[float, float, bool] | None:
    """Print PyTorchFI's figures; return (best batched, single) faults/s and whether the best batched mode
    is (b'), or None when it is missing."""
    try:
        import pytorchfi  # noqa: F401
    except ImportError:
        print("  pytorchfi not installed (pip install pytorchfi)")
        return None
    print(f"  pfi: PyTorchFI {version('pytorchfi')} runs the float32 network, its most favourable case "
          f"(no quantizers; int8 codes emulated)")
    with torch.no_grad():
        for label, model in (("float32", setup.float_model), ("Brevitas W8A8", setup.quant_model)):
            model(setup.x)
            clean = median_rate(partial(model, setup.x), len(setup.x), repeats)
            row(f"pfi: ceiling on {label} (forward, no faults)", clean, "images/s")
    case = FloatCase.of(setup.float_model, setup.x)
    single, note = pfi_single_rate(case, plan.pfi_single, repeats)
    row(f"pfi: (a) batch 1, 1 fault/forward (N={plan.pfi_single})", single, "faults/s", note)
    batches = max(1, plan.samples // batch)
    batched, note = pfi_batched_rate(case, batches, repeats, precomputed=False)
    row(f"pfi: (b) batch {batch}, 1 fault/element (N={batches * batch})", batched, "faults/s", note)
    valued, note = pfi_batched_rate(case, batches, repeats, precomputed=True)
    row(f"pfi: (b') as (b), built-in value= hook (N={batches * batch})", valued, "faults/s", note)
    return max(batched, valued), single, valued >= batched


def header(batch: int, threads: int, repeats: int) -> str:
    """Return the first line: machine, torch, batch size."""
    cpu = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    int8 = "faster than float32" if ops.int8_gemm_fast() else \
        "exact but slower than float32: not used" if ops.int8_gemm_available() else "not exact: not used"
    return (f"machine: {cpu}, nproc {len(os.sched_getaffinity(0))} (load {os.getloadavg()[0]:.1f}); "
            f"torch {torch.__version__} (capability {torch.backends.cpu.get_cpu_capability()}; int8 GEMM "
            f"{int8}), {threads} threads; batch {batch}; median of >= {repeats} runs and >= {MIN_SECONDS:g} s")


def measure(plan: Plan, data: DataSplits, batch: int, repeats: int) -> None:
    """Print every figure of one architecture."""
    setup = prepare(plan, data, batch)
    float_acc, int_acc = setup.accuracy
    print(f"{plan.arch} W8A8 po2, digits 32x32, {plan.train_epochs} float epochs: top-1 on the {batch} "
          f"images {float_acc:.3f} float / {int_acc:.3f} integer")
    routes: dict[str, list[str]] = {}
    for layer in setup.net.engine.layers.values():
        routes.setdefault(layer.route, []).append(layer.name)
    print("  engine routes: " + "; ".join(f"{route} {', '.join(names)}" for route, names in routes.items()))
    ours = measure_ours(setup, plan, batch, repeats)
    pfi = measure_pfi(setup, plan, batch, repeats)
    if pfi is not None:
        batched, single, valued = pfi
        row("ratio: ours uniform / pfi best batched (b, b')", ours / batched, "x")
        row("ratio: ours uniform / pfi single (a)", ours / single, "x")
        # The same two timed alternately: figures taken minutes apart inherit this VM's drift.
        batches = max(1, plan.samples // batch)
        campaign, _ = campaign_runner(setup, [], batches * batch, batch)
        injector, _ = pfi_batched_runner(FloatCase.of(setup.float_model, setup.x), batches, valued)
        ours_paired, theirs_paired, ratios = paired_rates(campaign, injector, batches * batch, repeats)
        label = "b'" if valued else "b"
        row(f"paired: ours uniform, alternating with pfi ({label})", ours_paired, "faults/s")
        row(f"paired: pfi ({label}), alternating with ours", theirs_paired, "faults/s")
        row(f"ratio: ours / pfi ({label}), timed alternately", ours_paired / theirs_paired, "x",
            f"pairs {min(ratios):.2f}-{max(ratios):.2f}x, median {statistics.median(ratios):.2f}x over {len(ratios)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lenet-samples", type=int, default=4096)
    # 2,048 faults are 8 batches of 256: the campaign runs them on its worker threads, as a sweep's campaigns
    # of thousands of faults do (fewer than 2 batches per thread run one after the other, `run_campaign`)
    parser.add_argument("--alexnet-samples", type=int, default=2048)
    parser.add_argument("--alexnet-epochs", type=int, default=3, help="float training epochs (~7 s each)")
    parser.add_argument("--graph-samples", type=int, default=2048, help="faults per ResNet-20 / MobileNet campaign")
    parser.add_argument("--graph-epochs", type=int, default=6, help="float training epochs of ResNet-20 / MobileNet")
    parser.add_argument("--archs", default="lenet5,alexnet32,resnet20,mobilenet")
    args = parser.parse_args()
    # PyTorchFI calls logging.basicConfig with a format needing a `clientip` field, which breaks every
    # later log record; configuring the root logger first makes its call a no-op.
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    print(header(args.batch, args.threads, args.repeats))
    data = load_dataset("digits", image_size=SHAPE[1])
    plans = (Plan("lenet5", 8, args.lenet_samples, True, 300),
             Plan("alexnet32", args.alexnet_epochs, args.alexnet_samples, False, 100),
             Plan("resnet20", args.graph_epochs, args.graph_samples, False, 100),
             Plan("mobilenet", args.graph_epochs, args.graph_samples, False, 100))
    wanted = args.archs.split(",")
    for plan in (p for p in plans if p.arch in wanted):
        measure(plan, data, args.batch, args.repeats)
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (this run alone makes up to {args.threads}; "
          f"more means another job shared the cores)")


if __name__ == "__main__":
    main()
