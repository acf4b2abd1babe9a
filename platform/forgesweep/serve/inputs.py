"""Request bodies to model inputs: size limits, content types, image and video decoding.

Everything that can be wrong with an upload becomes a :class:`RequestError` with the right
status (400 unreadable, 413 too large, 415 wrong type) before a model sees it, so bad input
never reaches a replica as an exception nobody expected.

Preprocessing is the training code path, imported: images go through
:func:`forgesweep.data.preprocess.load_image` (decode, RGB, bilinear resize), video frames are
read by :func:`forgesweep.data.video.read_video_frames` (decord) and resized by the same
function ``load_image`` uses; :func:`~forgesweep.data.preprocess.to_model_input` (the
normalisation) runs in the model replica. A served score therefore equals the offline score
for the same file.
"""

from __future__ import annotations

import io
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from forgesweep.data.preprocess import load_image, resize_rgb
from forgesweep.data.video import even_indices, read_video_frames
from forgesweep.errors import DataError
from forgesweep.serve.errors import RequestError

try:  # Starlette's multipart parser; without it only raw bodies are accepted
    import python_multipart
except ImportError:  # pragma: no cover - depends on the installation
    python_multipart = None

MULTIPART = "multipart/form-data"
# Multipart framing (boundaries, part headers, a stage field) on top of the file itself.
MULTIPART_OVERHEAD = 64 * 1024
# Container types decord reads, with the suffix the temporary file gets (FFmpeg probes the
# content, the suffix only helps it guess).
VIDEO_TYPES = {"video/mp4": ".mp4", "video/x-msvideo": ".avi", "video/avi": ".avi", "video/msvideo": ".avi",
               "video/webm": ".webm"}
_GENERIC_TYPES = {"", "application/octet-stream"}
_VIDEO_SUFFIXES = {".mp4", ".avi", ".webm"}


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its bytes, media type and (multipart only) filename and form fields."""

    data: bytes
    media_type: str
    filename: Optional[str] = None
    stage: Optional[str] = None


def media_type(content_type: Optional[str]) -> str:
    """``"image/PNG; charset=x"`` -> ``"image/png"``; missing -> ``""``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def accepts(kind: str, media: str) -> bool:
    """Whether a body of ``media`` type can be a ``kind`` (``"image"`` or ``"video"``) upload."""
    return media.startswith("image/") if kind == "image" else media in VIDEO_TYPES


def accepted_types(kind: str) -> list[str]:
    """Content types a ``kind`` route takes, for 415 messages and the OpenAPI schema."""
    bodies = ["image/*"] if kind == "image" else sorted(VIDEO_TYPES)
    return bodies + [MULTIPART]


def _too_large(what: str, limit: int) -> RequestError:
    return RequestError(413, "payload_too_large", f"{what} is larger than the limit of {limit} bytes",
                        {"limit_bytes": limit})


