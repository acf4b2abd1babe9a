"""Synthetic dataset trees: real-dataset names and split files, determinism, and the two real-data
protocol configs building their task sequences over the imported trees."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from forgesweep.config import load_config
from forgesweep.data.importers import run_import
from forgesweep.data.manifest import read_manifest, write_manifest
from forgesweep.data.synthetic.dataset_trees import TreeSpec, write_dataset_tree
from forgesweep.data.tasks import build_task_sequence
from forgesweep.data.video import read_video_frames
from forgesweep.errors import DataError

CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"
SPEC = TreeSpec(seed=2, frames_per_video=2, frame_size=48, face_size=32, ffpp_pairs=3,
                celebdf_identities=3, youtube_reals=1, dfdc_identities=3)


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("trees")
    return {kind: write_dataset_tree(kind, base / kind, SPEC) for kind in ("ffpp", "celebdf", "dfdc")}


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_ffpp_tree_has_the_download_layout(trees):
    files = _files(trees["ffpp"])
    assert "original_sequences/youtube/c23/videos/000.mp4" in files
    assert "manipulated_sequences/NeuralTextures/c23/videos/001_000.mp4" in files
    assert "manipulated_sequences/Face2Face/masks/videos/000_001.mp4" in files
    assert {f for f in files if f.startswith("splits/")} == {"splits/train.json", "splits/val.json", "splits/test.json"}
    pairs = [p for s in ("train", "val", "test") for p in json.loads((trees["ffpp"] / f"splits/{s}.json").read_text())]
    assert sorted(pairs) == [["000", "001"], ["002", "003"], ["004", "005"]]
    assert len([f for f in files if f.endswith(".mp4")]) == 6 + 6 * 4 + 6 * 4
    frames = read_video_frames(trees["ffpp"] / "original_sequences/youtube/c23/videos/000.mp4")
    assert frames.shape == (2, 48, 48, 3)


def test_fakes_keep_their_originals_scene_and_masks_mark_the_face(trees):
    root = trees["ffpp"]
    real = read_video_frames(root / "original_sequences/youtube/c23/videos/000.mp4").astype(int)
    fake = read_video_frames(root / "manipulated_sequences/Deepfakes/c23/videos/000_001.mp4").astype(int)
    mask = read_video_frames(root / "manipulated_sequences/Deepfakes/masks/videos/000_001.mp4")[..., 0] > 128
    assert mask.any() and not mask.all()
    # Outside the manipulated region the fake is the original video (up to the codec's loss).
    assert np.abs(real - fake)[~mask].mean() < 6 < np.abs(real - fake)[mask].mean()


def test_celebdf_and_dfdc_trees(trees):
    files = _files(trees["celebdf"])
    assert {"Celeb-real/id0_0000.mp4", "Celeb-synthesis/id0_id1_0000.mp4", "YouTube-real/00000.mp4",
            "List_of_testing_videos.txt"} <= set(files)
    listing = (trees["celebdf"] / "List_of_testing_videos.txt").read_text().split("\n")
    assert "1 Celeb-real/id2_0000.mp4" in listing and "0 Celeb-synthesis/id2_id0_0000.mp4" in listing
    index = json.loads((trees["dfdc"] / "dataset.json").read_text())
    assert all((trees["dfdc"] / rel).is_file() for rel in index)
    assert {rel.split("/")[0] for rel in index} == {"original_videos", "method_A", "method_B"}
    assert {v["label"] for v in index.values()} == {"real", "fake"} and {v["set"] for v in index.values()} == {"train", "test"}


def test_same_spec_same_bytes_and_no_overwrite(trees, tmp_path):
    again = write_dataset_tree("dfdc", tmp_path / "dfdc", SPEC)
    for rel in _files(trees["dfdc"]):
        assert (again / rel).read_bytes() == (trees["dfdc"] / rel).read_bytes(), rel
    with pytest.raises(DataError, match="already exists and is not empty"):
        write_dataset_tree("dfdc", again, SPEC)
    with pytest.raises(DataError, match="unknown dataset tree kind 'dfd'"):
        write_dataset_tree("dfd", tmp_path / "x")  # type: ignore[arg-type]
    assert not list(tmp_path.glob(".*partial*"))


@pytest.fixture(scope="module")
def imported(trees, tmp_path_factory) -> Path:
    """The three trees imported and merged into one video-level manifest."""
    base = tmp_path_factory.mktemp("imported")
    rows = []
    for name, kind in (("ffpp", "ffpp"), ("dfdc", "dfdc"), ("celebdf", "celebdf")):
        rows += run_import(name, trees[kind], base / f"{name}.jsonl").rows
    return write_manifest(rows, base / "all.jsonl")


def test_method_incremental_config_builds_its_tasks(imported):
    cfg = load_config(CONFIGS / "ffpp_method_incremental.yaml", [f"data.manifest={imported}"])
    assert cfg.data.generate_if_missing is False
    tasks = build_task_sequence(read_manifest(imported), cfg.data.sequence)
    assert [t.name for t in tasks] == ["Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"]
    for task in tasks:
        for split in (task.train, task.test):
            assert {r.dataset for r in split} == {"FF++"} and {r.method for r in split} == {"real", task.name}
        assert len(task.train) == 2 + 2 and len(task.test) == 2 + 2  # one pair: 2 reals, 2 fakes


def test_dataset_incremental_config_builds_its_tasks(imported):
    cfg = load_config(CONFIGS / "dataset_incremental.yaml", [f"data.manifest={imported}"])
    tasks = build_task_sequence(read_manifest(imported), cfg.data.sequence)
    assert [t.name for t in tasks] == ["FF++", "DFDC-P", "CDF2"]
    expected = {"FF++": {"real", "Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"},
                "DFDC-P": {"real", "method_A", "method_B"}, "CDF2": {"real", "Celeb-synthesis"}}
    for task in tasks:
        assert {r.dataset for r in task.train + task.test} == {task.name}
        assert {r.method for r in task.train} == expected[task.name]
        assert {r.label for r in task.test} == {0, 1}
    video_ids = {r.video_id for t in tasks for r in t.train} & {r.video_id for t in tasks for r in t.test}
    assert not video_ids  # no video crosses train and test
