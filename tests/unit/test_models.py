"""Every registered detector against the output contract; the block DCT it is built on."""

from __future__ import annotations

import math

import pytest
import torch

from forgesweep.errors import ConfigError, UserError
from forgesweep.models import MODELS, DetectorOutput, build_model, model_params_class
from forgesweep.models.blocks import BlockDCT, dct_matrix

# Full-size presets (a 303M-parameter CLIP tower at 224 px ...) are too slow to run here; each
# model's own tests check their parameter counts on the meta device, and benchmarks/models.py
# times them.
CASES = [(name, preset) for name in MODELS.names()
         for preset in ([p for p in sorted(MODELS.get(name).PRESETS) if p != "full"] or [None])]
IDS = [f"{n}-{p}" for n, p in CASES]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _build(name, preset, **params):
    if preset is not None:
        params["preset"] = preset
    torch.manual_seed(0)
    return build_model(name, params)


@pytest.mark.parametrize("name, preset", CASES, ids=IDS)
def test_output_contract(name, preset):
    model = _build(name, preset)
    batch = 3
    images = model.example_input(batch)
    model.train()
    out = model(images)
    assert isinstance(out, DetectorOutput)
    assert out.logits.shape == (batch,)
    assert out.logits.dtype == torch.float32
    assert torch.isfinite(out.logits).all()
    assert out.probs().shape == (batch,) and ((out.probs() > 0) & (out.probs() < 1)).all()
    names = model.feature_names()
    assert list(out.features) == names
    assert len(set(names)) == len(names) > 0
    for key, feat in out.features.items():
        assert feat.ndim >= 2 and feat.shape[0] == batch, key
        assert torch.isfinite(feat).all(), key
    assert out.embedding is not None
    assert out.embedding.ndim == 2 and out.embedding.shape[0] == batch and out.embedding.shape[1] > 0
    if hasattr(model.params, "embed_dim"):
        assert out.embedding.shape[1] == model.params.embed_dim


@pytest.mark.parametrize("name, preset", CASES, ids=IDS)
def test_eval_mode_is_deterministic_and_per_sample(name, preset):
    model = _build(name, preset).eval()
    images = model.example_input(4)
    with torch.no_grad():
        a = model(images)
        b = model(images)
        single = model(images[1:2])
    assert torch.equal(a.logits, b.logits)
    # No sample influences another at inference (BatchNorm uses its running statistics).
    assert torch.allclose(single.logits[0], a.logits[1], atol=1e-5)
    assert torch.allclose(single.embedding[0], a.embedding[1], atol=1e-5)


