"""Heads-only training from cached frozen features, and the loop's GPU path run on the CPU.

* rine_ssca's packed input (pixels + cached CLS tokens) gives the full forward's output;
* the continual loop with ``features.cache`` trains exactly as without it (CFFD, two tasks, the
  teacher included) while the CLIP tower never runs;
* ``train.precision: bf16`` autocasts and ``train.channels_last`` changes the memory format;
* ``save_tower: false`` checkpoints leave the frozen tower out and check it when loaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from forgesweep.config import validate_config
from forgesweep.errors import ConfigError, DataError
from forgesweep.features.packed import pack_inputs, unpack_inputs
from forgesweep.models import build_model
from forgesweep.models.rine_ssca import RINESSCA
from forgesweep.train.checkpoint import load_model_from_checkpoint, load_weights
from forgesweep.train.loop import LocalContext, resolve_precision, run_continual, use_channels_last

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images(batch: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("activation,layers", [("layer_norm2", [0, 2]), ("block_output", [1]),
                                               ("layer_norm2", None)])
def test_packed_input_gives_the_full_forward_output(activation, layers):
    torch.manual_seed(0)
    model = build_model("rine_ssca", {"preset": "tiny", "clip_activation": activation, "use_layers": layers})
    x = _images()
    spec = model.frozen_feature_spec()
    assert spec.variant == activation and spec.num_layers == 3 and spec.dim == 32
    cached = model.extract_frozen_features(x, ["layer_norm2", "block_output"])
    assert cached[activation].shape == (3, 3, 32)
    packed = pack_inputs(x, cached[activation][:, list(spec.layers)])
    for train in (False, True):  # in training mode dropout draws the same numbers either way
        model.train(train)
        torch.manual_seed(1)
        full = model(x)
        torch.manual_seed(1)
        heads = model(packed)
        assert torch.allclose(full.logits, heads.logits, atol=1e-5)
        assert torch.allclose(full.embedding, heads.embedding, atol=1e-5)
        assert full.features.keys() == heads.features.keys()


def test_unpacking_checks_the_width():
    images, features = _images(2), torch.randn(2, 2, 32)
    packed = pack_inputs(images, features)
    back_images, back_features = unpack_inputs(packed, 2, 32)
    assert torch.equal(back_images, images) and torch.equal(back_features, features)
    with pytest.raises(ValueError, match="were the features cached for this model"):
        unpack_inputs(packed, 3, 32)  # a subset of three layers was expected
    with pytest.raises(ValueError, match="images"):
        pack_inputs(images, torch.randn(3, 2, 32))


def _config(root: Path, **sections):
    data = {"seed": 0, "data": {"root": str(root), "image_size": 32, "batch_size": 4, "eval_batch_size": 8,
                                "sequence": ["Deepfakes", "Face2Face"]},
            "model": {"name": "rine_ssca", "preset": "tiny", "use_layers": [1, 2]},
            "strategy": {"name": "cffd", "replay_size": 4, "distill_on": "all", "feature_layers": ["rine", "fused"]},
            "train": {"epochs_per_task": 1}}
    for section, values in sections.items():  # model/strategy sections replace; others merge
        data[section] = values if section in ("model", "strategy") else {**data.get(section, {}), **values}
    return validate_config(data)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory, random_frame_manifest) -> Path:
    root = tmp_path_factory.mktemp("heads")
    random_frame_manifest(root, per_split=4)
    return root


def test_cached_training_equals_full_forward_training(tiny_root, tmp_path, monkeypatch):
    full_ctx, cached_ctx = LocalContext(tmp_path / "full"), LocalContext(tmp_path / "cached")
    run_continual(_config(tiny_root), full_ctx)

    calls = []
    original = RINESSCA.clip_cls_tokens
    monkeypatch.setattr(RINESSCA, "clip_cls_tokens", lambda self, pixels: calls.append(1) or original(self, pixels))
    run_continual(_config(tiny_root, features={"cache": True, "root": str(tmp_path / "cache")}), cached_ctx)
    assert calls == []  # neither the student nor the CFFD teacher ran CLIP

    assert [r.get("heads_only") for r in cached_ctx.reports] == [1.0, 1.0]
    for full, cached in zip(full_ctx.reports, cached_ctx.reports):
        assert {"train/slkd", "train/mfkd"} <= set(full_ctx.reports[1])  # the teacher distilled at task 2
        for key, value in full.items():
            if key.startswith(("train/", "acc/", "auc/", "avg_")):
                assert cached[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    # The trained models agree. (Weight by weight, Adam blows float noise on the biases that precede
    # a BatchNorm -- whose true gradient is zero -- up to whole steps, so compare what they compute.)
    stage1 = [load_weights(ctx.reports[0]["checkpoint_path"]) for ctx in (full_ctx, cached_ctx)]
    assert all(torch.allclose(stage1[0][k].float(), stage1[1][k].float(), atol=1e-6) for k in stage1[0])
    x = _images(8)
    final = [load_model_from_checkpoint(ctx.reports[-1]["checkpoint_path"])[0] for ctx in (full_ctx, cached_ctx)]
    assert torch.allclose(final[0](x).logits, final[1](x).logits, atol=1e-4)


@pytest.mark.parametrize("name,params,term", [
    ("lwf", {}, "lwf"),                                       # a frozen teacher on every batch
    ("icarl", {"replay_size": 4}, "icarl_kd"),                # teacher + herding through SampleAccess.score
    ("cored", {"num_bands": 2, "replay_size": 4}, "cored_rep"),  # teacher summaries over sample batches
    ("ewc", {"fisher_samples": 6}, "ewc"),                    # gradient passes over sample batches
    ("derpp", {"replay_size": 4}, "der"),                     # stored logits of replayed samples
])
def test_every_path_that_calls_the_model_takes_cached_features(name, params, term, tiny_root, tmp_path,
                                                               monkeypatch):
    monkeypatch.setattr(RINESSCA, "clip_cls_tokens", lambda self, pixels: pytest.fail("CLIP ran"))
    cfg = _config(tiny_root, strategy={"name": name, **params},
                  features={"cache": True, "root": str(tmp_path / "cache")})
    ctx = LocalContext(tmp_path / "run")
    run_continual(cfg, ctx)
    assert f"train/{term}" in ctx.reports[1] and np.isfinite(ctx.reports[1]["train/loss"])


def test_precision_and_channels_last_resolve_per_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cpu) == "fp32" and resolve_precision("auto", cuda) == "bf16"
    assert resolve_precision("bf16", cpu) == "bf16" and resolve_precision("fp32", cuda) == "fp32"
    conv, linear = nn.Sequential(nn.Conv2d(3, 4, 3)), nn.Sequential(nn.Linear(3, 4))
    assert not use_channels_last("auto", cpu, conv)  # the CPU default is unchanged
    assert use_channels_last("auto", cuda, conv) and not use_channels_last("auto", cuda, linear)
    assert use_channels_last(True, cpu, linear) and not use_channels_last(False, cuda, conv)


def test_bf16_autocast_and_channels_last_train_on_the_cpu(tiny_root, tmp_path, monkeypatch):
    seen = []
    from forgesweep.models.rsia_lite import RSIALite

    original = RSIALite.forward

    def spy(self, images):
        out = original(self, images)
        seen.append((images.is_contiguous(memory_format=torch.channels_last), out.logits.dtype,
                     torch.is_autocast_enabled("cpu")))
        return out

    monkeypatch.setattr(RSIALite, "forward", spy)
    cfg = _config(tiny_root, model={"name": "rsia_lite", "preset": "tiny"}, strategy={"name": "finetune"},
                  data={"sequence": ["Deepfakes"]}, train={"precision": "bf16", "channels_last": True})
    ctx = LocalContext(tmp_path / "run")
    run_continual(cfg, ctx)
    assert seen and all(channels_last and autocast for channels_last, _, autocast in seen)
    assert any(dtype == torch.bfloat16 for _, dtype, _ in seen)  # the head's matmul ran in bf16
    assert np.isfinite(ctx.reports[0]["train/loss"])


def _tower_dir(path: Path, seed: int) -> str:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                     intermediate_size=64, patch_size=8, image_size=32)).save_pretrained(str(path))
    return str(path)


def test_checkpoints_can_leave_the_frozen_tower_out(tiny_root, tmp_path):
    tower = _tower_dir(tmp_path / "tower", seed=0)
    model = {"name": "rine_ssca", "preset": "tiny", "pretrained": True, "backbone": tower, "save_tower": False}
    ctx = LocalContext(tmp_path / "run")
    run_continual(_config(tiny_root, model=model, strategy={"name": "finetune"}, data={"sequence": ["Deepfakes"]}),
                  ctx)
    stage = ctx.reports[0]["checkpoint_path"]
    weights = load_weights(stage)
    assert "tower_sha256" in weights and not any(k.startswith("clip.") for k in weights)
    loaded, _ = load_model_from_checkpoint(stage)
    x = _images()
    reference = build_model("rine_ssca", {k: v for k, v in model.items() if k != "name"})
    reference.load_state_dict(weights)
    assert torch.allclose(loaded(x).logits, reference.eval()(x).logits, atol=1e-6)

    _tower_dir(Path(tower), seed=1)  # the backbone directory now holds other weights
    with pytest.raises(DataError, match="differs from the weights in model.backbone"):
        load_model_from_checkpoint(stage)
    with pytest.raises(ConfigError, match="save_tower: false needs pretrained: true"):
        build_model("rine_ssca", {"preset": "tiny", "save_tower": False})
