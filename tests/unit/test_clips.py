"""Clip datasets (frame rows, video rows, MP4s beside frames) and clip support in the training loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from forgesweep.data import clips as clips_module
from forgesweep.data.clips import ClipReader, ClipSampling, clip_indices, clip_starts, is_video_row
from forgesweep.data.datasets import FrameCache
from forgesweep.data.manifest import Manifest, ManifestRow
from forgesweep.data.preprocess import to_model_input
from forgesweep.data.video import write_video
from forgesweep.errors import DataError
from forgesweep.models.output import DetectorOutput
from forgesweep.train import loop

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 16  # frame size the tests decode to


def _frame(level: int) -> np.ndarray:
    """A flat grey frame with level 20 * ``level``: identifiable after lossy video coding."""
    return np.full((SIZE, SIZE, 3), 20 * level, dtype=np.uint8)


def _level(frame: torch.Tensor) -> int:
    return int(round(frame.float().mean().item() / 20.0))


def _write_video_dataset(root: Path, videos: dict[str, tuple[int, int]], as_files: bool = False,
                         frames_in_reverse: bool = False) -> Manifest:
    """Videos ``{video_id: (label, n_frames)}``; frame ``t`` of video ``v`` has level ``t + offset``.

    Writes PNG frames (rows per frame) and ``videos/<id>.mp4``; with ``as_files`` the manifest
    holds one video-file row per video instead of frame rows.
    """
    rows = []
    for offset, (vid, (label, n)) in enumerate(videos.items()):
        frames = [_frame(t + offset) for t in range(n)]
        write_video(frames, root / "videos" / f"{vid}.mp4")
        method = "Deepfakes" if label else "real"
        if as_files:
            rows.append(ManifestRow(path=f"videos/{vid}.mp4", label=label, method=method, dataset="t",
                                    split="train", video_id=vid))
            continue
        order = range(n - 1, -1, -1) if frames_in_reverse else range(n)
        for t in order:
            rel = f"frames/{vid}/{t:03d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(frames[t]).save(root / rel)
            rows.append(ManifestRow(path=rel, label=label, method=method, dataset="t", split="train",
                                    video_id=vid, frame=t))
    return Manifest(rows, root)


def _reader(manifest: Manifest, clip_length: int, **sampling) -> ClipReader:
    return ClipReader(FrameCache(manifest, SIZE), clip_length, ClipSampling(**sampling))


# --------------------------------------------------------------------------- clip geometry


@pytest.mark.parametrize("frames, length, stride, count, expected", [
    (8, 4, 1, 3, [0, 2, 4]),
    (8, 4, 1, 10, [0, 1, 2, 3, 4]),  # no more clips than distinct starts
    (8, 4, 2, 2, [0, 1]),  # a clip spans 7 frames
    (8, 4, 1, 1, [0]),
    (3, 4, 1, 3, [0]),  # shorter than a clip: one clip
    (4, 4, 1, 3, [0]),
])
def test_clip_starts_are_evenly_spaced_and_distinct(frames, length, stride, count, expected):
    assert clip_starts(frames, length, stride, count) == expected


def test_clip_indices_step_by_stride_and_repeat_the_last_frame_of_a_short_video():
    assert clip_indices(10, 2, 4, 2) == [2, 4, 6, 8]
    assert clip_indices(3, 0, 5, 1) == [0, 1, 2, 2, 2]
    assert clip_indices(5, 0, 3, 3) == [0, 3, 4]


def test_video_rows_are_recognised_by_suffix():
    row = dict(label=0, method="real", dataset="d", split="train", video_id="v")
    assert is_video_row(ManifestRow(path="a/b.MP4", **row))
    assert is_video_row(ManifestRow(path="a/b.webm", **row))
    assert not is_video_row(ManifestRow(path="a/b.png", **row))


def test_clip_sampling_rejects_unknown_suffix_and_keys():
    with pytest.raises(ValueError, match="video_suffix"):
        ClipSampling(video_suffix=".gif")
    with pytest.raises(ValueError, match="clips_per_vide"):
        ClipSampling(clips_per_vide=2)


# --------------------------------------------------------------------------- frame rows


def test_frame_rows_give_clips_in_frame_order(tmp_path):
    manifest = _write_video_dataset(tmp_path, {"a": (0, 6), "b": (1, 5)}, frames_in_reverse=True)
    dataset = _reader(manifest, 3, train_clips_per_video=2).dataset(manifest.rows, train=True)
    assert len(dataset) == 4
    assert [dataset.clip_id(i) for i in range(4)] == ["a@0", "a@3", "b@0", "b@2"]
    sample = dataset[1]
    assert sample["images"].shape == (3, 3, SIZE, SIZE) and sample["images"].dtype == torch.float32
    assert sample["keys"] == "a@3" and sample["video_id"] == "a" and int(sample["labels"]) == 0
    # Frame t of video a has level t; clip a@3 holds frames 3, 4, 5 although rows are reversed.
    raw = [_level((img * 0.5 + 0.5) * 255) for img in sample["images"]]
    assert raw == [3, 4, 5]
    assert int(dataset[3]["labels"]) == 1 and [_level((i * 0.5 + 0.5) * 255) for i in dataset[3]["images"]] == [3, 4, 5]


def test_images_are_normalised_like_image_frames(tmp_path):
    manifest = _write_video_dataset(tmp_path, {"a": (0, 4)})
    reader = _reader(manifest, 4)
    sample = reader.dataset(manifest.rows, train=False)[0]
    expected = to_model_input(torch.stack([reader.cache.get(r) for r in manifest.rows]))
    assert torch.equal(sample["images"], expected)


def test_eval_and_train_take_their_own_number_of_clips(tmp_path):
    manifest = _write_video_dataset(tmp_path, {"a": (0, 8)})
    reader = _reader(manifest, 4, train_clips_per_video=5, eval_clips_per_video=2)
    assert len(reader.dataset(manifest.rows, train=True)) == 5
    assert len(reader.dataset(manifest.rows, train=False)) == 2


def test_flip_mirrors_every_frame_of_a_clip_alike(tmp_path):
    manifest = _write_video_dataset(tmp_path, {"a": (0, 4)})
    reader = _reader(manifest, 4)
    frames = torch.stack([reader.cache.get(r) for r in manifest.rows]).clone()
    frames[:, :, :, : SIZE // 2] = 255  # left half white in every frame (the right is grey)
    for r, f in zip(manifest.rows, frames):
        reader.cache._frames[r.key] = f
    flipped = [reader.dataset(manifest.rows, train=True, horizontal_flip=True, seed=s)[0]["images"]
               for s in range(8)]
    seen = {bool((clip[..., : SIZE // 2] == 1).all()) for clip in flipped}
    assert seen == {True, False}  # some clips flipped, some not
    for clip in flipped:
        left_white = (clip[..., : SIZE // 2] == 1).all(dim=(1, 2, 3))
        assert left_white.all() or not left_white.any()  # never a clip with mixed orientations


def test_replayed_frame_keys_bring_back_their_whole_video(tmp_path):
    manifest = _write_video_dataset(tmp_path, {"a": (0, 4), "b": (1, 4)})
    reader = _reader(manifest, 2)
    one_frame = [next(r for r in manifest.rows if r.video_id == "b" and r.frame == 2)]
    whole = reader.whole_videos(one_frame + one_frame)
    assert [r.frame for r in whole] == [0, 1, 2, 3] and {r.video_id for r in whole} == {"b"}
    dataset = reader.dataset(one_frame, train=False)
    assert {dataset[i]["video_id"] for i in range(len(dataset))} == {"b"}


def test_a_video_with_both_labels_is_a_data_error(tmp_path):
    manifest = _write_video_dataset(tmp_path, {"a": (0, 2)})
    bad = ManifestRow(path="frames/a/009.png", label=1, method="Deepfakes", dataset="t", split="train",
                      video_id="a", frame=9)
    mixed = Manifest(manifest.rows + [bad], tmp_path)
    with pytest.raises(DataError, match="'a'.*both"):
        _reader(mixed, 2).dataset(mixed.rows, train=True)


# --------------------------------------------------------------------------- videos through decord


def test_video_file_rows_are_decoded_with_decord_by_index(tmp_path, monkeypatch):
    manifest = _write_video_dataset(tmp_path, {"a": (0, 9), "b": (1, 3)}, as_files=True)
    requested = []
    real_read = clips_module.read_video_frames

    def spy(path, indices=None, num_frames=None):
        requested.append((Path(path).name, list(indices)))
        return real_read(path, indices=indices, num_frames=num_frames)

    monkeypatch.setattr(clips_module, "read_video_frames", spy)
    reader = _reader(manifest, 2, stride=2, train_clips_per_video=2)
    dataset = reader.dataset(manifest.rows, train=True)
    # a: 9 frames, clips of frames (0, 2) and (6, 8): only those four frames are decoded.
    # b: 3 frames, clip starts 0 (frames 0, 2).
    assert requested == [("a.mp4", [0, 2, 6, 8]), ("b.mp4", [0, 2])]
    assert [dataset.clip_id(i) for i in range(len(dataset))] == ["a@0", "a@6", "b@0"]
    levels = [[_level((f * 0.5 + 0.5) * 255) for f in dataset[i]["images"]] for i in range(3)]
    assert levels == [[0, 2], [6, 8], [1, 3]]  # video b's frame t has level t + 1
    # A second dataset over the same videos decodes nothing again.
    reader.dataset(manifest.rows, train=True)
    assert len(requested) == 2


def test_short_video_repeats_its_last_frame(tmp_path):
    manifest = _write_video_dataset(tmp_path, {"a": (0, 3)}, as_files=True)
    dataset = _reader(manifest, 5).dataset(manifest.rows, train=True)
    assert len(dataset) == 1
    assert [_level((f * 0.5 + 0.5) * 255) for f in dataset[0]["images"]] == [0, 1, 2, 2, 2]


def test_source_videos_reads_the_mp4_beside_the_frames(tmp_path, monkeypatch):
    manifest = _write_video_dataset(tmp_path, {"a": (0, 4)})
    reader = _reader(manifest, 4, source="videos")
    video = reader.videos(manifest.rows)[0]
    assert video.file == str(tmp_path / "videos" / "a.mp4") and video.num_frames == 4
    from_video = reader.dataset(manifest.rows, train=False)[0]["images"]
    from_frames = _reader(manifest, 4).dataset(manifest.rows, train=False)[0]["images"]
    assert (from_video - from_frames).abs().mean() < 0.05  # the same frames up to H.264's loss
    (tmp_path / "videos" / "a.mp4").unlink()
    with pytest.raises(DataError, match="a.mp4.*source: frames"):
        _reader(manifest, 4, source="videos").dataset(manifest.rows, train=False)


def test_video_file_and_frame_rows_of_one_video_are_a_data_error(tmp_path):
    frames = _write_video_dataset(tmp_path, {"a": (0, 2)})
    file_row = ManifestRow(path="videos/a.mp4", label=0, method="real", dataset="t", split="train", video_id="a")
    mixed = Manifest(frames.rows + [file_row], tmp_path)
    with pytest.raises(DataError, match="'a'.*video-file"):
        _reader(mixed, 2).videos(mixed.rows)


def test_unreadable_video_is_a_data_error_naming_it(tmp_path):
    (tmp_path / "v.mp4").write_bytes(b"not a video")
    row = ManifestRow(path="v.mp4", label=0, method="real", dataset="t", split="train", video_id="v")
    manifest = Manifest([row], tmp_path)
    with pytest.raises(DataError, match="v.mp4"):
        _reader(manifest, 2).dataset(manifest.rows, train=True)


# --------------------------------------------------------------------------- the loop


class _MeanPixel(torch.nn.Module):
    """A stand-in clip model: logit = 10 x the clip's mean pixel, so every score is known."""

    input_kind = "clip"

    def forward(self, clips):
        logits = clips.mean(dim=(1, 2, 3, 4)) * 10
        return DetectorOutput(logits=logits, features={}, embedding=logits[:, None])


