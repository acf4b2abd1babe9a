"""One video's preprocessing: decode N frames, crop the face, write frames and the video's part.

Plain Python (no Ray): :mod:`forgesweep.preprocessing.runner` runs :func:`process_video` as a Ray
task per video, and tests call it directly.

Bad input (a missing, empty or undecodable video, an S3 object that vanished, a mask video that
cannot be read, no face in any frame under ``fallback: skip``) is returned as a failed
:class:`VideoOutcome` naming the path and the reason, never raised: one bad video must not take
the other tasks down, and the runner decides (stop or ``--skip-bad``). Anything else is a bug and
raises.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from forgesweep.data.face_crop import FaceCropper, FaceDetector, build_detector, crop_resize
from forgesweep.data.object_store import local_path
from forgesweep.data.video import frame_count, read_sampled_frames, read_video_frames
from forgesweep.errors import DataError
from forgesweep.preprocessing.spec import PreprocessSpec
from forgesweep.preprocessing.store import OutputStore, safe_rel


@dataclass(frozen=True)
class VideoTask:
    """One video to preprocess: where it is and the fields its frame rows inherit."""

    video_id: str
    source: str  # local path or s3:// URI (resolved against its manifest)
    label: int
    method: str
    dataset: str
    split: str
    mask: Optional[str] = None  # mask video, local or s3://

    @property
    def rel(self) -> str:
        """Folder of the video's files under frames/ and masks/, and its part name."""
        return safe_rel(self.video_id)

    @property
    def part(self) -> str:
        return f"parts/{self.rel}.jsonl"


@dataclass
class VideoOutcome:
    """What happened to one video: frames written, or the path and reason it failed."""

    video_id: str
    frames: int = 0
    seconds: float = 0.0
    crops: Counter = field(default_factory=Counter)  # how boxes were chosen: detected, nearest, ...
    error_path: Optional[str] = None
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None


_DETECTORS: dict[str, FaceDetector] = {}


def _detector(name: str) -> FaceDetector:
    # One detector per worker process: loading a cascade costs more than detecting in a small frame.
    if name not in _DETECTORS:
        _DETECTORS[name] = build_detector(name)
        if name == "haar":
            import cv2

            # Each Ray task already holds one CPU; OpenCV's own thread pool would oversubscribe it.
            cv2.setNumThreads(1)
    return _DETECTORS[name]


def _fetch(uri: str) -> str:
    """Local path of a video (S3 objects downloaded into the cache); DataError when gone."""
    return local_path(uri)


def _save(image: np.ndarray, path: Path, spec: PreprocessSpec) -> None:
    if spec.image_format == "png":
        Image.fromarray(image).save(path, format="PNG", compress_level=1)  # fast; PNG is lossless anyway
    else:
        Image.fromarray(image).save(path, format="JPEG", quality=spec.jpeg_quality)


def _mask_frames(path: str, indices: list[int], video_total: int) -> np.ndarray:
    """The mask video's frames at ``indices``; a mask with another frame count is mapped linearly."""
    total = frame_count(path)
    if total != video_total and video_total > 1:
        indices = [round(i * (total - 1) / (video_total - 1)) for i in indices]
    return read_video_frames(path, indices=[min(i, total - 1) for i in indices])


def process_video(task: VideoTask, spec: PreprocessSpec, out: str) -> VideoOutcome:
    """Preprocess ``task`` into the output root ``out`` and write its part file last.

    Returns:
        The outcome; failed (``error`` set) for bad input, see the module docstring.
    """
    began = time.perf_counter()
    outcome = VideoOutcome(task.video_id)
    store = OutputStore(out)
    current, local = task.source, task.source
    try:
        local = _fetch(task.source)
        indices, frames = read_sampled_frames(local, spec.num_frames)
        masks = None
        if task.mask is not None:
            current = task.mask
            local = _fetch(task.mask)
            masks = _mask_frames(local, indices, frame_count(_fetch(task.source)))
            current = task.source
        cropper = FaceCropper(_detector(spec.detector), size=spec.image_size, scale=spec.scale,
                              fallback=spec.fallback)
        boxes = cropper.boxes(list(frames))
    except DataError as exc:
        outcome.error_path, outcome.error = current, _reason(str(exc), current, local)
        outcome.seconds = time.perf_counter() - began
        return outcome
    if all(box is None for box, _ in boxes):
        outcome.error_path = task.source
        outcome.error = f"no face found in any of the {len(frames)} sampled frames (face fallback 'skip')"
        outcome.seconds = time.perf_counter() - began
        return outcome
    rows = _write_frames(task, spec, store, indices, frames, masks, boxes, outcome)
    store.put_text(task.part, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    outcome.seconds = time.perf_counter() - began
    return outcome


def _write_frames(task: VideoTask, spec: PreprocessSpec, store: OutputStore, indices: list[int],
                  frames: np.ndarray, masks: Optional[np.ndarray], boxes: list, outcome: VideoOutcome) -> list[dict]:
    staging = Path(store.staging_dir(f"frames/{task.rel}"))
    rows = []
    try:
        for k, (index, frame, (box, source)) in enumerate(zip(indices, frames, boxes)):
            if box is None:
                outcome.crops["skipped"] += 1
                continue
            outcome.crops[source] += 1
            name = f"{index:06d}{spec.suffix}"
            tmp = staging / f".{name}.tmp"
            _save(crop_resize(frame, box, spec.image_size), tmp, spec)
            store.put_file(tmp, f"frames/{task.rel}/{name}")
            row = {"path": f"frames/{task.rel}/{name}", "label": task.label, "method": task.method,
                   "dataset": task.dataset, "split": task.split, "video_id": task.video_id, "frame": index}
            if masks is not None:
                mask = (crop_resize(masks[k].max(axis=2), box, spec.image_size) >= 128).astype(np.uint8) * 255
                mask_name = f"{index:06d}.png"  # masks stay lossless whatever the frame format
                mask_tmp = staging / f".mask-{mask_name}.tmp"
                Image.fromarray(mask).save(mask_tmp, format="PNG")
                store.put_file(mask_tmp, f"masks/{task.rel}/{mask_name}")
                row["mask"] = f"masks/{task.rel}/{mask_name}"
            rows.append(row)
            outcome.frames += 1
    finally:
        if store.remote:
            shutil.rmtree(staging, ignore_errors=True)
    return rows


def _reason(message: str, path: str, local: str) -> str:
    """The reason of a DataError, naming the dataset's path (not the cache copy of an S3 object)
    and without a leading ``<path>: `` that the outcome repeats."""
    if local != path:
        message = message.replace(local, path)
    return message[len(path) + 2:] if message.startswith(f"{path}: ") else message
