"""The synthetic benchmark: determinism, disjoint identities, a valid manifest, masks and videos."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from forgesweep.data.manifest import read_manifest
from forgesweep.data.synthetic import KNOWN_METHODS, METHODS, SyntheticSpec, generate_synthetic
from forgesweep.data.synthetic import generate as generate_module
from forgesweep.data.synthetic.faces import render_face, sample_identity, sample_poses
from forgesweep.data.video import read_video_frames
from forgesweep.errors import DataError

TINY = SyntheticSpec(seed=3, image_size=32, train_identities=3, val_identities=1, test_identities=2,
                     frames_per_video=2)


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    """One tiny benchmark shared by the read-only tests (generated in-process)."""
    root = tmp_path_factory.mktemp("synthetic") / "bench"
    generate_synthetic(root, TINY, workers=1)
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix in {".png", ".jsonl", ".json", ".mp4"}}


def _pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_layout_and_manifest_validate(bench):
    manifest = read_manifest(bench / "manifest.jsonl")  # checks every frame and mask exists
    per_split = 3 + 1 + 2
    assert len(manifest) == per_split * (1 + len(KNOWN_METHODS)) * TINY.frames_per_video
    assert {r.dataset for r in manifest.rows} == {"synthetic"}
    assert set(manifest.methods()) == {"real", *KNOWN_METHODS}
    assert SyntheticSpec.model_validate_json((bench / "spec.json").read_text()) == TINY
    assert not list(bench.parent.glob(".bench*")), "temporary folder left behind"
    for row in manifest.rows:
        assert re.fullmatch(r"[A-Za-z0-9_]+(/[A-Za-z0-9_]+)?", row.video_id), row.video_id
        assert row.path == f"frames/{row.video_id}/{row.frame:03d}.png"
        assert _pixels(manifest.resolve(row)).shape == (32, 32, 3)


def test_same_spec_gives_identical_bytes_in_parallel(bench, tmp_path):
    # Two worker processes, other order of completion: still byte-identical PNGs, spec, manifest
    # (and videos, though only the first three are promised).
    again = generate_synthetic(tmp_path / "again", TINY, workers=2).parent
    assert _files(again) == _files(bench)


def test_other_seed_differs(bench, tmp_path):
    other = generate_synthetic(tmp_path / "other", TINY.model_copy(update={"seed": 4, "write_videos": False}),
                               workers=1).parent
    a, b = _files(bench), _files(other)
    frames = [k for k in a if k.startswith("frames/")]
    assert sum(a[k] != b[k] for k in frames) == len(frames)


def test_identities_are_disjoint_across_splits(bench):
    manifest = read_manifest(bench / "manifest.jsonl")
    ids_of: dict[str, set[str]] = {s: set() for s in ("train", "val", "test")}
    for row in manifest.rows:
        if row.method == "real":
            people = [row.video_id]
        else:
            method, pair = row.video_id.split("/")
            assert method == row.method
            people = re.fullmatch(r"((?:train|val|test)_\d{3})_((?:train|val|test)_\d{3})", pair).groups()
        ids_of[row.split].update(people)
        assert all(p.startswith(row.split + "_") for p in people), row.video_id
    reals = {s: {r.video_id for r in manifest.rows if r.split == s and r.label == 0} for s in ids_of}
    assert [len(reals[s]) for s in ("train", "val", "test")] == [3, 1, 2]
    # Sources come from the target's split (a one-identity split borrows one spare source).
    assert ids_of["train"] == reals["train"] and ids_of["test"] == reals["test"]
    assert not (ids_of["train"] & ids_of["val"] or ids_of["train"] & ids_of["test"] or ids_of["val"] & ids_of["test"])


def test_fakes_have_nonempty_masks_and_reals_none(bench):
    manifest = read_manifest(bench / "manifest.jsonl")
    for row in manifest.rows:
        if row.label == 0:
            assert row.mask is None
            continue
        mask = np.asarray(Image.open(manifest.resolve_mask(row)))
        assert mask.shape == (32, 32) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        assert 0 < (mask == 255).mean() < 0.9, f"{row.path}: mask covers {(mask == 255).mean():.2f}"


@pytest.mark.parametrize("method", KNOWN_METHODS)
def test_each_method_changes_its_real_frame_inside_the_mask(bench, method):
    manifest = read_manifest(bench / "manifest.jsonl")
    real = {(r.video_id, r.frame): r for r in manifest.rows if r.label == 0}
    for row in manifest.rows:
        if row.method != method:
            continue
        target = re.match(r"[^/]+/((?:train|val|test)_\d{3})_", row.video_id).group(1)
        diff = np.abs(_pixels(manifest.resolve(row)) - _pixels(manifest.resolve(real[(target, row.frame)]))).mean(2)
        inside = np.asarray(Image.open(manifest.resolve_mask(row))) == 255
        # Outside the mask only the camera differs (independent noise and JPEG); inside, the forgery.
        assert diff[inside].mean() > 6.0 and diff[inside].mean() > 2.0 * diff[~inside].mean(), row.path


def test_videos_are_readable_with_the_right_frames(bench):
    manifest = read_manifest(bench / "manifest.jsonl")
    videos = sorted({r.video_id for r in manifest.rows})
    assert len(videos) == 6 * (1 + len(KNOWN_METHODS))
    for video_id in videos:
        frames = read_video_frames(bench / "videos" / f"{video_id}.mp4")
        assert frames.shape == (TINY.frames_per_video, 32, 32, 3), video_id
    # The clip holds the same pictures as the PNG frames (up to lossy video coding).
    row = next(r for r in manifest.rows if r.method == "FaceSwap" and r.frame == 1)
    clip = read_video_frames(bench / "videos" / f"{row.video_id}.mp4", indices=[1])[0]
    assert np.abs(clip.astype(np.int16) - _pixels(manifest.resolve(row))).mean() < 8


def test_forgery_functions_return_image_and_binary_mask():
    rng = np.random.default_rng(0)
    a, b = sample_identity(rng), sample_identity(rng)
    pose = sample_poses(rng, 1)[0]
    target, source = render_face(a, pose, 48), render_face(b, pose, 48)
    for name, (fn, _) in METHODS.items():
        fake, mask = fn(target, source, np.random.default_rng(1))
        assert fake.shape == (48, 48, 3) and fake.dtype == np.float32 and 0 <= fake.min() <= fake.max() <= 1, name
        assert mask.shape == (48, 48) and mask.dtype == np.uint8 and mask.max() == 255, name


def test_spec_validation():
    with pytest.raises(ValidationError, match="unknown forgery method 'FaceShifter'"):
        SyntheticSpec(methods=["Deepfakes", "FaceShifter"])
    with pytest.raises(ValidationError, match="extra"):
        SyntheticSpec(image_sise=64)
    with pytest.raises(ValidationError, match="jpeg_quality_min"):
        SyntheticSpec(jpeg_quality_min=90, jpeg_quality_max=80)
    with pytest.raises(ValidationError):
        SyntheticSpec(image_size=16)
    assert SyntheticSpec(methods=["FaceSwap"]).methods == ["FaceSwap"]


def test_refuses_to_overwrite_unless_asked(tmp_path):
    spec = TINY.model_copy(update={"write_videos": False, "methods": ["Deepfakes"]})
    out = tmp_path / "b"
    generate_synthetic(out, spec, workers=1)
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="already exists"):
        generate_synthetic(out, spec, workers=1)
    assert (out / "keep.txt").exists()
    generate_synthetic(out, spec, workers=1, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "manifest.jsonl").is_file()


def test_interrupted_run_leaves_no_benchmark(tmp_path, monkeypatch):
    real_make = generate_module._make_video
    calls = []

    def failing(job):
        calls.append(job)
        if len(calls) == 4:
            raise KeyboardInterrupt  # the user pressing Ctrl-C mid-run
        return real_make(job)

    monkeypatch.setattr(generate_module, "_make_video", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic(tmp_path / "b", TINY.model_copy(update={"write_videos": False}), workers=1)
    assert list(tmp_path.iterdir()) == []


def test_unguarded_script_falls_back_to_one_process(tmp_path):
    # A script without `if __name__ == "__main__"` breaks spawned workers; it must still finish.
    script = tmp_path / "make.py"
    script.write_text(
        "from forgesweep.data.synthetic import SyntheticSpec, generate_synthetic\n"
        f"generate_synthetic({str(tmp_path / 'b')!r}, SyntheticSpec(image_size=32, train_identities=2,"
        " val_identities=1, test_identities=2, frames_per_video=1, write_videos=False, methods=['FaceSwap']),"
        " workers=2)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "generating in one process" in done.stderr
    assert len(read_manifest(tmp_path / "b" / "manifest.jsonl")) == 5 * 2
