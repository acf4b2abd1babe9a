"""Task sequences over a manifest, and the torch datasets with their decoded-frame cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import forgesweep.data.datasets as datasets_module
from forgesweep.config import TaskSpec
from forgesweep.data.datasets import FrameCache, FrameDataset
from forgesweep.data.manifest import read_manifest
from forgesweep.data.preprocess import load_image, to_model_input
from forgesweep.data.tasks import build_task_sequence
from forgesweep.errors import DataError

SIZE = 16


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8), "RGB").save(path, format="PNG")


def _solid(value: int, size: int = SIZE) -> np.ndarray:
    return np.full((size, size, 3), value, dtype=np.uint8)


def _build(root: Path, spec: dict[str, list[tuple[str, str, int]]]) -> Path:
    """``spec``: split -> [(method, dataset, pixel value)]; one video of one frame per entry."""
    lines = []
    for split, entries in spec.items():
        for i, (method, dataset, value) in enumerate(entries):
            video = f"{split}-{method}-{i}"
            rel = f"frames/{video}/000.png"
            _png(root / rel, _solid(value))
            lines.append(json.dumps({"path": rel, "label": int(method != "real"), "method": method,
                                     "dataset": dataset, "split": split, "video_id": video, "frame": 0}))
    path = root / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def manifest(tmp_path):
    entries = [("real", "synthetic", 0), ("real", "synthetic", 255), ("Deepfakes", "synthetic", 64),
               ("Face2Face", "synthetic", 128), ("Face2Face", "other", 192), ("FaceSwap", "synthetic", 32)]
    return read_manifest(_build(tmp_path, {"train": entries, "val": entries[:4], "test": entries}))


def _spec(name, methods=None, datasets=None) -> TaskSpec:
    return TaskSpec(name=name, methods=methods or ["real", name], datasets=datasets)


# --------------------------------------------------------------------------- tasks


def test_each_task_holds_reals_plus_its_method(manifest):
    tasks = build_task_sequence(manifest, [_spec("Deepfakes"), _spec("Face2Face"), _spec("FaceSwap")])
    assert [(t.index, t.name) for t in tasks] == [(0, "Deepfakes"), (1, "Face2Face"), (2, "FaceSwap")]
    for task in tasks:
        for split in ("train", "val", "test"):
            rows = getattr(task, split)
            assert all(r.split == split for r in rows)
            assert {r.method for r in rows} <= {"real", task.name}
        assert sorted(r.method for r in task.train).count("real") == 2
        assert {r.label for r in task.train} == {0, 1}
    assert [r.method for r in tasks[0].train] == ["real", "real", "Deepfakes"]  # manifest order kept
    assert [r.method for r in tasks[1].test] == ["real", "real", "Face2Face", "Face2Face"]
    assert tasks[2].val == tuple(r for r in manifest.rows if r.split == "val" and r.method == "real")
    # The reals are shared: the very same rows in every task.
    assert tasks[0].train[:2] == tasks[1].train[:2]


def test_dataset_filter_restricts_rows(manifest):
    (task,) = build_task_sequence(manifest, [_spec("Face2Face", datasets=["synthetic"])])
    assert all(r.dataset == "synthetic" for r in task.train)
    assert [r.method for r in task.train] == ["real", "real", "Face2Face"]


def test_specs_from_the_config_shorthand_work(manifest):
    from forgesweep.config import DataConfig

    data = DataConfig(sequence=["Deepfakes", {"name": "mixed", "methods": ["real", "Face2Face", "FaceSwap"]}])
    tasks = build_task_sequence(manifest, data.sequence)
    assert [t.name for t in tasks] == ["Deepfakes", "mixed"]
    assert {r.method for r in tasks[1].train} == {"real", "Face2Face", "FaceSwap"}


@pytest.mark.parametrize(
    "spec",
    [
        _spec("OnlyFakes", methods=["Deepfakes", "Face2Face"]),  # no reals
        _spec("OnlyReals", methods=["real"]),  # no fakes
        _spec("NeuralTextures"),  # method absent from the manifest: reals only
        _spec("Elsewhere", methods=["real", "Face2Face"], datasets=["other"]),  # filter drops reals
    ],
    ids=lambda s: s.name,
)
def test_task_with_one_class_is_a_data_error_naming_it(manifest, spec):
    with pytest.raises(DataError) as info:
        build_task_sequence(manifest, [_spec("Deepfakes"), spec])
    message = str(info.value)
    assert repr(spec.name) in message
    assert "Deepfakes" in message and "real" in message  # lists what the manifest holds


# --------------------------------------------------------------------------- datasets


def test_frame_dataset_returns_normalised_images_and_labels(manifest):
    rows = [r for r in manifest.rows if r.split == "train"]
    cache = FrameCache(manifest, image_size=SIZE)
    ds = FrameDataset(rows, cache)
    assert len(ds) == len(rows)
    values = [0, 255, 64, 128, 192, 32]
    for i, row in enumerate(rows):
        item = ds[i]
        image = item["images"]
        assert image.dtype == torch.float32 and image.shape == (3, SIZE, SIZE)
        assert image.min() >= -1.0 and image.max() <= 1.0
        expected = values[i] / 255.0 * 2.0 - 1.0
        assert torch.allclose(image, torch.full_like(image, expected), atol=1e-6)
        assert int(item["labels"]) == row.label and item["labels"].dtype == torch.long
        assert item["keys"] == row.key
    assert float(ds[0]["images"].min()) == -1.0 and float(ds[1]["images"].max()) == 1.0


def test_frames_are_resized_to_the_image_size(tmp_path):
    manifest = read_manifest(_build(tmp_path, {"train": [("real", "s", 10), ("FaceSwap", "s", 20)]}))
    cache = FrameCache(manifest, image_size=8)
    ds = FrameDataset(manifest.rows, cache)
    assert ds[0]["images"].shape == (3, 8, 8)
    assert cache.get(manifest.rows[0]).dtype == torch.uint8
    assert cache.stack([]).shape == (0, 3, 8, 8)


def test_channels_keep_their_colour(tmp_path):
    array = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    array[..., 0] = 255  # pure red
    array[:, : SIZE // 2, 2] = 255  # left half also blue
    _png(tmp_path / "f.png", array)
    line = {"path": "f.png", "label": 0, "method": "real", "dataset": "s", "split": "train", "video_id": "v"}
    (tmp_path / "manifest.jsonl").write_text(json.dumps(line) + "\n")
    manifest = read_manifest(tmp_path / "manifest.jsonl")
    image = FrameDataset(manifest.rows, FrameCache(manifest, SIZE))[0]["images"]
    assert torch.all(image[0] == 1.0) and torch.all(image[1] == -1.0)
    assert torch.all(image[2, :, : SIZE // 2] == 1.0) and torch.all(image[2, :, SIZE // 2:] == -1.0)


def test_horizontal_flip_is_a_seeded_mirror(tmp_path):
    array = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    array[:, :4] = 255  # bright left edge: a flip moves it to the right
    _png(tmp_path / "f.png", array)
    line = {"path": "f.png", "label": 0, "method": "real", "dataset": "s", "split": "train", "video_id": "v"}
    (tmp_path / "manifest.jsonl").write_text(json.dumps(line) + "\n")
    manifest = read_manifest(tmp_path / "manifest.jsonl")
    cache = FrameCache(manifest, SIZE)
    plain = FrameDataset(manifest.rows, cache)[0]["images"]

    def draws(seed):
        ds = FrameDataset(manifest.rows, cache, horizontal_flip=True, seed=seed)
        return [ds[0]["images"] for _ in range(24)]

    a, b = draws(3), draws(3)
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # same seed, same flips
    flipped = [torch.equal(x, plain.flip(-1)) for x in a]
    kept = [torch.equal(x, plain) for x in a]
    assert all(f or k for f, k in zip(flipped, kept))
    assert any(flipped) and any(kept)


def test_unreadable_png_is_a_data_error_naming_the_file(manifest):
    bad = manifest.rows[2]
    Path(manifest.resolve(bad)).write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.raises(DataError) as info:
        FrameDataset([manifest.rows[0], bad], FrameCache(manifest, SIZE))
    assert manifest.resolve(bad) in str(info.value)


def test_missing_frame_is_a_data_error_naming_the_file(manifest):
    gone = manifest.rows[3]
    Path(manifest.resolve(gone)).unlink()
    with pytest.raises(DataError) as info:
        FrameCache(manifest, SIZE).get(gone)
    assert manifest.resolve(gone) in str(info.value)


def test_frame_cache_decodes_each_file_once(manifest, monkeypatch):
    calls = []

    def counting(source, size):
        calls.append(str(source))
        return load_image(source, size)

    monkeypatch.setattr(datasets_module, "load_image", counting)
    tasks = build_task_sequence(manifest, [_spec("Deepfakes"), _spec("Face2Face")])
    cache = FrameCache(manifest, SIZE)
    first = FrameDataset(tasks[0].train, cache)
    second = FrameDataset(list(tasks[1].train) + list(tasks[0].train), cache)  # reals + replay
    for _ in range(3):
        [first[i] for i in range(len(first))]
        [second[i] for i in range(len(second))]
        cache.get(tasks[0].train[0])
    unique = {r.key for r in tasks[0].train} | {r.key for r in tasks[1].train}
    assert len(calls) == len(unique) == 5
    assert len(set(calls)) == len(calls)


def test_to_model_input_accepts_hwc_and_chw():
    hwc = np.random.default_rng(0).integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    a = to_model_input(hwc)
    b = to_model_input(torch.from_numpy(hwc).permute(2, 0, 1))
    assert a.shape == b.shape == (3, 4, 5)
    assert torch.equal(a, b)
    assert to_model_input(np.stack([hwc, hwc])).shape == (2, 3, 4, 5)
    with pytest.raises(TypeError):
        to_model_input(hwc.astype(np.float32))
