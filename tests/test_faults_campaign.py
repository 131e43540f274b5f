"""Fault campaigns: the fast path (prefix reuse, sparse weight deltas, early exit) equals brute force,
seeded shards are reproducible, and a killed campaign resumes to the same result."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dsetool.faults import campaign, kernels
from dsetool.faults.apply import Evaluated, Faults, evaluate
from dsetool.faults.bits import apply_fault
from dsetool.faults.campaign import CampaignSpec, Golden, draw_shard, merge_shards, run_campaign, summarize
from dsetool.faults.network import EngineNetwork
from dsetool.faults.sites import site_groups
from tests.fixtures.engines import digits, exported_engine

N_INPUTS = 48


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    torch.set_num_threads(1)
    directory = tmp_path_factory.mktemp("lenet")
    engine = exported_engine(directory, "lenet5", bits=4)
    network = EngineNetwork(engine)
    x, y = digits().test.x[:N_INPUTS], digits().test.y[:N_INPUTS]
    golden = Golden(engine.run(x, keep=True), y, network.logit_scale())
    raw = engine.model   # the typed model: the one reader of the export
    return engine, network, golden, raw, x


def spec(**changes) -> CampaignSpec:
    base = dict(model="bitflip", bits="all", faults_per_inference=1, ber=None, samples=300, margin=0.02,
                confidence=0.95, early_stop=False, seed=7, shard_size=100, batch_size=64)
    return CampaignSpec(**{**base, **changes})


def brute_force(engine, raw, group, x_row, element, bit, model):
    """Recompute one faulty inference from scratch, faulting the tensor (or weights) directly."""
    op = group.op_index
    if group.hook == "weight":
        layer = engine.layers[op]
        saved = layer.weight.clone()
        n_out = layer.weight.shape[1]
        k = element % (layer.weight.shape[0])
        n = element // layer.weight.shape[0]
        assert n < n_out
        old = layer.weight[k, n].to(torch.int64).reshape(1)
        layer.weight[k, n] = apply_fault(old, torch.tensor([bit]), model, group.width, True).double()[0]
        try:
            return engine.run(x_row[None])
        finally:
            layer.weight.copy_(saved)
    outputs = engine.run(x_row[None], keep=True)
    target = outputs[op - 1] if group.hook == "pre" else outputs[op]
    flat = target.reshape(-1).clone()
    old = flat[element].to(torch.int64).reshape(1)
    flat[element] = apply_fault(old, torch.tensor([bit]), model, group.width, group.signed).double()[0]
    start = op if group.hook == "pre" else op + 1
    return engine.run(flat.reshape(target.shape), start=start) if start < len(outputs) else flat.reshape(1, -1)


@pytest.mark.parametrize("site", ["act", "weight", "out"])
@pytest.mark.parametrize("model", ["bitflip", "stuck1", "zero"])
def test_fast_path_equals_brute_force(setup, site, model):
    engine, network, golden, raw, x = setup
    groups = site_groups(raw, site, [], network.acc_bits())
    faults = draw_shard(spec(model=model), groups, N_INPUTS, shard=0, size=60)
    logits = evaluate(network, golden.outputs, faults.inputs, groups,
                      Faults(faults.trial, faults.group, faults.element, faults.bit), model).logits
    for t in range(faults.size):
        group = groups[int(faults.group[t])]
        expected = brute_force(engine, raw, group, x[faults.inputs[t]], int(faults.element[t]),
                               int(faults.bit[t]), model)
        assert torch.equal(logits[t], expected.reshape(-1)), (site, group.layer, t)


def test_a_campaign_over_several_sites_is_exact_and_broken_down_per_site(setup, tmp_path: Path):
    """`site: [act, weight, out]`: faults drawn over the union, each row exact, a breakdown per site."""
    engine, network, golden, raw, x = setup
    groups = [g for site in ("act", "weight", "out") for g in site_groups(raw, site, [], network.acc_bits())]
    faults = draw_shard(spec(), groups, N_INPUTS, shard=0, size=90)
    logits = evaluate(network, golden.outputs, faults.inputs, groups,
                      Faults(faults.trial, faults.group, faults.element, faults.bit), "bitflip").logits
    for t in range(faults.size):
        group = groups[int(faults.group[t])]
        expected = brute_force(engine, raw, group, x[faults.inputs[t]], int(faults.element[t]),
                               int(faults.bit[t]), "bitflip")
        assert torch.equal(logits[t], expected.reshape(-1)), (group.site, group.layer, t)
    tally, _, _ = run_campaign(network, golden, groups, spec(samples=400, shard_size=400), tmp_path,
                               lambda t, p: None)
    merge_shards(tmp_path, tmp_path, 1)
    rows = pd.read_parquet(tmp_path / "faults.parquet")
    assert set(rows["site"]) == {"act", "weight", "out"}
    assert all(item["site"] == site for site, items in zip(rows["site"], rows["faults"], strict=True)
               for item in items)
    summary = summarize(tally, golden, spec())
    assert {site: part["n"] for site, part in summary["by_site"].items()} == rows["site"].value_counts().to_dict()
    assert sum(part["n"] for part in summary["by_layer"].values()) == 400


def test_multiple_faults_per_inference_equal_brute_force(setup):
    engine, network, golden, raw, x = setup
    groups = site_groups(raw, "act", ["conv2", "fc1"], network.acc_bits())
    faults = draw_shard(spec(faults_per_inference=3), groups, N_INPUTS, shard=1, size=20)
    logits = evaluate(network, golden.outputs, faults.inputs, groups,
                      Faults(faults.trial, faults.group, faults.element, faults.bit), "bitflip").logits
    for t in range(faults.size):
        outputs = engine.run(x[faults.inputs[t]][None], keep=True)
        mine = np.nonzero(faults.trial == t)[0]
        tensors = {groups[g].op_index: outputs[groups[g].op_index - 1].clone() for g in set(faults.group[mine])}
        current = None
        for op in sorted(tensors):
            inp = current if current is not None else tensors[op]
            flat = inp.reshape(-1).clone()
            for j in mine[np.array([groups[faults.group[j]].op_index for j in mine]) == op]:
                old = flat[faults.element[j]].to(torch.int64).reshape(1)
                group = groups[faults.group[j]]
                flat[faults.element[j]] = apply_fault(old, torch.tensor([int(faults.bit[j])]), "bitflip",
                                                      group.width, group.signed).double()[0]
            nxt = [o for o in sorted(tensors) if o > op]
            stop = nxt[0] if nxt else None
            current = engine.run(flat.reshape(inp.shape), start=op, stop=stop)
        assert torch.equal(logits[t], current.reshape(-1))


def test_ber_mode_draws_about_the_expected_number_of_flips(setup):
    _, network, _, raw, _ = setup
    groups = site_groups(raw, "act", [], network.acc_bits())
    bits_per_input = sum(g.size * g.width for g in groups)
    faults = draw_shard(spec(ber=1e-3), groups, N_INPUTS, shard=0, size=200)
    expected = 200 * bits_per_input * 1e-3
    assert abs(len(faults.trial) - expected) < 5 * math.sqrt(expected)
    columns = (faults.trial, faults.group, faults.element, faults.bit)
    keys = set(zip(*(c.tolist() for c in columns), strict=True))
    assert len(keys) == len(faults.trial)  # never the same bit twice in one inference


def test_same_seed_same_shard(setup):
    _, network, _, raw, _ = setup
    groups = site_groups(raw, "act", [], network.acc_bits())
    a, b = (draw_shard(spec(), groups, N_INPUTS, shard=3, size=50) for _ in range(2))
    c = draw_shard(spec(seed=8), groups, N_INPUTS, shard=3, size=50)
    assert all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("inputs", "group", "element", "bit"))
    assert not np.array_equal(a.element, c.element)


def test_uniform_sampling_weights_layers_by_size(setup):
    _, network, _, raw, _ = setup
    groups = site_groups(raw, "act", [], network.acc_bits())
    faults = draw_shard(spec(), groups, N_INPUTS, shard=0, size=20000)
    share = np.bincount(faults.group, minlength=len(groups)) / 20000
    sizes = np.array([g.size * g.width for g in groups], dtype=float)
    assert np.allclose(share, sizes / sizes.sum(), atol=0.02)


class Killed(Exception):
    pass


def test_killed_campaign_resumes_to_the_same_result(setup, tmp_path: Path):
    _, network, golden, raw, _ = setup
    groups = site_groups(raw, "act", [], network.acc_bits())
    clean_dir, killed_dir = tmp_path / "clean", tmp_path / "killed"
    clean_dir.mkdir()
    killed_dir.mkdir()
    tally, planned, _ = run_campaign(network, golden, groups, spec(), clean_dir, lambda t, p: None)
    calls = []

    def die_after_two(t, p):
        calls.append(1)
        if len(calls) == 2:
            raise Killed

    with pytest.raises(Killed):
        run_campaign(network, golden, groups, spec(), killed_dir, die_after_two)
    assert len(list(killed_dir.glob("shard-*.parquet"))) == 2
    resumed, _, _ = run_campaign(network, golden, groups, spec(), killed_dir, lambda t, p: None)
    assert resumed.counts == tally.counts and planned == 300
    merge_shards(clean_dir, clean_dir, 3)
    merge_shards(killed_dir, killed_dir, 3)
    pd.testing.assert_frame_equal(pd.read_parquet(clean_dir / "faults.parquet"),
                                  pd.read_parquet(killed_dir / "faults.parquet"))
    summary = summarize(resumed, golden, spec())
    assert summary["faulty_inferences"] == 300
    assert sum(summary[f"{o}_rate"] for o in ("masked", "tolerated", "sdc")) == pytest.approx(1.0)
    assert summary["critical_rate"] <= summary["sdc_rate"]
    rows = pd.read_parquet(clean_dir / "faults.parquet")
    paired = (rows["golden_top1"] == rows["label"]).mean() - (rows["faulty_top1"] == rows["label"]).mean()
    assert summary["accuracy_drop"] == pytest.approx(paired)
    low, high = summary["accuracy_drop_ci"]
    assert low <= summary["accuracy_drop"] <= high
    assert summary["golden_accuracy"] - summary["accuracy_under_faults"] == pytest.approx(paired)
    assert set(summary["by_layer"]) <= {"conv1", "conv2", "fc1", "fc2", "fc3"}


def test_batches_in_parallel_threads_give_the_rows_of_one_thread(setup, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch):
    """With two torch threads a campaign runs two batches at once; the rows must not change."""
    _, network, golden, raw, _ = setup
    groups = site_groups(raw, "act", [], network.acc_bits())
    started = []
    monkeypatch.setattr(campaign.Workers, "__enter__", lambda self, enter=campaign.Workers.__enter__: (
        started.append(self), enter(self))[1])
    tables = []
    for threads in (1, 2):
        directory = tmp_path / str(threads)
        directory.mkdir()
        torch.set_num_threads(threads)
        try:
            run_campaign(network, golden, groups, spec(batch_size=16), directory, lambda t, p: None)
        finally:
            torch.set_num_threads(1)
        assert torch.get_num_threads() == 1
        merge_shards(directory, directory, 3)
        tables.append(pd.read_parquet(directory / "faults.parquet"))
    assert len(started) == 1 and started[0].threads == 2
    pd.testing.assert_frame_equal(*tables)
    assert (tables[0]["outcome"] != "masked").sum() > 10


def test_msb_flips_hurt_more_than_lsb_flips(setup, tmp_path: Path):
    _, network, golden, raw, _ = setup
    groups = site_groups(raw, "act", [], network.acc_bits())
    rates = {}
    for bits in ("msb", (0,)):
        d = tmp_path / str(bits)
        d.mkdir()
        tally, _, _ = run_campaign(network, golden, groups, spec(bits=bits, samples=400), d, lambda t, p: None)
        rates[str(bits)] = tally.counts["masked"] / tally.counts["n"]
    assert rates["msb"] < rates["(0,)"]


def test_early_stop_stops_once_the_interval_is_tight(setup, tmp_path: Path):
    _, network, golden, raw, _ = setup
    groups = site_groups(raw, "act", [], network.acc_bits())
    tally, planned, reason = run_campaign(network, golden, groups, spec(samples=3000, early_stop=True, margin=0.05),
                                          tmp_path, lambda t, p: None)
    assert reason == "margin" and tally.counts["n"] < planned
    assert tally.counts["n"] % 64 == 0 and tally.counts["n"] < 300   # checked after every batch, not per shard


@pytest.mark.parametrize("site", ["pe.act", "pe.weight", "pe.psum"])
@pytest.mark.parametrize("dataflow", ["ws", "os"])
@pytest.mark.parametrize("rows, cols", [(3, 2), (2, 4)])
def test_pe_faults_in_a_network_equal_cycle_simulation(tmp_path, site, dataflow, rows, cols):
    """End to end on an MLP: the campaign's logits equal a cycle-by-cycle simulation of the faulted layer,
    on an array no accelerator has (3 x 2: K in im2col order, each tile in its own window) and on one whose
    accelerator streams K word by word, 2 of each word's 4 lanes per slice (2 x 4: the images' one channel
    per pixel word leaves one padding lane in each slice; the tiles on the double-buffered weight-
    stationary machine's timeline, or streaming back to back on the output-stationary one's)."""
    from hw.arrayconfig import ArrayConfig
    from tests.fixtures.systolic_sim import simulate, simulate_stream, simulate_timeline, wrap

    engine = exported_engine(tmp_path, "mlp", bits=4)
    network = EngineNetwork(engine)
    x, y = digits(8).test.x[:16], digits(8).test.y[:16]
    golden = Golden(engine.run(x, keep=True), y, network.logit_scale())
    raw = engine.model
    array = ArrayConfig(rows=rows, cols=cols, act_bits=4, weight_bits=4, dataflow=dataflow)
    groups = site_groups(raw, site, [], network.acc_bits(), array)
    assert all((group.tiling.k_order is None) == (rows == 3) for group in groups)
    assert all(bool(group.tiling.period) == (rows == 2) for group in groups)
    faults = draw_shard(spec(), groups, 16, shard=0, size=12)
    logits = evaluate(network, golden.outputs, faults.inputs, groups,
                      Faults(faults.trial, faults.group, faults.element, faults.bit), "bitflip").logits
    for t in range(faults.size):
        group = groups[int(faults.group[t])]
        layer = engine.layers[group.op_index]
        a = golden.outputs[group.op_index - 1][faults.inputs[t]].reshape(1, -1).numpy().astype(np.int64)
        w = layer.weight.numpy().astype(np.int64)
        shape = group.tiling.site_shape(group.stationary_weights)
        where = tuple(int(i) for i in np.unravel_index(int(faults.element[t]), shape))
        bit = int(faults.bit[t])

        def corrupt(value, bit=bit, group=group):
            return int(apply_fault(torch.tensor([value]), torch.tensor([bit]), "bitflip", group.width, group.signed)[0])

        acc_bits = group.width if site == "pe.psum" else 40
        if group.tiling.period:   # (cycle, [bank,] row, col) of the tiles' timeline
            timeline = simulate_timeline if dataflow == "ws" else simulate_stream
            out = timeline(group.tiling, a, w, acc_bits, (site, *where, corrupt))
        else:                     # (tile, cycle of its window, row, col)
            out = simulate(group.tiling, a, w, acc_bits, (site, *where, corrupt))
        bias = layer.bias.numpy().astype(np.int64)   # the sums start at the bias, and wrap with it
        acc = torch.tensor([[wrap(int(v) + int(b), acc_bits) for v, b in zip(row, bias, strict=True)] for row in out],
                           dtype=torch.float64)
        expected = engine.run(acc, start=group.op_index + 1) if group.op_index + 1 < network.n_ops else acc
        assert torch.equal(logits[t], expected.reshape(-1)), (site, dataflow, t)


def test_tmr_replicas_split_a_fault_count_and_draw_bit_errors_independently(setup):
    _, network, _, raw, _ = setup
    groups = site_groups(raw, "act", [], network.acc_bits())
    base = draw_shard(spec(faults_per_inference=2), groups, N_INPUTS, shard=2, size=60)
    split = campaign.draw_replicas(spec(faults_per_inference=2, replicas=3), groups, N_INPUTS, shard=2, size=60)
    whole = campaign.merged(split)
    assert all(np.array_equal(getattr(whole, f), getattr(base, f)) for f in ("inputs", "trial"))
    key = [whole.trial * 10**9 + whole.element * 64 + whole.bit, base.trial * 10**9 + base.element * 64 + base.bit]
    assert np.array_equal(np.sort(key[0]), np.sort(key[1]))
    assert all(len(part.trial) > 0 for part in split)
    ber = campaign.draw_replicas(spec(ber=1e-3, replicas=3), groups, N_INPUTS, shard=2, size=60)
    assert all(np.array_equal(part.inputs, ber[0].inputs) for part in ber)
    assert not np.array_equal(ber[0].element[:20], ber[1].element[:20])


def test_tmr_vote_takes_the_majority_top1_and_golden_logits_when_two_replicas_are_exact():
    golden_logits = torch.tensor([[5.0, 1.0, 0.0]] * 4)
    golden = Golden([golden_logits], torch.zeros(4, dtype=torch.int64), torch.ones(3))
    wrong1, wrong2 = torch.tensor([0.0, 9.0, 0.0]), torch.tensor([0.0, 0.0, 9.0])
    tolerated = torch.tensor([4.0, 1.0, 0.0])
    replicas = [torch.stack(rows) for rows in (
        [wrong1, wrong1, wrong1, golden_logits[0]],      # replica 1
        [golden_logits[0], wrong2, wrong2, tolerated],   # replica 2
        [golden_logits[0], wrong2, golden_logits[0], tolerated])]   # replica 3
    masked = [np.array([0, 0, 0, kernels.ROUNDING]), np.zeros(4), np.array([kernels.RELU, 0, kernels.RELU, 0])]
    evaluated = [Evaluated(r, np.array([i == 1, False, False, False]), m.astype(np.int8))
                 for i, (r, m) in enumerate(zip(replicas, masked, strict=True))]
    faulted = [np.array([True, True, True, True]), np.array([False, True, True, False]),
               np.array([True, True, True, False])]
    voted = campaign.vote(evaluated, golden, np.zeros(4, dtype=np.int64), faulted)
    assert torch.equal(voted.logits[0], golden_logits[0])     # two exact replicas: the golden logits
    assert torch.equal(voted.logits[1], wrong2)               # two agree on class 2
    assert torch.equal(voted.logits[2], wrong1)               # all disagree: the first
    assert torch.equal(voted.logits[3], golden_logits[0])     # one exact, two tolerated: the first's, exact
    # row 0: replica 1 wrong, 3 masked its own fault: the vote; row 3: the faulted replicas (1) masked alone
    assert voted.masked_by.tolist() == [kernels.VOTE, 0, 0, kernels.ROUNDING]
    assert voted.detected.tolist() == [True, False, False, False]


def test_sizing_follows_what_is_sampled(setup):
    """Single faults: Leveugle over the (input, register, bit) population; several faults, a bit error
    rate or a relative margin: sequential on the measured interval, up to max_samples or the population."""
    _, network, golden, raw, _ = setup
    groups = site_groups(raw, "act", [], network.acc_bits())
    whole = campaign.single_fault_population(spec(), groups, N_INPUTS)
    single = campaign.sizing(spec(samples="auto", margin=0.01), groups, N_INPUTS)
    assert (single.rule, single.sequential, single.limit_reason) == ("leveugle", False, "samples")
    assert single.limit == campaign.leveugle_samples(whole, 0.01, 0.95) < whole
    assert campaign.single_fault_population(spec(replicas=3), groups, N_INPUTS) == whole
    everything = campaign.sizing(spec(samples=10 * whole), groups, N_INPUTS)
    assert (everything.limit, everything.limit_reason) == (whole, "population")   # no fault twice
    for changes in ({"ber": 1e-3}, {"faults_per_inference": 4}):
        auto = campaign.sizing(spec(samples="auto", max_samples=5000, **changes), groups, N_INPUTS)
        assert (auto.rule, auto.sequential, auto.limit, auto.limit_reason) == ("wilson", True, 5000, "max_samples")
    relative = campaign.sizing(spec(samples="auto", margin_relative=True, max_samples=10 * whole), groups, N_INPUTS)
    assert (relative.rule, relative.limit, relative.limit_reason) == ("wilson", whole, "population")
    explicit = campaign.sizing(spec(samples=300, ber=1e-3), groups, N_INPUTS)
    assert (explicit.rule, explicit.sequential, explicit.limit) == ("explicit", False, 300)


def test_a_ber_campaign_with_a_relative_margin_stops_at_that_interval(setup, tmp_path: Path):
    """samples: auto, BER, margin 10 % of the rate: the campaign ends as soon as the SDC rate's Wilson
    half-width is at most a tenth of the rate, and not a batch earlier."""
    _, network, golden, raw, _ = setup
    groups = site_groups(raw, "act", [], network.acc_bits())
    chosen = spec(samples="auto", ber=0.1, margin=0.1, margin_relative=True, max_samples=20_000, shard_size=512)
    tally, planned, reason = run_campaign(network, golden, groups, chosen, tmp_path, lambda t, p: None)
    n, sdc = tally.counts["n"], tally.counts["sdc"]
    rate = campaign.wilson(sdc, n)
    assert reason == "margin" and planned == 20_000 and 0 < n < planned
    assert rate.half_width <= 0.1 * rate.rate
    rows = pd.read_parquet(sorted(tmp_path.glob("shard-*.parquet"))[-1])
    earlier = pd.concat([pd.read_parquet(p) for p in sorted(tmp_path.glob("shard-*.parquet"))])[:n - 64]
    before = campaign.wilson(int((earlier["outcome"] == "sdc").sum()), len(earlier))
    assert before.half_width > 0.1 * before.rate   # one batch earlier, the interval was still wider
    assert len(rows) % 64 == 0 or len(rows) == 512
    summary = summarize(tally, golden, chosen)
    assert summary["sdc_ci"] == pytest.approx([rate.low, rate.high])


def test_a_sequential_campaign_stops_at_the_same_inference_on_any_thread_count_and_on_resume(setup, tmp_path: Path):
    _, network, golden, raw, _ = setup
    groups = site_groups(raw, "act", [], network.acc_bits())
    chosen = spec(samples="auto", ber=0.1, margin=0.15, margin_relative=True, max_samples=20_000, shard_size=256)
    for name in ("one", "two", "resumed"):
        (tmp_path / name).mkdir()
    one = run_campaign(network, golden, groups, chosen, tmp_path / "one", lambda t, p: None)
    torch.set_num_threads(2)   # batches on two worker threads, checked in the same order
    try:
        two = run_campaign(network, golden, groups, chosen, tmp_path / "two", lambda t, p: None)
    finally:
        torch.set_num_threads(1)
    for shard in sorted((tmp_path / "one").glob("shard-*.parquet"))[:-1]:   # killed before its last shard
        (tmp_path / "resumed" / shard.name).write_bytes(shard.read_bytes())
    resumed = run_campaign(network, golden, groups, chosen, tmp_path / "resumed", lambda t, p: None)
    assert one[0].counts == two[0].counts == resumed[0].counts and one[2] == two[2] == resumed[2] == "margin"


@pytest.mark.parametrize("detects, changes", [(True, False), (False, True), (False, False)])
def test_detection_figures_only_for_detectors_and_changes_only_for_filters_and_votes(setup, detects, changes):
    tally = campaign.Tally()
    tally.counts.update(n=100, sdc=10, masked=80, tolerated=10, critical=5, correct=90, golden_correct=95,
                        detected=12 if detects else 0, detected_sdc=9 if detects else 0,
                        changed=0 if detects else 30)
    summary = summarize(tally, setup[2], spec(detects=detects), reports_changes=changes)
    assert ("detected_rate" in summary) == detects and ("sdc_detected_rate" in summary) == detects
    assert ("changed_rate" in summary) == changes
    if detects:
        assert summary["detected_rate"] == 0.12 and summary["sdc_detected_rate"] == 0.9
    if changes:
        assert summary["changed_rate"] == 0.3


def test_single_faults_are_drawn_without_replacement_and_a_whole_population_is_exhaustive(setup):
    """Leveugle's finite-population sizing assumes it: no (input, register, bit) comes twice, a campaign as
    large as the population visits each once, and shards drawn alone give the same faults."""
    _, network, golden, raw, _ = setup
    groups = site_groups(raw, "act", ["fc3"], network.acc_bits())
    inputs = 3
    chosen = spec(bits="msb", shard_size=7)
    whole = campaign.single_fault_population(chosen, groups, inputs)
    shards = [draw_shard(chosen, groups, inputs, shard, min(7, whole - 7 * shard)) for shard in range(-(-whole // 7))]
    triples = [(int(f.inputs[t]), int(f.group[t]), int(f.element[t]), int(f.bit[t])) for f in shards
               for t in range(f.size)]
    expected = {(i, g, e, b) for i in range(inputs) for g, group in enumerate(groups) for e in range(group.size)
                for b in [group.width - 1]}
    assert len(triples) == whole == len(expected) and set(triples) == expected
    assert not np.array_equal(shards[0].inputs, np.sort(shards[0].inputs)) or whole < 8   # shuffled, not in order
