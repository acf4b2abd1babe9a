"""Video IO: PyAV writes what decord reads back, frame sampling, and bad files as DataError."""

from __future__ import annotations

import av
import numpy as np
import pytest

from forgesweep.data import video
from forgesweep.data.video import read_video_frames, write_video
from forgesweep.errors import DataError


def _ramp(n: int, size: tuple[int, int] = (32, 32)) -> list[np.ndarray]:
    """Flat grey frames with levels 0, 20, 40, ...: each frame is identifiable after lossy coding."""
    return [np.full((*size, 3), 20 * i, dtype=np.uint8) for i in range(n)]


def _levels(frames: np.ndarray) -> list[int]:
    return [int(round(f.mean() / 20.0)) for f in frames]


def test_roundtrip_keeps_count_size_and_content(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (1, 1, 3))
    # Smooth content (a colour plus a gradient), so lossy coding stays close to the input.
    grad = np.linspace(0, 60, 48)[None, :, None]
    frames = [np.clip(base + grad + 10 * i, 0, 255).astype(np.uint8) * np.ones((40, 1, 1), np.uint8)
              for i in range(5)]
    path = write_video(frames, tmp_path / "sub" / "clip.mp4", fps=10)
    assert path.is_file() and not list(path.parent.glob(".*tmp"))
    out = read_video_frames(path)
    assert out.shape == (5, 40, 48, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - np.stack(frames).astype(int)).mean() < 4


def test_uses_h264_when_available(tmp_path):
    path = write_video(_ramp(2), tmp_path / "a.mp4")
    with av.open(str(path)) as container:
        codec = container.streams.video[0].codec_context.name
    expected = "h264" if "libx264" in av.codecs_available else "mpeg4"
    assert codec == expected


def test_mpeg4_fallback_roundtrips(tmp_path, monkeypatch):
    # PyAV builds without libx264 fall back to MPEG-4 Part 2.
    monkeypatch.setattr(video, "_codec", lambda: "mpeg4")
    path = write_video(_ramp(4), tmp_path / "m.mp4")
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"
    assert _levels(read_video_frames(path)) == [0, 1, 2, 3]


def test_same_frames_give_the_same_file(tmp_path):
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(4)]
    digests = {write_video(frames, tmp_path / f"{i}.mp4").read_bytes() for i in range(5)}
    assert len(digests) == 1


def test_num_frames_are_evenly_spaced_and_clamped(tmp_path):
    path = write_video(_ramp(10), tmp_path / "ramp.mp4")
    assert _levels(read_video_frames(path, num_frames=4)) == [0, 3, 6, 9]
    assert _levels(read_video_frames(path, num_frames=1)) == [0]
    assert len(read_video_frames(path, num_frames=25)) == 10  # shorter video: every frame once


def test_indices_are_read_in_the_given_order(tmp_path):
    path = write_video(_ramp(6), tmp_path / "ramp.mp4")
    assert _levels(read_video_frames(path, indices=[5, 0, 2])) == [5, 0, 2]


def test_out_of_range_index_is_a_data_error_naming_the_file(tmp_path):
    path = write_video(_ramp(3), tmp_path / "short.mp4")
    with pytest.raises(DataError, match=r"short\.mp4.*index 7"):
        read_video_frames(path, indices=[0, 7])


@pytest.mark.parametrize("width", [16, 24, 48, 72, 64])
def test_widths_decord_pads_internally_read_back_correctly(tmp_path, width):
    # decord 0.6 returns row-padded frames at these widths; the reader must still give HxWx3.
    rng = np.random.default_rng(width)
    blocks = [np.kron(rng.integers(0, 256, (4, width // 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)
              for _ in range(3)]
    out = read_video_frames(write_video(blocks, tmp_path / f"w{width}.mp4"), indices=[2, 0])
    assert out.shape == (2, 32, width, 3)
    assert np.abs(out.astype(int) - np.stack([blocks[2], blocks[0]]).astype(int)).mean() < 12


def test_odd_sizes_are_padded_to_even(tmp_path):
    frames = [np.full((33, 35, 3), 100, np.uint8)] * 2
    out = read_video_frames(write_video(frames, tmp_path / "odd.mp4"))
    assert out.shape == (2, 34, 36, 3)
    assert np.abs(out[:, :33, :35].astype(int) - 100).max() < 6


def test_corrupt_file_is_a_data_error_naming_it(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"not a video" * 50)
    with pytest.raises(DataError, match="broken.mp4"):
        read_video_frames(bad)


def test_truncated_file_is_a_data_error(tmp_path):
    good = write_video(_ramp(4), tmp_path / "good.mp4")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(DataError, match="cut.mp4"):
        read_video_frames(cut)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="nothing.mp4"):
        read_video_frames(tmp_path / "nothing.mp4")


def test_bad_arguments(tmp_path):
    path = write_video(_ramp(2), tmp_path / "a.mp4")
    with pytest.raises(ValueError):
        read_video_frames(path, indices=[0], num_frames=1)
    with pytest.raises(ValueError, match="no frames"):
        write_video([], tmp_path / "b.mp4")
    with pytest.raises(ValueError, match="frame 1"):
        write_video([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.float32)], tmp_path / "c.mp4")
    assert not (tmp_path / "c.mp4").exists()
