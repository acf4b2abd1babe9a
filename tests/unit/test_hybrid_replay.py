"""Replay selection policies on hand-made candidates (no model), the reservoir memory, and CFFD's
hybrid sampling replay scored by a tiny model."""

from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pytest
import torch

from forgesweep.continual import TensorSamples, build_strategy, resolve_strategy_params
from forgesweep.continual.replay_buffer import ReplayBuffer, ReservoirBuffer, make_buffer
from forgesweep.continual.selection import (
    POLICIES,
    Candidate,
    HybridPolicy,
    Scores,
    entropies,
    farthest_point_order,
    herding_order,
    margins,
)
from forgesweep.errors import ConfigError
from forgesweep.models import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cands(n: int, label: int = 1, prefix: str = "s") -> list[Candidate]:
    return [Candidate(f"{prefix}{i}", label) for i in range(n)]


def _pick(name: str, candidates, scores, k: int, seed: int = 0) -> list[str]:
    return [c.key for c in POLICIES.get(name)()(candidates, scores, k, random.Random(seed))]


def _circle(degrees) -> np.ndarray:
    r = np.radians(np.asarray(degrees, dtype=float))
    return np.stack([np.cos(r), np.sin(r)], axis=1)


# --------------------------------------------------------------------------- uncertainty


def test_margin_picks_the_smallest_margins_first():
    cands = _cands(6)
    scores = Scores.from_fake_probs([c.key for c in cands], [0.5, 0.9, 0.45, 0.99, 0.3, 0.6])
    # margins |2p - 1|: 0, .8, .1, .98, .4, .2
    assert _pick("margin", cands, scores, 3) == ["s0", "s2", "s5"]
    assert _pick("margin", cands, scores, 10) == ["s0", "s2", "s5", "s4", "s1", "s3"]


def test_entropy_picks_the_highest_entropy_first_and_differs_from_margin_for_three_classes():
    cands = _cands(4)
    probs = np.array([[0.5, 0.5, 0.0], [0.4, 0.3, 0.3], [0.9, 0.05, 0.05], [0.34, 0.33, 0.33]])
    scores = Scores([c.key for c in cands], probs=probs)
    assert margins(probs) == pytest.approx([0.0, 0.1, 0.85, 0.01])
    assert entropies(probs)[3] > entropies(probs)[1] > entropies(probs)[0] > entropies(probs)[2]
    assert _pick("margin", cands, scores, 4) == ["s0", "s3", "s1", "s2"]
    assert _pick("entropy", cands, scores, 4) == ["s3", "s1", "s0", "s2"]


def test_for_a_binary_detector_margin_and_entropy_rank_alike():
    cands = _cands(30)
    p = np.random.default_rng(0).uniform(size=30)
    scores = Scores.from_fake_probs([c.key for c in cands], p)
    assert _pick("margin", cands, scores, 30) == _pick("entropy", cands, scores, 30)


# --------------------------------------------------------------------------- embeddings


def test_centre_picks_the_samples_closest_to_their_class_centre():
    cands = _cands(5, label=1) + _cands(3, label=0, prefix="r")
    emb = np.concatenate([_circle([-40, -20, 0, 20, 40]), _circle([170, 180, 200])]) * 3.0  # scale is ignored
    scores = Scores([c.key for c in cands], embeddings=emb)
    order = _pick("centre", cands, scores, 8)
    fakes = [k for k in order if k.startswith("s")]
    assert fakes[0] == "s2"  # 0 degrees: the fakes' centre direction
    assert set(fakes[-2:]) == {"s0", "s4"}  # +-40 degrees are the least representative fakes
    # Each class is measured against its own centre: the real at 180 beats the fakes at +-20.
    assert order.index("r1") < order.index("s1")


def test_diversity_covers_the_outliers_first():
    cands = _cands(7)
    emb = np.concatenate([_circle([0, 2, 4, 6, 8]), _circle([90, 180])])
    scores = Scores([c.key for c in cands], embeddings=emb)
    chosen = _pick("diversity", cands, scores, 3)
    assert {"s5", "s6"} <= set(chosen)
    assert farthest_point_order(emb, 2, chosen=[5, 6]) and 5 not in farthest_point_order(emb, 2, chosen=[5, 6])


def test_herding_tracks_the_class_mean_better_than_random_subsets():
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(40, 8)) + 2.0
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    mean = unit.mean(0)
    order = herding_order(emb, 5)
    assert order[0] == int(np.argmin(np.linalg.norm(unit - mean, axis=1)))
    herded = np.linalg.norm(unit[order].mean(0) - mean)
    randoms = [np.linalg.norm(unit[rng.choice(40, 5, replace=False)].mean(0) - mean) for _ in range(200)]
    assert herded < np.percentile(randoms, 5)


