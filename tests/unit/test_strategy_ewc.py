"""EWC: the Fisher estimate against closed forms, the quadratic penalty, online accumulation, state."""

from __future__ import annotations

import pytest
import torch
from pydantic import BaseModel
from torch import nn

from forgesweep.continual import TensorSamples, build_strategy
from forgesweep.continual.ewc import estimate_fisher
from forgesweep.continual.replay_buffer import Candidate
from forgesweep.models import Detector, DetectorOutput, build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class LinearDetector(Detector):
    """z = w . flatten(x) + b: its Fisher information has a closed form."""

    Params = BaseModel

    def __init__(self, dim: int = 12) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 1)

    def forward(self, images):
        return DetectorOutput(self.linear(images.flatten(1)).squeeze(-1))


def _data(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    keys = [f"s{i}" for i in range(n)]
    labels = {k: i % 2 for i, k in enumerate(keys)}
    images = torch.randn(n, 3, 2, 2, generator=g)
    return keys, labels, images, TensorSamples(dict(zip(keys, images)), labels, batch_size=4)


@pytest.mark.parametrize("kind", ["true", "empirical"])
def test_fisher_matches_the_closed_form_of_a_linear_logit(kind):
    torch.manual_seed(0)
    model = LinearDetector()
    keys, labels, images, samples = _data()
    fisher = estimate_fisher(model, samples.batches(keys, batch_size=1), kind)
    x = images.flatten(1)
    with torch.no_grad():
        p = torch.sigmoid(model.linear(x).squeeze(-1))
    y = torch.tensor([labels[k] for k in keys], dtype=torch.float32)
    weight = p * (1 - p) if kind == "true" else (p - y) ** 2
    assert torch.allclose(fisher["linear.weight"], (weight[:, None] * x**2).mean(0, keepdim=True), atol=1e-6)
    assert torch.allclose(fisher["linear.bias"], weight.mean().reshape(1), atol=1e-6)
    assert all(p.grad is None for p in model.parameters())  # gradients cleaned up


def test_fisher_skips_frozen_parameters_and_restores_the_mode():
    model = build_model("rsia_lite", {"preset": "tiny"})
    model.head.weight.requires_grad_(False)
    keys, labels, _, _ = _data()
    samples = TensorSamples({k: torch.randn(3, 32, 32) for k in keys}, labels)
    model.train()
    fisher = estimate_fisher(model, samples.batches(keys[:2], batch_size=1))
    assert "head.weight" not in fisher and "head.bias" in fisher
    assert model.training


def test_penalty_is_zero_at_the_anchor_and_grows_quadratically():
    torch.manual_seed(0)
    model = LinearDetector()
    keys, labels, _, samples = _data()
    strategy = build_strategy("ewc", {"ewc_lambda": 10.0})
    strategy.after_task(0, model, [Candidate(k, labels[k]) for k in keys], samples)
    assert strategy.penalty(model).item() == 0.0
    direction = [torch.randn_like(p) for p in model.parameters()]

    def at(step):
        moved = LinearDetector()
        moved.load_state_dict(model.state_dict())
        with torch.no_grad():
            for p, d in zip(moved.parameters(), direction):
                p.add_(step * d)
        return strategy.penalty(moved).item()

    assert 0 < at(0.1) < at(0.2)
    assert at(0.2) == pytest.approx(4 * at(0.1), rel=1e-4)
    batch = next(samples.batches(keys))
    moved = LinearDetector()
    moved.load_state_dict(model.state_dict())
    with torch.no_grad():
        moved.linear.weight.add_(0.5)
    _, terms = strategy.compute_loss(moved, batch)
    assert terms["ewc"].item() == pytest.approx(10.0 / 2 * strategy.penalty(moved).item(), rel=1e-6)
    assert torch.allclose(terms["loss"], terms["bce"] + terms["ewc"])
    terms["loss"].backward()
    assert moved.linear.weight.grad is not None


def test_no_penalty_before_the_first_task_and_sample_access_is_required():
    model = LinearDetector()
    keys, labels, _, samples = _data()
    strategy = build_strategy("ewc")
    _, terms = strategy.compute_loss(model, next(samples.batches(keys)))
    assert set(terms) == {"bce", "loss"}
    with pytest.raises(TypeError, match="Fisher"):
        strategy.after_task(0, model, [Candidate("s0", 0)])


@pytest.mark.parametrize("online", [False, True])
def test_separate_ewc_keeps_one_penalty_per_task_online_ewc_one_running_one(online):
    torch.manual_seed(0)
    model = LinearDetector()
    keys, labels, _, samples = _data()
    cands = [Candidate(k, labels[k]) for k in keys]
    strategy = build_strategy("ewc", {"online": online, "gamma": 0.5})
    strategy.after_task(0, model, cands, samples)
    first = {n: f.clone() for n, f in strategy.penalties[0]["fisher"].items()}
    with torch.no_grad():
        model.linear.weight.add_(0.3)
    strategy.after_task(1, model, cands, samples)
    second = estimate_fisher(model, samples.batches(keys, batch_size=1))
    if online:
        assert len(strategy.penalties) == 1
        assert torch.allclose(strategy.penalties[0]["fisher"]["linear.weight"],
                              0.5 * first["linear.weight"] + second["linear.weight"])
        assert torch.equal(strategy.penalties[0]["anchor"]["linear.weight"], model.linear.weight)
    else:
        assert len(strategy.penalties) == 2
        assert torch.allclose(strategy.penalties[1]["fisher"]["linear.weight"], second["linear.weight"])
        assert not torch.equal(strategy.penalties[0]["anchor"]["linear.weight"], model.linear.weight)


def test_fisher_samples_caps_the_estimate_and_state_round_trips():
    torch.manual_seed(0)
    model = LinearDetector()
    keys, labels, _, samples = _data(n=10)
    strategy = build_strategy("ewc", {"fisher_samples": 3, "fisher_batch_size": 2}, seed=4)
    seen = []
    original = samples.batches

    def spy(ks, **kw):
        seen.extend(ks)
        return original(ks, **kw)

    samples.batches = spy
    strategy.after_task(0, model, [Candidate(k, labels[k]) for k in keys], samples)
    assert len(seen) == 3 and set(seen) <= set(keys)
    restored = build_strategy("ewc", {"fisher_samples": 3}, seed=4)
    restored.load_state_dict(strategy.state_dict())
    with pytest.raises(ValueError, match="Fisher"):
        restored.load_tensor_state({})
    restored.load_state_dict(strategy.state_dict())
    restored.load_tensor_state(strategy.tensor_state())
    assert restored.penalty(model).item() == strategy.penalty(model).item() == 0.0
    with torch.no_grad():
        model.linear.bias.add_(1.0)
    assert restored.penalty(model).item() == pytest.approx(strategy.penalty(model).item())
