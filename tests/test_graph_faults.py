"""Faults in graph-shaped networks (residual adds, a depthwise conv, average pooling, concatenations): the campaign's
fast path (frontier of live branch tensors, sparse chain segments, early exit) equals recomputing each
faulty inference from scratch, for every site kind, single and multiple faults, with and without range
checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dsetool.engine import Add, Concat, Conv2d, Engine, Linear
from dsetool.faults import apply, kernels, propagate
from dsetool.faults.apply import Faults, evaluate
from dsetool.faults.bits import apply_fault
from dsetool.faults.campaign import CampaignSpec, Golden, draw_shard
from dsetool.faults.network import EngineNetwork
from dsetool.faults.sites import site_groups
from hw.arrayconfig import ArrayConfig
from tests.fixtures.engines import digits, exported_engine, factory_engine
from tests.test_faults_propagate import narrow_checks

N_INPUTS = 16
SIDE = 16


@pytest.fixture(scope="module", params=["resnet8", "mobilenet", "squeezenet"])
def graph(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    torch.set_num_threads(1)
    directory = tmp_path_factory.mktemp(request.param)
    engine = factory_engine(directory, bits=4, size=SIDE, arch="squeezenet") if request.param == "squeezenet" else \
        exported_engine(directory, request.param, bits=4, size=SIDE)
    x = digits(SIDE).test.x[:N_INPUTS]
    return engine, x


def _spec(faults_per_inference: int = 1, seed: int = 3) -> CampaignSpec:
    return CampaignSpec(model="bitflip", bits="all", faults_per_inference=faults_per_inference, ber=None,
                        samples=80, margin=0.02, confidence=0.95, early_stop=False, seed=seed, shard_size=80,
                        batch_size=80)


def brute_force(engine: Engine, group, x_row: torch.Tensor, element: int, bit: int, model: str) -> torch.Tensor:
    """Recompute one faulty inference: fault the buffer (or the weights, or an output), rerun the graph."""
    if group.hook == "weight":
        layer = engine.layers[group.op_index]
        saved = layer.weight.clone()
        k_in = layer.weight.shape[0]
        old = layer.weight[element % k_in, element // k_in].to(torch.int64).reshape(1)
        layer.weight[element % k_in, element // k_in] = apply_fault(old, torch.tensor([bit]), model, group.width,
                                                                    True).to(layer.weight.dtype)[0]
        try:
            return engine.run(x_row[None])
        finally:
            layer.weight.copy_(saved)
    outputs = engine.run(x_row[None], keep=True)
    target = group.buffer if group.hook == "pre" else group.op_index
    flat = outputs[target].reshape(-1).clone()
    old = flat[element].to(torch.int64).reshape(1)
    flat[element] = apply_fault(old, torch.tensor([bit]), model, group.width, group.signed).to(flat.dtype)[0]
    outputs[target] = flat.reshape(outputs[target].shape)
    if target + 1 == len(outputs):
        return outputs[target]
    return engine.run(None, start=target + 1, given=outputs)


def _evaluate(engine: Engine, x: torch.Tensor, site: str, spec: CampaignSpec, array: ArrayConfig | None = None):
    network = EngineNetwork(engine)
    groups = site_groups(engine.model, site, [], network.acc_bits(), array)
    golden = Golden(engine.run(x, keep=True), torch.zeros(len(x), dtype=torch.int64), network.logit_scale())
    faults = draw_shard(spec, groups, N_INPUTS, shard=0, size=spec.samples)
    evaluated = evaluate(network, golden.outputs, faults.inputs, groups,
                         Faults(faults.trial, faults.group, faults.element, faults.bit), spec.model)
    return groups, faults, evaluated


@pytest.mark.parametrize("site", ["act", "weight", "out"])
def test_single_faults_equal_recomputing(graph, site: str) -> None:
    engine, x = graph
    assert_campaign_equals_recomputing(engine, x, site, _spec())


def recompute_with_buffer_faults(engine: Engine, groups, x_row: torch.Tensor, picked: list[tuple[int, int, int]],
                                 model: str) -> torch.Tensor:
    """Run the graph op by op, faulting each op's output as soon as it is computed: `picked` holds
    (group, element, bit) of act or out faults."""
    values: dict[int, torch.Tensor] = {}
    for index in range(len(engine.model.ops)):
        reads = [x_row[None] if source < 0 else values[source] for source in engine.model.inputs[index]]
        out = engine.step(index, *reads)
        for group_index, element, bit in picked:
            group = groups[group_index]
            if (group.buffer if group.hook == "pre" else group.op_index) == index:
                flat = out.reshape(-1).clone()
                old = flat[element].to(torch.int64).reshape(1)
                flipped = apply_fault(old, torch.tensor([bit]), model, group.width, group.signed)
                flat[element] = flipped.to(flat.dtype)[0]
                out = flat.reshape(out.shape)
        values[index] = out
    return values[len(engine.model.ops) - 1]


@pytest.mark.parametrize("site", ["act", "out"])
def test_several_faults_per_inference_equal_recomputing(graph, site: str) -> None:
    """Three faults per inference, often on both branches of a block: every one must reach the add."""
    engine, x = graph
    groups, faults, evaluated = _evaluate(engine, x, site, _spec(faults_per_inference=3, seed=5))
    for trial in range(faults.size):
        picked = [(int(faults.group[j]), int(faults.element[j]), int(faults.bit[j]))
                  for j in np.nonzero(faults.trial == trial)[0]]
        expected = recompute_with_buffer_faults(engine, groups, x[faults.inputs[trial]], picked, "bitflip")
        assert torch.equal(evaluated.logits[trial], expected.reshape(-1)), (site, trial)


def test_a_buffer_read_twice_is_one_act_site_group(graph) -> None:
    """A residual block's input feeds its first conv and its shortcut: one act group, counted once, named
    after the first layer reading it and applied where the first op reads it."""
    engine, _ = graph
    model = engine.model
    groups = site_groups(model, "act", [], EngineNetwork(engine).acc_bits())
    buffers = [g.buffer for g in groups]
    read_by_weights = {model.input_of(i) for i in engine.layers}
    assert sorted(buffers) == sorted(read_by_weights)   # every buffer once
    for group in groups:
        assert group.op_index == min(model.consumers(group.buffer))
        assert group.size == int(np.prod(model.ops[group.buffer].out_shape))
    shared = [b for b in buffers if len(model.consumers(b)) > 1]
    assert bool(shared) == (model.arch in ("resnet8", "squeezenet"))   # a shortcut; a fire module's expands


def test_every_conv_has_a_sparse_step_depthwise_included(graph) -> None:
    """A grouped or depthwise conv crosses the sparse path as the dense conv with zeros between groups (its
    exactness: the campaign tests above on MobileNet); no conv sends its faults to the dense path."""
    engine, _ = graph
    steps = propagate._steps(engine)
    convs = [i for i, op in enumerate(engine.model.ops) if isinstance(op, Conv2d)]
    assert all(isinstance(steps[i], propagate._Step) for i in convs)
    assert any(engine.model.ops[i].groups > 1 for i in convs) == (engine.model.arch == "mobilenet")


def test_a_fault_in_a_block_input_crosses_the_block_on_the_sparse_path(graph) -> None:
    """A changed residual-block input changes the shortcut and the first conv; the sparse path follows both
    tensors and sums them at the add (a fire module's: both expands, joined at the concat), so no such
    fault leaves for the dense path inside the block, and its logits equal the campaign's exact evaluation
    (the tests above) by construction of the same changes."""
    engine, x = graph
    model = engine.model
    shared = [b for b in range(len(model.ops)) if len(model.consumers(b)) > 1]
    if not shared:
        pytest.skip("no buffer read by two ops (a chain)")
    buffer = shared[0]
    add = next(j for j in range(buffer + 1, len(model.ops)) if buffer in _ancestors(model, j) and
               isinstance(model.ops[j], Add | Concat))
    golden = engine.run(x, keep=True)
    rng = np.random.default_rng(5)
    count = 48
    inputs = rng.integers(0, len(x), count)
    element = rng.integers(0, int(np.prod(model.ops[buffer].out_shape)), count)
    values = golden[buffer].reshape(len(x), -1)[torch.from_numpy(inputs), torch.from_numpy(element)].numpy()
    faulty = np.where(values == 0, 7.0, 0.0)   # a code that differs from the golden one
    first = min(model.consumers(buffer))
    propagated = propagate.propagate(engine, golden, inputs, np.full(count, first), element, faulty,
                                     np.full(count, buffer))
    assert all(join.op > add for join in propagated.joins)
    alive = sum(len(join.rows) for join in propagated.joins)
    assert alive + int((propagated.masked_by != kernels.LIVE).sum()) == count
    assert alive > 0


def _ancestors(model, index: int) -> set[int]:
    found, todo = set(), list(model.inputs[index])
    while todo:
        source = todo.pop()
        if source >= 0 and source not in found:
            found.add(source)
            todo.extend(model.inputs[source])
    return found


def assert_campaign_equals_recomputing(engine: Engine, x: torch.Tensor, site: str, spec: CampaignSpec) -> None:
    """Every single-fault row of a campaign batch gives the logits of recomputing it from scratch."""
    groups, faults, evaluated = _evaluate(engine, x, site, spec)
    for t in range(faults.size):
        group = groups[int(faults.group[t])]
        expected = brute_force(engine, group, x[faults.inputs[t]], int(faults.element[t]), int(faults.bit[t]),
                               spec.model)
        assert torch.equal(evaluated.logits[t], expected.reshape(-1)), (site, group.layer, t)


def test_range_checks_on_every_requantizer_equal_recomputing(graph) -> None:
    engine, x = graph
    assert_campaign_equals_recomputing(Engine(engine.model, checks=narrow_checks(engine.model, "clip")), x, "act",
                                       _spec(seed=9))


def test_sparse_and_dense_paths_agree(graph, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same faults give the same logits and masking steps followed sparsely as far as they go (cost 0),
    leaving at the first layer where the dense layer is cheaper (a huge cost), or never sparse at all."""
    engine, x = graph
    results = []
    for cost, sparse in ((0, True), (10**9, True), (10, False)):
        monkeypatch.setattr(propagate, "SPARSE_COST", cost)
        if not sparse:
            monkeypatch.setattr(apply, "_carriable", lambda net, groups: np.zeros(len(groups), dtype=bool))
        propagate._OPERANDS.pop(engine, None)
        _, _, evaluated = _evaluate(engine, x, "act", _spec(seed=11))
        results.append(evaluated)
    for other in results[1:]:
        assert torch.equal(results[0].logits, other.logits)
        assert np.array_equal(results[0].masked_by, other.masked_by)


def test_ops_without_a_sparse_step_send_their_faults_to_the_dense_path(graph, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sparse path knows an op only through `_SPARSE_STEPS`: with only weight layers listed (a new op
    kind would be missing likewise) the faults join the dense path at every other op, never raise, and
    give the same logits and masking as with every step."""
    engine, x = graph
    results = []
    for steps in (propagate._SPARSE_STEPS, {Conv2d: propagate._conv_step, Linear: propagate._linear_step}):
        monkeypatch.setattr(propagate, "_SPARSE_STEPS", steps)
        propagate._OPERANDS.pop(engine, None)
        _, _, evaluated = _evaluate(engine, x, "act", _spec(seed=13))
        results.append(evaluated)
    propagate._OPERANDS.pop(engine, None)
    assert torch.equal(results[0].logits, results[1].logits)
    assert np.array_equal(results[0].masked_by, results[1].masked_by)


@pytest.mark.parametrize("site", ["pe.act", "pe.weight", "pe.psum"])
@pytest.mark.parametrize("dataflow", ["ws", "os"])
@pytest.mark.parametrize("rows, cols", [(2, 2), (3, 2)])
def test_pe_faults_in_a_depthwise_conv_equal_the_cycle_simulation_of_its_schedule(tmp_path: Path, site: str,
                                                                                  dataflow: str, rows: int,
                                                                                  cols: int) -> None:
    """On an array the accelerator builds (2 x 2), a depthwise conv is one GEMM over all its channels,
    each N slice streaming the K slices of its own channels (`LayerTiling.slice_orders`); on one it does
    not (3 x 2), one GEMM per channel, one after the other. Either way a PE fault changes the layer's
    outputs as the cycle-by-cycle array simulation of that schedule says, and the logits follow."""
    from tests.fixtures.systolic_sim import simulate, simulate_stream, simulate_timeline
    from tests.test_faults_pe import corrupt

    engine = exported_engine(tmp_path, "mobilenet", bits=4, size=SIDE)
    network = EngineNetwork(engine)
    array = ArrayConfig(rows=rows, cols=cols, act_bits=4, weight_bits=4, dataflow=dataflow, acc_bits=20)
    groups = [g for g in site_groups(engine.model, site, ["block1.dw"], network.acc_bits(), array)]
    (group,) = groups
    op = engine.model.ops[group.op_index]
    machine = group.tiling.slice_orders is not None
    assert machine == (rows == cols)
    simulated = simulate   # each tile in its window, or the tiles on the machine's timeline
    if machine:   # the channels' GEMM: K over all channels, N all outputs
        assert group.one_gemm and group.tiling.n == op.out_features and group.tiling.period
        simulated = simulate_timeline if dataflow == "ws" else simulate_stream
    else:
        assert group.shape[0] == op.groups == op.out_features and group.tiling.n == 1
    x = digits(SIDE).test.x[:4]
    golden = engine.run(x, keep=True)
    codes = golden[engine.model.input_of(group.op_index)]
    operands = network.gemm_input(group.op_index, codes)             # (B, K_all, M)
    weights = network.weight_matrix(group.op_index)                  # (N, K_group)
    k_group = weights.shape[1]
    dense = torch.zeros(op.out_features, operands.shape[1], dtype=torch.int64)
    for n in range(op.out_features):
        dense[n, n * k_group:(n + 1) * k_group] = weights[n].to(torch.int64)
    bias = engine.layers[group.op_index].bias.to(torch.int64)
    rng = np.random.default_rng(0)
    shape = group.tiling.site_shape(group.stationary_weights)   # one GEMM's (or one group's) sites
    per_group = int(np.prod(shape))
    half = 1 << (group.acc_bits - 1)
    for trial in range(12):
        element, bit = int(rng.integers(0, group.size)), int(rng.integers(0, group.width))
        faults = Faults(np.array([0]), np.array([0]), np.array([element]), np.array([bit]))
        evaluated = evaluate(network, golden, np.array([trial % 4]), groups, faults, "bitflip")
        g, local = divmod(element, per_group)
        outs = slice(None) if machine else slice(g, g + 1)
        ins = slice(None) if machine else slice(g * k_group, (g + 1) * k_group)
        a = operands[trial % 4, ins].T.numpy().astype(np.int64)                 # (M, K)
        w = dense[outs, ins].T.numpy() if machine else weights[g:g + 1].T.numpy().astype(np.int64)
        where = tuple(int(i) for i in np.unravel_index(local, shape))
        sums = simulated(group.tiling, a, w, group.acc_bits,
                         (site, *where, corrupt(bit, group.width, group.signed, "bitflip")))
        started = (sums.astype(np.int64) + bias[outs].numpy() + half) % (2 * half) - half   # (M, N)
        outputs = [t[trial % 4:trial % 4 + 1] for t in golden]
        acc = outputs[group.op_index].clone()
        acc[0, outs] = torch.from_numpy(started.T.reshape(-1, *acc.shape[2:])).to(acc.dtype)
        outputs[group.op_index] = acc
        expected = engine.run(None, start=group.op_index + 1, given=outputs)
        assert torch.equal(evaluated.logits[0], expected.reshape(-1)), (site, dataflow, trial)


def test_input_placement_keeps_every_reader_of_a_protected_tensor_protected(graph) -> None:
    """`protect.placement: input` on a graph: weight layers check what they read, and a protected tensor
    that an add or a pool reads keeps its check after the output stage; campaigns stay exact."""
    from dsetool.protect.check import placed

    engine, x = graph
    model = engine.model
    checks = narrow_checks(model, "zero")
    where = placed(model, checks, "input")
    covered = set(where["checks"]) | {q for i in where["input_checks"] for q, _ in model.quantizers_read(i)}
    assert covered == set(checks)   # no protected tensor lost its check
    assert_campaign_equals_recomputing(Engine(model, **where), x, "act", _spec(seed=13))


def test_naming_a_later_reader_of_a_shared_buffer_selects_its_group(graph) -> None:
    engine, _ = graph
    model = engine.model
    shared = [i for i in engine.layers if len(model.consumers(model.input_of(i))) > 1
              and min(j for j in model.consumers(model.input_of(i)) if j in engine.layers) != i]
    if not shared:
        pytest.skip("no weight layer reads a buffer after another one (a chain)")
    later = model.ops[shared[0]].name
    (group,) = site_groups(model, "act", [later], EngineNetwork(engine).acc_bits())
    assert group.buffer == model.input_of(shared[0]) and group.layer != later


def test_a_requantizer_without_relu_never_reports_relu_masking(graph) -> None:
    engine, _ = graph
    network = EngineNetwork(engine)
    identities = [i for i, op in enumerate(engine.model.ops) if op.kind == "quant_identity"
                  and engine.model.producer(i) in engine.layers]
    if not identities:
        pytest.skip("no requantizer without ReLU")
    index = identities[0]
    acc = torch.full((1, *engine.input_shape(index)), -85.0, dtype=engine.dtypes[engine.model.producer(index)])
    golden_out = engine.step(index, acc)
    why = network.masked_by(index, acc - 1, acc, golden_out)
    assert why[0] != kernels.RELU
