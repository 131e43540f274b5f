"""Stage `inject`: a seeded fault campaign on the bit-exact integer engine of a quantized model.

The golden run of the campaign inputs is computed once and checked against Brevitas: with po2 scales
every logit must agree bit for bit, else the stage fails (a campaign on an engine that is not the model
would measure nothing); with float scales Brevitas rounds float32 sums where the engine (the hardware's
fixed point) does not, so near ties may differ by an LSB, and the stage fails only when the share of
inputs whose top-1 agrees falls below `faults.golden_agreement` (both figures are recorded). With a
`hw.protection` the campaign runs on the engine with that protection after every protected output stage
(a range check reads its bounds from the range-restrict stage), and reports how many fault-free
predictions the protection changes; with `hw.tmr` each inference runs three times with independent
faults and the rows hold the vote. Faulty inferences then reuse the golden run: only the ops from the
first faulted one onward run.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import torch

from dsetool.design import design_of
from dsetool.engine import load_intmodel
from dsetool.faults.campaign import (
    CampaignSpec,
    Golden,
    Tally,
    merge_shards,
    run_campaign,
    sizing,
    summarize,
)
from dsetool.faults.network import EngineNetwork
from dsetool.faults.sites import SiteError, site_groups
from dsetool.faults.stats import wilson
from dsetool.machine.build import checked_engine
from dsetool.protect import registry as protections
from dsetool.stages import StageContext, quant_stage
from dsetool.stages.common import MODEL_FILE, load_state, new_model, prepare
from dsetool.stages.restrict import read_bounds
from dsetool.store import Result
from dsetool.validate import ConfigError

SUMMARY_FILE = "summary.json"


class GoldenMismatch(RuntimeError):
    """The integer engine disagrees with Brevitas on a fault-free input."""


def run(ctx: StageContext) -> Result:
    """Run (or resume) the campaign of this design point and summarise it."""
    cfg = ctx.config
    splits, _ = prepare(cfg, cfg.threads)   # integer campaigns: any thread count gives the same result
    upstream = ctx.upstream[quant_stage(cfg)]
    intmodel_dir = upstream.path
    model = load_intmodel(intmodel_dir)
    design = design_of(cfg)
    engine = design.engine(model)
    test = splits.test
    count = len(test.y) if cfg.faults.inputs == 0 else min(cfg.faults.inputs, len(test.y))
    x, labels = test.x[:count], test.y[:count]
    network = EngineNetwork(engine)
    golden = Golden(engine.run(x, keep=True), labels, network.logit_scale())
    agreement = _check_against_qonnx(ctx, golden, x) if cfg.model.qonnx else \
        _check_against_brevitas(ctx, splits, golden, x)
    protection: dict[str, Any] = {"protection": design.protection.name, "tmr": design.protection.tmr}
    if design.protection.entry.protects:   # the campaign runs protected: its fault-free cost first
        engine = checked_engine(design, model, read_bounds(ctx, design))
        network = EngineNetwork(engine)
        unprotected, golden = golden, Golden(engine.run(x, keep=True), labels, network.logit_scale())
        protection.update(clean_predictions_changed=int((golden.top1 != unprotected.top1).sum()),
                          clean_accuracy_protected=float((golden.top1 == labels).double().mean()) if count else None)
    narrow = {n: b for n, b in network.acc_bits().items() if cfg.hw.acc_bits and b > cfg.hw.acc_bits}
    if narrow:
        name, bits = next(iter(narrow.items()))
        raise ConfigError(str(cfg.name), "hw.acc_bits", f"{cfg.hw.acc_bits} bits cannot hold the accumulators of "
                                                        f"layer {name}, which need {bits}")
    try:
        groups = [group for site in cfg.faults.sites   # on the array of the accelerator that runs the network
                  for group in site_groups(model, site, cfg.faults.layers, network.acc_bits(), design.machine_array,
                                           design.weight_buffers)]
    except SiteError as exc:
        raise ConfigError(str(cfg.name), "faults", str(exc)) from None
    spec = _spec(cfg)
    began = time.perf_counter()
    label = f"inject {'+'.join(cfg.faults.sites)} {cfg.faults.model} W{cfg.quant.weight_bits}A{cfg.quant.act_bits}"
    tally, planned, reason = run_campaign(network, golden, groups, spec, ctx.scratch,
                                          _progress(ctx, label, spec, groups, count))
    ctx.reporter.finish()
    seconds = time.perf_counter() - began
    merge_shards(ctx.scratch, ctx.out, math.ceil(planned / spec.shard_size))
    summary = summarize(tally, golden, spec, protections.changes(cfg.hw.protection, cfg.hw.tmr))
    (ctx.out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True))
    metrics = {k: v for k, v in summary.items() if not k.startswith("by_")}
    quant_metrics = upstream.metrics
    metrics.update(agreement, **protection)
    metrics.update(planned_inferences=planned, quant_test_acc=quant_metrics.get("quant_test_acc"),
                   float_test_acc=quant_metrics.get("float_test_acc"), stop_reason=reason,
                   sizing=sizing(spec, groups, count).rule,
                   site="+".join(cfg.faults.sites), fault_model=cfg.faults.model, weight_bits=cfg.quant.weight_bits,
                   act_bits=cfg.quant.act_bits,
                   faults_per_second=tally.counts["n"] / seconds if seconds > 0 else None)
    return Result(metrics)


def _spec(cfg: Any) -> CampaignSpec:
    f = cfg.faults
    return CampaignSpec(model=f.model, bits=f.bits, faults_per_inference=f.faults_per_inference, ber=f.ber,
                        samples=f.samples, margin=f.margin, confidence=f.confidence, early_stop=f.early_stop,
                        seed=f.seed, shard_size=f.shard_size, batch_size=f.batch_size, replicas=3 if cfg.hw.tmr else 1,
                        margin_relative=f.margin_relative, max_samples=f.max_samples,
                        detects=protections.detects(cfg.hw.protection))


def _progress(ctx: StageContext, label: str, spec: CampaignSpec, groups: list[Any], n_inputs: int) -> Any:
    from dsetool.faults.campaign import planned_samples

    ctx.reporter.start(label, math.ceil(planned_samples(spec, groups, n_inputs) / spec.shard_size))

    began = time.perf_counter()

    def report(tally: Tally, planned: int) -> None:
        sdc = wilson(tally.counts["sdc"], tally.counts["n"], spec.confidence)
        rate = tally.counts["n"] / max(time.perf_counter() - began, 1e-9)
        ctx.reporter.advance(faults=f"{tally.counts['n']}/{planned}", rate=f"{rate:.0f}/s",
                             sdc=f"{100 * sdc.rate:.2f}% [{100 * sdc.low:.2f}, {100 * sdc.high:.2f}]")

    return report


def _check_against_brevitas(ctx: StageContext, splits: Any, golden: Golden, x: torch.Tensor) -> dict[str, Any]:
    """Compare the engine's golden logits with Brevitas's on the campaign inputs; return the share of inputs
    whose top-1 agrees and the largest logit difference in accumulator LSBs. Raise GoldenMismatch when po2
    scales differ at all, or float scales agree on fewer inputs than `faults.golden_agreement`."""
    model = new_model(ctx.config, splits, quantized=True)
    model.load_state_dict(load_state(ctx.upstream[quant_stage(ctx.config)].artifact(MODEL_FILE)))
    model.eval()
    with torch.no_grad():
        reference = model(x).double()
    ours = golden.outputs[-1]
    deviation = float((reference / golden.logit_scale - ours).abs().max()) if len(x) else 0.0
    agreement = float((reference.argmax(1) == golden.top1).double().mean()) if len(x) else 1.0
    judge_agreement(golden_rule(ctx), agreement, deviation, len(x), ctx.config.faults.golden_agreement)
    return {"golden_agreement": agreement, "max_lsb_deviation": deviation}


def golden_rule(ctx: StageContext) -> str:
    """Return how the engine must agree with its reference: "po2" (bit for bit) when the model is bit-exact
    (`IntModel.bit_exact`), else "float" (top-1, `faults.golden_agreement`)."""
    return "po2" if load_intmodel(ctx.upstream[quant_stage(ctx.config)].path).bit_exact else "float"


QONNX_REFERENCE_INPUTS = 32   # QONNX's executor runs one image at a time, node by node


def _check_against_qonnx(ctx: StageContext, golden: Golden, x: torch.Tensor) -> dict[str, Any]:
    """As `_check_against_brevitas`, against QONNX's own executor running the imported file on the first
    `QONNX_REFERENCE_INPUTS` campaign inputs (it runs one image at a time)."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    wrapper = ModelWrapper(ctx.config.model.qonnx).transform(InferShapes())
    name, output = wrapper.graph.input[0].name, wrapper.graph.output[0].name
    count = min(len(x), QONNX_REFERENCE_INPUTS)
    reference = torch.cat([torch.from_numpy(execute_onnx(wrapper, {name: x[i:i + 1].numpy()})[output]).double()
                           for i in range(count)]) if count else torch.zeros(0)
    ours = golden.outputs[-1][:count]
    deviation = float((reference / golden.logit_scale - ours).abs().max()) if count else 0.0
    agreement = float((reference.argmax(1) == golden.top1[:count]).double().mean()) if count else 1.0
    judge_agreement(golden_rule(ctx), agreement, deviation, count, ctx.config.faults.golden_agreement,
                    "QONNX's executor")
    return {"golden_agreement": agreement, "max_lsb_deviation": deviation}


def judge_agreement(scaling: str, agreement: float, deviation: float, inputs: int, minimum: float,
                    reference: str = "Brevitas") -> None:
    """Raise GoldenMismatch unless the engine reproduces the reference (Brevitas, or QONNX's executor) as
    its scaling promises: po2 bit for bit (every logit equal), float scales on at least `minimum` of the
    inputs' top-1."""
    disagree = round((1 - agreement) * inputs)
    what = f"on top-1 for {disagree} of {inputs} fault-free inputs (max logit deviation {deviation:.3g} LSB)"
    if scaling == "po2" and (deviation > 0 or agreement < 1.0):
        raise GoldenMismatch(f"integer engine and {reference} differ with po2 scales, which must be bit-exact: {what}")
    if agreement < minimum:
        raise GoldenMismatch(f"integer engine and {reference} disagree {what}, below faults.golden_agreement "
                             f"{minimum:g}")
