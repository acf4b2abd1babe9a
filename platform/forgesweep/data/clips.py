"""Clip datasets for video detectors: ``T`` consecutive frames of one video per sample.

A clip model (``Detector.input_kind == "clip"``) trains on clips and is evaluated per video. The
manifest describes videos in one of two ways, and both give the same kind of clip:

* **frame rows** -- one row per frame with ``video_id`` and ``frame``: a video's frames are its
  rows ordered by ``frame`` (manifest order where ``frame`` is missing), decoded through the
  process's :class:`~forgesweep.data.datasets.FrameCache`;
* **video rows** -- one row whose ``path`` is a video file (``.mp4``, ``.avi``, ``.webm``,
  ``.mov``): frames are decoded with decord (:func:`forgesweep.data.video.read_video_frames`),
  seeking by index, so only the frames some clip uses are decoded, never the whole video.

:class:`ClipSampling` (the ``data.clips`` config section) also lets frame rows be read from the
videos they were cut from: with ``source: videos`` every video id maps to
``<data root>/<video_dir>/<video_id><video_suffix>`` (the synthetic benchmark writes
``videos/<video_id>.mp4`` beside its frames), and the frame rows only say which videos belong to
the task, with which label.

Clip geometry: a clip of length ``l`` with stride ``s`` starting at frame ``a`` holds frames
``a, a+s, ..., a+(l-1)s``. A video gives ``clips_per_video`` clips whose starts are evenly spaced
over every valid start (first and last included; fewer when the video has fewer distinct starts).
A video shorter than one clip gives one clip starting at frame 0 whose missing frames repeat the
video's last frame -- the frame rate is kept (no resampling), and a clip never mixes videos.

Clip ids (the ``keys`` of a sample) are ``<video_id>@<start>``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch.utils.data import Dataset

from forgesweep.data.datasets import FrameCache
from forgesweep.data.manifest import ManifestRow
from forgesweep.data.preprocess import to_model_input
from forgesweep.data.video import read_video_frames
from forgesweep.errors import DataError

VIDEO_SUFFIXES = (".mp4", ".avi", ".webm", ".mov")


class ClipSampling(BaseModel):
    """How clips are cut from videos (the ``data.clips`` config section)."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["frames", "videos"] = Field(
        "frames", description="frame rows: read their frames (frames) or the videos they come from (videos)")
    video_dir: str = Field("videos", min_length=1,
                           description="with source=videos: folder of <video_id><video_suffix>, under the data root")
    video_suffix: str = Field(".mp4", description="with source=videos: file suffix of the videos")
    stride: int = Field(1, ge=1, le=64, description="frame step inside a clip (1 = consecutive frames)")
    train_clips_per_video: int = Field(4, ge=1, le=4096, description="evenly spaced training clips per video")
    eval_clips_per_video: int = Field(4, ge=1, le=4096,
                                      description="evenly spaced clips per video whose mean logit scores it")

    @field_validator("video_suffix")
    @classmethod
    def _known_suffix(cls, value: str) -> str:
        if value.lower() not in VIDEO_SUFFIXES:
            raise ValueError(f"must be one of {', '.join(VIDEO_SUFFIXES)}, got {value!r}")
        return value


def is_video_row(row: ManifestRow) -> bool:
    """Whether the row's ``path`` is a video file (by its suffix)."""
    return Path(row.path).suffix.lower() in VIDEO_SUFFIXES


def clip_starts(num_frames: int, clip_length: int, stride: int, count: int) -> list[int]:
    """First frame of each of ``count`` evenly spaced clips (fewer if the video has fewer starts).

    Example:
        >>> clip_starts(8, 4, 1, 3)
        [0, 2, 4]
        >>> clip_starts(3, 4, 1, 3)  # shorter than one clip
        [0]
    """
    last = num_frames - ((clip_length - 1) * stride + 1)
    if last <= 0:
        return [0]
    n = min(count, last + 1)
    return sorted({int(v) for v in np.linspace(0, last, n).round()})


def clip_indices(num_frames: int, start: int, clip_length: int, stride: int) -> list[int]:
    """Frame indices of the clip starting at ``start``; past the end the last frame repeats.

    Example:
        >>> clip_indices(3, 0, 5, 1)
        [0, 1, 2, 2, 2]
    """
    return [min(start + k * stride, num_frames - 1) for k in range(clip_length)]