def test_video_probability_is_the_sigmoid_of_the_mean_clip_logit(tmp_path):
    manifest = _write_video_dataset(tmp_path, {"a": (0, 6), "b": (1, 3)})
    reader = _reader(manifest, 2, eval_clips_per_video=3)
    probs = loop.predict_video_probs(_MeanPixel(), manifest.rows, reader, batch_size=4, device=torch.device("cpu"))
    assert set(probs) == {"a", "b"}
    dataset = reader.dataset(manifest.rows, train=False)
    for vid in ("a", "b"):
        logits = [float(dataset[i]["images"].mean() * 10) for i in range(len(dataset)) if dataset[i]["video_id"] == vid]
        assert len(logits) == (3 if vid == "a" else 2)
        assert probs[vid] == pytest.approx(torch.sigmoid(torch.tensor(sum(logits) / len(logits))).item(), abs=1e-6)


def _tiny_benchmark(root: Path):
    from forgesweep.data.manifest import read_manifest
    from forgesweep.data.synthetic.generate import SyntheticSpec, generate_synthetic

    spec = SyntheticSpec(methods=["Deepfakes"], train_identities=2, val_identities=1, test_identities=2,
                         frames_per_video=4, image_size=32)
    return read_manifest(generate_synthetic(root, spec, workers=1))


