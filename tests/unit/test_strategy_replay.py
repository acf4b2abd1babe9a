"""Replay-based strategies: ER (random/reservoir), DER/DER++ stored logits, joint training."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from forgesweep.continual import TensorSamples, build_strategy
from forgesweep.continual.replay_buffer import Candidate, ReplayBuffer, ReservoirBuffer
from forgesweep.errors import ConfigError
from forgesweep.models import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model("rsia_lite", {"preset": "tiny"})


def _task(t: int, n: int = 6) -> list[Candidate]:
    return [Candidate(f"t{t}/{i}", i % 2) for i in range(n)]


@pytest.fixture
def samples():
    g = torch.Generator().manual_seed(3)
    cands = _task(0) + _task(1) + _task(2)
    return TensorSamples({c.key: torch.randn(3, 32, 32, generator=g) for c in cands},
                         {c.key: c.label for c in cands}, batch_size=4)


def _batch(samples, keys):
    return next(samples.batches(keys, batch_size=len(keys)))


# --------------------------------------------------------------------------- ER


def test_er_random_is_class_balanced_and_replayed(model):
    strategy = build_strategy("er", {"replay_size": 4})
    assert isinstance(strategy.buffer, ReplayBuffer)
    strategy.after_task(0, model, _task(0, 20))
    keys = strategy.replay_keys()
    assert len(keys) == 4 and Counter(int(k.split("/")[1]) % 2 for k in keys) == {0: 2, 1: 2}
    strategy.after_task(1, model, _task(1, 20))
    assert [k.split("/")[0] for k in strategy.replay_keys()] == ["t0"] * 2 + ["t1"] * 2


def test_er_reservoir_fills_from_the_stream(model):
    strategy = build_strategy("er", {"replay_size": 5, "selection": "reservoir"})
    assert isinstance(strategy.buffer, ReservoirBuffer)
    strategy.after_task(0, model, _task(0, 3))
    assert sorted(strategy.replay_keys()) == sorted(c.key for c in _task(0, 3))
    strategy.after_task(1, model, _task(1, 30))
    assert len(strategy.replay_keys()) == 5
    with pytest.raises(ConfigError, match="strategy.selection"):
        build_strategy("er", {"selection": "fifo"})


# --------------------------------------------------------------------------- DER / DER++


def test_der_stores_the_end_of_task_logits_of_the_kept_samples(model, samples):
    strategy = build_strategy("der", {"replay_size": 4, "selection": "random"})
    with pytest.raises(TypeError, match="logits"):
        strategy.after_task(0, model, _task(0))
    strategy.after_task(0, model, _task(0), samples)
    kept = strategy.replay_keys()
    assert sorted(strategy.logits) == sorted(kept)
    model.eval()
    with torch.no_grad():
        want = model(_batch(samples, kept)["images"]).logits.tolist()
    assert [strategy.logits[k] for k in kept] == pytest.approx(want, abs=1e-6)
    # A later task keeps the old samples' logits as they were and adds its own.
    old = dict(strategy.logits)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.1)
    strategy.after_task(1, model, _task(1), samples)
    assert sorted(strategy.logits) == sorted(set(strategy.replay_keys()))
    survivors = strategy.buffer.keys_per_task()[0]
    assert len(survivors) == 2 and all(strategy.logits[k] == old[k] for k in survivors)


def test_der_pulls_replayed_rows_to_their_stored_logits_only(model, samples):
    strategy = build_strategy("der", {"replay_size": 4, "selection": "random", "alpha": 0.7})
    strategy.after_task(0, model, _task(0), samples)
    replayed = strategy.replay_keys()[:2]
    new = [c.key for c in _task(1)[:3]]
    batch = _batch(samples, new + replayed)
    strategy.logits[replayed[0]] += 1.5  # make the stored values differ from the current model's
    model.eval()
    out, terms = strategy.compute_loss(model, batch)
    assert set(terms) == {"bce", "der", "loss"}
    stored = torch.tensor([strategy.logits[k] for k in replayed])
    assert terms["der"].item() == pytest.approx(0.7 * F.mse_loss(out.logits[3:], stored).item(), rel=1e-5)
    want_bce = F.binary_cross_entropy_with_logits(out.logits[:3], batch["labels"][:3].float())
    assert terms["bce"].item() == pytest.approx(want_bce.item(), rel=1e-5)  # DER: label loss on new rows only
    assert torch.allclose(terms["loss"], terms["bce"] + terms["der"])


def test_derpp_adds_the_label_loss_on_replayed_rows(model, samples):
    strategy = build_strategy("derpp", {"replay_size": 4, "selection": "random", "alpha": 0.5, "beta": 2.0})
    strategy.after_task(0, model, _task(0), samples)
    replayed = strategy.replay_keys()[:2]
    batch = _batch(samples, [c.key for c in _task(1)[:2]] + replayed)
    model.eval()
    out, terms = strategy.compute_loss(model, batch)
    assert set(terms) == {"bce", "bce_replay", "der", "loss"}
    want = 2.0 * F.binary_cross_entropy_with_logits(out.logits[2:], batch["labels"][2:].float())
    assert terms["bce_replay"].item() == pytest.approx(want.item(), rel=1e-5)
    # A batch without replayed rows still reports the (zero) logit term.
    _, terms = strategy.compute_loss(model, _batch(samples, [c.key for c in _task(2)[:3]]))
    assert terms["der"].item() == 0.0 and "bce_replay" not in terms


def test_der_state_round_trips_the_logits(model, samples):
    strategy = build_strategy("der", {"replay_size": 4})
    strategy.after_task(0, model, _task(0), samples)
    restored = build_strategy("der", {"replay_size": 4})
    restored.load_state_dict(strategy.state_dict())
    assert restored.logits == strategy.logits and restored.replay_keys() == strategy.replay_keys()


# --------------------------------------------------------------------------- joint


def test_joint_trains_on_the_union_of_all_earlier_tasks_without_repeats(model):
    strategy = build_strategy("joint")
    shared = Candidate("real/0", 0)
    t0 = [shared, Candidate("a/0", 1), Candidate("a/1", 1)]
    t1 = [shared, Candidate("b/0", 1)]
    strategy.before_task(0, model, t0)
    assert strategy.replay_keys() == []
    strategy.after_task(0, model, t0)
    strategy.before_task(1, model, t1)
    assert strategy.replay_keys() == ["a/0", "a/1"]  # the shared real is already in task 1
    strategy.after_task(1, model, t1)
    strategy.before_task(2, model, [Candidate("c/0", 1)])
    assert strategy.replay_keys() == ["real/0", "a/0", "a/1", "b/0"]
    restored = build_strategy("joint")
    restored.load_state_dict(strategy.state_dict())
    restored.before_task(2, model, [Candidate("c/0", 1)])
    assert restored.replay_keys() == strategy.replay_keys()
