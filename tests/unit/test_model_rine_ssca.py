"""The rine_ssca detector: its modules, the frozen CLIP branch, parameters, checkpoints, learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel

from forgesweep.config import validate_config
from forgesweep.errors import ConfigError
from forgesweep.losses import supervised_contrastive
from forgesweep.models import build_model
from forgesweep.models.rine_ssca import CLIP_MEAN, CLIP_STD, RINESSCA, RINESSCAParams
from forgesweep.models.rine_ssca_blocks import (
    CrossAttentionCombination,
    DCTConvBlock,
    GatedMLP,
    LayerImportance,
    SpatialChannelAttention,
)
from forgesweep.train.checkpoint import load_model_from_checkpoint, save_stage_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny(**params) -> RINESSCA:
    torch.manual_seed(0)
    return build_model("rine_ssca", {"preset": "tiny", **params})


def _images(batch: int = 4, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --------------------------------------------------------------------------- CLIP branch


def test_clip_pixels_renormalise_and_resize_to_the_clip_size():
    model = _tiny()
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    white = model.clip_pixels(torch.ones(2, 3, 64, 64))  # [-1, 1] white is [0, 1] white
    assert white.shape == (2, 3, 32, 32)  # the tiny CLIP's image_size
    assert torch.allclose(white, ((1 - mean) / std).expand(2, 3, 32, 32), atol=1e-5)
    black = model.clip_pixels(-torch.ones(1, 3, 32, 32))
    assert torch.allclose(black, (-mean / std).expand(1, 3, 32, 32), atol=1e-6)
    # At CLIP's own size nothing is resampled: the mapping is exactly affine per channel.
    x = _images(1, 32)
    assert torch.allclose(model.clip_pixels(x), ((x + 1) / 2 - mean) / std, atol=1e-6)


def _manual_blocks(model: RINESSCA, pixels: torch.Tensor):
    """Run the CLIP tower block by block: (block inputs, post-attention layer_norm2 outputs)."""
    clip = model.clip
    h = clip.pre_layrnorm(clip.embeddings(pixels))
    inputs, ln2 = [], []
    for block in clip.encoder.layers:
        inputs.append(h)
        attn, _ = block.self_attn(hidden_states=block.layer_norm1(h), attention_mask=None)
        residual = h + attn
        ln2.append(block.layer_norm2(residual))
        h = residual + block.mlp(block.layer_norm2(residual))
    return inputs + [h], ln2


@pytest.mark.parametrize("activation", ["layer_norm2", "block_output"])
def test_cls_tokens_are_the_chosen_activation_of_the_chosen_blocks(activation):
    model = _tiny(clip_activation=activation, use_layers=[0, 2]).eval()
    pixels = model.clip_pixels(_images(2))
    with torch.no_grad():
        tokens = model.clip_cls_tokens(pixels)
        states, ln2 = _manual_blocks(model, pixels)
    assert tokens.shape == (2, 2, 32)
    for k, i in enumerate([0, 2]):
        expected = ln2[i][:, 0] if activation == "layer_norm2" else states[i + 1][:, 0]
        assert torch.allclose(tokens[:, k], expected, atol=1e-5), (activation, i)
    # The two activations really differ, and no hook outlives the call.
    other = ln2[0][:, 0] if activation == "block_output" else states[1][:, 0]
    assert not torch.allclose(tokens[:, 0], other, atol=1e-3)
    assert all(not block.layer_norm2._forward_hooks for block in model.clip.encoder.layers)


def test_clip_is_frozen_outside_the_graph_and_unchanged_by_training():
    model = _tiny()
    assert model.frozen_modules() == [model.clip]
    assert not any(p.requires_grad for p in model.clip.parameters())
    model.train()
    assert not model.clip.training and model.ssca_stem.training
    images = _images().requires_grad_(True)
    assert not model.clip_cls_tokens(model.clip_pixels(images)).requires_grad  # ran under no_grad

    clip_before = {k: v.clone() for k, v in model.clip.state_dict().items()}
    head_before = model.head.weight.detach().clone()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    assert not {id(p) for p in model.clip.parameters()} & {id(p) for g in optimizer.param_groups for p in g["params"]}
    out = model(_images())
    sum(model.task_loss(out, {"labels": torch.tensor([0, 1, 0, 1])}).values()).backward()
    optimizer.step()
    assert all(torch.equal(v, clip_before[k]) for k, v in model.clip.state_dict().items())
    assert not torch.equal(model.head.weight, head_before)


def test_features_follow_use_layers_and_the_class_method():
    params = {"use_layers": "0+-1", "share_projection": False}
    model = _tiny(**params).eval()
    names = ["clip_layer0", "clip_layer2", "rine", "ssca_stem", "ssca_dct", "ssca_attention", "fused"]
    assert model.feature_names() == names
    assert RINESSCA.feature_names_for(RINESSCAParams(**{**RINESSCA.PRESETS["tiny"], **params})) == names
    assert len(model.proj1) == 2  # one projection per block when not shared
    with torch.no_grad():
        out = model(_images(3, 32))
    assert list(out.features) == names
    assert out.features["clip_layer2"].shape == (3, 32) and out.features["fused"].shape == (3, 32)
    assert out.features["ssca_stem"].shape == (3, 8, 16, 16)
    assert out.features["ssca_dct"].shape == out.features["ssca_attention"].shape == (3, 16, 8, 8)
    # Different input sizes reach CLIP at its own size, so both work.
    with torch.no_grad():
        assert model(_images(2, 64)).logits.shape == (2,)


def test_image_size_must_be_a_multiple_of_twice_the_dct_block():
    with pytest.raises(ValueError, match="36x36"):
        _tiny(dct_block=4).eval()(_images(1, 36))


# --------------------------------------------------------------------------- blocks


def test_layer_importance_is_a_per_dimension_softmax_over_blocks():
    importance = LayerImportance(3, 5)
    x = torch.randn(2, 3, 5)
    assert torch.allclose(importance(x), x.mean(dim=1), atol=1e-6)  # zero init = plain mean
    with torch.no_grad():
        importance.alpha.copy_(torch.randn(3, 5))
    w = importance.weights()
    assert torch.allclose(w.sum(dim=0), torch.ones(5)) and (w > 0).all()
    assert torch.allclose(importance(x), (w * x).sum(dim=1), atol=1e-6)
    with torch.no_grad():
        importance.alpha.zero_()
        importance.alpha[1, :] = 50.0  # block 1 dominates every dimension
    assert torch.allclose(importance(x), x[:, 1], atol=1e-5)
    single = LayerImportance(1, 5)
    assert not list(single.parameters()) and torch.equal(single(x[:, :1]), x[:, 0])


def test_dct_conv_block_shapes_and_its_spectrum_separates_flat_from_textured_input():
    torch.manual_seed(0)
    block = DCTConvBlock(3, 8, block=4, dct_channels=2).eval()
    assert block(torch.randn(2, 3, 16, 24)).shape == (2, 8, 4, 6)
    flat = torch.full((1, 3, 8, 8), 0.7)
    spectrum = block.spectrum(flat).view(1, 2, 16, 2, 2)  # squeezed channel, frequency, tiles
    assert spectrum[:, :, 0].abs().min() > 0  # DC carries the level...
    assert spectrum[:, :, 1:].abs().max() < 1e-5  # ...and a flat tile has no other frequency
    checker = ((torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2).float().expand(1, 3, 8, 8)
    textured = block.spectrum(checker).view(1, 2, 16, 2, 2)
    assert textured[:, :, 15].abs().min() > 1e-3  # the highest (3, 3) frequency lights up
    with pytest.raises(ValueError, match="10x8"):
        block(torch.randn(1, 3, 10, 8))


def test_spatial_channel_attention_gates_without_changing_sign_or_growing():
    torch.manual_seed(0)
    attention = SpatialChannelAttention(8, reduction=4)
    x = torch.randn(2, 8, 6, 5)
    channel, spatial = attention.gates(x)
    assert channel.shape == (2, 8, 1, 1) and spatial.shape == (2, 1, 6, 5)
    assert ((channel > 0) & (channel < 1)).all() and ((spatial > 0) & (spatial < 1)).all()
    out = attention(x)
    assert torch.allclose(out, x * channel * spatial)
    assert (out.abs() <= x.abs()).all() and (torch.sign(out) == torch.sign(x)).all()
    # The spatial gate depends on where the evidence is: a hot spot changes it locally.
    hot = x.clone()
    hot[:, :, 2, 2] += 10.0
    assert not torch.allclose(attention.gates(hot)[1], spatial)


def test_cross_attention_weights_tokens_by_the_query_and_ignores_their_order():
    torch.manual_seed(0)
    fusion = CrossAttentionCombination(query_dim=6, context_dim=4, out_dim=8, heads=2).eval()
    query, context = torch.randn(3, 6), torch.randn(3, 5, 4)
    fused, weights = fusion(query, context, return_weights=True)
    assert fused.shape == (3, 8) and weights.shape == (3, 5)
    assert torch.allclose(weights.sum(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(fusion(query, context), fused)
    perm = torch.tensor([3, 0, 4, 1, 2])
    shuffled, shuffled_weights = fusion(query, context[:, perm], return_weights=True)
    assert torch.allclose(shuffled, fused, atol=1e-5)
    assert torch.allclose(shuffled_weights, weights[:, perm], atol=1e-6)
    # Another query attends differently; other context changes the result.
    assert not torch.allclose(fusion(-query, context, return_weights=True)[1], weights, atol=1e-3)
    assert not torch.allclose(fusion(query, context + torch.randn_like(context)), fused, atol=1e-3)
    with pytest.raises(ValueError, match="divisible"):
        CrossAttentionCombination(6, 4, out_dim=10, heads=4)


def test_gated_mlp_is_a_residual_sigmoid_gated_tanh_unit():
    torch.manual_seed(0)
    mlp = GatedMLP(6, 12).eval()
    x = torch.randn(4, 6)
    expected = x + mlp.out(torch.sigmoid(mlp.gate(x)) * torch.tanh(mlp.value(x)))
    assert torch.allclose(mlp(x), expected, atol=1e-6)
    assert not torch.allclose(mlp(x), x, atol=1e-3)
    with torch.no_grad():
        mlp.gate.bias.fill_(-1e4)  # a closed gate leaves only the residual (plus the output bias)
    assert torch.allclose(mlp(x), x + mlp.out.bias, atol=1e-6)


# --------------------------------------------------------------------------- loss, params, sizes


def test_task_loss_is_bce_plus_weighted_supcon_on_the_representation():
    model = _tiny(supcon_weight=0.4, supcon_temperature=0.2).eval()
    labels = torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        out = model(_images())
    terms = model.task_loss(out, {"labels": labels})
    assert set(terms) == {"bce", "supcon"}
    assert torch.allclose(terms["bce"], F.binary_cross_entropy_with_logits(out.logits, labels.float()))
    assert torch.allclose(terms["supcon"], 0.4 * supervised_contrastive(out.embedding, labels, 0.2))
    assert terms["supcon"] > 0
    # At weight 0 the term is zero but still reaches the representation head (DDP needs every
    # trainable parameter in the graph).
    model = _tiny(supcon_weight=0.0)
    out = model(_images())
    off = model.task_loss(out, {"labels": labels})
    assert off["supcon"] == 0
    sum(off.values()).backward()
    assert model.repr_out.weight.grad is not None


@pytest.mark.parametrize("params, field", [
    ({"use_layers": [3]}, "model.use_layers"),
    ({"use_layers": [-4]}, "model.use_layers"),
    ({"use_layers": "0+2+-1"}, "model.use_layers"),  # block 2 named twice
    ({"use_layers": "first"}, "model.use_layers"),
    ({"use_layers": []}, "model.use_layers"),
    ({"clip_activation": "mlp"}, "model.clip_activation"),
    ({"fusion_heads": 3}, "model.fusion_heads"),
    ({"clip_num_heads": 3}, "model.clip_num_heads"),
    ({"clip_image_size": 30}, "model.clip_image_size"),
    ({"clip_std": [0.2, 0.0, 0.2]}, "model.clip_std"),
    ({"dct_block": 3}, "model.dct_block"),
    ({"dropout": 1.0}, "model.dropout"),
    ({"supcon_temperature": 0}, "model.supcon_temperature"),
    ({"proj_dimm": 8}, "model.proj_dimm"),
])
def test_bad_parameter_is_a_config_error_naming_it(params, field):
    with pytest.raises(ConfigError) as info:
        build_model("rine_ssca", {"preset": "tiny", **params})
    assert str(info.value).startswith(field) and "\n" not in str(info.value)


def test_full_preset_matches_clip_vit_l14_without_allocating():
    with torch.device("meta"):
        model = build_model("rine_ssca", {"preset": "full"})
    clip = sum(p.numel() for p in model.clip.parameters())
    assert abs(clip - 303e6) / 303e6 < 0.01  # CLIP ViT-L/14 vision tower, about 303M
    cfg = model.clip.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.patch_size, cfg.image_size) == (1024, 24, 14, 224)
    assert len(model.layers) == 24 and model.feature_names()[:2] == ["clip_layer0", "clip_layer1"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 4e6 < trainable < 10e6  # the heads only: proj1 1.05M + Q2 2.1M + SSCA + fusion
    tiny = sum(p.numel() for p in _tiny().parameters())
    assert tiny < 100_000


# --------------------------------------------------------------------------- weights in and out


def test_checkpoint_round_trip_gives_identical_eval_outputs(tmp_path):
    model = _tiny()
    model.train()
    with torch.no_grad():
        model(_images())  # moves the BatchNorm running statistics off their defaults
    config = {"model": {"name": "rine_ssca", "preset": "tiny"}}
    save_stage_checkpoint(tmp_path / "ck", model, {"stage": 1, "config": config})
    torch.manual_seed(123)  # the rebuilt model starts from other random weights, CLIP included
    rebuilt, _ = load_model_from_checkpoint(tmp_path / "ck")
    images = _images(3, 32, seed=5)
    with torch.no_grad():
        a, b = model.eval()(images), rebuilt(images)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.embedding, b.embedding)
    assert all(torch.equal(a.features[k], b.features[k]) for k in a.features)


def test_pretrained_backbone_loads_from_a_local_directory(tmp_path):
    torch.manual_seed(7)
    tiny = RINESSCA.PRESETS["tiny"]
    clip = CLIPVisionModel(CLIPVisionConfig(**RINESSCAParams(**tiny).clip_config()))
    clip.save_pretrained(tmp_path / "clip")
    model = build_model("rine_ssca", {"preset": "tiny", "pretrained": True, "backbone": str(tmp_path / "clip")})
    assert all(torch.equal(a, b) for a, b in zip(model.clip.state_dict().values(), clip.state_dict().values()))
    assert not any(p.requires_grad for p in model.clip.parameters())
    with pytest.raises(ConfigError, match=r"^model\.clip_num_layers: .*num_hidden_layers = 3"):
        build_model("rine_ssca", {"preset": "tiny", "pretrained": True, "backbone": str(tmp_path / "clip"),
                                  "clip_num_layers": 4})
    with pytest.raises(ConfigError, match=r"^model\.backbone: "):
        build_model("rine_ssca", {"preset": "tiny", "pretrained": True, "backbone": str(tmp_path / "missing")})


def test_experiment_config_checks_distilled_features_against_use_layers():
    base = {"model": {"name": "rine_ssca", "preset": "tiny", "use_layers": "1+2"},
            "strategy": {"name": "cffd", "feature_layers": "clip_layer2+fused"}}
    assert validate_config(base).model.params.use_layers == [1, 2]
    base["strategy"]["feature_layers"] = "clip_layer0+fused"
    with pytest.raises(ConfigError, match="clip_layer0"):
        validate_config(base)


# --------------------------------------------------------------------------- learning


def test_rine_ssca_tiny_learns_deepfakes(train_one_stage):
    acc = train_one_stage({"name": "rine_ssca", "preset": "tiny"}, epochs_per_task=6, lr=2e-3)
    assert acc.get(0, 0) >= 0.75  # chance is 0.5
