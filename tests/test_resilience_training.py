"""Training for resilience: SAM's step and sharpness on a quadratic with a known answer, the weight
penalties, the activation-sparsity penalty and metric, and SAQ inside QAT."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dsetool.config import OptimConfig
from dsetool.data import Split
from dsetool.models.quant import QuantSpec
from dsetool.models.zoo import build_model
from dsetool.progress import SilentReporter
from dsetool.regularize import activation_l1, activation_sparsity, tapped, weight_penalty
from dsetool.sam import sam_step, sharpness
from dsetool.training import Objective, train
from tests.fixtures.engines import digits

CURVATURE = torch.tensor([1.0, 10.0], dtype=torch.float64)


def quadratic(w: torch.Tensor) -> torch.Tensor:
    return 0.5 * (CURVATURE * w.square()).sum()


@pytest.mark.parametrize("rho", [0.0, 0.05, 0.5])
def test_sam_step_is_the_gradient_at_the_worst_case_neighbour(rho: float) -> None:
    """L = w^T A w / 2: g = A w, e = rho g / |g|, w <- w - lr A (w + e)."""
    w = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([w], lr=0.1)
    loss = sam_step([w], lambda: quadratic(w), optimizer, rho)
    start = torch.tensor([1.0, 1.0], dtype=torch.float64)
    g = CURVATURE * start
    expected = start - 0.1 * CURVATURE * (start + rho * g / g.norm())
    assert loss == pytest.approx(5.5)
    assert torch.allclose(w.detach(), expected, rtol=0, atol=1e-12)


def test_sharpness_is_the_loss_rise_at_the_first_order_worst_case_and_leaves_the_weights() -> None:
    w = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    rho = 0.1
    g = CURVATURE * w.detach()
    expected = float(quadratic(w.detach() + rho * g / g.norm()) - quadratic(w.detach()))
    assert sharpness([w], lambda: quadratic(w), rho) == pytest.approx(expected, rel=1e-12)
    assert w.detach().tolist() == [1.0, -2.0] and w.grad is None
    flat = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    assert sharpness([flat], lambda: 0.01 * quadratic(flat), rho) < expected   # a flatter bowl


def small_net() -> nn.Sequential:
    net = nn.Sequential()
    net.add_module("fc1", nn.Linear(2, 2, bias=False))
    net.add_module("relu1", nn.ReLU())
    net.add_module("fc2", nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        net.fc1.weight.copy_(torch.tensor([[1.0, -3.0], [0.5, 2.0]]))
        net.fc2.weight.copy_(torch.tensor([[-1.0, 0.25]]))
    return net


@pytest.mark.parametrize("kind, expected", [("l1", 7.75), ("l2", 15.3125), ("max_magnitude", 4.0),
                                            ("max_squared", 10.0), ("none", None)])
def test_weight_penalties(kind: str, expected: float | None) -> None:
    """Per layer: fc1 |w| 1, 3, 0.5, 2; fc2 1, 0.25 (max 3 and 1, squares 9 and 1)."""
    penalty = weight_penalty(small_net(), kind, 2.0)
    assert (penalty is None) if expected is None else float(penalty.detach()) == pytest.approx(2.0 * expected)


def test_activation_taps_measure_sparsity_and_give_the_l1_penalty() -> None:
    net = small_net()
    x = torch.tensor([[1.0, 1.0], [1.0, -1.0], [0.0, 0.0], [-1.0, 0.0]])   # fc1: [-2, 2.5] [4, -1.5] [0, 0] [-1, -.5]
    split = Split(x, torch.zeros(4, dtype=torch.int64))
    sparsity = activation_sparsity(net, split, torch.device("cpu"), batch_size=3)
    assert sparsity == {"relu1": 0.75, "all": 0.75}
    with tapped(net) as outputs:
        net(x)
    penalty = activation_l1(outputs, 0.5)
    assert penalty is not None and float(penalty.detach()) == pytest.approx(0.5 * (2.5 + 4.0) / 8)
    assert activation_l1(outputs, 0.0) is None


def digits_mlp(quant: QuantSpec | None = None) -> tuple[nn.Module, Split, Split]:
    data = digits(8)
    torch.manual_seed(0)
    model = build_model("mlp", in_channels=1, num_classes=10, image_size=data.image_size, quant=quant,
                        mlp_hidden=(32,))
    return model, Split(data.train.x[:600], data.train.y[:600]), data.val


def test_an_activation_l1_penalty_makes_the_activations_sparser() -> None:
    cfg = OptimConfig(epochs=3, lr=0.01, batch_size=64)
    sparsity = {}
    for beta in (0.0, 0.5):
        model, train_split, val = digits_mlp()
        train(model, train_split, val, cfg, seed=0, device=torch.device("cpu"), reporter=SilentReporter(),
              description="mlp", objective=Objective(act_l1=beta))
        sparsity[beta] = activation_sparsity(model, val, torch.device("cpu"))["all"]
    assert sparsity[0.5] > sparsity[0.0] + 0.1, sparsity


def test_saq_trains_a_quantized_model_reproducibly_and_differs_from_plain_qat() -> None:
    cfg = OptimConfig(epochs=2, lr=0.005, batch_size=64)
    results = []
    for rho in (0.05, 0.05, 0.0):
        model, train_split, val = digits_mlp(QuantSpec(weight_bits=4, act_bits=4))
        history = train(model, train_split, val, cfg, seed=0, device=torch.device("cpu"), reporter=SilentReporter(),
                        description="qat", objective=Objective(sam_rho=rho, regularizer="max_squared", alpha=1e-3))
        assert all(math.isfinite(h["loss"]) for h in history)
        results.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    assert torch.equal(results[0], results[1])
    assert not torch.equal(results[0], results[2])


def test_the_sharpness_metric_is_positive_and_moves_with_training() -> None:
    """The loss rise at radius 0.05 of an untrained and a trained MLP: both positive, not the same."""
    from dsetool.sam import model_sharpness

    model, train_split, val = digits_mlp()
    before = model_sharpness(model, val.x, val.y, 0.05)
    train(model, train_split, val, OptimConfig(epochs=3, lr=0.01, batch_size=64), seed=0,
          device=torch.device("cpu"), reporter=SilentReporter(), description="mlp")
    after = model_sharpness(model, val.x, val.y, 0.05)
    assert before > 0 and after > 0 and after != before


def test_hutchinson_trace_of_a_diagonal_quadratic_is_exact_and_works_through_brevitas() -> None:
    """For diagonal A every Rademacher probe gives v^T A v = trace A exactly (v_i^2 = 1)."""
    from dsetool.sam import hessian_trace, model_hessian_trace

    w = torch.tensor([0.3, -2.0], dtype=torch.float64, requires_grad=True)
    trace = hessian_trace([w], lambda: quadratic(w), 3, torch.Generator().manual_seed(0))
    assert trace == pytest.approx(11.0, rel=1e-12)
    model, _, val = digits_mlp(QuantSpec(weight_bits=4, act_bits=4))
    assert math.isfinite(model_hessian_trace(model, val.x, val.y, probes=2))


def test_a_max_squared_penalty_shrinks_each_layers_largest_weight() -> None:
    """The mechanism behind Ozen's outlier regularization (the tolerated-BER figures it buys are measured by
    benchmarks/resilience_evidence.py, since they depend on the trained weights)."""
    cfg = OptimConfig(epochs=3, lr=0.01, batch_size=64)
    largest = {}
    for kind in ("none", "max_squared"):
        model, train_split, val = digits_mlp()
        train(model, train_split, val, cfg, seed=0, device=torch.device("cpu"), reporter=SilentReporter(),
              description="mlp", objective=Objective(regularizer=kind, alpha=0.5))
        largest[kind] = [float(p.detach().abs().max()) for name, p in model.named_parameters() if "weight" in name]
    pairs = zip(largest["max_squared"], largest["none"], strict=True)
    assert all(squared < 0.95 * plain for squared, plain in pairs), largest
