"""RSIA-Net (``rsia_net``): its modules, presets, backbone loading, freezing, checkpoints, learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from forgesweep.errors import ConfigError
from forgesweep.losses import supervised_contrastive
from forgesweep.models import build_model
from forgesweep.models.blocks import CrossDomainAttention
from forgesweep.models.rsia_net import RSIANet
from forgesweep.models.rsia_net_blocks import (
    AdaptiveLevelFusion,
    MultiScaleDilatedEnhance,
    RelationAwareAggregation,
    SpatialFrequencyInteraction,
)
from forgesweep.train.checkpoint import load_model_from_checkpoint, save_stage_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RESNET50_NO_FC = 23_508_032  # torchvision/HF ResNet-50 without its 1000-way classifier


def _tiny(**params):
    torch.manual_seed(0)
    return build_model("rsia_net", {"preset": "tiny", **params})


def _open_gates(module):
    """Zero-initialised attention gates make SFIA an identity; open them to test the exchange."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("gate"):
                p.fill_(1.0)


# --------------------------------------------------------------------------- features


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_features_have_the_documented_names_and_shapes(preset):
    model = build_model("rsia_net", {"preset": preset}).eval()
    p = model.params
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64) * 2 - 1)
    assert list(out.features) == RSIANet.feature_names_for(p)
    for k in range(1, 5):
        side = 64 // 4 // 2 ** (k - 1)  # stem /4, stage 1 keeps the size, then halves
        c = p.widths[k - 1]
        s, f = out.features[f"spatial{k}"], out.features[f"frequency{k}"]
        assert s.shape == f.shape == (2, c, side, side)
        assert torch.allclose(out.features[f"spatial_emb{k}"], s.mean(dim=(2, 3)))
        assert torch.allclose(out.features[f"frequency_emb{k}"], f.mean(dim=(2, 3)))
        assert out.features[f"stage{k}"].shape == (2, max(c // p.rsia_reduction, 4), side, side)
    assert out.embedding.shape == (2, p.embed_dim)


def test_hscl_embeddings_train_both_branches():
    """Intra- and cross-domain SupCon on ``spatial_emb{k}``/``frequency_emb{k}`` reaches both
    branches' weights, as HSCL needs (temperature 0.01 as in the paper)."""
    model = _tiny().train()
    out = model(model.example_input(6, torch.Generator().manual_seed(1)))
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    loss = 0
    for k in range(1, 5):
        s, f = out.features[f"spatial_emb{k}"], out.features[f"frequency_emb{k}"]
        loss = loss + supervised_contrastive(s, labels, 0.01) + supervised_contrastive(f, labels, 0.01)
        loss = loss + supervised_contrastive(s, labels, 0.01, contrast=f, contrast_labels=labels)
    loss.backward()
    spatial_grad = model.spatial.encoder.stages[0].layers[0].layer[0].convolution.weight.grad
    frequency_grad = model.frequency.stages[0].layers[0].layer[0].convolution.weight.grad
    assert spatial_grad is not None and spatial_grad.abs().sum() > 0
    assert frequency_grad is not None and frequency_grad.abs().sum() > 0


def test_sfia_feedback_controls_whether_branches_exchange_before_the_next_stage():
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    for feedback in (True, False):
        model = _tiny(sfia_feedback=feedback).eval()
        _open_gates(model)
        with torch.no_grad():
            before = model(images).features["spatial3"].clone()
            model.frequency_stem[1][0].weight.mul_(-2.0)  # change only the frequency branch
            after = model(images).features["spatial3"]
        changed = not torch.allclose(before, after)
        assert changed == feedback


@pytest.mark.parametrize("dct_block", [2, 4])
def test_both_dct_tile_sizes_keep_the_domains_on_one_grid(dct_block):
    model = _tiny(dct_block=dct_block).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 32, 32) * 2 - 1)
    for k in range(1, 5):
        assert out.features[f"spatial{k}"].shape == out.features[f"frequency{k}"].shape


def test_image_size_not_a_multiple_of_four_is_a_value_error():
    with pytest.raises(ValueError, match="62x62"):
        _tiny().eval()(torch.zeros(1, 3, 62, 62))


# --------------------------------------------------------------------------- blocks


def test_sfia_starts_as_identity_and_attends_to_pooled_other_domain():
    torch.manual_seed(0)
    sfia = SpatialFrequencyInteraction(8, reduction=2, kv_size=2).eval()
    s, f = torch.randn(2, 8, 6, 6), torch.randn(2, 8, 6, 6)
    a_s, a_f = sfia(s, f)
    assert torch.equal(a_s, s) and torch.equal(a_f, f)  # gates start at zero
    _open_gates(sfia)
    a_s, a_f = sfia(s, f)
    # Keys/values come from the other domain pooled to 2x2; both directions read the inputs.
    assert torch.allclose(a_s, sfia.s_from_f(s, F.adaptive_avg_pool2d(f, 2)))
    assert torch.allclose(a_f, sfia.f_from_s(f, F.adaptive_avg_pool2d(s, 2)))
    # The added term is a convex combination (softmax weights) of the other domain's values.
    values = sfia.s_from_f.value(F.adaptive_avg_pool2d(f, 2)).flatten(2)  # B C 4
    mixed = (a_s - s).flatten(2)
    assert (mixed <= values.amax(dim=2, keepdim=True) + 1e-5).all()
    assert (mixed >= values.amin(dim=2, keepdim=True) - 1e-5).all()
    with pytest.raises(ValueError, match="aligned"):
        sfia(s, f[..., :4, :4])


