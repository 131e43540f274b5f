"""Fault campaigns: seeded shards of faulty inferences, streamed to Parquet, summarised with intervals.

A campaign is cut into shards of `shard_size` faulty inferences. Each shard's faults come from its own
seeded generator and its rows are written to one Parquet file (temp file, then rename), so a killed
campaign resumes at the first missing shard and ends with exactly the rows of an uninterrupted run.
Counts are accumulated shard by shard: a million faults never need a million rows in memory.

Sizing (`sizing`) follows what is sampled. A single-fault campaign samples the (input, register, bit)
population, and Leveugle et al.'s formula over that population gives its size. A campaign with several
faults or a bit error rate per inference samples no such population: it runs until the Wilson interval
of its SDC rate is as narrow as asked (absolute, or relative to the rate), checked after every round of
batches, up to `max_samples`. Whatever stopped it is recorded (`STOP_REASONS`). Stopping mid-shard keeps
the rows a prefix of the uninterrupted campaign's, so a resumed campaign stops at the same inference.
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
from dsetool.faults.sampler import (
    FaultList,
    population,
    sample_ber_mode,
    sample_count_mode,
    sample_single_faults,
    shard_rng,
)
from dsetool.faults.sites import SiteGroup
from dsetool.faults.stats import leveugle_samples, margin_reached, paired_difference, wilson

OUTCOMES = ("masked", "tolerated", "sdc")
# What a `Tally` counts: outcomes, accuracy of the faulty and of the golden run of the same inferences
# (`recovered`: golden wrong, faulty right, so the paired difference has its interval), where a detector
# flagged a value the faults changed (overall and among the SDCs and the critical faults: its coverage),
# and where a protection without a detector (a filter, a vote) changed a faulty value or result.
COUNTS = (*OUTCOMES, "critical", "recovered", "correct", "golden_correct", "n", "detected", "detected_sdc",
          "detected_critical", "changed")
# Why a campaign ran as many faulty inferences as it did (meanings: the `stop_reason` column's).
STOP_REASONS = ("samples", "margin", "population", "max_samples")
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
    margin_relative: bool = False
    max_samples: int = 100_000
    detects: bool = True   # the protection flags what it finds (a range check), else it only changes values

    @property
    def single_fault(self) -> bool:
        """Tell whether every inference gets exactly one fault (the case Leveugle's population sizing fits)."""
        return self.ber is None and self.faults_per_inference == 1


@dataclass(frozen=True)
class Sizing:
    """How many faulty inferences a campaign may run, and whether it stops once its margin is reached.

    `limit` is the most it runs and `limit_reason` names what set it (one of `STOP_REASONS`); with
    `sequential`, the SDC rate's Wilson interval is checked after every round of batches against `margin`
    (absolute, or times the rate with `relative`). `rule` says where the size came from: explicit,
    leveugle (single faults over their population) or wilson (sequential, from the interval).
    """

    limit: int
    limit_reason: str
    sequential: bool
    rule: str
    margin: float
    relative: bool
    confidence: float

    def reached(self, tally: Tally) -> bool:
        """Tell whether the measured SDC rate's interval is as narrow as asked."""
        return self.sequential and margin_reached(tally.counts["sdc"], tally.counts["n"], self.margin, self.relative,
                                                  self.confidence)

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
        faulty_right = pc.equal(rows.column("faulty_top1"), rows.column("label"))
        golden_right = pc.equal(rows.column("golden_top1"), rows.column("label"))
        self.counts["recovered"] += _count(pc.and_(faulty_right, pc.invert(golden_right)))
        self.counts["correct"] += _count(faulty_right)
        self.counts["golden_correct"] += _count(golden_right)
        self.counts["n"] += rows.num_rows
        detected = rows.column("detected")
        self.counts["detected"] += _count(detected)
        self.counts["detected_sdc"] += _count(pc.and_(detected, pc.equal(outcome, "sdc")))
        self.counts["detected_critical"] += _count(pc.and_(detected, rows.column("critical")))
        self.counts["changed"] += _count(rows.column("changed"))
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


def single_fault_population(spec: CampaignSpec, groups: Sequence[SiteGroup], n_inputs: int) -> int:
    """Return how many distinct single faults a campaign can draw: (input, register, bit) triples. (Under
    coarse TMR the replica a fault lands in is drawn too, but a single fault is outvoted in any of them.)"""
    return population(groups, spec.bits) * n_inputs


def sizing(spec: CampaignSpec, groups: Sequence[SiteGroup], n_inputs: int) -> Sizing:
    """Return how a campaign is sized (see the module docstring).

    Explicit `samples`: that many, stopping early at the margin only with `early_stop`. `auto` with one
    fault per inference and an absolute margin: Leveugle et al. over the single-fault population (worst
    case p = 0.5). `auto` otherwise (several faults, a bit error rate, or a relative margin, which needs
    the measured rate): sequential, up to `max_samples` (and, for single faults, the population).
    """
    def sized(limit: int, reason: str, sequential: bool, rule: str) -> Sizing:
        return Sizing(limit, reason, sequential, rule, spec.margin, spec.margin_relative, spec.confidence)

    whole = single_fault_population(spec, groups, n_inputs) if spec.single_fault else 0
    if isinstance(spec.samples, int):
        if spec.single_fault and spec.samples >= whole:   # without replacement: all of them, once each
            return sized(whole, "population", spec.early_stop, "explicit")
        return sized(spec.samples, "samples", spec.early_stop, "explicit")
    if spec.single_fault:
        if not spec.margin_relative:
            n = leveugle_samples(whole, spec.margin, spec.confidence)
            return sized(n, "population" if n >= whole else "samples", spec.early_stop, "leveugle")
        if whole <= spec.max_samples:
            return sized(whole, "population", True, "wilson")
    return sized(spec.max_samples, "max_samples", True, "wilson")


def planned_samples(spec: CampaignSpec, groups: Sequence[SiteGroup], n_inputs: int) -> int:
    """Return the most faulty inferences the campaign runs (`sizing(...).limit`)."""
    return sizing(spec, groups, n_inputs).limit


def draw_shard(spec: CampaignSpec, groups: Sequence[SiteGroup], n_inputs: int, shard: int, size: int,
               replica: int = 0) -> FaultList:
    """Return the faults of one shard (reproducible from the seed and the shard number alone); `replica`
    numbers independent draws of the same shard."""
    if spec.single_fault:
        first = shard * spec.shard_size
        return sample_single_faults(groups, spec.bits, n_inputs, np.arange(first, first + size, dtype=np.int64),
                                    spec.seed)
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
              faults: FaultList | Sequence[FaultList], first_trial: int, workers: Workers | None = None,
              stop: Callable[[pa.Table], bool] | None = None) -> pa.Table:
    """Evaluate one shard batch by batch and return one row per faulty inference.

    `workers` run the batches (`Workers`); without, they run here, one after the other. Exact either way.
    With several fault lists (a TMR campaign's replicas, same inputs), each is evaluated and the rows hold
    their vote (`vote`) and list the faults of all replicas. `stop`, when given, sees the rows of every
    batch in order and ends the shard after the first batch it accepts: where a shard stops depends on
    the batch size alone, not on how many workers ran it.
    """
    lists = [faults] if isinstance(faults, FaultList) else list(faults)
    size = lists[0].size
    span = size if stop is None else spec.batch_size * (workers.count if workers is not None else 1)
    done: list[pa.Table] = []
    for begin in range(0, max(size, 1), max(span, 1)):
        part = [_slice(f, begin, min(begin + span, size)) for f in lists]
        rows = _round_rows(net, golden, groups, spec, part, first_trial + begin, workers)
        if stop is None:
            done.append(rows)
            continue
        for offset in range(0, rows.num_rows, spec.batch_size):
            batch = rows.slice(offset, spec.batch_size)
            done.append(batch)
            if stop(batch):
                return pa.concat_tables(done)
    return pa.concat_tables(done)