async def read_body(request: Request, limit: int, what: str = "request body") -> bytes:
    """The request body, refusing to read past ``limit`` bytes.

    A declared ``Content-Length`` over the limit is refused before anything is read; a chunked
    body is counted as it arrives, so an oversized upload never sits in memory whole.

    Raises:
        RequestError: 413 over the limit, 400 for a malformed ``Content-Length``.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise _too_large(what, limit)
        except ValueError:
            raise RequestError(400, "bad_content_length", f"Content-Length is not a number: {declared!r}") from None
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise _too_large(what, limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def _parse_multipart(request: Request, body: bytes, kind: str) -> tuple[UploadFile, Optional[str], bytes]:
    # Starlette parses forms from the request's receive channel; the body was already read
    # (with its size limit), so the parser gets a channel that replays it.
    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    if python_multipart is None:
        raise RequestError(415, "unsupported_media_type", "this server cannot parse multipart bodies (python-multipart "
                           f"is not installed); send the {kind} as the raw body", {"accepted": accepted_types(kind)[:-1]})
    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=8)
    except MultiPartException as exc:  # raised as is outside an app, as a 400 HTTPException inside one
        raise RequestError(400, "bad_multipart", f"malformed multipart body: {exc.message}") from None
    except HTTPException as exc:
        raise RequestError(400, "bad_multipart", f"malformed multipart body: {exc.detail}") from None
    try:
        files = [(key, value) for key, value in form.multi_items() if isinstance(value, UploadFile)]
        if not files:
            raise RequestError(400, "missing_file", f"the multipart body has no file part; send the {kind} as "
                                                    f"a file field, e.g. curl -F file=@face.png")
        stage = form.get("stage")
        upload = files[0][1]
        data = await upload.read()
        return upload, stage if isinstance(stage, str) else None, data
    finally:
        await form.close()


async def read_upload(request: Request, kind: str, limit: int) -> Upload:
    """The file a ``kind`` (``"image"``/``"video"``) route was sent: a raw body or a multipart part.

    Raises:
        RequestError: 415 for a content type the route does not take, 413 over ``limit``,
            400 for an empty body or malformed multipart.
    """
    media = media_type(request.headers.get("content-type"))
    if media == MULTIPART:
        body = await read_body(request, limit + MULTIPART_OVERHEAD)
        upload, stage, data = await _parse_multipart(request, body, kind)
        part_media = media_type(upload.content_type)
        suffix = os.path.splitext(upload.filename or "")[1].lower()
        # A part without a specific type (curl sends octet-stream for unknown extensions) is
        # left to the decoder, which knows an image or a video when it sees one.
        if part_media not in _GENERIC_TYPES and not accepts(kind, part_media):
            raise RequestError(415, "unsupported_media_type",
                               f"file part {upload.filename or ''!r} has type {part_media!r}; this route takes "
                               f"{', '.join(accepted_types(kind)[:-1])}", {"accepted": accepted_types(kind)})
        if len(data) > limit:
            raise _too_large(f"file {upload.filename or ''!r}", limit)
        if kind == "video" and part_media in _GENERIC_TYPES:
            part_media = next((t for t, s in VIDEO_TYPES.items() if s == suffix), "video/mp4")
        result = Upload(data, part_media, upload.filename, stage)
    elif accepts(kind, media):
        result = Upload(await read_body(request, limit, f"{kind} body"), media)
    else:
        shown = media or "no Content-Type"
        raise RequestError(415, "unsupported_media_type",
                           f"{shown} is not supported here; send {' or '.join(accepted_types(kind))}",
                           {"accepted": accepted_types(kind)})
    if not result.data:
        raise RequestError(400, "empty_body", f"the request carries no {kind} (empty body)")
    return result


def decode_image(data: bytes, size: int, max_pixels: int) -> np.ndarray:
    """Image bytes -> ``[size, size, 3]`` uint8 RGB, exactly as training decodes frames.

    The dimensions are read from the header first, so an image with too many pixels is refused
    before its pixels are decoded.

    Raises:
        RequestError: 400 for bytes that are not a complete image, 413 for too many pixels.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except Image.DecompressionBombError as exc:  # beyond PIL's own limit, whatever ours is
        raise RequestError(413, "image_too_large", f"the image is too large to decode: {exc}",
                           {"max_pixels": max_pixels}) from None
    except UnidentifiedImageError:
        raise RequestError(400, "invalid_image", "the body is not an image in any format PIL reads") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise RequestError(400, "invalid_image", f"the image header is unreadable: {exc}") from None
    if width * height > max_pixels:
        raise RequestError(413, "image_too_large", f"the image is {width}x{height} = {width * height} pixels; "
                                                   f"the limit is {max_pixels}", {"max_pixels": max_pixels})
    try:
        return load_image(data, size)
    except DataError as exc:
        # load_image names the file ("unreadable frame <bytes>: ..."); an upload has no name.
        reason = str(exc).split(": ", 1)[-1]
        raise RequestError(400, "invalid_image", f"the image cannot be decoded: {reason}") from None
    except SyntaxError as exc:  # PIL's PNG reader reports some damaged chunks as SyntaxError
        raise RequestError(400, "invalid_image", f"the image cannot be decoded: {exc}") from None


@dataclass(frozen=True)
class VideoFrames:
    """Frames sampled from an uploaded video, ready for the model."""

    frames: np.ndarray  # uint8 [N, size, size, 3]
    indices: list[int]  # each frame's index in the video
    total_frames: int


