"""HSCL (hierarchical spatial-frequency contrastive loss) and CFFD's two-domain terms."""

from __future__ import annotations

import math

import pytest
import torch

from forgesweep.config import validate_config
from forgesweep.continual import build_strategy, resolve_strategy_params
from forgesweep.continual.distillation import domain_relation_kd, pool_feature, relation_kd
from forgesweep.errors import ConfigError
from forgesweep.losses import hscl_loss, supervised_contrastive
from forgesweep.models import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_hscl_hand_computed_cross_domain_counts_the_same_sample_as_positive():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    out = hscl_loss([s], [s.clone()], labels, temperature=1.0)
    # Intra-domain: each anchor's only other sample has the other label -> no positive -> 0.
    assert out["intra_spatial"].item() == 0.0 and out["intra_frequency"].item() == 0.0
    # Cross-domain: the anchor's own frequency view is its positive (logit 1 vs 0).
    cross = math.log(math.e + 1) - 1
    assert out["cross_s2f"].item() == pytest.approx(cross, rel=1e-6)
    assert out["cross_f2s"].item() == pytest.approx(cross, rel=1e-6)
    assert out["total"].item() == pytest.approx(cross / 2, rel=1e-6)


def test_hscl_intra_domain_excludes_self_and_cross_domain_uses_labels():
    s = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    f = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    out = hscl_loss([s], [f], torch.tensor([0, 0]), temperature=1.0)
    assert out["intra_spatial"].item() == pytest.approx(0.0, abs=1e-7)  # the only other sample is positive
    assert out["cross_s2f"].item() == pytest.approx(math.log(2), rel=1e-6)  # two equal positives
    assert out["total"].item() == pytest.approx(math.log(2) / 2, rel=1e-6)


def test_hscl_averages_levels_and_matches_supcon_per_term():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    levels = [(torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)) for _ in range(3)]
    out = hscl_loss([s for s, _ in levels], [f for _, f in levels], labels)  # default temperature 0.01
    t = 0.01
    want_s = torch.stack([supervised_contrastive(s, labels, t) for s, _ in levels]).mean()
    want_x = torch.stack([supervised_contrastive(f, labels, t, contrast=s, contrast_labels=labels)
                          for s, f in levels]).mean()
    assert out["intra_spatial"].item() == pytest.approx(want_s.item(), rel=1e-5)
    assert out["cross_f2s"].item() == pytest.approx(want_x.item(), rel=1e-5)


def test_hscl_is_lower_for_aligned_separated_domains_and_trains_both():
    labels = torch.tensor([0, 0, 1, 1])
    good = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    bad = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])
    assert hscl_loss([good], [good], labels, 0.1)["total"] < hscl_loss([good], [bad], labels, 0.1)["total"]
    s = torch.randn(4, 3, requires_grad=True)
    f = torch.randn(4, 3, requires_grad=True)
    hscl_loss([s], [f], labels)["total"].backward()
    assert s.grad.abs().sum() > 0 and f.grad.abs().sum() > 0


def test_hscl_rejects_mismatched_levels():
    a = torch.randn(4, 3)
    with pytest.raises(ValueError, match="same number"):
        hscl_loss([a, a], [a], torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="level 0"):
        hscl_loss([a], [torch.randn(4, 5)], torch.tensor([0, 1, 0, 1]))


# --------------------------------------------------------------------------- relation/domain KD


def test_relation_kd_compares_structure_not_scale():
    g = torch.Generator().manual_seed(0)
    e = torch.randn(5, 6, generator=g)
    assert relation_kd(e * 3.0, e).item() == pytest.approx(0.0, abs=1e-6)
    assert relation_kd(torch.randn(5, 6, generator=g), e).item() > 1e-3
    # Teacher and student widths may differ: relations are B x B.
    assert relation_kd(torch.randn(5, 2, generator=g), e).ndim == 0