def test_sfia_small_maps_are_not_pooled():
    torch.manual_seed(0)
    sfia = SpatialFrequencyInteraction(8, reduction=2, kv_size=8).eval()
    _open_gates(sfia)
    s, f = torch.randn(1, 8, 4, 4), torch.randn(1, 8, 4, 4)
    reference = CrossDomainAttention(8, 2)
    reference.load_state_dict(sfia.s_from_f.state_dict())
    assert torch.allclose(sfia(s, f)[0], reference(s, f))


def test_msfe_receptive_field_is_seven_plus_its_final_three_by_three():
    """Dilations 1/2/3 reach 3 px (receptive field 7); the 3x3 after them adds 1 -> radius 4."""
    torch.manual_seed(0)
    block = MultiScaleDilatedEnhance(8).eval()
    x = torch.rand(1, 8, 21, 21)
    bumped = x.clone()
    bumped[0, :, 10, 10] += 5.0
    with torch.no_grad():
        diff = (block(bumped) - block(x)).abs().sum(dim=1)[0]
    rows, cols = torch.nonzero(diff > 1e-6, as_tuple=True)
    radius = max((rows - 10).abs().max().item(), (cols - 10).abs().max().item())
    assert radius == 4


def test_rsia_refines_the_previous_level_into_this_one():
    torch.manual_seed(0)
    first = RelationAwareAggregation(8, 4, None, reduction=2, kv_size=4).eval()
    second = RelationAwareAggregation(16, 6, 4, reduction=2, kv_size=4).eval()
    s1, f1 = torch.randn(2, 8, 8, 8), torch.randn(2, 8, 8, 8)
    s2, f2 = torch.randn(2, 16, 4, 4), torch.randn(2, 16, 4, 4)
    with torch.no_grad():
        level1 = first(s1, f1, None)
        level2 = second(s2, f2, level1)
        other = second(s2, f2, level1.flip(0))
    assert level1.shape == (2, 4, 8, 8) and level2.shape == (2, 6, 4, 4)
    assert not torch.allclose(level2, other)  # the previous level matters
    with pytest.raises(ValueError, match="previous level"):
        second(s2, f2, None)
    with pytest.raises(ValueError, match="previous level"):
        first(s1, f1, level1)


def test_faf_weights_are_a_per_position_softmax_over_levels():
    torch.manual_seed(0)
    faf = AdaptiveLevelFusion([4, 6, 8], dim=5).eval()
    levels = [torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4), torch.randn(2, 8, 2, 2)]
    with torch.no_grad():
        embedding, weights = faf(levels)
        assert embedding.shape == (2, 5) and weights.shape == (2, 3, 2, 2)
        assert torch.allclose(weights.sum(dim=1), torch.ones(2, 2, 2))
        # Force level 1 to win everywhere: the embedding is that level alone, pooled.
        faf.score.weight.zero_()
        faf.score.bias.copy_(torch.tensor([0.0, 50.0, 0.0]))
        embedding, weights = faf(levels)
        alone = faf.proj[1](F.adaptive_avg_pool2d(levels[1], 2)).mean(dim=(2, 3))
    assert torch.allclose(weights[:, 1], torch.ones(2, 2, 2))
    assert torch.allclose(embedding, alone, atol=1e-5)


# --------------------------------------------------------------------------- sizes


def test_full_preset_has_two_resnet50_branches():
    with torch.device("meta"):
        model = build_model("rsia_net", {"preset": "full"})
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model.spatial) == RESNET50_NO_FC
    stem = count(model.spatial.embedder)
    assert stem == 7 * 7 * 3 * 64 + 2 * 64
    assert count(model.frequency) == RESNET50_NO_FC - stem
    # Interaction + fusion modules stay below a ResNet-50 branch; whole net ~70 M.
    extra = count(model) - count(model.spatial) - count(model.frequency)
    assert 15e6 < extra < RESNET50_NO_FC
    assert 60e6 < count(model) < 80e6
    assert count(build_model("rsia_net", {"preset": "tiny"})) < count(build_model("rsia_net", {"preset": "small"}))


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "params, field",
    [({"depths": [1, 1, 1]}, "model.depths"), ({"widths": [8, 8, 8, 2]}, "model.widths"),
     ({"dct_block": 8}, "model.dct_block"), ({"layer_type": "wide"}, "model.layer_type"),
     ({"frozen_spatial_stages": 5}, "model.frozen_spatial_stages"), ({"dropout": 1.0}, "model.dropout"),
     ({"sfia_kv_size": 0}, "model.sfia_kv_size"), ({"pretrained": True}, "model.backbone"),
     ({"frequency_pretrained": True}, "model.frequency_pretrained"), ({"rsia_reduce": 2}, "model.rsia_reduce")],
)
def test_bad_parameter_is_a_config_error_naming_it(params, field):
    with pytest.raises(ConfigError) as info:
        build_model("rsia_net", {"preset": "tiny", **params})
    assert field in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------- pretrained backbone