@pytest.mark.parametrize("name, preset", CASES, ids=IDS)
def test_gradients_reach_every_trainable_parameter(name, preset):
    model = _build(name, preset)
    with torch.no_grad():
        # Zero-initialised gates (e.g. attention blocks that start as identities) block the
        # gradient of what they gate; open them so every path is exercised.
        for p in model.parameters():
            if p.requires_grad and not p.any():
                p.fill_(0.5)
    model.train()
    out = model(model.example_input(4))
    labels = torch.tensor([0, 1, 0, 1])
    terms = model.task_loss(out, {"labels": labels})
    assert set(terms) and all(t.ndim == 0 for t in terms.values())
    sum(terms.values()).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    missing = [n for n, p in trainable if p.grad is None]
    assert not missing, f"no gradient: {missing}"
    bad = [n for n, p in trainable if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient: {bad}"
    zero = [n for n, p in trainable if not p.grad.any()]
    assert not zero, f"all-zero gradient: {zero}"


def test_presets_differ_and_explicit_keys_override_them():
    cls = MODELS.get("rsia_lite")
    assert {"tiny", "small", "full"} <= set(cls.PRESETS)
    tiny = build_model("rsia_lite", {"preset": "tiny"})
    assert tiny.params.width == cls.PRESETS["tiny"]["width"]
    custom = build_model("rsia_lite", {"preset": "tiny", "embed_dim": 24})
    assert custom.params.width == cls.PRESETS["tiny"]["width"] and custom.params.embed_dim == 24
    out = custom.eval()(torch.randn(2, 3, 32, 32))
    assert out.embedding.shape == (2, 24)
    n_tiny = sum(p.numel() for p in tiny.parameters())
    n_small = sum(p.numel() for p in build_model("rsia_lite", {"preset": "small"}).parameters())
    assert n_small > n_tiny
    assert model_params_class("rsia_lite") is cls.Params


def test_unknown_preset_is_a_config_error_listing_the_known_ones():
    with pytest.raises(ConfigError) as info:
        build_model("rsia_lite", {"preset": "huge"})
    message = str(info.value)
    assert "model.preset" in message and "'huge'" in message and "tiny" in message


@pytest.mark.parametrize(
    "params, field",
    [({"widht": 8}, "model.widht"), ({"width": 2}, "model.width"), ({"dct_block": 6}, "model.dct_block"),
     ({"dropout": 1.0}, "model.dropout"), ({"embed_dim": "big"}, "model.embed_dim")],
)
def test_bad_parameter_is_a_config_error_naming_it(params, field):
    with pytest.raises(ConfigError) as info:
        build_model("rsia_lite", params)
    assert field in str(info.value) and "\n" not in str(info.value)


def test_unknown_model_name_lists_known_ones():
    with pytest.raises(UserError) as info:
        build_model("resnet9000")
    assert "resnet9000" in str(info.value) and "rsia_lite" in str(info.value)


def test_image_size_not_a_multiple_of_the_dct_block_is_a_value_error():
    model = build_model("rsia_lite", {"preset": "tiny"}).eval()  # dct_block 4
    with pytest.raises(ValueError, match="30x30"):
        model(torch.randn(1, 3, 30, 30))


# --------------------------------------------------------------------------- block DCT


def _inverse_block_dct(coeffs: torch.Tensor, n: int, channels: int) -> torch.Tensor:
    b, _, hb, wb = coeffs.shape
    basis = dct_matrix(n).double()
    c = coeffs.double().reshape(b, channels, n, n, hb, wb).permute(0, 1, 4, 5, 2, 3)  # B C h w n n
    tiles = basis.T @ c @ basis
    return tiles.permute(0, 1, 2, 4, 3, 5).reshape(b, channels, hb * n, wb * n)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_dct_matrix_is_orthonormal(n):
    basis = dct_matrix(n).double()
    assert torch.allclose(basis @ basis.T, torch.eye(n, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(basis[0], torch.full((n,), 1 / math.sqrt(n), dtype=torch.float64), atol=1e-7)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_block_dct_reconstructs_and_preserves_energy(n):
    torch.manual_seed(n)
    x = torch.randn(2, 3, 2 * n, 3 * n)
    coeffs = BlockDCT(n)(x)
    assert coeffs.shape == (2, 3 * n * n, 2, 3)
    back = _inverse_block_dct(coeffs, n, 3)
    assert torch.allclose(back, x.double(), atol=1e-5)
    assert torch.allclose(coeffs.double().pow(2).sum(), x.double().pow(2).sum(), rtol=1e-5)


def test_block_dct_layout_puts_each_frequency_in_its_channel():
    n = 4
    basis = dct_matrix(n)
    x = torch.zeros(1, 2, 2 * n, n)
    # Channel 1, lower tile: the (vertical 1, horizontal 2) cosine basis image.
    x[0, 1, n:, :] = torch.outer(basis[1], basis[2])
    # Channel 0, upper tile: a constant 3 -> only the DC coefficient, 3 * n.
    x[0, 0, :n, :] = 3.0
    coeffs = BlockDCT(n)(x)
    expected = torch.zeros_like(coeffs)
    expected[0, 1 * n * n + 1 * n + 2, 1, 0] = 1.0
    expected[0, 0, 0, 0] = 3.0 * n
    assert torch.allclose(coeffs, expected, atol=1e-5)


def test_block_dct_rejects_bad_sizes():
    with pytest.raises(ValueError, match="power of two"):
        BlockDCT(3)
    with pytest.raises(ValueError):
        BlockDCT(1)
    with pytest.raises(ValueError, match="not a multiple"):
        BlockDCT(4)(torch.zeros(1, 3, 8, 10))
    assert not list(BlockDCT(4).parameters())  # fixed, not learned


# --------------------------------------------------------------------------- every architecture: training


def _batch_for(model, inputs, labels):
    batch = {"images": inputs, "labels": labels}
    if model.uses_masks:
        size = inputs.shape[-1]
        masks = torch.zeros(len(labels), 1, size, size)
        masks[labels == 1, :, size // 4: size // 2, size // 4: size // 2] = 1.0
        batch["masks"], batch["mask_valid"] = masks, torch.ones(len(labels), dtype=torch.bool)
    return batch


@pytest.mark.parametrize("name, preset", CASES, ids=IDS)
def test_optimiser_step_moves_trainable_and_never_frozen_parameters(name, preset):
    model = _build(name, preset)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    frozen_ids = {id(p) for m in model.frozen_modules() for p in m.parameters()}
    assert all(not p.requires_grad for n, p in model.named_parameters() if id(p) in frozen_ids), \
        "frozen_modules() must hold only parameters with requires_grad=False"
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for m in model.frozen_modules():
        assert not m.training, "train() must keep frozen modules in eval mode"
    labels = torch.tensor([0, 1, 0, 1])
    inputs = model.example_input(4, torch.Generator().manual_seed(1))
    out = model(inputs)
    sum(model.task_loss(out, _batch_for(model, inputs, labels)).values()).backward()
    optimizer.step()
    model.after_optimizer_step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"frozen parameter {n} changed"
    moved = [n for n, p in model.named_parameters() if n in trainable and not torch.equal(p, trainable[n])]
    assert moved, "no trainable parameter moved"


@pytest.mark.parametrize("name, preset", CASES, ids=IDS)
def test_checkpoint_round_trip_gives_identical_outputs(name, preset, tmp_path):
    from forgesweep.train.checkpoint import load_model_from_checkpoint, save_stage_checkpoint

    model = _build(name, preset)
    # A few training steps, so running statistics, queues and momentum encoders hold state.
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(2):
        inputs = model.example_input(4, torch.Generator().manual_seed(step))
        labels = torch.tensor([0, 1, 1, 0])
        out = model(inputs)
        sum(model.task_loss(out, _batch_for(model, inputs, labels)).values()).backward()
        optimizer.step()
        optimizer.zero_grad()
        model.after_optimizer_step()
    params = {"name": name, **({"preset": preset} if preset else {})}
    save_stage_checkpoint(tmp_path, model, {"stage": 1, "config": {"model": params}})
    loaded, state = load_model_from_checkpoint(tmp_path)
    assert state["stage"] == 1
    model.eval()
    inputs = model.example_input(3, torch.Generator().manual_seed(7))
    with torch.no_grad():
        a, b = model(inputs), loaded(inputs)
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(a.embedding, b.embedding)
