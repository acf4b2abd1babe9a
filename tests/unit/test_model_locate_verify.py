"""Locate-and-Verify (``locate_verify``): its modules, streams, heads, loss, presets, loading, learning."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from forgesweep.errors import ConfigError
from forgesweep.models import build_model
from forgesweep.models.locate_verify import (
    EFFICIENTNET_MEAN,
    EFFICIENTNET_STD,
    LocateVerify,
    _random_backbone_config,
    patch_labels,
)
from forgesweep.models.locate_verify_blocks import CMCE, LFGA, HadamardFusion, SRMFilter, patch_similarity
from forgesweep.train.checkpoint import load_model_from_checkpoint, save_stage_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EFFICIENTNET_B4_NO_FC = 17_548_616  # EfficientNet-B4 without its 1000-way classifier (timm: 17.5M)


def _tiny(**params):
    torch.manual_seed(0)
    return build_model("locate_verify", {"preset": "tiny", **params})


def _images(n=2, size=64, seed=1):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --------------------------------------------------------------------------- blocks


def test_srm_filter_is_a_fixed_truncated_high_pass():
    srm = SRMFilter()
    assert not list(srm.parameters()) and "kernel" not in srm.state_dict()  # constants, not weights
    k = srm.kernel
    assert k.shape == (3, 3, 5, 5)
    assert torch.allclose(k.sum(dim=(1, 2, 3)), torch.zeros(3), atol=1e-6)  # high-pass: flat -> 0
    assert torch.allclose(k.abs().amax(dim=(1, 2, 3)), torch.ones(3))
    flat = torch.full((1, 3, 12, 12), 0.7)
    assert torch.allclose(srm(flat)[..., 2:-2, 2:-2], torch.zeros(1, 3, 8, 8), atol=1e-6)
    impulse = torch.zeros(1, 3, 9, 9)
    impulse[0, 1, 4, 4] = 0.5  # one channel: the response is the (symmetric) kernel itself
    assert torch.allclose(srm(impulse)[0, :, 2:7, 2:7], 0.5 * k[:, 1])
    loud = torch.zeros(1, 3, 9, 9)
    loud[:, :, 4, 4] = 10.0
    out = srm(loud)
    assert out.abs().max() == 3.0 and out[0, 1, 4, 4] == -3.0  # 3 x 10 x (-12 / 12), truncated


def test_cmce_cosine_exchange_follows_the_paper():
    torch.manual_seed(0)
    rgb, srm = torch.randn(2, 6, 4, 4), torch.randn(2, 6, 4, 4)
    s = F.cosine_similarity(rgb, srm, dim=1).unsqueeze(1)
    a, b = CMCE(6, "cosine", relu=False)(rgb, srm)
    assert torch.allclose(a, rgb + srm * s, atol=1e-6)
    assert torch.allclose(b, srm + (rgb + srm * s) * s, atol=1e-6)
    a_relu, b_relu = CMCE(6, "cosine")(rgb, srm)
    assert torch.equal(a_relu, F.relu(a)) and torch.equal(b_relu, F.relu(b))
    # Same direction: s = 1, so rgb' = x + x/2 and srm' = x/2 + rgb'; orthogonal: s = 0, unchanged.
    x = torch.rand(1, 4, 3, 3)
    a, b = CMCE(4)(x, 0.5 * x)
    assert torch.allclose(a, 1.5 * x, atol=1e-5) and torch.allclose(b, 2.0 * x, atol=1e-5)
    left, right = torch.zeros(1, 4, 3, 3), torch.zeros(1, 4, 3, 3)
    left[:, :2], right[:, 2:] = 1.0, 2.0
    a, b = CMCE(4)(left, right)
    assert torch.equal(a, left) and torch.equal(b, right)
    assert not list(CMCE(4).parameters())


def test_cmce_learned_similarity_is_bounded_and_trains_its_temperature():
    torch.manual_seed(0)
    block = CMCE(8, "learned", relu=False)
    rgb, srm = torch.randn(2, 8, 5, 5), torch.randn(2, 8, 5, 5)
    s = block.similarity(rgb, srm)
    assert s.shape == (2, 1, 5, 5) and (s.abs() < 1).all() and s.std() > 0
    a, b = block(rgb, srm)
    assert torch.allclose(a, rgb + srm * s, atol=1e-6) and torch.allclose(b, srm + a * s, atol=1e-6)
    (a.sum() + b.sum()).backward()
    assert block.log_temperature.grad is not None and block.log_temperature.grad.abs() > 0
    with torch.no_grad():
        block.log_temperature.fill_(5.0)  # a hot temperature flattens the similarity towards 0
    assert block.similarity(rgb, srm).abs().max() < 0.05 * s.abs().max()
    with pytest.raises(ValueError, match="mode"):
        CMCE(8, "dot")


def test_lfga_starts_as_identity_and_gathers_srm_where_rgb_points():
    torch.manual_seed(0)
    block = LFGA(8, reduction=4)
    assert block.query.out_channels == block.key.out_channels == 2 and block.value.out_channels == 8
    rgb, srm = torch.randn(2, 8, 3, 3), torch.randn(2, 8, 3, 3)
    assert torch.equal(block(srm, rgb), srm)  # gamma = 0
    with torch.no_grad():
        block.gamma.fill_(1.0)
    attn = block.attention(rgb)
    assert attn.shape == (2, 9, 9) and torch.allclose(attn.sum(-1), torch.ones(2, 9))
    # Spatially constant RGB: every position attends uniformly, so it gathers the mean value.
    flat_rgb = torch.randn(2, 8, 1, 1).expand(2, 8, 3, 3)
    expected = srm + block.value(srm).mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(block(srm, flat_rgb), expected, atol=1e-5)
    # The attention map depends on RGB only: other SRM content, same weights.
    assert torch.allclose(block(srm * 3, rgb) - srm * 3, 3 * (block(srm, rgb) - srm)
                          - 2 * block.value.bias.view(1, 8, 1, 1), atol=1e-4)


def test_patch_similarity_lays_each_patch_out_as_channels():
    torch.manual_seed(0)
    r, g = 4, 3
    fine, ref = torch.randn(2, 5, g * r, g * r), torch.randn(2, 5, g, g)
    out = patch_similarity(fine, ref, r)
    assert out.shape == (2, r * r, g, g)
    for i, j, dy, dx in [(0, 0, 0, 0), (1, 2, 3, 1), (2, 1, 0, 3)]:
        want = torch.tanh(fine[:, :, i * r + dy, j * r + dx] * ref[:, :, i, j]).mean(dim=1)
        assert torch.allclose(out[:, dy * r + dx, i, j], want, atol=1e-6)
    same = patch_similarity(ref, ref, 1)
    assert torch.allclose(same, torch.tanh(ref * ref).mean(1, keepdim=True))
    assert patch_similarity(torch.randn(2, 5, 13, 13), ref, r).shape == (2, r * r, g, g)  # resized first


def test_hadamard_fusion_is_a_factorised_bilinear_form():
    torch.manual_seed(0)
    fusion = HadamardFusion(4, 6, hidden=5, out_channels=3, dropout=0.0)
    a, b = torch.randn(2, 4, 2, 2), torch.randn(2, 6, 2, 2)
    want = fusion.out(torch.tanh(fusion.proj_a(a) * fusion.proj_b(b)))
    assert torch.allclose(fusion(a, b), want)
    with torch.no_grad():  # either factor zero: the product vanishes, only the output bias is left
        fusion.proj_b.weight.zero_()
        fusion.proj_b.bias.zero_()
    assert torch.allclose(fusion(a, b), fusion.out.bias.view(1, 3, 1, 1).expand(2, 3, 2, 2))
    with pytest.raises(ValueError, match="one grid"):
        fusion(a, torch.randn(2, 6, 3, 3))


def test_patch_labels_are_the_mask_max_pooled_to_the_grid():
    masks = torch.zeros(2, 1, 64, 64)
    masks[0, 0, 0:10, 20:26] = 1.0  # inside patch (0, 1) of a 4x4 grid of 16 px patches
    masks[1, 0, 63, 63] = 1.0  # a single pixel marks its whole patch
    labels = patch_labels(masks, (4, 4))
    assert labels.shape == (2, 1, 4, 4)
    assert labels[0, 0, 0, 1] == 1 and labels[0].sum() == 1
    assert labels[1, 0, 3, 3] == 1 and labels[1].sum() == 1
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        patch_labels(torch.zeros(2, 64, 64), (4, 4))


# --------------------------------------------------------------------------- the model


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_levels_follow_the_efficientnet_strides_and_heads_sit_on_their_grids(preset):
    model = build_model("locate_verify", {"preset": preset}).eval()
    with torch.no_grad():
        out = model(_images(2, 64))
    assert list(out.features) == LocateVerify.feature_names_for(model.params)
    sides = [32, 16, 8, 4, 4, 2]
    for k, (side, c) in enumerate(zip(sides, model.rgb_stream.channels), start=1):
        assert out.features[f"rgb{k}"].shape == out.features[f"srm{k}"].shape == (2, c, side, side)
    assert model.rgb_stream.block_ranges[-1][1] == len(model.rgb_stream.net.encoder.blocks)
    assert out.features["locate"].shape == (2, 1, 4, 4)
    assert out.features["verify"].shape == (2, model.params.embed_dim, 2, 2)
    assert torch.allclose(out.embedding, out.features["verify"].mean(dim=(2, 3)))
    assert model.uses_masks and model.frozen_modules() == []


@pytest.mark.parametrize("merge", [True, False])
def test_merge_streams_feeds_both_level4_stages_the_sum(merge):
    model = _tiny(merge_streams=merge).eval()
    seen = {}
    start = model.rgb_stream.block_ranges[3][0]
    for name, stream in (("rgb", model.rgb_stream), ("srm", model.srm_stream)):
        stream.net.encoder.blocks[start].register_forward_pre_hook(
            lambda module, args, name=name: seen.__setitem__(name, args[0].clone()))
    with torch.no_grad():
        out = model(_images())
    assert torch.equal(seen["rgb"], seen["srm"]) == merge
    if merge:
        assert torch.allclose(seen["rgb"], out.features["rgb3"] + out.features["srm3"])
    else:
        assert torch.equal(seen["rgb"], out.features["rgb3"]) and torch.equal(seen["srm"], out.features["srm3"])


@pytest.mark.parametrize("norm, renormalised", [("auto", False), ("none", False), ("efficientnet", True)])
def test_rgb_stream_input_is_renormalised_only_when_asked(norm, renormalised):
    model = _tiny(input_norm=norm).eval()
    seen = {}
    model.rgb_stream.net.embeddings.register_forward_pre_hook(lambda m, args: seen.__setitem__("rgb", args[0]))
    model.srm_stream.net.embeddings.register_forward_pre_hook(lambda m, args: seen.__setitem__("srm", args[0]))
    images = _images()
    with torch.no_grad():
        model(images)
    mean, std = torch.tensor(EFFICIENTNET_MEAN).view(1, 3, 1, 1), torch.tensor(EFFICIENTNET_STD).view(1, 3, 1, 1)
    expected = ((images + 1) / 2 - mean) / std if renormalised else images
    assert torch.allclose(seen["rgb"], expected, atol=1e-6)
    assert torch.equal(seen["srm"], SRMFilter()(images))  # the SRM stream always sees the residuals


def test_verdict_adds_gated_top_patch_evidence():
    model = _tiny(evidence_fraction=0.25).eval()
    images = _images(3)
    with torch.no_grad():
        base = model(images)
        model.evidence_gate.fill_(0.7)
        gated = model(images)
    top = base.features["locate"].flatten(1).topk(4, dim=1).values.mean(1)  # 25% of 16 patches
    assert torch.allclose(gated.logits - base.logits, 0.7 * top, atol=1e-5)
    plain = _tiny(verify_uses_locate=False)
    assert plain.evidence_gate is None and "evidence_gate" not in dict(plain.named_parameters())


def test_task_loss_adds_the_patch_bce_over_samples_with_known_masks():
    model = _tiny(locate_weight=2.0).train()
    out = model(_images(4))
    labels = torch.tensor([0, 1, 1, 1])
    masks = torch.zeros(4, 1, 64, 64)
    masks[1:, :, 16:48, 16:48] = 1.0
    valid = torch.tensor([True, True, False, True])
    assert set(model.task_loss(out, {"labels": labels})) == {"bce"}
    terms = model.task_loss(out, {"labels": labels, "masks": masks, "mask_valid": valid})
    assert set(terms) == {"bce", "locate"}
    logits = out.features["locate"]
    target = patch_labels(masks, (4, 4))
    assert target[1, 0, 1:3, 1:3].eq(1).all() and target[1].sum() == 4
    per = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)
    assert torch.allclose(terms["locate"], 2.0 * per[valid].mean())
    other = masks.clone()
    other[2] = 1.0  # sample 2's mask is unknown: changing it changes nothing
    again = model.task_loss(out, {"labels": labels, "masks": other, "mask_valid": valid})
    assert torch.equal(again["locate"], terms["locate"])
    unknown = torch.zeros(4, dtype=torch.bool)
    none_valid = model.task_loss(out, {"labels": labels, "masks": masks, "mask_valid": unknown})
    assert none_valid["locate"].item() == 0.0 and none_valid["locate"].requires_grad
    sum(none_valid.values()).backward()  # still differentiable: every rank sums the same terms


def test_srm_kernels_stay_fixed_through_an_optimizer_step():
    model = _tiny()
    kernel = model.srm.kernel.clone()
    assert all(p.data_ptr() != model.srm.kernel.data_ptr() for p in model.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    out = model.train()(model.example_input(4))
    sum(model.task_loss(out, {"labels": torch.tensor([0, 1, 0, 1])}).values()).backward()
    optimizer.step()
    assert torch.equal(model.srm.kernel, kernel)
    after = model.state_dict()
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])
    assert not torch.equal(before["srm_stream.net.embeddings.convolution.weight"],
                           after["srm_stream.net.embeddings.convolution.weight"])


def test_random_backbones_are_initialised_to_train_from_scratch():
    model = _tiny()
    for stream in (model.rgb_stream, model.srm_stream):
        bns = [m for m in stream.net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert bns and all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in bns)
        assert all(m.momentum == 0.1 for m in bns)  # not transformers' TF-style 0.99
    with torch.no_grad():
        out = model.train()(_images(4))
    assert out.features["rgb6"].std() > 0.1 and out.features["srm6"].std() > 0.1  # no vanishing signal


def test_full_preset_has_two_efficientnet_b4_streams_without_allocating():
    with torch.device("meta"):
        model = build_model("locate_verify", {"preset": "full"})
    for stream in (model.rgb_stream, model.srm_stream):
        assert sum(p.numel() for p in stream.parameters()) == EFFICIENTNET_B4_NO_FC
        assert stream.channels == [24, 32, 56, 112, 160, 1792]
    total = sum(p.numel() for p in model.parameters())
    assert 2 * EFFICIENTNET_B4_NO_FC < total < 2 * EFFICIENTNET_B4_NO_FC + 20_000_000  # heads at the paper's size
    assert model.params.embed_dim == 4096 and model.params.locate_dim == 512


@pytest.mark.parametrize(
    "params, field",
    [({"cmce": "dot"}, "model.cmce"), ({"width_coefficient": 0}, "model.width_coefficient"),
     ({"lfga_reduction": 0}, "model.lfga_reduction"), ({"locate_weight": -1}, "model.locate_weight"),
     ({"evidence_fraction": 0}, "model.evidence_fraction"), ({"input_norm": "imagenet"}, "model.input_norm"),
     ({"pretrained": True}, "model.backbone"), ({"locate_wieght": 1}, "model.locate_wieght")],
)
def test_bad_parameter_is_a_config_error_naming_it(params, field):
    with pytest.raises(ConfigError) as info:
        build_model("locate_verify", {"preset": "tiny", **params})
    assert field in str(info.value) and "\n" not in str(info.value)


def _save_efficientnet(path, **overrides):
    from transformers import EfficientNetConfig, EfficientNetModel

    torch.manual_seed(3)
    config = _random_backbone_config(LocateVerify.Params(**LocateVerify.PRESETS["tiny"]))
    net = EfficientNetModel(EfficientNetConfig(**{**config, **overrides}))
    net.save_pretrained(path)
    return net.state_dict()


def test_pretrained_backbone_loads_into_both_streams_from_a_local_directory(tmp_path):
    saved = _save_efficientnet(tmp_path / "effnet")
    model = _tiny(pretrained=True, backbone=str(tmp_path / "effnet"))
    for stream in (model.rgb_stream, model.srm_stream):
        for key, value in stream.net.state_dict().items():
            assert torch.equal(value, saved[key]), key  # loaded, not re-initialised
    assert model.rgb_stream.net is not model.srm_stream.net and model.renormalise  # auto -> efficientnet


def test_pretrained_backbone_of_another_layout_is_a_config_error(tmp_path):
    _save_efficientnet(tmp_path / "odd", strides=[1, 2, 2, 2, 2, 2, 1])
    with pytest.raises(ConfigError, match="model.backbone: expected an EfficientNet"):
        _tiny(pretrained=True, backbone=str(tmp_path / "odd"))
    with pytest.raises(ConfigError, match="model.backbone"):
        _tiny(pretrained=True, backbone=str(tmp_path / "missing"))


def test_checkpoint_round_trip_gives_identical_eval_outputs(tmp_path):
    model = _tiny(cmce="learned")
    with torch.no_grad():
        model.evidence_gate.fill_(0.5)
        for lfga in model.lfga:
            lfga.gamma.fill_(0.3)
    model.train()
    model(_images(4))  # move the BatchNorm statistics off their initial values
    model.eval()
    images = _images(3, seed=5)
    with torch.no_grad():
        expected = model(images)
    config = {"model": {"name": "locate_verify", "preset": "tiny", "cmce": "learned"}}
    save_stage_checkpoint(tmp_path / "ckpt", model, {"config": config, "stage": 1})
    loaded, state = load_model_from_checkpoint(tmp_path / "ckpt")
    assert isinstance(loaded, LocateVerify) and state["stage"] == 1 and not loaded.training
    with torch.no_grad():
        got = loaded(images)
    assert torch.equal(got.logits, expected.logits)
    assert all(torch.equal(got.features[k], expected.features[k]) for k in expected.features)


def test_arch_config_loads_and_names_features_the_model_makes():
    from pathlib import Path

    from forgesweep.cli import resolve_config

    path = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "arch_locate_verify.yaml"
    cfg = resolve_config(str(path), [], smoke=False)
    assert cfg.model.name == "locate_verify"
    names = LocateVerify.feature_names_for(cfg.model.params)
    for choice in cfg.sweep.space["strategy.feature_layers"].choices:
        assert set(choice.split("+")) <= set(names), choice
    with pytest.raises(ConfigError, match="strategy.feature_layers"):
        resolve_config(str(path), ["strategy.feature_layers=[stage3]"], smoke=False)


# --------------------------------------------------------------------------- learning


def _patch_scores(model, rows, cache):
    """Balanced patch accuracy and patch BCE of ``model`` on ``rows`` whose masks are known."""
    from forgesweep.data.datasets import FrameDataset

    dataset = FrameDataset(rows, cache, with_masks=True)
    items = [dataset[i] for i in range(len(dataset))]
    valid = torch.stack([it["mask_valid"] for it in items])
    images = torch.stack([it["images"] for it in items])[valid]
    masks = torch.stack([it["masks"] for it in items])[valid]
    with torch.no_grad():
        logits = model.eval()(images).features["locate"]
    target = patch_labels(masks, logits.shape[-2:])
    fake, said_fake = target > 0.5, logits > 0
    balanced = ((said_fake & fake).sum() / fake.sum() + (~said_fake & ~fake).sum() / (~fake).sum()) / 2
    return balanced.item(), F.binary_cross_entropy_with_logits(logits, target).item()


def test_tiny_learns_deepfakes_and_where_they_are(train_one_stage, learn_benchmark, tmp_path):
    from forgesweep.data.datasets import FrameCache
    from forgesweep.data.tasks import build_task_sequence

    acc = train_one_stage({"name": "locate_verify", "preset": "tiny"}, epochs_per_task=3)
    assert acc.get(0, 0) >= 0.75  # chance is 0.5
    trained, state = load_model_from_checkpoint(tmp_path / "run" / "stage-1")
    assert state["metrics"]["train/locate"] > 0  # the loop passed the masks to the patch loss
    cfg, manifest = learn_benchmark
    test_rows = build_task_sequence(manifest, cfg.data.sequence)[0].test
    cache = FrameCache(manifest, cfg.data.image_size)
    assert sum(r.label for r in test_rows) > 0 and all(r.mask for r in test_rows if r.label == 1)
    balanced, loss = _patch_scores(trained, test_rows, cache)
    _, untrained_loss = _patch_scores(_tiny(), test_rows, cache)
    assert balanced >= 0.65 and loss < 0.85 * untrained_loss, (balanced, loss, untrained_loss)
    assert math.isfinite(loss)
