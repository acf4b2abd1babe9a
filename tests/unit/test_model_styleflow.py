"""StyleFlow: style encoders, style flow, StyleGRU, triplet loss, content branch, style attention,
training phases, frozen parts, checkpoints, the paper-size preset and learning on synthetic clips."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from forgesweep.errors import ConfigError
from forgesweep.models import build_model
from forgesweep.models.styleflow_content import Content3DResNet, StyleAttention, TemporalTransformer
from forgesweep.models.styleflow_psp import PSPEncoder
from forgesweep.models.styleflow_style import (
    LatentDropout,
    PyramidStyleEncoder,
    StyleGRU,
    batch_triplet_loss,
    latent_levels,
)
from forgesweep.train.checkpoint import load_model_from_checkpoint, save_stage_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny(**params):
    torch.manual_seed(0)
    return build_model("styleflow", {"preset": "tiny", **params})


def _clips(batch=4, frames=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, frames, 3, size, size, generator=g) * 2 - 1


LABELS = torch.tensor([0, 1, 0, 1])


# --------------------------------------------------------------------------- style branch


def test_latent_levels_split_like_psp_and_cover_every_latent():
    levels = latent_levels(18)
    assert levels == {"coarse": [0, 1, 2], "middle": [3, 4, 5, 6], "fine": list(range(7, 18))}
    for n in (3, 6, 11, 64):
        got = latent_levels(n)
        assert sorted(i for v in got.values() for i in v) == list(range(n)) and all(got.values())
    with pytest.raises(ValueError):
        latent_levels(2)


def test_builtin_encoder_reads_coarse_latents_from_the_deepest_level():
    torch.manual_seed(0)
    enc = PyramidStyleEncoder(n_latents=6, latent_dim=5, width=4).eval()
    frames = torch.rand(3, 3, 32, 32)
    out = enc(frames)
    assert out.shape == (3, 6, 5)
    coarse, middle = enc.levels["coarse"], enc.levels["middle"]
    with torch.no_grad():
        enc.heads[2].bias.add_(1.0)  # the head of the deepest level
        changed = (enc(frames) - out).abs().amax(dim=(0, 2)) > 0
    assert changed.nonzero().flatten().tolist() == coarse
    assert not changed[middle].any()


def test_style_flow_of_a_still_video_is_zero_so_every_still_video_looks_alike():
    model = _tiny().eval()
    still_a = _clips(1, seed=1)[:, :1].expand(1, 4, 3, 32, 32)
    still_b = _clips(1, seed=2)[:, :1].expand(1, 4, 3, 32, 32)
    moving = _clips(1, seed=3)
    with torch.no_grad():
        a, b, m = (model(x).features["style"] for x in (still_a, still_b, moving))
        # Zero flow straight into the StyleGRU gives the same feature.
        zero = model.style_gru(torch.zeros(1, 3, len(model.flow_latents), model.params.latent_dim))
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(a, zero, atol=1e-6)
    assert not torch.allclose(a, m, atol=1e-3)


def test_style_levels_restrict_the_flow_the_gru_reads():
    model = _tiny(style_levels=["fine", "coarse"])
    levels = latent_levels(6)
    assert model.flow_latents.tolist() == levels["coarse"] + levels["fine"]
    assert model.style_gru.gru.input_size == len(model.flow_latents) * model.params.latent_dim
    model(_clips())  # runs


def test_latent_dropout_drops_whole_latents_for_every_step():
    drop = LatentDropout(0.5).train()
    torch.manual_seed(0)
    flow = torch.ones(64, 5, 6, 7)
    out = drop(flow)
    kept = out[:, 0, :, 0] != 0  # B L
    assert torch.equal(out, kept[:, None, :, None].float().expand_as(out) * 2.0)
    assert 0.3 < kept.float().mean() < 0.7
    assert torch.equal(drop.eval()(flow), flow)


def test_style_gru_normalises_each_step_and_concatenates_every_final_state():
    torch.manual_seed(0)
    gru = StyleGRU(steps=3, n_latents=2, latent_dim=4, hidden=5, layers=2, latent_dropout=0.0, gru_dropout=0.0)
    assert gru.norm.num_features == 3 and gru.out_dim == 2 * 2 * 5
    gru.eval()
    flow = torch.randn(6, 3, 2, 4)
    x = gru.norm(flow.flatten(2))
    _, h = gru.gru(x)  # [layers * directions, B, H]
    expected = torch.cat([h[i] for i in range(4)], dim=1)
    assert torch.allclose(gru(flow), expected)
    # Per-step BatchNorm statistics (train mode): each step is normalised over batch and features.
    gru.train()
    normed = gru.norm(flow.flatten(2) * torch.tensor([1.0, 10.0, 100.0])[None, :, None])
    assert torch.allclose(normed.mean(dim=(0, 2)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(normed.var(dim=(0, 2), unbiased=False), torch.ones(3), atol=1e-3)


def test_triplet_loss_matches_hand_computed_values():
    emb = torch.tensor([[0.0], [1.0], [3.0], [5.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # d(0,1)=1 d(0,2)=3 d(0,3)=5 d(1,2)=2 d(1,3)=4 d(2,3)=2; margin 2.5
    # all: anchor0 p1: n2 -> 1-3+2.5=0.5, n3 -> 0 ; anchor1 p0: n2 -> 1-2+2.5=1.5, n3 -> 0
    #      anchor2 p3: n0 -> 2-3+2.5=1.5, n1 -> 2-2+2.5=2.5 ; anchor3 p2: n0 -> 0, n1 -> 2-4+2.5=0.5
    all_loss = batch_triplet_loss(emb, labels, margin=2.5, mining="all")
    assert all_loss.item() == pytest.approx((0.5 + 1.5 + 1.5 + 2.5 + 0.5) / 8, abs=1e-5)
    # hard: per anchor farthest positive, nearest negative: a0: 1-3 ; a1: 1-2 ; a2: 2-2 ; a3: 2-4
    hard = batch_triplet_loss(emb, labels, margin=2.5, mining="hard")
    assert hard.item() == pytest.approx((0.5 + 1.5 + 2.5 + 0.5) / 4, abs=1e-5)
    far = torch.tensor([[0.0], [0.1], [10.0], [10.1]])
    assert batch_triplet_loss(far, labels, margin=1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_triplet_loss_without_a_negative_is_zero_and_keeps_the_graph():
    emb = torch.randn(3, 4, requires_grad=True)
    loss = batch_triplet_loss(emb, torch.tensor([1, 1, 1]), margin=1.0)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(emb.grad, torch.zeros(3, 4))
    duplicate = torch.zeros(4, 2, requires_grad=True)  # zero distances: gradients stay finite
    batch_triplet_loss(duplicate, LABELS, margin=1.0).backward()
    assert torch.isfinite(duplicate.grad).all()


# --------------------------------------------------------------------------- content and fusion


@pytest.mark.parametrize("temporal_only", [True, False])
def test_content_branch_gives_temporal_tokens(temporal_only):
    torch.manual_seed(0)
    net = Content3DResNet(width=4, blocks=[1, 2], temporal_kernel=3, stem_temporal_kernel=5,
                          temporal_only=temporal_only, temporal_pool=True).eval()
    tokens = net(torch.randn(2, 3, 8, 32, 32))
    assert tokens.shape == (2, 4, 32) and net.out_dim == 32
    spatial = {tuple(m.kernel_size[1:]) for m in net.modules() if isinstance(m, nn.Conv3d)}
    assert spatial == ({(1, 1)} if temporal_only else {(1, 1), (3, 3), (7, 7)})
    temporal = [m.kernel_size[0] for m in net.modules() if isinstance(m, nn.Conv3d)]
    assert temporal[0] == 5 and 3 in temporal


def test_temporal_only_content_branch_is_blind_to_spatial_detail_within_pooling_windows():
    # With 1x1 spatial kernels, swapping pixels inside the stem's first 2x2 max-pool window of
    # every frame alike changes nothing; a 3x3 spatial kernel sees the swap.
    torch.manual_seed(0)
    clip = torch.randn(1, 3, 4, 16, 16)
    swapped = clip.clone()
    swapped[..., 0::2, :], swapped[..., 1::2, :] = clip[..., 1::2, :], clip[..., 0::2, :]
    for temporal_only, same in ((True, True), (False, False)):
        net = Content3DResNet(4, [1], 3, 3, temporal_only, False).eval()
        with torch.no_grad():
            assert torch.allclose(net(clip), net(swapped), atol=1e-6) == same


def test_style_attention_starts_as_identity_then_mixes_style_in():
    torch.manual_seed(0)
    sam = StyleAttention(content_dim=8, style_dim=6, dim=12, heads=3)
    content, style = torch.randn(2, 5, 8), torch.randn(2, 4, 6)
    assert torch.equal(sam(content, style), content)
    nn.init.normal_(sam.out.weight)
    moved = sam(content, style)
    assert not torch.allclose(moved, content)
    assert not torch.allclose(sam(content, torch.randn(2, 4, 6)), moved)  # depends on the style tokens
    with pytest.raises(ValueError, match="heads"):
        StyleAttention(8, 6, 10, 3)


def test_temporal_transformer_prepends_a_class_token_and_checks_the_token_count():
    torch.manual_seed(0)
    tte = TemporalTransformer(in_dim=10, dim=8, tokens=3, depth=2, heads=2, mlp_dim=16, dropout=0.0).eval()
    cls, tokens = tte(torch.randn(2, 3, 10))
    assert cls.shape == (2, 8) and tokens.shape == (2, 4, 8) and torch.equal(cls, tokens[:, 0])
    with pytest.raises(ValueError, match="3 temporal tokens"):
        tte(torch.randn(2, 5, 10))


# --------------------------------------------------------------------------- the detector


def test_forward_contract_and_clip_shape_check():
    model = _tiny().eval()
    assert model.input_kind == "clip" and model.clip_length() == 4
    x = model.example_input(2)
    assert x.shape == (2, 4, 3, 32, 32)
    out = model(x)
    assert list(out.features) == model.feature_names() == ["style", "style_logits", "content", "fused", "temporal"]
    assert out.features["style"].shape == (2, 32) and out.features["style_logits"].shape == (2, 1)
    assert out.features["content"].shape == (2, 2, 64) and out.features["temporal"].shape == (2, 3, 16)
    with pytest.raises(ValueError, match=r"\[B, 4, 3, H, W\]"):
        model(torch.randn(2, 5, 3, 32, 32))
    with pytest.raises(ValueError):
        model(torch.randn(2, 3, 32, 32))


def test_training_phases_split_the_epochs():
    model = _tiny(style_phase_fraction=0.5)
    assert model.training_phases(6) == [("style", 3), ("detector", 3)]
    assert model.training_phases(2) == [("style", 1), ("detector", 1)]
    assert model.training_phases(1) == [("joint", 1)]
    assert _tiny(style_phase_fraction=0.9).training_phases(4) == [("style", 3), ("detector", 1)]
    assert _tiny(two_stage=False).training_phases(6) == [("joint", 6)]


def _trainable(module):
    return {p.requires_grad for p in module.parameters()}


def test_phases_choose_what_trains_what_stays_in_eval_and_the_loss_terms():
    model = _tiny()
    style_parts = [model.style_encoder, model.style_gru, model.style_head]
    detector_parts = [model.content, model.attention, model.temporal, model.head]
    out = model.train()(_clips())
    assert set(model.task_loss(out, {"labels": LABELS})) == {"style_bce", "triplet", "bce"}  # joint

    model.begin_phase("style")
    model.train()
    assert all(_trainable(m) == {True} for m in style_parts)
    assert all(_trainable(m) == {False} and not m.training for m in detector_parts)
    assert set(model.task_loss(model(_clips()), {"labels": LABELS})) == {"style_bce", "triplet"}

    model.begin_phase("detector")
    model.train()
    assert all(_trainable(m) == {False} and not m.training for m in style_parts)
    assert all(_trainable(m) == {True} and m.training for m in detector_parts)
    assert set(model.task_loss(model(_clips()), {"labels": LABELS})) == {"bce"}
    assert model.frozen_modules() == []  # the StyleGRU trains again in the next task's style phase

    with pytest.raises(ValueError, match="unknown StyleFlow phase 'main'"):
        model.begin_phase("main")


def _step(model, phase):
    model.begin_phase(phase)
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    before = copy.deepcopy(model.state_dict())
    loss = sum(model.task_loss(model(_clips()), {"labels": LABELS}).values())
    loss.backward()
    opt.step()
    return before


def test_detector_phase_leaves_the_style_branch_unchanged():
    model = _tiny()
    before = _step(model, "detector")
    after = model.state_dict()
    for name, value in before.items():
        changed = not torch.equal(value, after[name])
        if name.startswith(("style_gru.", "style_head.", "style_encoder.")):
            assert not changed, name  # weights and BatchNorm statistics alike
    assert not torch.equal(before["head.1.weight"], after["head.1.weight"])


def test_style_phase_leaves_the_detector_unchanged():
    model = _tiny()
    before = _step(model, "style")
    after = model.state_dict()
    for name in before:
        if name.startswith(("content.", "attention.", "temporal.", "head.")):
            assert torch.equal(before[name], after[name]), name
    assert not torch.equal(before["style_gru.gru.weight_ih_l0"], after["style_gru.gru.weight_ih_l0"])


def test_frozen_builtin_encoder_is_listed_kept_in_eval_and_unchanged():
    model = _tiny(style_encoder_trainable=False)
    assert model.frozen_modules() == [model.style_encoder]
    assert _trainable(model.style_encoder) == {False}
    before = _step(model, "style")
    assert not model.style_encoder.training
    for name, value in model.style_encoder.state_dict().items():
        assert torch.equal(before[f"style_encoder.{name}"], value), name


PSP_SMALL = {"style_encoder": "psp", "style_input_size": 32, "latent_dim": 32, "psp_blocks": [1, 1, 2, 1],
             "psp_widths": [16, 16, 32, 32]}


def _psp_file(path, prefix="encoder.", **overrides):
    """A small pSp encoder with random weights (BatchNorm statistics moved), saved as safetensors."""
    from safetensors.torch import save_file

    p = {**PSP_SMALL, **overrides}
    torch.manual_seed(3)
    enc = PSPEncoder(6, 1, 2, p["style_input_size"], p["psp_blocks"], p["psp_widths"])
    enc.train()(torch.randn(4, 3, p["style_input_size"], p["style_input_size"]))
    save_file({prefix + k: v.contiguous() for k, v in enc.state_dict().items()}, str(path))
    return enc.eval(), str(path)


def test_psp_encoder_follows_the_pyramid_of_psp():
    torch.manual_seed(0)
    enc = PSPEncoder(6, 1, 2, 32, [1, 1, 2, 1], [16, 16, 32, 32]).eval()
    assert enc.taps == (1, 3, 4)
    # GradualStyleBlocks halve their map down to 1x1: 32/16 -> 1 conv, 32/8 -> 2, 32/4 -> 3.
    convs = [sum(isinstance(m, nn.Conv2d) for m in style.convs) for style in enc.styles]
    assert convs == [1, 2, 3, 3, 3, 3]
    frames = torch.randn(2, 3, 32, 32)
    out = enc(frames)
    assert out.shape == (2, 6, 32)
    with torch.no_grad():
        enc.latlayer2.bias.add_(1.0)  # the 1/4-scale lateral feeds only the fine latents
        changed = (enc(frames) - out).abs().amax(dim=(0, 2)) > 1e-6
    assert changed.tolist() == [False, False, True, True, True, True]


def test_psp_encoder_loads_frozen_and_survives_copy_and_checkpoint(tmp_path):
    reference, path = _psp_file(tmp_path / "psp.safetensors")
    model = _tiny(**PSP_SMALL, style_encoder_path=path)
    assert isinstance(model.style_encoder, PSPEncoder)
    assert model.frozen_modules() == [model.style_encoder]
    assert _trainable(model.style_encoder) == {False}
    x = _clips()
    frames = torch.nn.functional.interpolate(x.flatten(0, 1), size=(32, 32), mode="bilinear")
    with torch.no_grad():
        assert torch.equal(model.eval().style_encoder(frames), reference(frames))  # the file's weights
    before = _step(model, "joint")
    assert not model.style_encoder.training  # kept in eval while the rest trains
    for name, value in model.style_encoder.state_dict().items():
        assert torch.equal(before[f"style_encoder.{name}"], value), name
    teacher = copy.deepcopy(model).eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(teacher(x).logits, model(x).logits)
    config = {"model": {"name": "styleflow", **model.params.model_dump(mode="json")}}
    save_stage_checkpoint(tmp_path / "ck", model, {"stage": 1, "config": config})
    rebuilt, _ = load_model_from_checkpoint(tmp_path / "ck")
    with torch.no_grad():
        assert torch.equal(rebuilt(x).logits, model(x).logits)


def test_psp_file_without_the_encoder_prefix_loads_too(tmp_path):
    reference, path = _psp_file(tmp_path / "bare.safetensors", prefix="")
    model = _tiny(**PSP_SMALL, style_encoder_path=path).eval()
    frames = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.style_encoder(frames), reference(frames))


@pytest.mark.parametrize("make, message", [
    (lambda d: str(d / "missing.safetensors"), "does not exist"),
    (lambda d: (d / "junk.safetensors").write_bytes(b"\x00junk") and str(d / "junk.safetensors"),
     "not a safetensors file"),
    (lambda d: _psp_file(d / "deeper.safetensors", psp_blocks=[1, 1, 3, 1])[1], "1 missing keys|unexpected keys"),
    (lambda d: _psp_file(d / "wider.safetensors", psp_widths=[32, 32, 64, 64])[1], "has shape"),
])
def test_bad_psp_file_is_a_config_error_naming_the_field(tmp_path, make, message):
    with pytest.raises(ConfigError, match=f"model.style_encoder_path: .*({message})"):
        _tiny(**PSP_SMALL, style_encoder_path=make(tmp_path))


def test_checkpoint_round_trip_gives_identical_eval_outputs(tmp_path):
    model = _tiny()
    _step(model, "joint")  # weights and BatchNorm statistics off their initial values
    model.eval()
    config = {"model": {"name": "styleflow", "preset": "tiny"}}
    save_stage_checkpoint(tmp_path / "ck", model, {"stage": 1, "config": config})
    rebuilt, state = load_model_from_checkpoint(tmp_path / "ck")
    assert state["stage"] == 1 and rebuilt.params == model.params
    x = _clips(seed=5)
    with torch.no_grad():
        a, b = model(x), rebuilt(x)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.embedding, b.embedding)
    for name in a.features:
        assert torch.equal(a.features[name], b.features[name]), name


@pytest.mark.parametrize("params, field", [
    ({"gru_hidden": 10, "style_tokens": 3}, "model.style_tokens"),
    ({"content_temporal_kernel": 4}, "model.content_temporal_kernel"),
    ({"style_encoder": "psp", "latent_dim": 512}, "model.style_encoder_path"),
    ({**PSP_SMALL, "style_encoder_path": "x.st", "style_input_size": None}, "model.style_input_size"),
    ({**PSP_SMALL, "style_encoder_path": "x.st", "style_input_size": 48}, "model.style_input_size"),
    ({**PSP_SMALL, "style_encoder_path": "x.st", "style_encoder_trainable": True}, "model.style_encoder_trainable"),
    ({**PSP_SMALL, "style_encoder_path": "x.st", "latent_dim": 16}, "model.psp_widths"),
    ({**PSP_SMALL, "style_encoder_path": "x.st", "psp_widths": [16, 16, 32, 40]}, "model.psp_widths"),
    ({**PSP_SMALL, "style_encoder_path": "x.st", "psp_blocks": [1, 1, 1]}, "model.psp_blocks"),
    ({"psp_blocks": [1, 1, 1, 1]}, "model.psp_blocks"),
    ({"style_encoder_path": "x.st"}, "model.style_encoder_path"),
    ({"style_levels": ["fine", "fine"]}, "model.style_levels"),
    ({"style_levels": ["texture"]}, "model.style_levels"),
    ({"embed_dim": 18, "transformer_heads": 4}, "model.transformer_heads"),
    ({"attention_dim": 10, "attention_heads": 4}, "model.attention_heads"),
    ({"content_blocks": [2, 0]}, "model.content_blocks"),
    ({"style_phase_fraction": 1.0}, "model.style_phase_fraction"),
    ({"clip_length": 1}, "model.clip_length"),
    ({"gru_hiden": 8}, "model.gru_hiden"),
])
def test_bad_parameters_are_config_errors_naming_the_field(params, field):
    with pytest.raises(ConfigError) as info:
        build_model("styleflow", {"preset": "tiny", **params})
    assert field in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------- the paper's size


def _gru_params(inputs: int, hidden: int, layers: int) -> int:
    total = 0
    for layer in range(layers):
        width = inputs if layer == 0 else 2 * hidden
        total += 2 * (3 * hidden * width + 3 * hidden * hidden + 6 * hidden)  # two directions
    return total


def _ftcn_resnet50_to_res4() -> int:
    """Temporal-only I3D ResNet-50 up to res4, counted by hand: every spatial kernel is 1x1."""
    bn = lambda c: 2 * c  # noqa: E731
    total = 3 * 64 * 5 + bn(64)  # stem 5x1x1
    cin = 64
    for stage, blocks in enumerate((3, 4, 6)):
        w, out = 64 * 2**stage, 256 * 2**stage
        for b in range(blocks):
            kt = 3 if stage == 0 or b % 2 == 0 else 1
            total += cin * w * kt + bn(w) + w * w + bn(w) + w * out + bn(out)
            if b == 0:
                total += cin * out + bn(out)
            cin = out
    return total


def test_full_preset_matches_the_paper_without_running_it():
    with torch.device("meta"):
        model = build_model("styleflow", {"preset": "full"})
    p = model.params
    assert (p.clip_length, p.n_latents, p.latent_dim, p.gru_hidden, p.gru_layers) == (32, 18, 512, 4096, 2)
    count = lambda m: sum(q.numel() for q in m.parameters())  # noqa: E731
    # StyleGRU: bidirectional 2-layer GRU on 9216-d flows (hidden 4096) + BatchNorm over 31 steps.
    assert count(model.style_gru) == _gru_params(18 * 512, 4096, 2) + 2 * 31
    assert count(model.style_gru) == pytest.approx(629.2e6, rel=1e-3)
    assert model.style_gru.out_dim == 16384 == 16 * 1024  # 16 style tokens of 1024
    assert count(model.content) == _ftcn_resnet50_to_res4()
    assert model.content.out_dim == 1024
    assert model.temporal.pos.shape == (1, 16 + 1, 1024)  # 32 frames -> 16 temporal tokens
    assert model.temporal.encoder.layers[0].self_attn.num_heads == 16
    assert model.temporal.encoder.layers[0].linear1.out_features == 2048
    assert count(model) == pytest.approx(784.6e6, rel=1e-3)


def _psp_params() -> int:
    """pSp's GradualStyleEncoder (IR-SE-50, 18 latents of 512, input 256), counted by hand."""
    bn = lambda c: 2 * c  # noqa: E731
    total = 3 * 64 * 9 + bn(64) + 64  # input conv, BatchNorm, PReLU
    cin = 64
    for count, c in zip((3, 4, 14, 3), (64, 128, 256, 512)):
        for _ in range(count):
            if cin != c:
                total += cin * c + bn(c)  # projection shortcut
            total += bn(cin) + cin * c * 9 + c + c * c * 9 + bn(c) + 2 * c * (c // 16)
            cin = c
    conv = 512 * 512 * 9 + 512
    for i in range(18):
        total += conv * (4 if i < 3 else 5 if i < 7 else 6) + 512 * 512 + 512
    return total + (256 * 512 + 512) + (128 * 512 + 512)


def test_psp_encoder_at_full_size_has_psps_parameter_count():
    with torch.device("meta"):
        enc = PSPEncoder(18, 3, 7, 256)
    assert sum(q.numel() for q in enc.parameters()) == _psp_params() == pytest.approx(267.0e6, rel=2e-2)


def test_content_branch_without_temporal_kernels_is_a_2d_resnet50_to_res4():
    from transformers import ResNetConfig, ResNetModel

    with torch.device("meta"):
        resnet = ResNetModel(ResNetConfig())  # ResNet-50
        ours = Content3DResNet(64, [3, 4, 6], temporal_kernel=1, stem_temporal_kernel=1, temporal_only=False,
                               temporal_pool=False)
    count = lambda m: sum(q.numel() for q in m.parameters())  # noqa: E731
    expected = count(resnet.embedder) + sum(count(s) for s in resnet.encoder.stages[:3])
    assert count(ours) == expected == pytest.approx(8.54e6, rel=1e-2)


# --------------------------------------------------------------------------- speed and learning


def test_tiny_forward_backward_of_four_clips_is_fast():
    import time

    model = _tiny().train()
    x = model.example_input(4)
    sum(model.task_loss(model(x), {"labels": LABELS}).values()).backward()  # warm-up
    began = time.perf_counter()
    for _ in range(3):
        model.zero_grad()
        sum(model.task_loss(model(x), {"labels": LABELS}).values()).backward()
    assert (time.perf_counter() - began) / 3 < 1.0


def test_styleflow_tiny_learns_deepfakes_per_video(train_one_stage):
    acc = train_one_stage({"name": "styleflow", "preset": "tiny"}, epochs_per_task=6, lr=5e-3)
    assert acc.get(0, 0) >= 0.75  # video-level accuracy over 24 test videos; chance is 0.5
