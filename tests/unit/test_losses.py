"""Contrastive losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from forgesweep.losses import supervised_contrastive


def test_supcon_matches_hand_computed_value():
    emb = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])  # normalised: e0 = e1 ⟂ e2
    labels = torch.tensor([0, 0, 1])
    # Anchors 0 and 1: positive logit 1, negative 0 -> -log(e / (e + 1)); anchor 2 has no positive.
    expected = math.log(math.e + 1) - 1
    assert supervised_contrastive(emb, labels, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_supcon_temperature_sharpens_and_separated_classes_score_lower():
    labels = torch.tensor([0, 0, 1, 1])
    separated = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]])
    assert supervised_contrastive(separated, labels, 0.1) < supervised_contrastive(mixed, labels, 0.1)
    assert supervised_contrastive(separated, labels, 0.05) < supervised_contrastive(separated, labels, 0.5)


def test_supcon_cross_set_counts_the_paired_sample_as_positive():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    # Against itself as the contrast set, each anchor's only positive is its own copy.
    loss = supervised_contrastive(a, labels, 1.0, contrast=a, contrast_labels=labels)
    assert loss.item() == pytest.approx(math.log(math.e + 1) - 1, rel=1e-6)


def test_supcon_without_positives_is_zero_and_differentiable():
    emb = torch.randn(3, 4, requires_grad=True)
    loss = supervised_contrastive(emb, torch.tensor([0, 1, 2]))
    assert loss.item() == 0.0
    loss.backward()
    assert emb.grad is not None


def test_supcon_rejects_bad_shapes():
    with pytest.raises(ValueError, match="embeddings"):
        supervised_contrastive(torch.randn(3), torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="temperature"):
        supervised_contrastive(torch.randn(3, 2), torch.tensor([0, 1, 0]), temperature=0)
