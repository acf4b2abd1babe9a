"""The preprocessing job on the session's Ray head: imported synthetic trees in, frames and a
frame-level manifest out; resuming, recipes, bad videos (each case), S3 in and out, and the job
script joining the cluster as ``ray job submit -- python jobs/preprocess.py`` runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from forgesweep.config import load_config
from forgesweep.data import object_store
from forgesweep.data.importers import BadInput, run_import
from forgesweep.data.manifest import read_manifest, write_manifest
from forgesweep.data.prepare import prepare_data
from forgesweep.data.synthetic.dataset_trees import TreeSpec, write_dataset_tree
from forgesweep.errors import DataError
from forgesweep.preprocessing import PreprocessSpec, run_preprocess, video_tasks
from forgesweep.preprocessing.video_task import process_video

pytestmark = [pytest.mark.ray]

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "jobs" / "configs"
TREE = TreeSpec(seed=4, frames_per_video=2, frame_size=48, face_size=32, ffpp_pairs=3,
                celebdf_identities=3, youtube_reals=1, dfdc_identities=3)
SPEC = PreprocessSpec(num_frames=2, image_size=32, detector="haar", progress_every_s=0)


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> dict[str, Path]:
    """Video-level manifests of the three synthetic trees (and the trees' folder)."""
    base = tmp_path_factory.mktemp("pre")
    out = {}
    for name in ("ffpp", "dfdc", "celebdf"):
        root = write_dataset_tree(name, base / "trees" / name, TREE)
        out[name] = Path(run_import(name, root, base / f"{name}.jsonl").manifest)
    return out


@pytest.fixture(scope="module")
def preprocessed(imported, ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("frames") / "all"
    lines: list[str] = []
    summary = run_preprocess([str(p) for p in imported.values()], str(out), SPEC, echo=lines.append)
    return summary, out, lines


def test_frames_masks_and_manifest(preprocessed, imported):
    summary, out, lines = preprocessed
    videos = sum(len(read_manifest(p, check_files=False)) for p in imported.values())
    manifest = read_manifest(out / "manifest.jsonl")  # every frame and mask file exists
    assert summary.videos == summary.processed == videos and summary.already_done == 0
    assert len(manifest) == summary.rows == summary.frames == 2 * videos
    assert {r.frame for r in manifest.rows} == {0, TREE.frames_per_video - 1}  # evenly spaced, ends included
    assert {r.dataset for r in manifest.rows} == {"FF++", "DFDC-P", "CDF2"}
    ffpp_fakes = [r for r in manifest.rows if r.dataset == "FF++" and r.label == 1]
    assert ffpp_fakes and all(r.mask for r in ffpp_fakes)
    assert not any(r.mask for r in manifest.rows if r.dataset != "FF++")
    with Image.open(manifest.resolve(manifest.rows[0])) as img:
        assert img.size == (32, 32)
    mask = np.asarray(Image.open(manifest.resolve_mask(ffpp_fakes[0])))
    assert set(np.unique(mask)) <= {0, 255} and mask.shape == (32, 32)
    assert sum(summary.crops.values()) == summary.frames
    assert any(f"{videos}/{videos} videos" in line and "frames/s" in line for line in lines)
    recipe = json.loads((out / "preprocess.json").read_text())
    assert recipe["recipe"] == SPEC.output_key() and recipe["frames"] == len(manifest)


def test_protocol_configs_run_over_the_preprocessed_manifest(preprocessed):
    _, out, _ = preprocessed
    for name, names in (("ffpp_method_incremental", ["Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"]),
                        ("dataset_incremental", ["FF++", "DFDC-P", "CDF2"])):
        cfg = load_config(CONFIGS / f"{name}.yaml", [f"data.manifest={out / 'manifest.jsonl'}", "data.image_size=32"])
        manifest, tasks = prepare_data(cfg, echo=lambda _: None)  # reads and verifies every frame
        assert [t.name for t in tasks] == names
        assert all({r.label for r in t.train} == {0, 1} for t in tasks)


def test_rerun_skips_finished_videos(preprocessed, imported):
    summary, out, _ = preprocessed
    before = (out / "manifest.jsonl").read_bytes()
    lines: list[str] = []
    again = run_preprocess([str(p) for p in imported.values()], str(out), SPEC, echo=lines.append)
    assert again.processed == 0 and again.already_done == summary.videos and again.frames == 0
    assert f"{summary.videos} already done (skipped), 0 to process" in lines[0]
    assert (out / "manifest.jsonl").read_bytes() == before
    part = next((out / "parts").rglob("*.jsonl"))
    part.unlink()  # as if the run had been killed before this video finished
    resumed = run_preprocess([str(p) for p in imported.values()], str(out), SPEC, echo=lambda _: None)
    assert resumed.processed == 1 and resumed.already_done == summary.videos - 1
    assert (out / "manifest.jsonl").read_bytes() == before


def test_another_recipe_is_refused(preprocessed, imported):
    _, out, _ = preprocessed
    with pytest.raises(DataError, match="another recipe \\(num_frames: 2 then, 3 now\\)"):
        run_preprocess([str(imported["dfdc"])], str(out), SPEC.model_copy(update={"num_frames": 3}))


def test_bad_videos_stop_before_the_manifest_or_are_skipped(imported, ray_session, tmp_path):
    rows = read_manifest(imported["celebdf"]).rows
    inputs = tmp_path / "cdf.jsonl"
    copies = []
    for i, row in enumerate(rows):  # private copies of the videos, to damage
        dest = tmp_path / "videos" / f"{i}.mp4"
        dest.parent.mkdir(exist_ok=True)
        shutil.copy(row.path, dest)
        copies.append(row.model_copy(update={"path": str(dest)}))
    write_manifest(copies, inputs)
    out = tmp_path / "frames"
    corrupt, empty, missing = (Path(copies[k].path) for k in (0, 1, 2))
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated garbage" * 4)
    # 1. Undecodable: found by the Ray tasks; the other videos finish and stay done, no manifest.
    with pytest.raises(BadInput) as info:
        run_preprocess([str(inputs)], str(out), SPEC, echo=lambda _: None)
    assert [p.path for p in info.value.problems] == [str(corrupt)]
    assert "cannot read video" in info.value.problems[0].reason
    assert "done (kept for the next run), 1 failed" in str(info.value)
    assert not (out / "manifest.jsonl").exists() and len(list((out / "parts").rglob("*.jsonl"))) == len(rows) - 1
    # 2. Empty and missing files (a manifest row pointing at a missing file): found before any work.
    empty.write_bytes(b"")
    missing.unlink()
    with pytest.raises(BadInput) as info:
        run_preprocess([str(inputs)], str(out), SPEC, echo=lambda _: None)
    assert {(p.path, p.reason) for p in info.value.problems} == {(str(empty), "empty file (0 bytes)"),
                                                                (str(missing), "file not found")}
    assert not (out / "manifest.jsonl").exists()
    # 3. --skip-bad: the bad ones are left out, counted and listed.
    lines: list[str] = []
    summary = run_preprocess([str(inputs)], str(out), SPEC.model_copy(update={"skip_bad": True}), echo=lines.append)
    assert len(summary.skipped) == 3 and summary.rows == 2 * (len(rows) - 3)
    assert len(read_manifest(out / "manifest.jsonl")) == summary.rows
    assert any("3 bad (skipped)" in line for line in lines)
    assert {s["path"] for s in json.loads((out / "preprocess.json").read_text())["skipped"]} == {
        str(corrupt), str(empty), str(missing)}


def test_inputs_must_be_video_manifests(preprocessed, tmp_path):
    _, out, _ = preprocessed
    with pytest.raises(DataError, match="manifest not found"):
        run_preprocess([str(tmp_path / "nope.jsonl")], str(tmp_path / "o"), SPEC)
    with pytest.raises(DataError, match="is not a video .* preprocessing reads video-level manifests"):
        run_preprocess([str(out / "manifest.jsonl")], str(tmp_path / "o"), SPEC)


def test_s3_inputs_and_output(imported, s3_env, tmp_path, monkeypatch):
    """Videos and manifest in S3, frames written to S3; a vanished object is named."""
    s3 = s3_env.client()
    s3.create_bucket(Bucket="media")
    rows = read_manifest(imported["dfdc"]).rows[:3]
    remote = []
    for i, row in enumerate(rows):
        s3.upload_file(row.path, "media", f"dfdc/{i}.mp4")
        remote.append(row.model_copy(update={"path": f"s3://media/dfdc/{i}.mp4"}))
    write_manifest(remote, tmp_path / "m.jsonl")
    s3.upload_file(str(tmp_path / "m.jsonl"), "media", "dfdc/videos.jsonl")
    spec = SPEC.model_copy(update={"detector": "none"})
    out = "s3://media/frames"
    # Each video as a Ray task would do it (in this process, which has the S3 test endpoint).
    for task in video_tasks(["s3://media/dfdc/videos.jsonl"]):
        assert process_video(task, spec, out).ok
    summary = run_preprocess(["s3://media/dfdc/videos.jsonl"], out, spec, echo=lambda _: None)
    assert summary.already_done == 3 and summary.processed == 0  # nothing left for Ray: merged from S3 parts
    manifest = read_manifest(f"{out}/manifest.jsonl")
    assert len(manifest) == 6 and manifest.resolve(manifest.rows[0]).startswith("s3://media/frames/frames/DFDC-P/")
    s3.delete_object(Bucket="media", Key="dfdc/1.mp4")  # the object vanished
    monkeypatch.setattr(object_store, "_shared", None)  # a fresh worker process: nothing resolved yet
    outcome = process_video(video_tasks(["s3://media/dfdc/videos.jsonl"])[1], spec, out)
    assert outcome.error_path == "s3://media/dfdc/1.mp4" and "no object 'dfdc/1.mp4' in bucket 'media'" in outcome.error
    with pytest.raises(BadInput) as info:
        run_preprocess(["s3://media/dfdc/videos.jsonl"], out, spec, echo=lambda _: None)
    assert [p.path for p in info.value.problems] == ["s3://media/dfdc/1.mp4"]


def test_job_script_joins_the_cluster(ray_head, imported, tmp_path):
    """``jobs/preprocess.py`` as ``ray job submit`` runs it: a driver process with RAY_ADDRESS set
    (the head's client environment), in the repository root."""
    rows = read_manifest(imported["dfdc"]).rows[:3]
    write_manifest(rows, tmp_path / "three.jsonl")
    out = tmp_path / "job-frames"
    cmd = [sys.executable, "jobs/preprocess.py", str(tmp_path / "three.jsonl"), "--out", str(out),
           "--num-frames", "2", "--size", "24", "--detector", "none"]
    done = subprocess.run(cmd, env=ray_head.env, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"joined Ray cluster at {ray_head.address}" in done.stdout
    assert "3/3 videos" in done.stdout and f"manifest: {out / 'manifest.jsonl'} (6 frames)" in done.stdout
    assert len(read_manifest(out / "manifest.jsonl")) == 6