def video_frame_count(path: str | Path) -> int:
    """Number of frames of a video file, read from its index by decord (nothing is decoded).

    Raises:
        DataError: naming the file when it is missing, unreadable or empty.
    """
    import decord

    path = Path(path)
    if not path.is_file():
        raise DataError(f"video not found: {path}")
    try:
        total = len(decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1))
    except Exception as exc:  # decord raises its own DECORDError (and RuntimeError) on bad input
        raise DataError(f"cannot read video {path}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    if total == 0:
        raise DataError(f"video {path} has no frames")
    return total


@dataclass(frozen=True)
class VideoSource:
    """One video of a clip dataset: where its frames come from and its label.

    Exactly one of ``file`` (a video file decoded with decord) and ``frame_rows`` (its frames'
    manifest rows, in order) is set.
    """

    video_id: str
    label: int
    num_frames: int
    file: Optional[str] = None
    frame_rows: tuple[ManifestRow, ...] = ()


class VideoFrameCache:
    """Decoded video frames as ``[3, S, S]`` uint8, keyed by (file, index), for one frame size.

    Frames are resized like image frames (:func:`forgesweep.data.preprocess.load_image`:
    bilinear, to ``image_size`` square), so a clip read from a video matches one read from
    its extracted frames up to the video codec's loss.
    """

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size
        self._frames: dict[tuple[str, int], torch.Tensor] = {}

    def get(self, file: str, indices: Sequence[int]) -> torch.Tensor:
        """``[len(indices), 3, S, S]`` uint8 frames of ``file``; only uncached frames are decoded."""
        missing = sorted({i for i in indices if (file, i) not in self._frames})
        if missing:
            decoded = read_video_frames(file, indices=missing)
            for i, frame in zip(missing, decoded):
                self._frames[(file, i)] = self._resize(frame)
        return torch.stack([self._frames[(file, i)] for i in indices])

    def _resize(self, frame: np.ndarray) -> torch.Tensor:
        size = self.image_size
        if frame.shape[:2] != (size, size):
            frame = np.asarray(Image.fromarray(frame).resize((size, size), Image.BILINEAR), dtype=np.uint8)
        return torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).contiguous()


class ClipReader:
    """Turns manifest rows into clip datasets; keeps the process's decoded frames between them.

    One reader per training run: tasks share their real videos and replay revisits old ones, so
    each frame is decoded once per process.

    Args:
        cache: the process's frame cache (its manifest resolves paths).
        clip_length: frames per clip (the model's ``clip_length()``).
        sampling: clip geometry and where frames come from.
    """

    def __init__(self, cache: FrameCache, clip_length: int, sampling: ClipSampling | None = None) -> None:
        if clip_length < 1:
            raise ValueError(f"clip_length must be >= 1, got {clip_length}")
        self.cache = cache
        self.manifest = cache.manifest
        self.clip_length = clip_length
        self.sampling = sampling or ClipSampling()
        self.video_cache = VideoFrameCache(cache.image_size)
        self._frame_counts: dict[str, int] = {}  # video file -> frames, read once per process
        self._video_rows: dict[str, list[ManifestRow]] = {}
        for row in self.manifest.rows:
            self._video_rows.setdefault(row.video_id, []).append(row)

    def whole_videos(self, rows: Iterable[ManifestRow]) -> list[ManifestRow]:
        """Every manifest row of the videos ``rows`` belong to (e.g. replayed frame keys).

        Videos keep their first-seen order; each row appears once.
        """
        seen: dict[str, None] = {}
        for row in rows:
            seen.setdefault(row.video_id, None)
        return [r for vid in seen for r in self._video_rows[vid]]

    def videos(self, rows: Iterable[ManifestRow]) -> list[VideoSource]:
        """The distinct videos of ``rows`` (first-seen order), with their frame sources.

        Raises:
            DataError: a video whose rows disagree on the label, that mixes video-file and frame
                rows, has several video-file rows, or (``source: videos``) whose file is missing.
        """
        grouped: "OrderedDict[str, list[ManifestRow]]" = OrderedDict()
        keys: set[str] = set()
        for row in rows:
            if row.key not in keys:
                keys.add(row.key)
                grouped.setdefault(row.video_id, []).append(row)
        return [self._source(vid, group) for vid, group in grouped.items()]

    def dataset(self, rows: Iterable[ManifestRow], *, train: bool, horizontal_flip: bool = False,
                seed: int = 0) -> "ClipDataset":
        """A :class:`ClipDataset` over the whole videos of ``rows``.

        ``train`` picks ``train_clips_per_video`` or ``eval_clips_per_video`` clips a video.
        """
        sampling = self.sampling
        count = sampling.train_clips_per_video if train else sampling.eval_clips_per_video
        return ClipDataset(self.videos(self.whole_videos(rows)), self, count,
                           horizontal_flip=horizontal_flip, seed=seed)

    def frames(self, video: VideoSource, indices: Sequence[int]) -> torch.Tensor:
        """``[len(indices), 3, S, S]`` uint8 frames of ``video``."""
        if video.file is not None:
            return self.video_cache.get(video.file, indices)
        return torch.stack([self.cache.get(video.frame_rows[i]) for i in indices])

    def _frame_count(self, file: str) -> int:
        if file not in self._frame_counts:
            self._frame_counts[file] = video_frame_count(file)
        return self._frame_counts[file]

    def _source(self, video_id: str, group: list[ManifestRow]) -> VideoSource:
        labels = {r.label for r in group}
        if len(labels) > 1:
            raise DataError(f"{self.manifest.source}: video_id {video_id!r} has rows labelled both 0 and 1")
        label = labels.pop()
        files = [r for r in group if is_video_row(r)]
        if files:
            if len(files) != len(group) or len(files) > 1:
                raise DataError(f"{self.manifest.source}: video_id {video_id!r} must be one video-file row "
                                f"or frame rows, not {len(files)} video file(s) and {len(group) - len(files)} frame(s)")
            file = self.manifest.resolve(files[0])
            return VideoSource(video_id, label, self._frame_count(file), file=file)
        if self.sampling.source == "videos":
            file = str(self.manifest.root / self.sampling.video_dir / f"{video_id}{self.sampling.video_suffix}")
            if not Path(file).is_file():
                raise DataError(f"video of {video_id!r} not found: {file} (data.clips.source is 'videos'; "
                                f"use source: frames to read the frame rows instead)")
            return VideoSource(video_id, label, self._frame_count(file), file=file)
        if all(r.frame is not None for r in group):
            group = sorted(group, key=lambda r: r.frame)
        return VideoSource(video_id, label, len(group), frame_rows=tuple(group))


