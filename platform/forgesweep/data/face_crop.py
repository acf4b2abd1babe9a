"""Face cropping for real videos: a pluggable detector, the largest face, an enlarged square box.

Detectors implement :class:`FaceDetector` (``detect(image) -> list[FaceBox]``) and register under a
name in :data:`DETECTORS`:

* ``haar`` -- OpenCV's frontal-face Haar cascade (:class:`HaarCascadeDetector`). It ships inside the
  ``opencv-python-headless`` wheel (``cv2.data.haarcascades``), so it works offline; install it with
  the optional extra ``pip install 'forgesweep[faces]'``. OpenCV 5 moved the cascades out of the
  main wheel, hence the extra pins ``<5``.
* ``none`` -- "faces already cropped": every frame is taken whole and only resized
  (:class:`AlreadyCropped`).

:class:`FaceCropper` turns a video's sampled frames into fixed-size face crops:

1. the detector's **largest** box (by area) is the face -- in forgery datasets the manipulated face is
   the main subject, background faces are smaller;
2. the box is made **square** around its centre with side ``scale`` x its longer side (1.3 by default,
   the margin FaceForensics++ and DeepfakeBench crop with: blending seams sit at the face boundary,
   so a tight box would cut off the evidence);
3. it is **clamped** to the frame: shifted inside when it sticks out, shrunk to the frame's shorter
   side when it is larger than the frame;
4. the crop is resized (bilinear) to ``size`` x ``size``.

When no face is found in a frame, ``fallback`` decides (see :data:`FALLBACKS`):

* ``nearest`` (default): the box of the nearest sampled frame of the same video that had a face --
  faces move little between frames, and a missed detection should not drop a frame; when no frame
  of the video has a face, ``center``;
* ``center``: the largest centred square of the frame;
* ``full``: the whole frame, squashed to a square;
* ``skip``: the frame is dropped (a video that loses every frame is reported as bad input).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional, Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image

from forgesweep.errors import UserError
from forgesweep.registry import Registry

Fallback = Literal["nearest", "center", "full", "skip"]
FALLBACKS: tuple[str, ...] = ("nearest", "center", "full", "skip")


@dataclass(frozen=True)
class FaceBox:
    """An axis-aligned box in pixels: top-left corner ``(x, y)``, width ``w``, height ``h``."""

    x: int
    y: int
    w: int
    h: int

    @property
    def area(self) -> int:
        return self.w * self.h

    def as_list(self) -> list[int]:
        """``[x, y, w, h]`` (JSON-friendly)."""
        return [self.x, self.y, self.w, self.h]


@runtime_checkable
class FaceDetector(Protocol):
    """Finds faces in one HxWx3 uint8 RGB frame; returns every box found (any order, maybe none)."""

    def detect(self, image: np.ndarray) -> list[FaceBox]: ...


DETECTORS: Registry[Callable[..., FaceDetector]] = Registry("face detector")


@DETECTORS.register("none")
class AlreadyCropped:
    """The frames are face crops already: the whole frame is the face."""

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        h, w = image.shape[:2]
        return [FaceBox(0, 0, w, h)]


@DETECTORS.register("haar")
class HaarCascadeDetector:
    """OpenCV's Haar cascade for frontal faces, loaded from the cascade files inside the cv2 wheel.

    Args:
        cascade: file name under ``cv2.data.haarcascades``, or a path to a cascade XML.
        scale_factor: image pyramid step of ``detectMultiScale``.
        min_neighbors: overlapping detections a face needs (higher: fewer false faces).
        min_face_fraction: smallest face side, as a fraction of the frame's shorter side.
        max_side: frames with a longer side are downscaled to this before detection (boxes are
            scaled back): a cascade on a 1080p frame costs seconds, and faces stay large enough.

    Raises:
        UserError: OpenCV is missing (install the ``faces`` extra) or the cascade file is not found.
    """

    def __init__(self, cascade: str = "haarcascade_frontalface_default.xml", scale_factor: float = 1.1,
                 min_neighbors: int = 4, min_face_fraction: float = 0.1, max_side: int = 640) -> None:
        try:
            import cv2
        except ImportError:
            raise UserError("face detector 'haar' needs OpenCV: pip install 'forgesweep[faces]' "
                            "(opencv-python-headless<5, whose wheel ships the Haar cascades)") from None
        if not hasattr(cv2, "CascadeClassifier"):
            raise UserError(f"OpenCV {cv2.__version__} has no CascadeClassifier (OpenCV 5 moved it out of the "
                            f"main wheel); install opencv-python-headless<5")
        path = Path(cascade)
        if not path.is_file():
            path = Path(cv2.data.haarcascades) / cascade
        if not path.is_file():
            raise UserError(f"Haar cascade not found: {cascade} (looked in {cv2.data.haarcascades})")
        self._cv2 = cv2
        self._classifier = cv2.CascadeClassifier(str(path))
        if self._classifier.empty():
            raise UserError(f"cannot load the Haar cascade {path}")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_face_fraction = min_face_fraction
        self.max_side = max_side

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        cv2 = self._cv2
        h, w = image.shape[:2]
        ratio = min(1.0, self.max_side / max(h, w))
        gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
        if ratio < 1.0:
            gray = cv2.resize(gray, (max(1, round(w * ratio)), max(1, round(h * ratio))),
                              interpolation=cv2.INTER_AREA)
        side = max(8, int(min(gray.shape) * self.min_face_fraction))
        found = self._classifier.detectMultiScale(gray, scaleFactor=self.scale_factor,
                                                  minNeighbors=self.min_neighbors, minSize=(side, side))
        return [FaceBox(round(x / ratio), round(y / ratio), round(bw / ratio), round(bh / ratio))
                for x, y, bw, bh in (found if len(found) else [])]


def build_detector(name: str) -> FaceDetector:
    """The detector registered as ``name`` (UserError listing the known names otherwise)."""
    return DETECTORS.get(name)()


def largest_box(boxes: Sequence[FaceBox]) -> Optional[FaceBox]:
    """The box with the largest area (the first of equals), or None for no boxes."""
    return max(boxes, key=lambda b: b.area) if boxes else None


def enlarge_box(box: FaceBox, scale: float, width: int, height: int) -> FaceBox:
    """A square box around ``box``'s centre, side ``scale`` x its longer side, clamped to the frame.

    A box that sticks out of the frame is shifted back inside (keeping its size) rather than cut,
    so crops keep their aspect ratio; a box larger than the frame shrinks to the frame's shorter
    side.

    Example:
        >>> enlarge_box(FaceBox(40, 40, 20, 20), 1.5, 100, 100)
        FaceBox(x=35, y=35, w=30, h=30)
        >>> enlarge_box(FaceBox(0, 0, 20, 20), 1.5, 100, 100)  # shifted inside, not cut
        FaceBox(x=0, y=0, w=30, h=30)
    """
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if width < 1 or height < 1:
        raise ValueError(f"frame must be at least 1x1, got {width}x{height}")
    side = max(1, min(round(max(box.w, box.h) * scale), width, height))
    cx, cy = box.x + box.w / 2.0, box.y + box.h / 2.0
    x = min(max(round(cx - side / 2.0), 0), width - side)
    y = min(max(round(cy - side / 2.0), 0), height - side)
    return FaceBox(int(x), int(y), int(side), int(side))


def center_box(width: int, height: int) -> FaceBox:
    """The largest centred square of a ``width`` x ``height`` frame."""
    side = min(width, height)
    return FaceBox((width - side) // 2, (height - side) // 2, side, side)


@dataclass(frozen=True)
class Crop:
    """One cropped frame: ``image`` (``size`` x ``size`` x 3 uint8), its ``box`` in the source frame,
    and ``source``: ``detected``, ``nearest``, ``center`` or ``full`` (how the box was chosen)."""

    image: np.ndarray
    box: FaceBox
    source: str


def crop_resize(image: np.ndarray, box: FaceBox, size: int) -> np.ndarray:
    """``image[box]`` resized (bilinear) to ``size`` x ``size``; the same for masks (``HxW``)."""
    patch = image[box.y:box.y + box.h, box.x:box.x + box.w]
    if patch.shape[:2] == (size, size):
        return np.ascontiguousarray(patch)
    resample = Image.NEAREST if patch.ndim == 2 else Image.BILINEAR  # masks stay binary
    return np.asarray(Image.fromarray(np.ascontiguousarray(patch)).resize((size, size), resample), dtype=np.uint8)


class FaceCropper:
    """Crops the face of every frame of a video (see the module docstring for the rules).

    Args:
        detector: a :class:`FaceDetector`.
        size: output side in pixels.
        scale: box enlargement (1.3 by default).
        fallback: what to do with a frame where no face is found (:data:`FALLBACKS`).
    """

    def __init__(self, detector: FaceDetector, size: int = 256, scale: float = 1.3,
                 fallback: Fallback = "nearest") -> None:
        if fallback not in FALLBACKS:
            raise UserError(f"unknown face fallback {fallback!r}; known: {', '.join(FALLBACKS)}")
        if size < 1 or scale <= 0:
            raise ValueError(f"size must be >= 1 and scale > 0, got size={size}, scale={scale}")
        self.detector = detector
        self.size = size
        self.scale = scale
        self.fallback = fallback
        # A whole-frame detector needs no enlargement: the frame is the crop.
        self._whole_frame = isinstance(detector, AlreadyCropped)

    def boxes(self, frames: Sequence[np.ndarray]) -> list[tuple[Optional[FaceBox], str]]:
        """For each frame, its crop box and how it was chosen; ``(None, "skip")`` for dropped frames."""
        found: list[Optional[FaceBox]] = []
        for frame in frames:
            h, w = frame.shape[:2]
            face = largest_box(self.detector.detect(frame))
            if face is not None and not self._whole_frame:
                face = enlarge_box(face, self.scale, w, h)
            found.append(face)
        hits = [i for i, b in enumerate(found) if b is not None]
        out: list[tuple[Optional[FaceBox], str]] = []
        for i, (frame, box) in enumerate(zip(frames, found)):
            h, w = frame.shape[:2]
            if box is not None:
                out.append((box, "detected"))
            elif self.fallback == "skip":
                out.append((None, "skip"))
            elif self.fallback == "full":
                out.append((FaceBox(0, 0, w, h), "full"))
            elif self.fallback == "nearest" and hits:
                j = min(hits, key=lambda k: (abs(k - i), k))
                out.append((_fit(found[j], w, h), "nearest"))
            else:
                out.append((center_box(w, h), "center"))
        return out

    def crop_video(self, frames: Sequence[np.ndarray]) -> list[Optional[Crop]]:
        """Crops of ``frames`` in order; None where ``fallback: skip`` dropped a frame."""
        crops: list[Optional[Crop]] = []
        for frame, (box, source) in zip(frames, self.boxes(frames)):
            crops.append(None if box is None else Crop(crop_resize(frame, box, self.size), box, source))
        return crops


def _fit(box: FaceBox, width: int, height: int) -> FaceBox:
    # Frames of one video share their size, but clamp anyway: a box must never leave its frame.
    side = min(box.w, width, height)
    return FaceBox(min(box.x, width - side), min(box.y, height - side), side, side)
