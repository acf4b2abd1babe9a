"""Continual strategies: loss contract, CFFD's frozen teacher and its distillation losses."""

from __future__ import annotations

import json
import math

import pytest
import torch

from forgesweep.continual import STRATEGIES, TensorSamples, build_strategy, resolve_strategy_params
from forgesweep.continual.distillation import binary_log_probs, feature_kd, soft_label_kd
from forgesweep.continual.replay_buffer import Candidate
from forgesweep.errors import ConfigError, UserError
from forgesweep.models import build_model


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model("rsia_lite", {"preset": "tiny"})


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return {"images": torch.randn(4, 3, 32, 32, generator=g), "labels": torch.tensor([0, 1, 0, 1]),
            "keys": ["a", "b", "c", "d"]}


@pytest.fixture
def samples():
    """Ten in-memory samples ``k0``..``k9`` plus the batch's ``a``..``d``, for strategies that
    score or batch samples around a task."""
    g = torch.Generator().manual_seed(2)
    keys = [f"k{i}" for i in range(10)] + ["a", "b", "c", "d"]
    labels = [i % 2 for i in range(10)] + [0, 1, 0, 1]
    images = torch.randn(len(keys), 3, 32, 32, generator=g)
    images[10:] = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # the batch's images
    return TensorSamples(dict(zip(keys, images)), dict(zip(keys, labels)), batch_size=4)


CANDIDATES = [Candidate("a", 0), Candidate("b", 1), Candidate("c", 0), Candidate("d", 1)]


