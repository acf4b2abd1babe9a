"""Synthetic stand-ins for real dataset downloads: FF++-, Celeb-DF- and DFDC-shaped folder trees.

The importers (:mod:`forgesweep.data.importers`) are tested on these trees: tiny MP4 videos of
procedurally rendered faces, with the file names, folders and split/metadata files of the real
datasets, so importing, preprocessing and the dataset- and method-incremental configs run end to
end without the real (licensed, hundreds of GB) data.

Each video shows one synthetic face (:mod:`forgesweep.data.synthetic.faces`) of ``face_size``
pixels on a plain background frame of ``frame_size`` pixels, drifting a little from frame to frame
-- so a face detector has a face to find and a crop to make. Fakes are made with the benchmark's
forgery methods (:mod:`forgesweep.data.synthetic.forgeries`) and FF++ fakes come with mask videos.

=========  =======================================================================================
kind       what is written (see each importer's docstring for the real layout)
=========  =======================================================================================
``ffpp``   ``original_sequences/youtube/<c>/videos``, ``manipulated_sequences/<Method>/<c>/videos``
           and ``/masks/videos``, ``splits/{train,val,test}.json``; with ``dfd_actors`` > 0 also the
           DFD folders (``original_sequences/actors``, ``manipulated_sequences/DeepFakeDetection``)
``celebdf`` ``Celeb-real``, ``YouTube-real``, ``Celeb-synthesis``, ``List_of_testing_videos.txt``
``dfdc``   ``dataset.json``, ``original_videos``, ``method_A``, ``method_B`` (the preview set)
=========  =======================================================================================

Example:
    >>> root = write_dataset_tree("ffpp", "/tmp/ffpp", TreeSpec(ffpp_pairs=4))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from forgesweep.data.synthetic.faces import render_face, sample_identity, sample_poses, swap_identity, with_expression
from forgesweep.data.synthetic.forgeries import METHODS
from forgesweep.data.video import write_video
from forgesweep.errors import DataError

TreeKind = Literal["ffpp", "celebdf", "dfdc"]
TREE_KINDS: tuple[str, ...] = ("ffpp", "celebdf", "dfdc")


class TreeSpec(BaseModel):
    """Sizes of the synthetic dataset trees (defaults: a few dozen videos, seconds to write)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    frame_size: int = Field(64, ge=32, le=1024, description="video frames are frame_size x frame_size")
    face_size: int = Field(40, ge=16, le=1024, description="side of the rendered face inside the frame")
    frames_per_video: int = Field(4, ge=1, le=300)
    fps: int = Field(10, ge=1, le=120)
    ffpp_pairs: int = Field(5, ge=3, description="FF++ pairs (two originals each); split 60/20/20 by pair order")
    ffpp_methods: list[str] = Field(default_factory=lambda: ["Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"])
    compressions: list[Literal["raw", "c23", "c40"]] = Field(default_factory=lambda: ["c23"], min_length=1)
    masks: bool = Field(True, description="FF++ mask videos for every fake")
    dfd_actors: int = Field(0, ge=0, description="DFD actors inside the FF++ tree (0: no DFD folders)")
    celebdf_identities: int = Field(4, ge=2)
    youtube_reals: int = Field(2, ge=0)
    dfdc_identities: int = Field(4, ge=2)

    @field_validator("ffpp_methods")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [m for m in value if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown forgery method {unknown[0]!r}; known: {', '.join(METHODS)}")
        return value


def _rng(*key: object) -> np.random.Generator:
    # A SHA-256 of the key: stable across processes (Python's hash() is salted).
    digest = hashlib.sha256(repr(key).encode("utf-8")).digest()
    return np.random.default_rng(np.random.SeedSequence(list(np.frombuffer(digest, dtype=np.uint32))))


class _Renderer:
    """Renders the frames (and masks) of one video of a tree."""

    def __init__(self, spec: TreeSpec, kind: str) -> None:
        self.spec, self.kind = spec, kind
        # A target's clean frames are drawn once and reused by its real video and every fake of it.
        self._clean: dict[tuple[str, str], list] = {}

    def _clean_frames(self, target: str, clip: str) -> list:
        key = (target, clip)
        if key not in self._clean:
            ident = self._identity(target)
            poses = sample_poses(_rng(self.spec.seed, self.kind, "pose", target, clip), self.spec.frames_per_video)
            self._clean[key] = [render_face(ident, pose, self.spec.face_size) for pose in poses]
        return self._clean[key]

    def _identity(self, name: str):
        return sample_identity(_rng(self.spec.seed, self.kind, "identity", name))

    def video(self, target: str, method: str = "real", source: Optional[str] = None,
              clip: str = "0") -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Frames of ``target`` (forged with ``method`` from ``source``) and their masks."""
        spec = self.spec
        rng = _rng(spec.seed, self.kind, target, method, source, clip)
        cleans = self._clean_frames(target, clip)
        # The scene (background, where the face sits) belongs to the original video: its fakes keep it,
        # as FF++ fakes are made from their target's original.
        scene = _rng(spec.seed, self.kind, "scene", target, clip)
        background = scene.uniform(0.15, 0.85, 3).astype(np.float32)
        margin = spec.frame_size - spec.face_size
        if margin < 0:
            raise DataError(f"face_size ({spec.face_size}) exceeds frame_size ({spec.frame_size})")
        # Where the face sits: a start and a slow drift, so crops differ from frame to frame.
        x0, y0 = scene.integers(0, margin + 1, 2)
        drift = scene.integers(-2, 3, 2)
        frames, masks = [], []
        for t, clean in enumerate(cleans):
            ident, pose = clean.identity, clean.pose
            face, mask = clean.image, np.zeros(clean.image.shape[:2], np.uint8)
            if method != "real":
                forge, source_kind = METHODS[method]
                if source_kind == "identity":
                    other = render_face(swap_identity(ident, self._identity(source or target)), pose, spec.face_size)
                else:
                    driver = sample_poses(_rng(spec.seed, self.kind, "pose", source or target, clip),
                                          spec.frames_per_video)[t]
                    other = render_face(ident, with_expression(pose, driver), spec.face_size)
                face, mask = forge(clean, other, rng)
            x = int(np.clip(x0 + drift[0] * t, 0, margin))
            y = int(np.clip(y0 + drift[1] * t, 0, margin))
            frame = np.empty((spec.frame_size, spec.frame_size, 3), np.float32)
            frame[:] = background
            frame[y:y + spec.face_size, x:x + spec.face_size] = face
            full_mask = np.zeros((spec.frame_size, spec.frame_size, 3), np.uint8)
            full_mask[y:y + spec.face_size, x:x + spec.face_size] = mask[..., None]
            frames.append(np.clip(np.round(frame * 255), 0, 255).astype(np.uint8))
            masks.append(full_mask)
        return frames, masks

    def write(self, root: Path, rel: str, target: str, method: str = "real", source: Optional[str] = None,
              clip: str = "0", mask_rel: Optional[str] = None) -> None:
        frames, masks = self.video(target, method, source, clip)
        write_video(frames, root / rel, fps=self.spec.fps)
        if mask_rel is not None:
            write_video(masks, root / mask_rel, fps=self.spec.fps)


def _split_counts(n: int) -> tuple[int, int]:
    """(val, test) counts of ``n`` groups: 20% each, at least one, leaving at least one for train."""
    test = max(1, round(0.2 * n))
    val = max(1, round(0.2 * n)) if n - test > 1 else 0
    return val, test


def _ffpp(spec: TreeSpec, root: Path) -> None:
    r = _Renderer(spec, "ffpp")
    pairs = [(f"{2 * i:03d}", f"{2 * i + 1:03d}") for i in range(spec.ffpp_pairs)]
    n_val, n_test = _split_counts(len(pairs))
    n_train = len(pairs) - n_val - n_test
    splits = {"train": pairs[:n_train], "val": pairs[n_train:n_train + n_val], "test": pairs[n_train + n_val:]}
    (root / "splits").mkdir(parents=True)
    for split, members in splits.items():
        (root / "splits" / f"{split}.json").write_text(json.dumps([list(p) for p in members]), encoding="utf-8")
    for c in spec.compressions:
        for a, b in pairs:
            for vid in (a, b):
                r.write(root, f"original_sequences/youtube/{c}/videos/{vid}.mp4", vid)
            for method in spec.ffpp_methods:
                for target, source in ((a, b), (b, a)):
                    name = f"{target}_{source}"
                    mask = f"manipulated_sequences/{method}/masks/videos/{name}.mp4" if spec.masks else None
                    if mask is not None and (root / mask).exists():
                        mask = None  # masks do not depend on the compression level: written once
                    r.write(root, f"manipulated_sequences/{method}/{c}/videos/{name}.mp4", target, method, source,
                            mask_rel=mask)
        actors = [f"{i + 1:02d}" for i in range(spec.dfd_actors)]
        scenes = ("walking_outside", "kitchen_pan")
        for i, actor in enumerate(actors):
            for scene in scenes:
                r.write(root, f"original_sequences/actors/{c}/videos/{actor}__{scene}.mp4", f"actor{actor}", clip=scene)
            source = actors[(i + 1) % len(actors)]
            code = hashlib.sha256(f"{actor}{source}".encode()).hexdigest()[:8].upper()
            name = f"{actor}_{source}__{scenes[0]}__{code}"
            mask = f"manipulated_sequences/DeepFakeDetection/masks/videos/{name}.mp4" if spec.masks else None
            if mask is not None and (root / mask).exists():
                mask = None
            r.write(root, f"manipulated_sequences/DeepFakeDetection/{c}/videos/{name}.mp4", f"actor{actor}",
                    "Deepfakes", f"actor{source}", clip=scenes[0], mask_rel=mask)


def _celebdf(spec: TreeSpec, root: Path) -> None:
    r = _Renderer(spec, "celebdf")
    n = spec.celebdf_identities
    _, n_test = _split_counts(n)
    test_lines = []
    for i in range(n):
        real, fake = f"Celeb-real/id{i}_0000.mp4", f"Celeb-synthesis/id{i}_id{(i + 1) % n}_0000.mp4"
        r.write(root, real, f"id{i}")
        r.write(root, fake, f"id{i}", "Deepfakes", f"id{(i + 1) % n}")
        if i >= n - n_test:
            test_lines += [f"1 {real}", f"0 {fake}"]
    for k in range(spec.youtube_reals):
        rel = f"YouTube-real/{k:05d}.mp4"
        r.write(root, rel, f"yt{k}")
        if k == spec.youtube_reals - 1:
            test_lines.append(f"1 {rel}")
    (root / "List_of_testing_videos.txt").write_text("\n".join(test_lines) + "\n", encoding="utf-8")


def _dfdc(spec: TreeSpec, root: Path) -> None:
    r = _Renderer(spec, "dfdc")
    n = spec.dfdc_identities
    _, n_test = _split_counts(n)
    index = {}
    for i in range(n):
        person, other = f"{1255229 + i}", f"{1255229 + (i + 1) % n}"
        split = "test" if i >= n - n_test else "train"
        base = f"{person}_A_001"
        real = f"original_videos/{person}/{base}.mp4"
        r.write(root, real, person)
        index[real] = {"label": "real", "set": split, "augmentations": {}}
        for method, forgery in (("method_A", "FaceSwap"), ("method_B", "Deepfakes")):
            rel = f"{method}/{person}/{base}/{base}_{other}.mp4"
            r.write(root, rel, person, forgery, other)
            index[rel] = {"label": "fake", "set": split, "target_id": person, "swapped_id": other}
    (root / "dataset.json").write_text(json.dumps(index, indent=1, sort_keys=True), encoding="utf-8")


_WRITERS: dict[str, Callable[[TreeSpec, Path], None]] = {"ffpp": _ffpp, "celebdf": _celebdf, "dfdc": _dfdc}


def write_dataset_tree(kind: TreeKind, out_dir: str | Path, spec: Optional[TreeSpec] = None,
                       overwrite: bool = False) -> Path:
    """Write a synthetic ``kind`` tree (``ffpp``, ``celebdf``, ``dfdc``) into ``out_dir``.

    Written into a hidden sibling folder and renamed into place when complete, so an interrupted
    run never leaves a tree that looks whole.

    Returns:
        ``out_dir``.

    Raises:
        DataError: unknown kind, or ``out_dir`` exists and is not empty without ``overwrite``.
    """
    if kind not in _WRITERS:
        raise DataError(f"unknown dataset tree kind {kind!r}; known: {', '.join(TREE_KINDS)}")
    spec = spec or TreeSpec()
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise DataError(f"{out_dir} already exists and is not empty (pass overwrite=True to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _WRITERS[kind](spec, tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
