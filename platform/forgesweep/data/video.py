"""Video IO: writing frames to MP4 with PyAV and reading frames back with decord.

Writing uses H.264 (``libx264``, ``yuv420p``: the format every player and decord decode) when the
installed PyAV build has it, else MPEG-4 Part 2. Reading seeks by frame index, so a few evenly spaced
frames of a long video cost a few decodes, not the whole clip (DeepfakeBench samples 32 frames a
video this way).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from forgesweep.errors import DataError

#: Suffixes of the video files manifests and dataset importers recognise.
VIDEO_SUFFIXES = (".mp4", ".avi", ".webm", ".mov")


def _codec() -> str:
    import av

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def _pad_even(frame: np.ndarray) -> np.ndarray:
    # yuv420p stores chroma at half resolution, so encoders require even width and height; an odd
    # frame gets one replicated edge row/column (read back, the frame is that pixel larger).
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def write_video(frames: Sequence[np.ndarray], path: str | Path, fps: int = 10) -> Path:
    """Encode frames into an MP4 file, atomically (a temporary file renamed into place).

    Args:
        frames: HxWx3 uint8 RGB frames, all the same size (odd sizes are padded to even).
        path: the ``.mp4`` file to write; parent folders are created.
        fps: frame rate stored in the file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: if there are no frames or they are not equally sized HxWx3 uint8 arrays.

    Example:
        >>> import numpy as np, tempfile, os
        >>> p = write_video([np.zeros((32, 32, 3), np.uint8)] * 3, os.path.join(tempfile.mkdtemp(), "a.mp4"))
        >>> read_video_frames(p).shape
        (3, 32, 32, 3)
    """
    import av

    if len(frames) == 0:
        raise ValueError(f"write_video({path}): no frames")
    shape = frames[0].shape
    for i, f in enumerate(frames):
        if f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3 or f.shape != shape:
            raise ValueError(
                f"write_video({path}): frame {i} is {f.dtype} {f.shape}; expected uint8 {shape[:2]}x3"
            )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    padded = [_pad_even(np.ascontiguousarray(f)) for f in frames]
    codec = _codec()
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=fps)
            stream.height, stream.width = padded[0].shape[:2]
            stream.pix_fmt = "yuv420p"
            # One encoder thread, set as a codec option (PyAV's thread_count alone is overridden by the
            # options): with more, x264 output depends on thread timing, and the same frames would
            # not always give the same file. The clips are tiny, so nothing is lost.
            if codec == "libx264":
                stream.options = {"crf": "18", "preset": "veryfast", "threads": "1"}
            else:
                stream.codec_context.bit_rate = 4_000_000
                stream.options = {"threads": "1"}
            for f in padded:
                for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():  # flush the encoder's delayed frames
                container.mux(packet)
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def even_indices(total: int, num_frames: int) -> list[int]:
    """``min(num_frames, total)`` frame indices evenly spaced over ``0 .. total - 1``."""
    n = min(num_frames, total)
    return [int(i) for i in np.linspace(0, total - 1, n).round().astype(int)]


def read_video_frames(
    path: str | Path, indices: Optional[Sequence[int]] = None, num_frames: Optional[int] = None
) -> np.ndarray:
    """Decode frames of a video with decord.

    Args:
        path: the video file.
        indices: frame indices to read (in this order); mutually exclusive with ``num_frames``.
        num_frames: read this many evenly spaced frames, first and last included; a video with fewer
            frames gives all of them (the count is clamped, frames are never repeated).

    Returns:
        uint8 array ``[N, H, W, 3]`` (RGB). With neither argument, every frame.

    Raises:
        DataError: naming the file, when it is missing, cannot be decoded, is empty, or an index is
            out of range.
        ValueError: if both ``indices`` and ``num_frames`` are given, or ``num_frames`` < 1.
    """
    if indices is not None and num_frames is not None:
        raise ValueError("pass indices or num_frames, not both")
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    path = Path(path)
    reader, total = _open_reader(path)
    if num_frames is not None:
        wanted = even_indices(total, num_frames)
    elif indices is not None:
        wanted = [int(i) for i in indices]
        bad = [i for i in wanted if not 0 <= i < total]
        if bad:
            raise DataError(f"video {path} has {total} frames; index {bad[0]} is out of range")
    else:
        wanted = list(range(total))
    return _decode(reader, wanted, path)


def frame_count(path: str | Path) -> int:
    """Number of frames of a video, from its index (nothing is decoded).

    Raises:
        DataError: as :func:`read_video_frames`.
    """
    return _open_reader(Path(path))[1]


def read_sampled_frames(path: str | Path, num_frames: int) -> tuple[list[int], np.ndarray]:
    """``num_frames`` evenly spaced frames of a video and their indices, opening the file once.

    Seeks by index (decord decodes from the nearest key frame), so a few frames of a long video
    cost a few decodes. A video with fewer frames gives all of them.

    Returns:
        ``(indices, frames)``: frame indices in the video and uint8 ``[N, H, W, 3]`` RGB frames.

    Raises:
        DataError: as :func:`read_video_frames`.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    path = Path(path)
    reader, total = _open_reader(path)
    wanted = even_indices(total, num_frames)
    return wanted, _decode(reader, wanted, path)


def _open_reader(path: Path):
    """(decord reader, frame count) of ``path``; DataError when missing, empty or unreadable."""
    import decord

    if not path.is_file():
        raise DataError(f"video not found: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"video {path} is an empty file (0 bytes)")
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        total = len(reader)
    except Exception as exc:  # decord raises its own DECORDError (and RuntimeError) on bad input
        raise DataError(f"cannot read video {path}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    if total == 0:
        raise DataError(f"video {path} has no frames")
    return reader, total


def _decode(reader, wanted: list[int], path: Path) -> np.ndarray:
    if not wanted:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    try:
        try:
            batch = reader.get_batch(wanted).asnumpy()
        except Exception as exc:
            if "size must exactly match" not in str(exc):
                raise
            # decord 0.6 pads RGB rows for a few widths (16, 24, 48, 72 px): its frames come back
            # as HxWx4 or so and get_batch refuses to stack them. Read frame by frame and drop the
            # row padding instead.
            batch = np.stack([_strip_row_padding(reader[i].asnumpy()) for i in wanted])
    except Exception as exc:
        raise DataError(f"cannot decode frames {wanted} of video {path}: {exc}") from None
    return np.ascontiguousarray(batch, dtype=np.uint8)


def _strip_row_padding(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    if frame.shape[2:] == (3,):
        return frame
    return frame.reshape(h, -1)[:, : 3 * w].reshape(h, w, 3)
