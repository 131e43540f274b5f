"""Fault campaigns: seeded shards of faulty inferences, streamed to Parquet, summarised with intervals.

A campaign is cut into shards of `shard_size` faulty inferences. Each shard's faults come from its own
seeded generator and its rows are written to one Parquet file (temp file, then rename), so a killed
campaign resumes at the first missing shard and ends with exactly the rows of an uninterrupted run.
Counts are accumulated shard by shard: a million faults never need a million rows in memory.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from dsetool.faults import kernels
from dsetool.faults.apply import Evaluated, Faults, Network, evaluate
from dsetool.faults.sampler import FaultList, population, sample_ber_mode, sample_count_mode, shard_rng
from dsetool.faults.sites import SiteGroup
from dsetool.faults.stats import leveugle_samples, wilson

OUTCOMES = ("masked", "tolerated", "sdc")
# What a `Tally` counts: outcomes, accuracy, and detections (a protection acted on a value the faults
# changed), overall and among the SDCs and the critical faults (the detector's coverage).
COUNTS = (*OUTCOMES, "critical", "correct", "golden_correct", "n", "detected", "detected_sdc", "detected_critical")
MAX_LISTED_FAULTS = 16
# The single-fault breakdowns of a campaign summary (`by_site`, `by_layer`, `by_bit`).
BREAKDOWN = ("site", "layer", "bit")
ROWS_FILE = "faults.parquet"


@dataclass(frozen=True)
class CampaignSpec:
    """What to inject and how many times (resolved from the experiment's `faults` section)."""

    model: str
    bits: str | tuple[int, ...]
    faults_per_inference: int
    ber: float | None
    samples: int | str
    margin: float
    confidence: float
    early_stop: bool
    seed: int
    shard_size: int
    batch_size: int
    replicas: int = 1   # 3: coarse TMR, three independently faulted executions voting on top-1


@dataclass(frozen=True)
class Golden:
    """The fault-free run of the campaign inputs: every op's output, labels and top-1."""

    outputs: list[torch.Tensor]
    labels: torch.Tensor
    logit_scale: torch.Tensor  # per class: with per-channel weight scales, raw accumulators don't compare

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Return the top-1 class of logit accumulators."""
        return (logits * self.logit_scale).argmax(dim=1)

    @property
    def top1(self) -> torch.Tensor:
        """Return the golden prediction of every input."""
        return self.predict(self.outputs[-1])


@dataclass
class Tally:
    """Running counts of a campaign, and per (layer, bit) counts of its single-fault inferences."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    # (site, layer, bit) -> [n, sdc, critical]
    breakdown: dict[tuple[str, str, int], list[int]] = field(default_factory=dict)
    masked_by: dict[str, int] = field(default_factory=dict)   # step -> masked inferences

    def add(self, rows: pa.Table) -> None:
        """Fold one shard's rows into the counts."""
        outcome = rows.column("outcome").cast(pa.string())
        for name in OUTCOMES:
            self.counts[name] += _count(pc.equal(outcome, name))
        self.counts["critical"] += _count(rows.column("critical"))
        self.counts["correct"] += _count(pc.equal(rows.column("faulty_top1"), rows.column("label")))
        self.counts["golden_correct"] += _count(pc.equal(rows.column("golden_top1"), rows.column("label")))
        self.counts["n"] += rows.num_rows
        detected = rows.column("detected")
        self.counts["detected"] += _count(detected)
        self.counts["detected_sdc"] += _count(pc.and_(detected, pc.equal(outcome, "sdc")))
        self.counts["detected_critical"] += _count(pc.and_(detected, rows.column("critical")))
        steps = rows.column("masked_by").cast(pa.string()).value_counts()
        for step, count in zip(steps.field("values").to_pylist(), steps.field("counts").to_pylist(), strict=True):
            if step:
                self.masked_by[step] = self.masked_by.get(step, 0) + count
        single = pc.equal(rows.column("n_faults"), 1)
        part = pa.table({"site": rows.column("site").cast(pa.string()), "layer": rows.column("layer").cast(pa.string()),
                         "bit": rows.column("bit"), "sdc": pc.equal(outcome, "sdc").cast(pa.int64()),
                         "critical": rows.column("critical").cast(pa.int64())}).filter(single)
        summed = part.group_by(list(BREAKDOWN)).aggregate([("sdc", "count"), ("sdc", "sum"), ("critical", "sum")])
        for site, layer, bit, n, sdc, critical in zip(*(summed.column(name).to_pylist() for name in (
                *BREAKDOWN, "sdc_count", "sdc_sum", "critical_sum")), strict=True):
            total = self.breakdown.setdefault((site, layer, bit), [0, 0, 0])
            for i, value in enumerate((n, sdc, critical)):
                total[i] += value


def _count(mask: pa.ChunkedArray | pa.Array) -> int:
    """Return how many values of a boolean column are true."""
    return int(pc.sum(mask.cast(pa.int64())).as_py() or 0)


def planned_samples(spec: CampaignSpec, groups: Sequence[SiteGroup], n_inputs: int) -> int:
    """Return the number of faulty inferences: explicit, or sized by Leveugle et al. from the margin."""
    if isinstance(spec.samples, int):
        return spec.samples
    return leveugle_samples(population(groups, spec.bits) * n_inputs, spec.margin, spec.confidence)


def draw_shard(spec: CampaignSpec, groups: Sequence[SiteGroup], n_inputs: int, shard: int, size: int,
               replica: int = 0) -> FaultList:
    """Return the faults of one shard (reproducible from the seed and the shard number alone); `replica`
    numbers independent draws of the same shard."""
    rng = shard_rng(spec.seed, shard) if replica == 0 else shard_rng(spec.seed, shard, replica)
    if spec.ber is not None:
        return sample_ber_mode(groups, spec.bits, spec.ber, size, n_inputs, rng)
    return sample_count_mode(groups, spec.bits, spec.faults_per_inference, size, n_inputs, rng)


def draw_replicas(spec: CampaignSpec, groups: Sequence[SiteGroup], n_inputs: int, shard: int, size: int
                  ) -> list[FaultList]:
    """Return the faults of each of a TMR campaign's replicas for one shard, on the same inputs: with a
    bit error rate every replica's bits flip independently; with a fault count the inference's faults
    are drawn as usual and each lands in one replica at random (a single fault hits one replica)."""
    first = draw_shard(spec, groups, n_inputs, shard, size)
    if spec.ber is not None:
        return [first, *(dataclasses.replace(draw_shard(spec, groups, n_inputs, shard, size, r), inputs=first.inputs)
                         for r in range(1, spec.replicas))]
    owner = shard_rng(spec.seed, shard, spec.replicas).integers(0, spec.replicas, size=len(first.trial))
    return [FaultList(first.inputs, first.trial[owner == r], first.group[owner == r], first.element[owner == r],
                      first.bit[owner == r]) for r in range(spec.replicas)]


def merged(lists: Sequence[FaultList]) -> FaultList:
    """Return the faults of several lists over the same inputs as one list (sorted by inference)."""
    trial = np.concatenate([f.trial for f in lists])
    order = np.argsort(trial, kind="stable")
    group, element, bit = (np.concatenate([getattr(f, name) for f in lists])[order]
                           for name in ("group", "element", "bit"))
    return FaultList(lists[0].inputs, trial[order], group, element, bit)


def run_shard(net: Network, golden: Golden, groups: Sequence[SiteGroup], spec: CampaignSpec,
              faults: FaultList | Sequence[FaultList], first_trial: int, workers: Workers | None = None) -> pa.Table:
    """Evaluate one shard batch by batch and return one row per faulty inference.

    `workers` run the batches (`Workers`); without, they run here, one after the other. Exact either way.
    With several fault lists (a TMR campaign's replicas, same inputs), each is evaluated and the rows hold
    their vote (`vote`) and list the faults of all replicas.
    """
    if isinstance(faults, FaultList):
        return _rows(_evaluate_all(net, golden, groups, spec, faults, workers), golden, groups, faults, first_trial)
    evaluated = [_evaluate_all(net, golden, groups, spec, replica, workers) for replica in faults]
    faulted = [np.bincount(replica.trial, minlength=replica.size) > 0 for replica in faults]
    return _rows(vote(evaluated, golden, faults[0].inputs, faulted), golden, groups, merged(faults), first_trial)


def _evaluate_all(net: Network, golden: Golden, groups: Sequence[SiteGroup], spec: CampaignSpec, faults: FaultList,
                  workers: Workers | None) -> Evaluated:
    starts = range(0, faults.size, spec.batch_size)
    parts = [_batch_faults(faults, begin, min(begin + spec.batch_size, faults.size)) for begin in starts]
    if workers is None:
        batches = [evaluate(net, golden.outputs, inputs, groups, chosen, spec.model) for inputs, chosen in parts]
    else:
        batches = workers.map(parts)
    return Evaluated(torch.cat([b.logits for b in batches]), np.concatenate([b.detected for b in batches]),
                     np.concatenate([b.masked_by for b in batches]))


def vote(replicas: Sequence[Evaluated], golden: Golden, inputs: np.ndarray, faulted: Sequence[np.ndarray]
         ) -> Evaluated:
    """Return three replicas' majority ([Ozen] §8.8.1, coarse TMR): the top-1 two of them agree on, else
    the first's. Logits: the golden ones where two replicas computed them exactly (a bitwise vote gives
    them), else those of the first replica with the voted top-1. `faulted[r]` says which rows replica r
    had faults in. Golden logits were masked by the replicas themselves where every faulted replica masked
    its faults (the first one's step), else by the vote. Detected: a protection acted in any replica."""
    first, second, third = replicas
    top = [golden.predict(r.logits) for r in replicas]
    pick = torch.where((top[0] != top[1]) & (top[0] != top[2]) & (top[1] == top[2]), 1, 0)
    logits = torch.where((pick == 1)[:, None], second.logits, first.logits)
    golden_logits = golden.outputs[-1][torch.from_numpy(inputs)]
    exact = torch.stack([(r.logits == golden_logits).all(dim=1) for r in replicas]).sum(dim=0) >= 2
    logits = torch.where(exact[:, None], golden_logits, logits)
    same = (logits == golden_logits).all(dim=1).numpy()
    own = np.zeros(len(inputs), dtype=np.int8)   # the first faulted replica's own step, where it masked
    alone = np.ones(len(inputs), dtype=bool)     # every faulted replica masked its faults itself
    for replica, hit in zip(reversed(replicas), reversed(faulted), strict=True):
        own = np.where(hit, replica.masked_by, own)
        alone &= ~hit | (replica.masked_by != kernels.LIVE)
    any_fault = np.logical_or.reduce(list(faulted))
    masked_by = np.where(same & any_fault, np.where(alone, own, kernels.VOTE), kernels.LIVE)
    return Evaluated(logits, first.detected | second.detected | third.detected, masked_by.astype(np.int8))


def _batch_faults(faults: FaultList, begin: int, end: int) -> tuple[np.ndarray, Faults]:
    """Return the inputs and faults of trials [begin, end), the rows numbered from 0."""
    pick = (faults.trial >= begin) & (faults.trial < end)
    return faults.inputs[begin:end], Faults(faults.trial[pick] - begin, faults.group[pick], faults.element[pick],
                                            faults.bit[pick])


class Workers:
    """Run a campaign's batches on `count` threads, one batch per thread at a time.

    A batch is a chain of small steps that one thread keeps busy; torch's operations and the compiled
    fault kernels release the interpreter lock, so batches side by side use the cores better than each
    step split over them (torch runs single-threaded meanwhile). Forked worker processes were slower:
    the fork, and shipping every batch's faults and logits, cost more than the lock (see the README).
    """

    def __init__(self, net: Network, golden: Golden, groups: Sequence[SiteGroup], model: str, count: int) -> None:
        self.net, self.outputs, self.groups, self.model = net, golden.outputs, groups, model
        self.pool = ThreadPoolExecutor(count)
        self.threads = torch.get_num_threads()

    def __enter__(self) -> Workers:
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown()
        torch.set_num_threads(self.threads)

    def map(self, parts: Sequence[tuple[np.ndarray, Faults]]) -> list[Evaluated]:
        """Return every batch evaluated, in order."""
        return list(self.pool.map(lambda part: evaluate(self.net, self.outputs, part[0], self.groups, part[1],
                                                        self.model), parts))


def _rows(evaluated: Evaluated, golden: Golden, groups: Sequence[SiteGroup], faults: FaultList,
          first_trial: int) -> pa.Table:
    logits = evaluated.logits
    inputs = torch.from_numpy(faults.inputs)
    golden_logits = golden.outputs[-1][inputs]
    golden_top1, faulty_top1 = golden.predict(golden_logits).numpy(), golden.predict(logits).numpy()
    labels = golden.labels[inputs].numpy()
    identical = (logits == golden_logits).all(dim=1).numpy()
    outcome = np.where(identical, 0, np.where(golden_top1 != faulty_top1, 2, 1))  # index into OUTCOMES
    n_faults = np.bincount(faults.trial, minlength=faults.size)
    masked_by = np.where(identical, evaluated.masked_by, kernels.LIVE).astype(np.int32)
    names = pa.array([g.layer for g in groups] + [""])
    sites = pa.array([g.site for g in groups] + [""])
    layer = np.full(faults.size, len(groups), dtype=np.int32)   # "": not a single-fault inference
    element = np.full(faults.size, -1, dtype=np.int64)
    bit = np.full(faults.size, -1, dtype=np.int64)
    single = np.nonzero(n_faults == 1)[0]
    if len(single):  # faults are sorted by trial, so searchsorted finds each single fault
        j = np.searchsorted(faults.trial, single)
        layer[single], element[single], bit[single] = faults.group[j], faults.element[j], faults.bit[j]
    return pa.table({
        "trial": np.arange(faults.size, dtype=np.int64) + first_trial,
        "input": faults.inputs,
        "label": labels,
        "golden_top1": golden_top1,
        "faulty_top1": faulty_top1,
        "outcome": pa.DictionaryArray.from_arrays(outcome.astype(np.int32), pa.array(OUTCOMES)),
        "critical": (golden_top1 == labels) & (faulty_top1 != labels),
        "detected": evaluated.detected,
        "masked_by": pa.DictionaryArray.from_arrays(masked_by, pa.array(kernels.MASKED_BY)),
        "n_faults": n_faults,
        "site": pa.DictionaryArray.from_arrays(layer, sites),
        "layer": pa.DictionaryArray.from_arrays(layer, names),
        "element": element,
        "bit": bit,
        "faults": _fault_lists(faults, sites, names, n_faults),
    })


def _fault_lists(faults: FaultList, sites: pa.Array, layers: pa.Array, n_faults: np.ndarray) -> pa.ListArray:
    """List every fault of an inference as {site, layer, element, bit} (none beyond MAX_LISTED_FAULTS)."""
    listed = n_faults[faults.trial] <= MAX_LISTED_FAULTS
    offsets = np.zeros(faults.size + 1, dtype=np.int32)
    np.cumsum(np.bincount(faults.trial[listed], minlength=faults.size), out=offsets[1:])
    group = faults.group[listed].astype(np.int32)
    items = pa.StructArray.from_arrays(
        [pa.DictionaryArray.from_arrays(group, sites), pa.DictionaryArray.from_arrays(group, layers),
         pa.array(faults.element[listed].astype(np.int64)), pa.array(faults.bit[listed].astype(np.int64))],
        names=["site", "layer", "element", "bit"])
    return pa.ListArray.from_arrays(pa.array(offsets), items)


# A campaign runs its batches in parallel (`Workers`, as many as torch has threads) when each worker
# gets at least this many.
MIN_BATCHES_PER_WORKER = 2


def run_campaign(net: Network, golden: Golden, groups: Sequence[SiteGroup], spec: CampaignSpec, scratch: Path,
                 progress: Callable[[Tally, int], None]) -> tuple[Tally, int, bool]:
    """Run (or resume) every shard; return the tally, the planned size and whether it stopped early."""
    n_inputs = len(golden.labels)
    planned = planned_samples(spec, groups, n_inputs)
    tally = Tally()
    stopped_early = False
    cores = torch.get_num_threads()
    parallel = cores > 1 and math.ceil(planned / spec.batch_size) >= MIN_BATCHES_PER_WORKER * cores
    with Workers(net, golden, groups, spec.model, cores) if parallel else nullcontext() as workers:
        for shard in range(math.ceil(planned / spec.shard_size)):
            first = shard * spec.shard_size
            path = scratch / f"shard-{shard:06d}.parquet"
            if path.is_file():
                rows = pq.read_table(path)
            else:
                size = min(spec.shard_size, planned - first)
                faults = draw_shard(spec, groups, n_inputs, shard, size) if spec.replicas == 1 else \
                    draw_replicas(spec, groups, n_inputs, shard, size)
                rows = run_shard(net, golden, groups, spec, faults, first, workers)
                _write_atomic(rows, path)
            tally.add(rows)
            progress(tally, planned)
            if spec.early_stop and \
                    wilson(tally.counts["sdc"], tally.counts["n"], spec.confidence).half_width < spec.margin:
                stopped_early = tally.counts["n"] < planned
                break
    return tally, planned, stopped_early


def _write_atomic(rows: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    pq.write_table(rows, tmp)
    os.replace(tmp, path)


def merge_shards(scratch: Path, out: Path, shards: int) -> None:
    """Concatenate shard files into one Parquet file without holding all rows in memory."""
    writer: pq.ParquetWriter | None = None
    try:
        for shard in range(shards):
            path = scratch / f"shard-{shard:06d}.parquet"
            if not path.is_file():
                break
            table = pq.read_table(path)
            if writer is None:
                writer = pq.ParquetWriter(out / ROWS_FILE, table.schema)
            writer.write_table(table.cast(writer.schema))
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        pq.write_table(pa.table({}), out / ROWS_FILE)


def summarize(tally: Tally, golden: Golden, confidence: float) -> dict[str, Any]:
    """Return the campaign metrics: outcome rates with Wilson intervals, accuracy under faults, breakdowns.

    `accuracy_drop` compares the faulty inferences with the fault-free runs of the same inputs (paired):
    against `golden_accuracy`, the accuracy on every campaign input, it would carry the noise of which
    inputs the campaign drew (and could come out negative on a campaign where faults never help).
    """
    n = tally.counts["n"]
    golden_acc = float((golden.top1 == golden.labels).float().mean())
    faulty_acc = tally.counts["correct"] / n if n else float("nan")
    drop = (tally.counts["golden_correct"] - tally.counts["correct"]) / n if n else float("nan")
    metrics: dict[str, Any] = {"faulty_inferences": n, "golden_accuracy": golden_acc,
                               "accuracy_under_faults": faulty_acc, "accuracy_drop": drop}
    for name, count, of in [*((name, name, "n") for name in (*OUTCOMES, "critical", "detected")),
                            ("sdc_detected", "detected_sdc", "sdc"), ("critical_detected", "detected_critical",
                                                                      "critical")]:
        rate = wilson(tally.counts[count], tally.counts[of], confidence)
        metrics[f"{name}_rate"] = rate.rate if tally.counts[of] else None   # of no SDC: no coverage
        metrics[f"{name}_ci"] = [rate.low, rate.high] if tally.counts[of] else None
    masked = tally.counts["masked"]
    metrics["masked_by"] = {step: {"n": count, "share": count / masked}
                            for step, count in sorted(tally.masked_by.items(), key=lambda item: -item[1])}
    for key in BREAKDOWN:
        metrics[f"by_{key}"] = _breakdown(tally, key, confidence)
    return metrics


def _breakdown(tally: Tally, key: str, confidence: float) -> dict[str, dict[str, Any]]:
    index = BREAKDOWN.index(key)
    grouped: dict[str, list[int]] = {}
    for where, counts in sorted(tally.breakdown.items(), key=lambda item: item[0][index]):
        total = grouped.setdefault(str(where[index]), [0, 0, 0])
        for i, value in enumerate(counts):
            total[i] += value
    out = {}
    for name, (n, sdc_count, critical_count) in grouped.items():
        sdc, crit = wilson(sdc_count, n, confidence), wilson(critical_count, n, confidence)
        out[name] = {"n": n, "sdc_rate": sdc.rate, "sdc_ci": [sdc.low, sdc.high],
                     "critical_rate": crit.rate, "critical_ci": [crit.low, crit.high]}
    return out