class ClipDataset(Dataset):
    """Samples ``{"images": float [T,3,H,W], "labels": long, "keys": clip id, "video_id": str}``.

    ``images`` are normalised with :func:`forgesweep.data.preprocess.to_model_input`. Every
    frame a clip needs is decoded when the dataset is built, so an unreadable frame or video
    fails before training starts rather than in the middle of an epoch.

    Args:
        videos: the videos (see :meth:`ClipReader.videos`).
        reader: decodes frames (and caches them).
        clips_per_video: evenly spaced clips taken from each video.
        horizontal_flip: flip each clip (all its frames alike) with probability 1/2.
        seed: seeds the flip generator, so runs repeat.
    """

    def __init__(self, videos: Sequence[VideoSource], reader: ClipReader, clips_per_video: int,
                 horizontal_flip: bool = False, seed: int = 0) -> None:
        self.videos = list(videos)
        self.clip_length = reader.clip_length
        stride = reader.sampling.stride
        self.clips: list[tuple[int, int]] = []  # (video position, start frame)
        self._positions: list[torch.Tensor] = []  # per clip: rows of its video's decoded frames
        self._video_frames: list[torch.Tensor] = []  # per video: [N, 3, S, S] uint8, frames some clip uses
        for v, video in enumerate(self.videos):
            starts = clip_starts(video.num_frames, self.clip_length, stride, clips_per_video)
            wanted = [clip_indices(video.num_frames, a, self.clip_length, stride) for a in starts]
            needed = sorted({i for idx in wanted for i in idx})
            self._video_frames.append(reader.frames(video, needed))
            row_of = {i: p for p, i in enumerate(needed)}
            for a, idx in zip(starts, wanted):
                self.clips.append((v, a))
                self._positions.append(torch.tensor([row_of[i] for i in idx]))
        self.labels = torch.tensor([self.videos[v].label for v, _ in self.clips], dtype=torch.long)
        self.horizontal_flip = horizontal_flip
        self._generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.clips)

    def clip_id(self, index: int) -> str:
        """``<video_id>@<start>`` of clip ``index``."""
        v, start = self.clips[index]
        return f"{self.videos[v].video_id}@{start}"

    def __getitem__(self, index: int) -> dict:
        v, _ = self.clips[index]
        clip = self._video_frames[v][self._positions[index]]
        if self.horizontal_flip and torch.rand((), generator=self._generator).item() < 0.5:
            clip = clip.flip(-1)
        return {"images": to_model_input(clip), "labels": self.labels[index], "keys": self.clip_id(index),
                "video_id": self.videos[v].video_id}