def _perturb(model, scale=0.3, seed=5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


# --------------------------------------------------------------------------- every strategy


@pytest.mark.parametrize("name", STRATEGIES.names())
@pytest.mark.parametrize("task", [0, 1])
def test_compute_loss_returns_a_finite_differentiable_total(name, task, model, batch, samples):
    strategy = build_strategy(name, seed=0)
    model.train()
    strategy.before_task(0, model, CANDIDATES, samples)
    if task:
        strategy.after_task(0, model, CANDIDATES[:2], samples)
        strategy.before_task(task, model, CANDIDATES, samples)
    out, terms = strategy.compute_loss(model, batch)
    assert out.logits.shape == (4,)
    loss = terms["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.requires_grad
    parts = [v for k, v in terms.items() if k != "loss"]
    assert parts and torch.allclose(loss, sum(parts))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_state_dict_is_json_safe_and_restores(name, model, samples):
    a = build_strategy(name, seed=3)
    a.before_task(0, model)
    a.after_task(0, model, [Candidate(f"k{i}", i % 2) for i in range(10)], samples)
    state = json.loads(json.dumps(a.state_dict()))
    b = build_strategy(name, seed=3)
    b.load_state_dict(state)
    b.load_tensor_state({k: v.clone() for k, v in a.tensor_state().items()})
    assert b.replay_keys() == a.replay_keys()
    assert b.state_dict() == a.state_dict()
    for key, value in a.tensor_state().items():
        assert torch.equal(b.tensor_state()[key], value)
    # The restored strategy goes on exactly like the original: same loss on the next task.
    torch.manual_seed(0)
    for s in (a, b):
        s.before_task(1, model, CANDIDATES, samples)
    model.eval()
    ta, tb = a.compute_loss(model, _batch_of(samples)), b.compute_loss(model, _batch_of(samples))
    assert {k: float(v.detach()) for k, v in ta[1].items()} == pytest.approx(
        {k: float(v.detach()) for k, v in tb[1].items()})


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_reads_samples_says_whether_the_hooks_need_sample_access(name, model, samples):
    strategy = build_strategy(name, seed=0)

    def hooks(access):
        strategy.before_task(0, model, CANDIDATES, access)
        strategy.after_task(0, model, CANDIDATES, access)
        strategy.before_task(1, model, CANDIDATES, access)

    if strategy.reads_samples():
        with pytest.raises(TypeError, match="sample access"):
            hooks(None)
    else:
        hooks(None)
    hooks(samples)


def _batch_of(samples, keys=("a", "b", "c", "d", "k0", "k1")):
    return next(samples.batches(list(keys), batch_size=len(keys)))


def test_registry_names_and_unknown_strategy():
    expected = {"cffd", "cored", "der", "derpp", "er", "ewc", "finetune", "icarl", "joint", "lwf"}
    assert expected <= set(STRATEGIES.names())
    with pytest.raises(UserError, match="cffd"):
        build_strategy("synaptic_intelligence")


def test_finetune_has_no_memory_and_no_distillation(model, batch):
    strategy = build_strategy("finetune")
    strategy.before_task(1, model)
    strategy.after_task(1, model, [Candidate("a", 0)])
    _, terms = strategy.compute_loss(model, batch)
    assert set(terms) == {"bce", "loss"}
    assert strategy.replay_keys() == [] and strategy.state_dict() == {}
    with pytest.raises(ConfigError, match="strategy.replay_size"):
        build_strategy("finetune", {"replay_size": 10})


# --------------------------------------------------------------------------- CFFD


def test_cffd_has_no_distillation_at_task_0(model, batch):
    strategy = build_strategy("cffd")
    strategy.before_task(0, model)
    assert strategy.teacher is None
    _, terms = strategy.compute_loss(model, batch)
    assert set(terms) == {"bce", "loss"}
    assert torch.allclose(terms["loss"], terms["bce"])


def test_cffd_teacher_is_a_frozen_copy(model, batch):
    strategy = build_strategy("cffd")
    model.train()
    strategy.before_task(1, model)
    teacher = strategy.teacher
    assert teacher is not None and teacher is not model
    assert type(teacher) is type(model)
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    # The student is untouched: still training, still learning.
    assert model.training and all(p.requires_grad for p in model.parameters())
    # A copy, not shared storage: changing the student leaves the teacher as it was.
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    _perturb(model)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    for (name, s), t in zip(model.named_parameters(), teacher.parameters()):
        assert s.data_ptr() != t.data_ptr(), name
    # Training the student computes no gradient for the teacher.
    _, terms = strategy.compute_loss(model, batch)
    terms["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())


def test_cffd_distillation_is_zero_for_an_identical_student_and_positive_after_a_change(model, batch):
    strategy = build_strategy("cffd", {"feature_layers": ["stage2", "stage4"]})
    strategy.before_task(1, model)
    model.eval()  # the teacher runs in eval mode; compare like with like
    _, terms = strategy.compute_loss(model, batch)
    assert {"slkd", "mfkd"} <= set(terms)
    assert abs(terms["slkd"].detach().item()) < 1e-7
    assert abs(terms["mfkd"].detach().item()) < 1e-7
    assert torch.allclose(terms["loss"], terms["bce"])

    _perturb(model)
    _, terms = strategy.compute_loss(model, batch)
    assert terms["slkd"].detach().item() > 1e-6
    assert terms["mfkd"].detach().item() > 1e-6
    assert terms["slkd"].requires_grad and terms["mfkd"].requires_grad
    assert torch.allclose(terms["loss"], terms["bce"] + terms["slkd"] + terms["mfkd"])


def test_cffd_weights_scale_the_distillation_terms(model, batch):
    def terms_for(**params):
        torch.manual_seed(0)
        student = build_model("rsia_lite", {"preset": "tiny"})
        strategy = build_strategy("cffd", params)
        strategy.before_task(1, student)
        _perturb(student)
        student.eval()
        return strategy.compute_loss(student, batch)[1]

    one = terms_for(w_slkd=1.0, w_mfkd=1.0)
    scaled = terms_for(w_slkd=3.0, w_mfkd=0.5)
    off = terms_for(w_slkd=0.0, w_mfkd=0.0)
    assert torch.allclose(scaled["slkd"], 3.0 * one["slkd"])
    assert torch.allclose(scaled["mfkd"], 0.5 * one["mfkd"])
    assert off["slkd"].detach().item() == 0.0 and off["mfkd"].detach().item() == 0.0
    assert torch.allclose(off["loss"], off["bce"])


def test_cffd_feature_layers_select_what_mfkd_compares(batch):
    def mfkd(layers):
        torch.manual_seed(0)
        student = build_model("rsia_lite", {"preset": "tiny"})
        strategy = build_strategy("cffd", {"feature_layers": layers})
        strategy.before_task(1, student)
        _perturb(student)
        student.eval()
        with torch.no_grad():
            s, t = student(batch["images"]), strategy.teacher(batch["images"])
        got = strategy.compute_loss(student, batch)[1]["mfkd"]
        return got, s, t

    got, s, t = mfkd("stage1+frequency3")
    want = torch.stack([(s.features[k] - t.features[k]).pow(2).mean() for k in ("stage1", "frequency3")]).mean()
    assert torch.allclose(got, want, rtol=1e-5)


def test_cffd_unknown_feature_layer_fails_naming_it(model, batch):
    strategy = build_strategy("cffd", {"feature_layers": ["stage4", "stage9"]})
    strategy.before_task(1, model)
    with pytest.raises(KeyError, match="stage9"):
        strategy.compute_loss(model, batch)


def test_cffd_replay_follows_after_task(model):
    strategy = build_strategy("cffd", {"replay_size": 4}, seed=0)
    assert strategy.replay_keys() == []
    strategy.after_task(0, model, [Candidate(f"r{i}", 0) for i in range(5)] + [Candidate(f"f{i}", 1) for i in range(5)])
    keys = strategy.replay_keys()
    assert len(keys) == 4
    assert sum(k.startswith("r") for k in keys) == 2


def test_cffd_can_distil_on_the_replayed_rows_only(model, batch):
    replay_only = build_strategy("cffd", {"replay_size": 2, "distill_on": "replay"})
    everywhere = build_strategy("cffd", {"replay_size": 2})
    for strategy in (replay_only, everywhere):
        strategy.after_task(0, model, CANDIDATES)
        strategy.before_task(1, model)
    replayed = replay_only.replay_keys()
    assert len(replayed) == 2 and replayed == everywhere.replay_keys()
    _perturb(model)
    model.eval()
    _, terms = replay_only.compute_loss(model, batch)
    rows = [batch["keys"].index(k) for k in replayed]
    sub = {"images": batch["images"][rows], "labels": batch["labels"][rows], "keys": replayed}
    _, want = everywhere.compute_loss(model, sub)  # distillation over exactly those rows
    assert terms["slkd"].item() == pytest.approx(want["slkd"].item(), rel=1e-5)
    assert terms["mfkd"].item() == pytest.approx(want["mfkd"].item(), rel=1e-5)
    _, full = everywhere.compute_loss(model, batch)
    assert full["slkd"].item() != pytest.approx(terms["slkd"].item(), rel=1e-3)
    # A batch of new samples only is not distilled.
    new = [i for i, k in enumerate(batch["keys"]) if k not in replayed]
    _, terms = replay_only.compute_loss(model, {"images": batch["images"][new], "labels": batch["labels"][new],
                                                "keys": [batch["keys"][i] for i in new]})
    assert terms["slkd"].item() == 0.0 and terms["mfkd"].item() == 0.0
    with pytest.raises(ConfigError, match="replay_size"):
        resolve_strategy_params("cffd", {"distill_on": "replay", "replay_size": 0})


def test_feature_layers_accept_plus_joined_strings():
    assert resolve_strategy_params("cffd", {"feature_layers": "stage2+stage3"}).feature_layers == ["stage2", "stage3"]
    assert resolve_strategy_params("cffd", {"feature_layers": " stage1 + stage4 "}).feature_layers == ["stage1", "stage4"]
    assert resolve_strategy_params("cffd", {"feature_layers": "stage4"}).feature_layers == ["stage4"]
    assert resolve_strategy_params("cffd", {"feature_layers": ["a", "b"]}).feature_layers == ["a", "b"]
    with pytest.raises(ConfigError, match="strategy.feature_layers"):
        resolve_strategy_params("cffd", {"feature_layers": "+"})


@pytest.mark.parametrize(
    "params, field",
    [({"kd_temprature": 2.0}, "strategy.kd_temprature"), ({"kd_temperature": 0}, "strategy.kd_temperature"),
     ({"w_slkd": -1}, "strategy.w_slkd"), ({"replay_policy": "fifo"}, "strategy.replay_policy")],
)
def test_cffd_bad_parameters_are_config_errors(params, field):
    with pytest.raises(ConfigError) as info:
        resolve_strategy_params("cffd", params)
    assert field in str(info.value)


# --------------------------------------------------------------------------- distillation losses


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_soft_label_kd_matches_a_hand_computed_kl():
    student = torch.tensor([0.5, -1.0], requires_grad=True)
    teacher = torch.tensor([2.0, 0.3], requires_grad=True)
    T = 2.0
    kls = []
    for s, t in zip(student.tolist(), teacher.tolist()):
        ps, pt = _sigmoid(s / T), _sigmoid(t / T)  # P(fake) at temperature T
        kls.append(pt * math.log(pt / ps) + (1 - pt) * math.log((1 - pt) / (1 - ps)))
    expected = sum(kls) / len(kls) * T * T
    got = soft_label_kd(student, teacher, T)
    assert got.ndim == 0
    assert got.item() == pytest.approx(expected, rel=1e-5)
    got.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None  # the teacher is a target, not a learner


def test_soft_label_kd_is_zero_for_equal_logits_and_positive_otherwise():
    z = torch.tensor([-3.0, 0.0, 4.0])
    assert soft_label_kd(z, z.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-7)
    assert soft_label_kd(z, -z, 4.0).item() > 0


def test_binary_log_probs_are_normalised():
    lp = binary_log_probs(torch.tensor([-2.0, 0.0, 5.0]), temperature=2.0)
    assert lp.shape == (3, 2)
    assert torch.allclose(lp.exp().sum(-1), torch.ones(3))
    assert torch.allclose(lp[:, 1].exp(), torch.sigmoid(torch.tensor([-1.0, 0.0, 2.5])))


def test_feature_kd_averages_layers_and_samples():
    s = {"a": torch.zeros(2, 3, 4, 4), "b": torch.zeros(2, 5, 2, 2), "c": torch.zeros(2, 1, 1, 1)}
    t = {"a": torch.ones(2, 3, 4, 4), "b": torch.full((2, 5, 2, 2), 2.0), "c": torch.zeros(2, 1, 1, 1)}
    assert feature_kd(s, t, ["a"]).item() == pytest.approx(1.0)
    assert feature_kd(s, t, ["a", "b"]).item() == pytest.approx(2.5)
    assert feature_kd(s, t, ["a", "b", "c"]).item() == pytest.approx(5.0 / 3.0)


def test_feature_kd_unknown_layer_raises_key_error_naming_it():
    feats = {"stage1": torch.zeros(1, 1, 1, 1)}
    with pytest.raises(KeyError, match="stage7") as info:
        feature_kd(feats, feats, ["stage1", "stage7"])
    assert "stage1" in str(info.value)  # lists what is available
    with pytest.raises(ValueError):
        feature_kd(feats, feats, [])


def test_select_rows_keeps_every_field_of_an_output_subclass():
    import dataclasses

    from forgesweep.continual.base import select_rows
    from forgesweep.models.output import DetectorOutput

    @dataclasses.dataclass
    class WithKeys(DetectorOutput):
        keys: torch.Tensor | None = None

    out = WithKeys(logits=torch.tensor([0.1, 0.2, 0.3]), embedding=torch.arange(6.0).reshape(3, 2),
                   keys=torch.tensor([[1.0], [2.0], [3.0]]))
    sub, batch = select_rows(out, {"labels": torch.tensor([0, 1, 1]), "keys": ["a", "b", "c"]},
                             torch.tensor([False, True, True]))
    assert isinstance(sub, WithKeys)
    assert torch.equal(sub.keys, torch.tensor([[2.0], [3.0]]))
    assert torch.equal(sub.logits, torch.tensor([0.2, 0.3]))
    assert batch["keys"] == ["b", "c"] and torch.equal(batch["labels"], torch.tensor([1, 1]))
