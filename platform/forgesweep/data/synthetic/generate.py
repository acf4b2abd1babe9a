"""Generate the built-in synthetic face-forgery benchmark: frames, masks, videos and a manifest.

Layout of ``out_dir``::

    frames/<video_id>/<frame:03d>.png   every frame, real and fake (already through the camera)
    masks/<video_id>/<frame:03d>.png    fakes only: 255 where the frame was manipulated
    videos/<video_id>.mp4               one clip per video (when ``write_videos``)
    spec.json                           the SyntheticSpec that made it
    manifest.jsonl                      one row per frame (forgesweep.data.manifest)

Real video ids are identity names (``train_007``); fakes are ``<method>/<target>_<source>``, and a
fake's source is always from the target's split, so identities never cross splits. Every video has
its own RNG derived from ``(seed, split, identity, method)``: the output does not depend on the order
or the process videos are made in, and the same spec gives byte-identical PNGs and manifest.

Example:
    >>> from forgesweep.data.synthetic import SyntheticSpec, generate_synthetic
    >>> manifest = generate_synthetic("data/synthetic", SyntheticSpec(seed=1))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from forgesweep.data.manifest import REAL_METHOD, ManifestRow, write_manifest
from forgesweep.data.synthetic.faces import (
    Identity, Pose, capture, render_face, sample_identity, sample_poses, swap_identity, with_expression,
)
from forgesweep.data.synthetic.forgeries import METHODS
from forgesweep.errors import DataError

KNOWN_METHODS: tuple[str, ...] = tuple(METHODS)
DATASET = "synthetic"
SPLITS = ("train", "val", "test")


class SyntheticSpec(BaseModel):
    """What to generate. Defaults give a benchmark a 2-core machine trains a 4-task sweep on in minutes."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    image_size: int = Field(64, ge=32, le=512)  # frames are square, image_size pixels a side
    train_identities: int = Field(48, ge=2)  # a task's train split: 2 x identities x frames images
    val_identities: int = Field(8, ge=1)
    test_identities: int = Field(24, ge=2)
    frames_per_video: int = Field(4, ge=1, le=64)
    fps: int = Field(10, ge=1)  # frame rate of the written MP4 clips
    jpeg_quality_min: int = Field(70, ge=1, le=100)  # every frame, real or fake, is JPEG'd at a
    jpeg_quality_max: int = Field(95, ge=1, le=100)  # quality drawn from this range (FF++ c23-like)
    write_videos: bool = True
    methods: list[str] = Field(default_factory=lambda: list(KNOWN_METHODS), min_length=1)

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: list[str]) -> list[str]:
        unknown = [m for m in value if m not in KNOWN_METHODS]
        if unknown:
            raise ValueError(f"unknown forgery method {unknown[0]!r}; known: {', '.join(KNOWN_METHODS)}")
        if len(set(value)) != len(value):
            raise ValueError(f"methods lists a method twice: {value}")
        return value

    @model_validator(mode="after")
    def _quality_range(self) -> "SyntheticSpec":
        if self.jpeg_quality_min > self.jpeg_quality_max:
            raise ValueError(
                f"jpeg_quality_min ({self.jpeg_quality_min}) exceeds jpeg_quality_max ({self.jpeg_quality_max})"
            )
        return self

    def identities(self, split: str) -> list[str]:
        """Identity names of ``split``; the split is part of the name, so splits never share one."""
        n = {"train": self.train_identities, "val": self.val_identities, "test": self.test_identities}[split]
        return [f"{split}_{i:03d}" for i in range(n)]


def _rng(*key: object) -> np.random.Generator:
    # Python's hash() is salted per process; a SHA-256 of the key is stable across runs and workers.
    digest = hashlib.sha256(repr(key).encode("utf-8")).digest()
    return np.random.default_rng(np.random.SeedSequence(list(np.frombuffer(digest, dtype=np.uint32))))


def _identity(seed: int, name: str) -> Identity:
    return sample_identity(_rng(seed, "identity", name))


def _poses(spec: SyntheticSpec, split: str, name: str) -> list[Pose]:
    return sample_poses(_rng(spec.seed, split, name, "pose"), spec.frames_per_video)


def _source_of(names: list[str], index: int, method: str) -> str:
    """The partner of ``names[index]`` for ``method``: another identity of the same split.

    Each method pairs with a different offset, so one identity is not always swapped with the same
    partner. A split with a single identity borrows a spare one named after the split (``val_001``):
    it appears only as that split's source, so identities still never cross splits, and the swap is
    not a degenerate self-swap.
    """
    n = len(names)
    if n == 1:
        return f"{names[0].rsplit('_', 1)[0]}_{1:03d}"
    offset = 1 + KNOWN_METHODS.index(method) % (n - 1)
    return names[(index + offset) % n]


def _different_expression(target: Pose, driver: Pose) -> Pose:
    # A re-enactment that copies the same mouth would change nothing; force a visible difference.
    if abs(driver.mouth_open - target.mouth_open) < 0.4:
        mouth = target.mouth_open + 0.5 if target.mouth_open < 0.5 else target.mouth_open - 0.5
        driver = replace(driver, mouth_open=mouth)
    return driver


