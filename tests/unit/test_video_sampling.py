"""Frame sampling with decord on the videos real datasets hold: VP9/WebM, MPEG-4/AVI, odd sizes,
variable frame rate, videos shorter than requested, and empty files."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from forgesweep.data.video import frame_count, read_sampled_frames, write_video
from forgesweep.errors import DataError


def _levels(frames: np.ndarray) -> list[int]:
    return [int(round(f.mean() / 20.0)) for f in frames]


def _encode(path: Path, codec: str, n: int, size: tuple[int, int], pts: list[int] | None = None,
            fmt: str | None = None) -> Path:
    """Flat grey frames of levels 0, 20, 40, ... (identifiable after lossy coding), optional pts."""
    with av.open(str(path), mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=25)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"threads": "1"}
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((*size, 3), 20 * i, np.uint8), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize("codec, suffix, fmt", [("libvpx-vp9", ".webm", "webm"), ("mpeg4", ".avi", "avi")])
def test_other_codecs_and_containers(tmp_path, codec, suffix, fmt):
    if codec not in av.codecs_available:
        pytest.skip(f"this PyAV build has no {codec} encoder")
    path = _encode(tmp_path / f"v{suffix}", codec, 9, (48, 64), fmt=fmt)
    indices, frames = read_sampled_frames(path, 3)
    assert indices == [0, 4, 8] and frames.shape == (3, 48, 64, 3)
    assert _levels(frames) == [0, 4, 8]


def test_odd_frame_size_keeps_its_size(tmp_path):
    if "libvpx-vp9" not in av.codecs_available:
        pytest.skip("this PyAV build has no VP9 encoder")
    path = _encode(tmp_path / "odd.webm", "libvpx-vp9", 4, (37, 51), fmt="webm")
    _, frames = read_sampled_frames(path, 2)
    assert frames.shape == (2, 37, 51, 3)


def test_variable_frame_rate_samples_by_index(tmp_path):
    # Irregular timestamps (ms): sampling is by frame index, so gaps in time change nothing.
    pts = [0, 40, 50, 200, 210, 600, 610, 620, 1500]
    path = _encode(tmp_path / "vfr.mp4", "libx264" if "libx264" in av.codecs_available else "mpeg4", 9, (32, 32),
                   pts=pts, fmt="mp4")
    assert frame_count(path) == 9
    indices, frames = read_sampled_frames(path, 5)
    assert indices == [0, 2, 4, 6, 8] and _levels(frames) == [0, 2, 4, 6, 8]


def test_shorter_than_requested_gives_every_frame_once(tmp_path):
    path = write_video([np.full((32, 32, 3), 20 * i, np.uint8) for i in range(3)], tmp_path / "s.mp4")
    indices, frames = read_sampled_frames(path, 32)
    assert indices == [0, 1, 2] and _levels(frames) == [0, 1, 2]


def test_empty_and_missing_files_are_named(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=f"video {empty} is an empty file \\(0 bytes\\)"):
        read_sampled_frames(empty, 4)
    with pytest.raises(DataError, match="video not found"):
        frame_count(tmp_path / "nope.mp4")
    with pytest.raises(ValueError, match="num_frames must be >= 1"):
        read_sampled_frames(empty, 0)