def test_policies_that_need_scores_say_so():
    cands = _cands(3)
    for name in ("margin", "entropy", "centre", "diversity", "herding", "hybrid"):
        assert POLICIES.get(name)().needs, name
        with pytest.raises(ValueError, match=name):
            _pick(name, cands, None, 2)
    assert POLICIES.get("random")().needs == frozenset()
    with pytest.raises(KeyError, match="s2"):
        Scores.from_fake_probs(["s0", "s1"], [0.1, 0.2]).take(["s0", "s2"])


# --------------------------------------------------------------------------- hybrid


def _hybrid_scores(n: int = 20):
    cands = _cands(n)
    p = np.linspace(0.5, 1.0, n)  # s0 hardest ... s{n-1} most confident
    emb = _circle(np.linspace(-90, 90, n))  # centre at 0 degrees: the middle samples
    return cands, Scores.from_fake_probs([c.key for c in cands], p, embeddings=emb)


def test_hybrid_with_one_criterion_is_that_criterion():
    cands, scores = _hybrid_scores()
    only_margin = HybridPolicy({"margin": 1.0})
    assert [c.key for c in only_margin(cands, scores, 5, random.Random(0))] == _pick("margin", cands, scores, 5)
    assert only_margin.needs == frozenset({"probs"})


def test_hybrid_splits_the_quota_and_interleaves_the_criteria():
    cands, scores = _hybrid_scores()
    policy = HybridPolicy({"margin": 0.5, "centre": 0.5})
    assert policy.needs == frozenset({"probs", "embeddings"})
    got = [c.key for c in policy(cands, scores, 4, random.Random(0))]
    # Margin: the two hardest (s0, s1); centre: the two nearest 0 degrees (s9, s10); alternating.
    assert got[0::2] == ["s0", "s1"] and set(got[1::2]) == {"s9", "s10"}


def test_hybrid_quotas_follow_the_weights_and_every_prefix_keeps_the_mix():
    policy = HybridPolicy({"margin": 3, "entropy": 1, "centre": 2, "diversity": 2, "random": 0})
    assert policy.quotas(16) == {"margin": 6, "entropy": 2, "centre": 4, "diversity": 4, "random": 0}
    assert sum(policy.quotas(7).values()) == 7
    cands, scores = _hybrid_scores(40)
    half = HybridPolicy({"margin": 1, "centre": 1})
    order = [c.key for c in half(cands, scores, 20, random.Random(0))]
    hard = set(_pick("margin", cands, scores, 10))
    for m in range(1, 21):
        n_hard = sum(k in hard for k in order[:m])
        assert abs(n_hard - m / 2) <= 1, (m, order[:m])


def test_hybrid_diversity_adds_what_the_other_criteria_missed():
    cands, scores = _hybrid_scores()
    policy = HybridPolicy({"centre": 1, "diversity": 1})
    got = [c.key for c in policy(cands, scores, 4, random.Random(0))]
    assert len(set(got)) == 4
    assert {"s0", "s19"} <= set(got)  # the two ends of the arc, farthest from the central picks


def test_hybrid_rejects_bad_weights():
    with pytest.raises(ValueError, match="positive sum"):
        HybridPolicy({"margin": 0.0})
    with pytest.raises(ValueError, match="unknown hybrid criteria"):
        HybridPolicy({"loss": 1.0})


# --------------------------------------------------------------------------- buffers


def test_real_fraction_and_the_real_face_minimum_are_respected():
    cands = _cands(50, 0, "r") + _cands(50, 1, "f")
    buffer = ReplayBuffer(20, "random", seed=0, real_fraction=0.2)
    buffer.add_task(cands)
    assert Counter(k[0] for k in buffer.keys()) == {"r": 4, "f": 16}
    buffer.add_task(_cands(50, 0, "R") + _cands(50, 1, "F"))
    assert Counter(k[0] for k in buffer.keys_per_task()[0]) == {"r": 2, "f": 8}
    # A tiny fraction still keeps one real face per task...
    tiny = ReplayBuffer(4, "random", seed=0, real_fraction=0.05)
    tiny.add_task(cands)
    assert Counter(k[0] for k in tiny.keys()) == {"r": 1, "f": 3}
    # ...and class balance (the default) splits evenly.
    balanced = ReplayBuffer(20, "margin", seed=0)
    balanced.add_task(cands, Scores.from_fake_probs([c.key for c in cands], np.linspace(0, 1, 100)))
    assert Counter(k[0] for k in balanced.keys()) == {"r": 10, "f": 10}


