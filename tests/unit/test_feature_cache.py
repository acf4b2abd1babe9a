"""The frozen-feature cache: its key, its integrity checks and its storage (local and s3://).

A tiny CLIP (the ``tiny`` rine_ssca preset) over a hand-written manifest of random 32 px frames:
every test builds plans and tables directly (no Ray, no training).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from forgesweep.config import validate_config
from forgesweep.data.datasets import FrameCache
from forgesweep.data.manifest import read_manifest
from forgesweep.features.extract import extract_views, load_feature_table, plan_cache, resolve_views
from forgesweep.features.key import cached_rows
from forgesweep.features.store import INDEX_FILE
from forgesweep.models import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")


def config(root: Path, cache_root: Path, **overrides):
    data = {"seed": 0,
            "data": {"root": str(root), "image_size": 32, "batch_size": 4, "sequence": ["Deepfakes", "Face2Face"]},
            "model": {"name": "rine_ssca", "preset": "tiny", "use_layers": [0, 2]},
            "strategy": {"name": "finetune"},
            "features": {"cache": True, "root": str(cache_root), "shard_size": 5}}
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        data.setdefault(section, {})[key] = value
    return validate_config(data)


def model_of(cfg, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(cfg.model.name, cfg.model.params)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, random_frame_manifest):
    root = tmp_path_factory.mktemp("tiny")
    manifest = read_manifest(random_frame_manifest(root))
    return root, manifest


def plan_for(cfg, manifest, model, variants=None):
    return plan_cache(cfg.features, cfg.data, manifest, manifest.rows, model,
                      variants or [model.frozen_feature_spec().variant], "fp32")


def test_key_is_stable_and_changes_with_weights_preprocessing_frames_views_and_variant(dataset, tmp_path):
    root, manifest = dataset
    cfg = config(root, tmp_path / "cache")
    key = plan_for(cfg, manifest, model_of(cfg)).keys["layer_norm2"]
    # Same inputs, separately built (seeded) models: the same key.
    assert plan_for(cfg, manifest, model_of(cfg)).keys["layer_norm2"] == key
    # The layer subset is not part of the key: every subset is a slice of one cache.
    subset = config(root, tmp_path / "cache", model__use_layers=[1])
    assert plan_for(subset, manifest, model_of(subset)).keys["layer_norm2"] == key

    changed = {}
    other = model_of(cfg)
    with torch.no_grad():
        other.clip.encoder.layers[1].mlp.fc1.weight[0, 0] += 1e-3
    changed["weights"] = plan_for(cfg, manifest, other).keys["layer_norm2"]
    mean = config(root, tmp_path / "cache", model__clip_mean=[0.5, 0.5, 0.5])
    changed["model normalisation"] = plan_for(mean, manifest, model_of(mean)).keys["layer_norm2"]
    size = config(root, tmp_path / "cache", data__image_size=64)
    changed["frame size"] = plan_for(size, manifest, model_of(size)).keys["layer_norm2"]
    views = config(root, tmp_path / "cache", features__views="identity")
    changed["views"] = plan_for(views, manifest, model_of(views)).keys["layer_norm2"]
    changed["variant"] = plan_for(cfg, manifest, model_of(cfg), ["block_output"]).keys["block_output"]
    changed["precision"] = plan_cache(cfg.features, cfg.data, manifest, manifest.rows, model_of(cfg),
                                      ["layer_norm2"], "bf16").keys["layer_norm2"]
    # The manifest: one row fewer, and a frame rewritten in place under the same path.
    changed["rows"] = plan_cache(cfg.features, cfg.data, manifest, manifest.rows[1:], model_of(cfg),
                                 ["layer_norm2"], "fp32").keys["layer_norm2"]
    frame = root / manifest.rows[0].path
    before = frame.stat()
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(frame)
    os.utime(frame, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    changed["frame content"] = plan_for(cfg, manifest, model_of(cfg)).keys["layer_norm2"]
    digests = {what: k.digest for what, k in changed.items()}
    assert key.digest not in digests.values(), digests
    assert len(set(digests.values())) == len(digests), digests


def test_computed_once_then_read_without_running_the_tower(dataset, tmp_path, monkeypatch):
    root, manifest = dataset
    cfg = config(root, tmp_path / "cache")
    model, lines = model_of(cfg), []
    plan = plan_for(cfg, manifest, model)
    first = load_feature_table(plan, model, FrameCache(manifest, 32), CPU, lines.append)
    assert any("extracting 18 samples" in line for line in lines)
    index = json.loads((Path(plan.store.location(plan.keys["layer_norm2"])) / INDEX_FILE).read_text())
    assert index["samples"] == 18 and len(index["shards"]) == 4  # shard_size 5
    assert index["material"] == plan.keys["layer_norm2"].material

    # The table holds the used layers of both views, exactly as the tower computes them.
    assert resolve_views("auto", True) == plan.views == ("identity", "hflip")
    frames = FrameCache(manifest, 32).stack(manifest.rows)
    direct = extract_views(model, frames, plan.views, ["layer_norm2"], 7, CPU, "fp32")["layer_norm2"]
    for i, row in enumerate(manifest.rows):
        assert torch.allclose(first.get(row.key, "hflip"), direct[i, 1][[0, 2]], atol=1e-5)
        assert torch.allclose(first.get(row.key), direct[i, 0][[0, 2]], atol=1e-5)

    def tower_must_not_run(*args, **kwargs):
        raise AssertionError("the tower ran although the cache is complete")

    monkeypatch.setattr(type(model), "extract_frozen_features", tower_must_not_run)
    lines.clear()
    second = load_feature_table(plan_for(cfg, manifest, model), model, FrameCache(manifest, 32), CPU, lines.append)
    assert not any("extracting" in line for line in lines)
    assert second.keys == first.keys and torch.equal(second.values, first.values)


def test_a_stale_folder_is_never_read(dataset, tmp_path):
    root, manifest = dataset
    cfg = config(root, tmp_path / "cache")
    old_model = model_of(cfg, seed=0)
    old_plan = plan_for(cfg, manifest, old_model)
    old = load_feature_table(old_plan, old_model, FrameCache(manifest, 32), CPU, lambda _: None)
    new_model = model_of(cfg, seed=1)  # another tower: another key
    new_plan = plan_for(cfg, manifest, new_model)
    old_dir = Path(old_plan.store.location(old_plan.keys["layer_norm2"]))
    new_dir = Path(new_plan.store.location(new_plan.keys["layer_norm2"]))
    assert old_dir != new_dir
    # Someone puts the old features where the new key's folder is: its index's material differs.
    new_dir.parent.mkdir(parents=True, exist_ok=True)
    os.rename(old_dir, new_dir)
    lines: list[str] = []
    fresh = load_feature_table(new_plan, new_model, FrameCache(manifest, 32), CPU, lines.append)
    assert any("stale index" in line and "not read" in line for line in lines)
    assert any("extracting 18 samples" in line for line in lines)
    frames = FrameCache(manifest, 32).stack(manifest.rows)
    direct = extract_views(new_model, frames, new_plan.views, ["layer_norm2"], 18, CPU, "fp32")["layer_norm2"]
    row = fresh.keys.index(manifest.rows[0].key)
    assert torch.allclose(fresh.values[row], direct[0][:, [0, 2]], atol=1e-5)
    assert not torch.allclose(fresh.values[row], old.values[old.keys.index(manifest.rows[0].key)], atol=1e-3)


def test_corrupted_shards_and_index_are_detected_and_recomputed(dataset, tmp_path):
    root, manifest = dataset
    cfg = config(root, tmp_path / "cache")
    model = model_of(cfg)
    plan = plan_for(cfg, manifest, model)
    good = load_feature_table(plan, model, FrameCache(manifest, 32), CPU, lambda _: None)
    folder = Path(plan.store.location(plan.keys["layer_norm2"]))
    shard = sorted(folder.glob("shard-00001-*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-7] ^= 0x40  # one flipped bit in the tensor bytes: still a parsable file
    shard.write_bytes(bytes(data))

    lines: list[str] = []
    again = load_feature_table(plan_for(cfg, manifest, model), model, FrameCache(manifest, 32), CPU, lines.append)
    assert any("shard-00001" in line and "corrupted" in line for line in lines), lines
    assert any("extracting 5 samples" in line for line in lines)  # only that shard
    assert torch.equal(again.values, good.values)
    # Rewritten whole; a recomputed shard whose bytes hash differently replaces the corrupted file.
    rewritten = sorted(folder.glob("shard-00001-*.safetensors"))
    assert len(rewritten) == 1 and rewritten[0].read_bytes() != bytes(data)

    (folder / INDEX_FILE).write_text('{"format": 1, "shards": [')  # a torn index
    lines.clear()
    third = load_feature_table(plan_for(cfg, manifest, model), model, FrameCache(manifest, 32), CPU, lines.append)
    assert any("unreadable index" in line for line in lines)
    assert torch.equal(third.values, good.values)
    assert json.loads((folder / INDEX_FILE).read_text())["samples"] == 18


def test_s3_cache_round_trip_and_corruption(dataset, s3_env, monkeypatch):
    from forgesweep.data import object_store

    root, manifest = dataset
    client = s3_env.client()
    client.create_bucket(Bucket="features")
    cfg = config(root, Path("unused"), features__root="s3://features/cache", features__shard_size=18)
    model = model_of(cfg)
    lines: list[str] = []
    first = load_feature_table(plan_for(cfg, manifest, model), model, FrameCache(manifest, 32), CPU, lines.append)
    key = plan_for(cfg, manifest, model).keys["layer_norm2"].digest
    names = sorted(o["Key"] for o in client.list_objects_v2(Bucket="features")["Contents"])
    assert len(names) == 2 and names[0] == f"cache/{key}/{INDEX_FILE}"
    assert names[1].startswith(f"cache/{key}/shard-00000-")
    lines.clear()
    second = load_feature_table(plan_for(cfg, manifest, model), model, FrameCache(manifest, 32), CPU, lines.append)
    assert not any("extracting" in line for line in lines) and torch.equal(second.values, first.values)
    client.put_object(Bucket="features", Key=names[1], Body=b"not a shard")
    monkeypatch.setattr(object_store, "_shared", None)  # a new process: URIs are resolved afresh
    lines.clear()
    third = load_feature_table(plan_for(cfg, manifest, model), model, FrameCache(manifest, 32), CPU, lines.append)
    assert any("corrupted" in line for line in lines) and torch.equal(third.values, first.values)


def test_a_model_without_a_frozen_tower_cannot_be_cached(dataset, tmp_path):
    from forgesweep.errors import ConfigError

    root, manifest = dataset
    cfg = config(root, tmp_path / "cache")
    lite = build_model("rsia_lite", {"preset": "tiny"})
    assert lite.frozen_feature_spec() is None
    with pytest.raises(ConfigError, match="no frozen tower"):
        plan_cache(cfg.features, cfg.data, manifest, manifest.rows, lite, ["layer_norm2"], "fp32")
    assert len(cached_rows([manifest.rows, manifest.rows[:3]])) == len(manifest.rows)