def _round_rows(net: Network, golden: Golden, groups: Sequence[SiteGroup], spec: CampaignSpec,
                lists: Sequence[FaultList], first_trial: int, workers: Workers | None) -> pa.Table:
    """Return the rows of a run of inferences (one fault list, or a TMR campaign's replicas)."""
    if len(lists) == 1:
        return _rows(_evaluate_all(net, golden, groups, spec, lists[0], workers), golden, groups, lists[0],
                     first_trial, spec.detects)
    evaluated = [_evaluate_all(net, golden, groups, spec, replica, workers) for replica in lists]
    faulted = [np.bincount(replica.trial, minlength=replica.size) > 0 for replica in lists]
    return _rows(vote(evaluated, golden, lists[0].inputs, faulted), golden, groups, merged(lists), first_trial,
                 spec.detects)


def _slice(faults: FaultList, begin: int, end: int) -> FaultList:
    """Return the faults of inferences [begin, end) as a list of their own (numbered from 0)."""
    if begin == 0 and end == faults.size:
        return faults
    pick = (faults.trial >= begin) & (faults.trial < end)
    return FaultList(faults.inputs[begin:end], faults.trial[pick] - begin, faults.group[pick], faults.element[pick],
                     faults.bit[pick])


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
    its faults (the first one's step), else by the vote. Detected (a protection acted): in any replica.
    Outvoted: a replica that had faults predicted another class than the vote (the vote overruled it)."""
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
    voted = golden.predict(logits)
    outvoted = np.logical_or.reduce([hit & (t != voted).numpy() for t, hit in zip(top, faulted, strict=True)])
    return Evaluated(logits, first.detected | second.detected | third.detected, masked_by.astype(np.int8), outvoted)


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
        self.count = count
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
          first_trial: int, detects: bool) -> pa.Table:
    """Return one row per faulty inference. `detected`: a detector flagged a value the faults changed;
    `changed`: a protection without one (`detects` false: a filter) altered such a value, or a TMR vote
    overruled a faulty replica."""
    logits = evaluated.logits
    acted = evaluated.detected
    outvoted = evaluated.outvoted if evaluated.outvoted is not None else np.zeros(faults.size, dtype=np.bool_)
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
        "detected": acted if detects else np.zeros(faults.size, dtype=np.bool_),
        "changed": outvoted if detects else acted | outvoted,
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
                 progress: Callable[[Tally, int], None]) -> tuple[Tally, int, str]:
    """Run (or resume) every shard; return the tally, the most inferences it could run, and why it stopped
    (one of `STOP_REASONS`)."""
    n_inputs = len(golden.labels)
    size = sizing(spec, groups, n_inputs)
    tally = Tally()
    cores = torch.get_num_threads()
    parallel = cores > 1 and math.ceil(min(size.limit, spec.shard_size) / spec.batch_size) >= \
        MIN_BATCHES_PER_WORKER * cores

    def fold(rows: pa.Table) -> bool:
        tally.add(rows)
        return size.reached(tally)

    with Workers(net, golden, groups, spec.model, cores) if parallel else nullcontext() as workers:
        for shard in range(math.ceil(size.limit / spec.shard_size)):
            first = shard * spec.shard_size
            path = scratch / f"shard-{shard:06d}.parquet"
            if path.is_file():
                fold(pq.read_table(path))
            else:
                count = min(spec.shard_size, size.limit - first)
                faults = draw_shard(spec, groups, n_inputs, shard, count) if spec.replicas == 1 else \
                    draw_replicas(spec, groups, n_inputs, shard, count)
                rows = run_shard(net, golden, groups, spec, faults, first, workers,
                                 stop=fold if size.sequential else None)
                if not size.sequential:
                    fold(rows)
                _write_atomic(rows, path)
            progress(tally, size.limit)
            if size.reached(tally):
                return tally, size.limit, "margin"
    return tally, size.limit, size.limit_reason


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


def summarize(tally: Tally, golden: Golden, spec: CampaignSpec, reports_changes: bool = False) -> dict[str, Any]:
    """Return the campaign metrics: outcome rates with Wilson intervals, paired accuracies, breakdowns.

    Accuracy under faults is shown against `golden_accuracy`, the fault-free accuracy of the very same
    inferences (each faulty inference and its golden run form a pair), and `accuracy_drop` is their paired
    difference with Newcombe's interval. The accuracy over all campaign inputs (`campaign_inputs_accuracy`)
    and the test set's are other input sets: comparing either with accuracy under faults would mix which
    inputs the campaign happened to draw into what the faults cost.

    Detection figures (`detected_rate`, and the coverage `sdc_detected_rate`, `critical_detected_rate`)
    only for a protection that detects (`spec.detects`: a range check); `changed_rate` only when a filter or
    a vote could change values (`reports_changes`). An unprotected campaign has neither.
    """
    c = tally.counts
    n = c["n"]
    confidence = spec.confidence
    pairs = paired_difference(c["critical"], c["recovered"], c["golden_correct"] - c["critical"], n, confidence)
    metrics: dict[str, Any] = {
        "faulty_inferences": n, "campaign_inputs": len(golden.labels),
        "campaign_inputs_accuracy": float((golden.top1 == golden.labels).double().mean()) if len(golden.labels)
        else None,
        "golden_accuracy": c["golden_correct"] / n if n else None,
        "accuracy_under_faults": c["correct"] / n if n else None,
        "accuracy_drop": pairs.rate if n else None,
        "accuracy_drop_ci": [pairs.low, pairs.high] if n else None,
    }
    for name, count in (("golden_accuracy", "golden_correct"), ("accuracy", "correct")):
        rate = wilson(c[count], n, confidence)
        metrics[f"{name}_ci"] = [rate.low, rate.high] if n else None
    rates = [*((name, name, "n") for name in (*OUTCOMES, "critical"))]
    if spec.detects:
        rates += [("detected", "detected", "n"), ("sdc_detected", "detected_sdc", "sdc"),
                  ("critical_detected", "detected_critical", "critical")]
    if reports_changes:
        rates.append(("changed", "changed", "n"))
    for name, count, of in rates:
        rate = wilson(c[count], c[of], confidence)
        metrics[f"{name}_rate"] = rate.rate if c[of] else None   # of no SDC: no coverage
        metrics[f"{name}_ci"] = [rate.low, rate.high] if c[of] else None
    masked = c["masked"]
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