def test_domain_relation_kd_hand_computed():
    s_sp = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t_sp = s_sp.clone()
    s_fr = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    t_fr = s_sp.clone()
    # Within-spatial relations agree; within-frequency: [[1,1],[1,1]] vs identity -> 2 of 4 differ by 1;
    # cross: [[1,1],[0,0]] vs identity -> 2 of 4 differ by 1.
    got = domain_relation_kd([(s_sp, s_fr)], [(t_sp, t_fr)])
    assert got.item() == pytest.approx((0.0 + 0.5 + 0.5) / 3, rel=1e-6)


def test_pool_feature_handles_maps_tokens_and_vectors():
    assert pool_feature(torch.ones(2, 3, 4, 4)).shape == (2, 3)
    assert pool_feature(torch.ones(2, 7, 5)).shape == (2, 5)
    assert pool_feature(torch.ones(2, 9)).shape == (2, 9)
    with pytest.raises(ValueError, match="pool"):
        pool_feature(torch.ones(2, 3, 4, 4, 4))


# --------------------------------------------------------------------------- in CFFD


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model("rsia_lite", {"preset": "tiny"})


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return {"images": torch.randn(6, 3, 32, 32, generator=g), "labels": torch.tensor([0, 1, 0, 1, 1, 0]),
            "keys": [f"k{i}" for i in range(6)]}


def test_cffd_applies_hscl_to_the_pooled_domain_pairs_from_the_first_task(model, batch):
    strategy = build_strategy("cffd", {"w_hscl": 0.5, "domain_pairs": "spatial3:frequency3+spatial4:frequency4"})
    assert strategy.params.domain_pairs == [("spatial3", "frequency3"), ("spatial4", "frequency4")]
    strategy.before_task(0, model)
    model.eval()
    out, terms = strategy.compute_loss(model, batch)
    assert set(terms) == {"bce", "hscl", "loss"}
    f = out.features
    want = hscl_loss([f["spatial3"].mean((2, 3)), f["spatial4"].mean((2, 3))],
                     [f["frequency3"].mean((2, 3)), f["frequency4"].mean((2, 3))], batch["labels"], 0.01)["total"]
    assert terms["hscl"].item() == pytest.approx(0.5 * want.item(), rel=1e-5)
    assert torch.allclose(terms["loss"], terms["bce"] + terms["hscl"])
    terms["loss"].backward()
    assert model.spatial_stages[0][0][0].weight.grad.abs().sum() > 0


def test_cffd_relational_and_domain_kd_are_zero_for_an_identical_student(model, batch):
    strategy = build_strategy("cffd", {"w_relational": 2.0, "w_domain": 3.0})
    strategy.before_task(1, model)
    model.eval()
    _, terms = strategy.compute_loss(model, batch)
    assert {"slkd", "mfkd", "relational", "domain"} <= set(terms)
    assert abs(terms["relational"].item()) < 1e-10 and abs(terms["domain"].item()) < 1e-10
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(7)) * 0.3)
    _, terms = strategy.compute_loss(model, batch)
    assert terms["relational"].item() > 1e-6 and terms["domain"].item() > 1e-6
    assert terms["relational"].requires_grad and terms["domain"].requires_grad
    parts = terms["bce"] + terms["slkd"] + terms["mfkd"] + terms["relational"] + terms["domain"]
    assert torch.allclose(terms["loss"], parts)


def test_cffd_domain_pairs_are_checked_against_the_model_only_when_used():
    base = {"model": {"name": "rsia_lite", "preset": "tiny"}}
    bad_pairs = "spatial9:frequency9"
    validate_config({**base, "strategy": {"name": "cffd", "domain_pairs": bad_pairs}})  # unused: fine
    with pytest.raises(ConfigError, match="spatial9"):
        validate_config({**base, "strategy": {"name": "cffd", "domain_pairs": bad_pairs, "w_hscl": 0.1}})
    with pytest.raises(ConfigError, match="strategy.hscl_temperature"):
        resolve_strategy_params("cffd", {"hscl_temperature": 0})
    assert resolve_strategy_params("cffd", {"domain_pairs": [["a", "b"]]}).domain_pairs == [("a", "b")]
