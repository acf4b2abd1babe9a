"""Teacher-based strategies: the shared-frozen-tower teacher, LwF, CoReD and iCaRL."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from pydantic import BaseModel
from torch import nn

from forgesweep.continual import TensorSamples, build_strategy, frozen_teacher
from forgesweep.continual.distillation import soft_label_kd
from forgesweep.continual.replay_buffer import Candidate
from forgesweep.continual.selection import herding_order
from forgesweep.models import Detector, DetectorOutput, build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class TowerDetector(Detector):
    """A frozen "backbone" (conv + BatchNorm) and a trainable head; not registered."""

    Params = BaseModel

    def __init__(self) -> None:
        super().__init__()
        self.tower = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        for p in self.tower.parameters():
            p.requires_grad_(False)
        self.head = nn.Linear(8, 1)

    def frozen_modules(self):
        return [self.tower]

    def forward(self, images):
        feat = self.tower(images).mean((2, 3))
        return DetectorOutput(self.head(feat).squeeze(-1), OrderedDict(tower=feat), feat)


def _perturb(model, scale=0.3, seed=5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model("rsia_lite", {"preset": "tiny"})


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(1)
    keys = [f"k{i}" for i in range(8)]
    labels = {k: i % 2 for i, k in enumerate(keys)}
    images = torch.randn(8, 3, 32, 32, generator=g)
    samples = TensorSamples(dict(zip(keys, images)), labels, batch_size=3)
    batch = {"images": images, "labels": torch.tensor([labels[k] for k in keys]), "keys": keys}
    return [Candidate(k, labels[k]) for k in keys], samples, batch


# --------------------------------------------------------------------------- the teacher


def test_teacher_shares_the_frozen_tower_and_copies_the_trainable_parts():
    student = TowerDetector()
    teacher = frozen_teacher(student)
    assert teacher.tower is student.tower  # one tower in memory, not two
    assert all(a is b for a, b in zip(teacher.tower.parameters(), student.tower.parameters()))
    assert all(a is b for a, b in zip(teacher.tower.buffers(), student.tower.buffers()))
    assert teacher.head is not student.head
    assert teacher.head.weight.data_ptr() != student.head.weight.data_ptr()
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    assert student.head.weight.requires_grad  # the student keeps learning
    before = teacher.head.weight.clone()
    _perturb(student)
    assert torch.equal(teacher.head.weight, before)
    # Only the head's parameters are new storage.
    shared = {p.data_ptr() for p in student.parameters()}
    assert {p.data_ptr() for p in teacher.parameters()} - shared == {teacher.head.weight.data_ptr(),
                                                                     teacher.head.bias.data_ptr()}


def test_teacher_refuses_a_frozen_module_that_still_trains():
    student = TowerDetector()
    student.tower[0].weight.requires_grad_(True)
    with pytest.raises(ValueError, match="0.weight"):
        frozen_teacher(student)


def test_teacher_of_a_model_without_frozen_parts_is_a_full_copy(model):
    teacher = frozen_teacher(model)
    assert not {p.data_ptr() for p in teacher.parameters()} & {p.data_ptr() for p in model.parameters()}


# --------------------------------------------------------------------------- LwF


def test_lwf_term_is_zero_for_an_identical_student_and_grows_after_a_change(model, data):
    _, _, batch = data
    strategy = build_strategy("lwf", {"w_kd": 2.0, "kd_temperature": 3.0})
    strategy.before_task(0, model)
    assert set(strategy.compute_loss(model, batch)[1]) == {"bce", "loss"}
    strategy.before_task(1, model)
    model.eval()
    _, terms = strategy.compute_loss(model, batch)
    assert abs(terms["lwf"].item()) < 1e-7
    _perturb(model)
    out, terms = strategy.compute_loss(model, batch)
    with torch.no_grad():
        want = 2.0 * soft_label_kd(out.logits, strategy.teacher(batch["images"]).logits, 3.0)
    assert terms["lwf"].item() == pytest.approx(want.item(), rel=1e-5) and want.item() > 1e-5
    assert torch.allclose(terms["loss"], terms["bce"] + terms["lwf"])


# --------------------------------------------------------------------------- CoReD


def test_cored_bands_split_the_correct_confidences():
    strategy = build_strategy("cored", {"num_bands": 5})
    p = torch.tensor([0.4, 0.5, 0.55, 0.6, 0.61, 0.95, 1.0])
    assert strategy.band(p).tolist() == [-1, -1, 0, 0, 1, 4, 4]


def test_cored_terms_are_zero_for_an_identical_student_on_the_summarised_data(model, data):
    cands, samples, batch = data
    strategy = build_strategy("cored", {"num_bands": 2})
    with pytest.raises(TypeError, match="cored"):
        strategy.before_task(1, model, cands)
    strategy.before_task(1, model, cands, samples)
    assert strategy.centroids.shape == (2, 2, model.params.embed_dim)
    assert strategy.has_centroid.any()
    model.eval()
    _, terms = strategy.compute_loss(model, batch)
    assert {"cored_kd", "cored_rep"} <= set(terms)
    assert abs(terms["cored_kd"].item()) < 1e-7 and abs(terms["cored_rep"].item()) < 1e-10
    _perturb(model, scale=0.05)
    _, terms = strategy.compute_loss(model, batch)
    assert terms["cored_kd"].item() > 0 and terms["cored_rep"].item() > 0
    assert torch.allclose(terms["loss"], terms["bce"] + terms["cored_kd"] + terms["cored_rep"])


def test_cored_centroids_are_the_teachers_group_means(model, data):
    cands, samples, batch = data
    strategy = build_strategy("cored", {"num_bands": 1, "representation": "stage4"})
    assert build_strategy("cored").required_features(strategy.params) == ["stage4"]
    strategy.before_task(1, model, cands, samples)
    model.eval()
    with torch.no_grad():
        out = model(batch["images"])
    p_fake = torch.sigmoid(out.logits)
    correct = torch.where(batch["labels"] == 1, p_fake, 1 - p_fake) > 0.5
    rep = out.features["stage4"].mean((2, 3))
    for c in (0, 1):
        rows = correct & (batch["labels"] == c)
        assert bool(strategy.has_centroid[0, c]) == bool(rows.any())
        if rows.any():
            assert torch.allclose(strategy.centroids[0, c], rep[rows].mean(0), atol=1e-5)


# --------------------------------------------------------------------------- iCaRL


def test_icarl_herds_exemplars_on_the_model_embeddings(model, data):
    cands, samples, batch = data
    strategy = build_strategy("icarl", {"replay_size": 4})
    strategy.after_task(0, model, cands, samples)
    model.eval()
    with torch.no_grad():
        emb = model(batch["images"]).embedding.double().numpy()
    labels = batch["labels"].numpy()
    want = []
    for c in (0, 1):
        rows = np.flatnonzero(labels == c)
        want += [batch["keys"][rows[i]] for i in herding_order(emb[rows], 2)]
    assert strategy.replay_keys() == want


def test_icarl_nearest_mean_classifier_scores_by_distance(model, data):
    cands, samples, batch = data
    strategy = build_strategy("icarl", {"replay_size": 4})
    out = DetectorOutput(logits=torch.tensor([5.0, -5.0]), embedding=torch.tensor([[1.0, 0.1], [0.1, 1.0]]))
    assert torch.equal(strategy.predict_logits(out), out.logits)  # no means yet: the model's logits
    strategy.class_means = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # real, fake
    logits = strategy.predict_logits(out)
    assert logits[0] < 0 < logits[1]  # first is nearer the real mean, second the fake mean
    e = torch.nn.functional.normalize(out.embedding, dim=1)
    want = (e - strategy.class_means[0]).pow(2).sum(1) - (e - strategy.class_means[1]).pow(2).sum(1)
    assert torch.allclose(logits, want)
    # after_task recomputes the means from the exemplars with the current model.
    strategy.after_task(0, model, cands, samples)
    assert strategy.class_means.shape == (2, model.params.embed_dim)
    assert torch.allclose(strategy.class_means.norm(dim=1), torch.ones(2))
    off = build_strategy("icarl", {"nme": False})
    off.after_task(0, model, cands, samples)
    assert off.class_means is None and torch.equal(off.predict_logits(out), out.logits)


def test_icarl_distills_from_the_previous_model(model, data):
    _, _, batch = data
    strategy = build_strategy("icarl")
    strategy.before_task(1, model)
    model.eval()
    _, terms = strategy.compute_loss(model, batch)
    assert abs(terms["icarl_kd"].item()) < 1e-7
    _perturb(model)
    _, terms = strategy.compute_loss(model, batch)
    assert terms["icarl_kd"].item() > 1e-6