def test_loop_trains_styleflow_on_mp4_clips_and_scores_videos(tmp_path, monkeypatch):
    from forgesweep.config import validate_config

    manifest = _tiny_benchmark(tmp_path / "data")
    decoded = []
    real_read = clips_module.read_video_frames
    monkeypatch.setattr(clips_module, "read_video_frames",
                        lambda path, indices=None, num_frames=None: decoded.append(path) or real_read(path, indices))
    monkeypatch.setattr(loop, "clip_sampling", lambda cfg: ClipSampling(source="videos", train_clips_per_video=1,
                                                                         eval_clips_per_video=1))
    cfg = validate_config({
        "data": {"root": str(tmp_path / "data"), "image_size": 32, "batch_size": 4, "sequence": ["Deepfakes"]},
        "model": {"name": "styleflow", "preset": "tiny"},
        "strategy": {"name": "finetune"},
        "train": {"epochs_per_task": 2},
    })
    scored = []
    real_metrics = loop.binary_metrics
    monkeypatch.setattr(loop, "binary_metrics", lambda p, y: scored.append(len(p)) or real_metrics(p, y))
    ctx = loop.LocalContext(tmp_path / "run")
    acc = loop.run_continual(cfg, ctx, manifest)

    trained_or_tested = {r.video_id for r in manifest.rows if r.split in ("train", "test")}
    assert all(p.startswith(str(tmp_path / "data" / "videos")) and p.endswith(".mp4") for p in decoded)
    assert {p[len(str(tmp_path / "data" / "videos")) + 1:-len(".mp4")] for p in decoded} == trained_or_tested
    # Video-level evaluation: 2 test identities -> 2 real + 2 fake videos (16 frames).
    assert scored == [4]
    assert 0.0 <= acc.get(0, 0) <= 1.0
    report = ctx.reports[0]
    # Two epochs: one style phase, then the detector phase whose loss terms are reported.
    assert "train/bce" in report and "train/triplet" not in report