@contextmanager
def _upload_file(data: bytes, suffix: str) -> Iterator[str]:
    """The upload's bytes in a temporary file (decord reads files), removed afterwards whatever happens."""
    with tempfile.TemporaryDirectory(prefix="forgesweep-video-") as tmp:
        path = os.path.join(tmp, f"upload{suffix}")
        with open(path, "wb") as fh:
            fh.write(data)
        yield path


def decode_video(data: bytes, suffix: str, num_frames: int, size: int) -> VideoFrames:
    """Video bytes -> ``num_frames`` evenly spaced frames (first and last included), resized.

    Raises:
        RequestError: 400 when decord cannot open or decode the video.
    """
    import decord

    with _upload_file(data, suffix) as path:
        try:
            total = len(decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1))
        except Exception as exc:  # decord raises its own DECORDError/RuntimeError for any bad input
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise RequestError(400, "invalid_video", f"the video cannot be opened by decord: {first}") from None
        if total == 0:
            raise RequestError(400, "invalid_video", "the video has no frames")
        indices = even_indices(total, num_frames)
        try:
            raw = read_video_frames(path, indices=indices)
        except DataError as exc:
            raise RequestError(400, "invalid_video", str(exc).replace(path, "the upload")) from None
    frames = np.stack([resize_rgb(Image.fromarray(frame), size) for frame in raw])
    return VideoFrames(frames, indices, total)


@dataclass(frozen=True)
class VideoClips:
    """Clips cut from an uploaded video for a clip model, the way evaluation cuts them."""

    clips: np.ndarray  # uint8 [n_clips, clip_length, size, size, 3]
    starts: list[int]  # each clip's first frame in the video
    total_frames: int


def decode_video_clips(data: bytes, suffix: str, clip_length: int, stride: int, clips_per_video: int,
                       size: int) -> VideoClips:
    """Video bytes -> the evenly spaced clips a clip model scores (``data.clips`` geometry).

    Frames go through :class:`forgesweep.data.clips.VideoFrameCache`, the reader evaluation
    uses for video files, and clips are cut with the same :func:`clip_starts` /
    :func:`clip_indices`, so a served video score equals the offline video-level score.

    Raises:
        RequestError: 400 when decord cannot open or decode the video.
    """
    from forgesweep.data.clips import VideoFrameCache, clip_indices, clip_starts, video_frame_count

    with _upload_file(data, suffix) as path:
        try:
            total = video_frame_count(path)
            starts = clip_starts(total, clip_length, stride, clips_per_video)
            wanted = [clip_indices(total, a, clip_length, stride) for a in starts]
            needed = sorted({i for idx in wanted for i in idx})
            frames = VideoFrameCache(size).get(path, needed)  # [N, 3, S, S] uint8
        except DataError as exc:
            reason = str(exc).replace(path, "the upload")
            raise RequestError(400, "invalid_video", f"the video cannot be decoded: {reason}") from None
    row_of = {i: p for p, i in enumerate(needed)}
    hwc = frames.permute(0, 2, 3, 1).numpy()
    clips = np.stack([hwc[[row_of[i] for i in idx]] for idx in wanted])
    return VideoClips(np.ascontiguousarray(clips), starts, total)


def video_suffix(upload: Upload) -> str:
    """File suffix for a video upload (from its name, else its media type)."""
    suffix = os.path.splitext(upload.filename or "")[1].lower()
    return suffix if suffix in _VIDEO_SUFFIXES else VIDEO_TYPES.get(upload.media_type, ".mp4")


def aggregate(probs: list[float], how: str) -> float:
    """A video's fake probability from its frames' (``mean``, ``median`` or ``max``)."""
    if not probs:
        raise ValueError("no frame scores to aggregate")
    values = np.asarray(probs, dtype=np.float64)
    if how == "mean":
        return float(values.mean())
    if how == "median":
        return float(np.median(values))
    if how == "max":
        return float(values.max())
    raise ValueError(f"unknown aggregate {how!r}; known: mean, median, max")