@pytest.fixture()
def tiny_resnet_dir(tmp_path):
    """A transformers ResNet shaped like the tiny preset's branches, saved as a local checkpoint."""
    from transformers import ResNetConfig, ResNetModel

    torch.manual_seed(3)
    p = RSIANet.PRESETS["tiny"]
    model = ResNetModel(ResNetConfig(embedding_size=p["stem_width"], hidden_sizes=p["widths"], depths=p["depths"],
                                     layer_type=p["layer_type"]))
    model.save_pretrained(tmp_path / "resnet")
    return tmp_path / "resnet", model.state_dict()


def test_pretrained_backbone_loads_from_a_local_directory(tiny_resnet_dir):
    path, saved = tiny_resnet_dir
    model = _tiny(pretrained=True, backbone=str(path))
    for key, value in model.spatial.state_dict().items():
        assert torch.equal(value, saved[key]), key
    random_frequency = model.frequency.state_dict()
    assert not torch.equal(random_frequency["stages.0.layers.0.layer.0.convolution.weight"],
                           saved["encoder.stages.0.layers.0.layer.0.convolution.weight"])
    both = _tiny(pretrained=True, backbone=str(path), frequency_pretrained=True)
    for key, value in both.frequency.state_dict().items():
        assert torch.equal(value, saved[f"encoder.{key}"]), key


def test_pretrained_backbone_of_another_shape_is_a_config_error(tiny_resnet_dir, tmp_path):
    path, _ = tiny_resnet_dir
    with pytest.raises(ConfigError, match="model.widths"):
        _tiny(pretrained=True, backbone=str(path), widths=[8, 8, 16, 32])
    with pytest.raises(ConfigError, match="model.backbone"):
        _tiny(pretrained=True, backbone=str(tmp_path / "missing"))

    from transformers import ResNetConfig, ResNetModel

    p = RSIANet.PRESETS["tiny"]
    ResNetModel(ResNetConfig(embedding_size=p["stem_width"], hidden_sizes=p["widths"], depths=p["depths"],
                             layer_type=p["layer_type"], downsample_in_first_stage=True)
                ).save_pretrained(tmp_path / "strided")
    with pytest.raises(ConfigError, match="model.backbone: .* first stage"):
        _tiny(pretrained=True, backbone=str(tmp_path / "strided"))


# --------------------------------------------------------------------------- training mechanics


def test_frozen_spatial_stages_do_not_change_in_an_optimizer_step():
    model = _tiny(frozen_spatial_stages=2)
    frozen = model.frozen_modules()
    assert frozen == [model.spatial.embedder, *model.spatial.encoder.stages[:2]]
    frozen_ids = {id(p) for m in frozen for p in m.parameters()}
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for p in model.parameters() if id(p) not in frozen_ids)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    assert all(not m.training for m in frozen) and model.spatial.encoder.stages[2].training
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    out = model(model.example_input(4))
    sum(model.task_loss(out, {"labels": torch.tensor([0, 1, 0, 1])}).values()).backward()
    optimizer.step()
    after = model.state_dict()
    for key in before:
        if key.startswith(("spatial.embedder.", "spatial.encoder.stages.0.", "spatial.encoder.stages.1.")):
            assert torch.equal(before[key], after[key]), key  # weights and BN statistics
    assert not torch.equal(before["spatial.encoder.stages.2.layers.0.layer.0.convolution.weight"],
                           after["spatial.encoder.stages.2.layers.0.layer.0.convolution.weight"])
    assert not torch.equal(before["head.weight"], after["head.weight"])


def test_checkpoint_round_trip_gives_identical_eval_outputs(tmp_path):
    model = _tiny(sfia_kv_size=4)
    _open_gates(model)
    model.train()
    model(model.example_input(4))  # move the BatchNorm statistics off their initial values
    model.eval()
    images = model.example_input(3, torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(images)
    config = {"model": {"name": "rsia_net", "preset": "tiny", "sfia_kv_size": 4}}
    save_stage_checkpoint(tmp_path / "ckpt", model, {"config": config, "stage": 0})
    loaded, state = load_model_from_checkpoint(tmp_path / "ckpt")
    assert isinstance(loaded, RSIANet) and state["stage"] == 0 and not loaded.training
    with torch.no_grad():
        got = loaded(images)
    assert torch.equal(got.logits, expected.logits)
    assert all(torch.equal(got.features[k], expected.features[k]) for k in expected.features)


def test_tiny_learns_deepfakes(train_one_stage):
    acc = train_one_stage({"name": "rsia_net", "preset": "tiny"}, epochs_per_task=4)
    assert acc.get(0, 0) >= 0.75  # chance is 0.5