def test_a_scored_policy_fills_each_class_with_its_hardest_samples():
    reals, fakes = _cands(10, 0, "r"), _cands(10, 1, "f")
    p = {**{f"r{i}": 0.05 * i for i in range(10)}, **{f"f{i}": 1 - 0.05 * i for i in range(10)}}
    scores = Scores.from_fake_probs(list(p), list(p.values()))
    buffer = ReplayBuffer(6, "margin", seed=0)
    added = buffer.add_task(reals + fakes, scores)
    assert [c.key for c in added] == ["r9", "r8", "r7", "f9", "f8", "f7"]  # p closest to 0.5 first


def test_reservoir_sampling_is_uniform_over_the_stream():
    counts = Counter()
    runs = 2000
    for seed in range(runs):
        buffer = ReservoirBuffer(10, seed=seed)
        buffer.add_task(_cands(50, 1, "a"))
        buffer.add_task(_cands(50, 1, "b"))
        assert len(buffer) == 10
        counts.update(buffer.keys())
    rates = np.array([counts[f"{t}{i}"] / runs for t in "ab" for i in range(50)])
    assert rates.mean() == pytest.approx(0.1)
    assert np.abs(rates - 0.1).max() < 0.035  # 5 binomial standard deviations
    share_b = sum(counts[f"b{i}"] for i in range(50)) / (10 * runs)
    assert share_b == pytest.approx(0.5, abs=0.02)


def test_reservoir_is_seeded_and_restores_mid_stream():
    def run(seed, stop=None):
        buffer = ReservoirBuffer(8, seed=seed)
        for t in range(3):
            if t == stop:
                state = json.loads(json.dumps(buffer.state_dict()))
                buffer = ReservoirBuffer(1, seed=99)
                buffer.load_state_dict(state)
            buffer.add_task(_cands(20, t % 2, f"t{t}/"))
        return buffer.keys_per_task()

    assert run(3) == run(3) == run(3, stop=2)
    assert run(3) != run(4)
    assert [len(k) for k in run(3)] and sum(len(k) for k in run(3)) == 8
    assert isinstance(make_buffer(5, "reservoir"), ReservoirBuffer)
    assert isinstance(make_buffer(5, "random"), ReplayBuffer)


# --------------------------------------------------------------------------- CFFD hybrid replay with a model


def _tiny_samples(n: int = 12):
    g = torch.Generator().manual_seed(3)
    keys = [f"x{i}" for i in range(n)]
    labels = {k: i % 2 for i, k in enumerate(keys)}
    return keys, labels, TensorSamples(dict(zip(keys, torch.randn(n, 3, 32, 32, generator=g))), labels, batch_size=5)


def test_cffd_hybrid_replay_scores_candidates_with_the_model():
    torch.manual_seed(0)
    model = build_model("rsia_lite", {"preset": "tiny"})
    keys, labels, samples = _tiny_samples()
    cands = [Candidate(k, labels[k]) for k in keys]
    strategy = build_strategy("cffd", {"replay_size": 4, "replay_policy": "hybrid", "hybrid_margin": 1,
                                       "hybrid_entropy": 0, "hybrid_centre": 0, "hybrid_diversity": 0})
    with pytest.raises(TypeError, match="sample access"):
        strategy.after_task(0, model, cands)
    model.train()
    strategy.after_task(0, model, cands, samples)
    assert model.training  # scoring restored the mode
    model.eval()
    with torch.no_grad():
        p = torch.sigmoid(model(torch.stack([samples.images[k] for k in keys])).logits).tolist()
    margin = {k: abs(2 * pk - 1) for k, pk in zip(keys, p)}
    want = [sorted((k for k in keys if labels[k] == c), key=margin.get)[:2] for c in (0, 1)]
    assert strategy.replay_keys() == want[0] + want[1]


def test_cffd_replay_parameters_are_validated():
    assert resolve_strategy_params("cffd", {"replay_policy": "reservoir"}).replay_policy == "reservoir"
    params = resolve_strategy_params("cffd", {"replay_policy": "hybrid", "hybrid_random": 2})
    assert params.hybrid_weights()["random"] == 2
    with pytest.raises(ConfigError, match="hybrid"):
        resolve_strategy_params("cffd", {"replay_policy": "hybrid", "hybrid_margin": 0, "hybrid_entropy": 0,
                                         "hybrid_centre": 0, "hybrid_diversity": 0})
    with pytest.raises(ConfigError, match="strategy.replay_real_fraction"):
        resolve_strategy_params("cffd", {"replay_real_fraction": 0})
    with pytest.raises(ConfigError, match="strategy.hybrid_centre"):
        resolve_strategy_params("cffd", {"hybrid_centre": -1})