@dataclass(frozen=True)
class _Job:
    """One video to make; plain data so it pickles to a worker process."""

    spec: SyntheticSpec
    root: str
    split: str
    target: str
    method: str  # "real" or a forgery method
    source: Optional[str] = None

    @property
    def video_id(self) -> str:
        return self.target if self.method == REAL_METHOD else f"{self.method}/{self.target}_{self.source}"


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def _make_video(job: _Job) -> list[dict]:
    """Render, forge, capture and write one video; returns its manifest rows as dicts."""
    spec, root = job.spec, Path(job.root)
    size, quality = spec.image_size, (spec.jpeg_quality_min, spec.jpeg_quality_max)
    target = _identity(spec.seed, job.target)
    poses = _poses(spec, job.split, job.target)
    rng = _rng(spec.seed, job.split, job.target, job.method)
    if job.method != REAL_METHOD:
        forge, kind = METHODS[job.method]
        source = _identity(spec.seed, job.source)
        drivers = _poses(spec, job.split, job.source)
    frames, rows = [], []
    for t, pose in enumerate(poses):
        clean = render_face(target, pose, size)
        mask = None
        if job.method == REAL_METHOD:
            image = clean.image
        elif kind == "identity":
            image, mask = forge(clean, render_face(swap_identity(target, source), pose, size), rng)
        else:
            driven = with_expression(pose, _different_expression(pose, drivers[t]))
            image, mask = forge(clean, render_face(target, driven, size), rng)
        frame = capture(image, rng, quality)
        frames.append(frame)
        rel = f"frames/{job.video_id}/{t:03d}.png"
        _save_png(frame, root / rel)
        row = {"path": rel, "label": int(job.method != REAL_METHOD), "method": job.method,
               "dataset": DATASET, "split": job.split, "video_id": job.video_id, "frame": t}
        if mask is not None:
            row["mask"] = f"masks/{job.video_id}/{t:03d}.png"
            _save_png(mask, root / row["mask"])
        rows.append(row)
    if spec.write_videos:
        from forgesweep.data.video import write_video

        write_video(frames, root / f"videos/{job.video_id}.mp4", fps=spec.fps)
    return rows


def _jobs(spec: SyntheticSpec, root: Path) -> list[_Job]:
    jobs = []
    for split in SPLITS:
        names = spec.identities(split)
        for i, name in enumerate(names):
            jobs.append(_Job(spec, str(root), split, name, REAL_METHOD))
            for method in spec.methods:
                jobs.append(_Job(spec, str(root), split, name, method, _source_of(names, i, method)))
    return jobs


def _run_parallel(jobs: list[_Job], workers: int) -> Optional[list[list[dict]]]:
    """Make the videos in ``workers`` processes; None if worker processes cannot start here.

    spawn, not fork: callers (torch, Ray workers) are multi-threaded, and a forked child inherits
    locks held by threads it does not have. A spawned child re-imports the caller's main script,
    which fails when that script starts this generation without an ``if __name__ == "__main__"``
    guard; the pool then breaks and the caller falls back to one process rather than failing.
    """
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            return list(pool.map(_make_video, jobs, chunksize=max(1, len(jobs) // (8 * workers))))
    except BrokenProcessPool:
        warnings.warn("synthetic benchmark: worker processes failed to start; generating in one process",
                      RuntimeWarning, stacklevel=3)
        return None


def generate_synthetic(out_dir: str | Path, spec: Optional[SyntheticSpec] = None, *,
                       workers: Optional[int] = None, overwrite: bool = False) -> Path:
    """Generate the benchmark into ``out_dir`` and return the path of its manifest.

    Everything is written into a hidden folder beside ``out_dir`` that is renamed into place only
    when complete (manifest last), so an interrupted run never leaves a half benchmark that looks
    valid.

    Args:
        out_dir: the folder to create.
        spec: what to generate (default: ``SyntheticSpec()``).
        workers: processes rendering videos in parallel (default: min(2, CPU count)); the output
            is identical for any value. Without a main guard in the calling script (see
            ``_run_parallel``) generation falls back to one process with a RuntimeWarning.
        overwrite: replace an existing ``out_dir`` (only once the new benchmark is complete).

    Returns:
        ``out_dir/manifest.jsonl``.

    Raises:
        DataError: if ``out_dir`` exists, is not empty and ``overwrite`` is False.
    """
    spec = spec or SyntheticSpec()
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise DataError(f"{out_dir} already exists and is not empty (pass overwrite=True to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        jobs = _jobs(spec, tmp)
        workers = max(1, min(workers or min(2, os.cpu_count() or 1), len(jobs)))
        per_video = _run_parallel(jobs, workers) if workers > 1 else None
        if per_video is None:
            per_video = [_make_video(j) for j in jobs]
        (tmp / "spec.json").write_text(spec.model_dump_json(indent=2) + "\n", encoding="utf-8")
        rows = [ManifestRow.model_validate(r) for video in per_video for r in video]
        write_manifest(rows, tmp / "manifest.jsonl")
        if out_dir.exists():
            trash = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            out_dir.rename(trash)
            tmp.rename(out_dir)
            shutil.rmtree(trash)
        else:
            tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir / "manifest.jsonl"
