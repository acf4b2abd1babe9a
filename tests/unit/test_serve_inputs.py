"""Serving input handling without Ray: body limits, content types, image/video decoding errors."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image
from starlette.requests import Request

from forgesweep.data.preprocess import load_image
from forgesweep.data.video import write_video
from forgesweep.serve.errors import RequestError
from forgesweep.serve.inputs import (accepts, aggregate, decode_image, decode_video, decode_video_clips, media_type,
                                     read_upload, video_suffix, Upload)


def _encode(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


PIXELS = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
PNG = _encode(PIXELS, "PNG")
JPEG = _encode(PIXELS, "JPEG")


def _request(body: bytes, content_type: str | None, chunk: int | None = None, declared: bool = True):
    """A Starlette request whose body arrives in chunks; records how many bytes were handed out."""
    headers = []
    if content_type is not None:
        headers.append((b"content-type", content_type.encode()))
    if declared:
        headers.append((b"content-length", str(len(body)).encode()))
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers, "query_string": b""}
    pieces = [body[i:i + chunk] for i in range(0, len(body), chunk)] if chunk else [body]
    sent = {"bytes": 0}

    async def receive():
        piece = pieces.pop(0) if pieces else b""
        sent["bytes"] += len(piece)
        return {"type": "http.request", "body": piece, "more_body": bool(pieces)}

    return Request(scope, receive), sent


def _multipart(parts: list[tuple[str, str | None, str | None, bytes]], boundary: str = "b0undary") -> tuple[bytes, str]:
    out = b""
    for name, filename, ctype, data in parts:
        out += f"--{boundary}\r\n".encode()
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"Content-Disposition: {disposition}\r\n".encode()
        if ctype:
            out += f"Content-Type: {ctype}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


def _read(body: bytes, content_type: str | None, kind: str = "image", limit: int = 10_000, **kwargs):
    request, sent = _request(body, content_type, **kwargs)
    return asyncio.run(read_upload(request, kind, limit)), sent


def _error(fn, *args, **kwargs) -> RequestError:
    with pytest.raises(RequestError) as info:
        fn(*args, **kwargs)
    return info.value


def test_media_types():
    assert media_type("Image/PNG; charset=binary") == "image/png"
    assert media_type(None) == ""
    assert accepts("image", "image/webp") and not accepts("image", "text/plain")
    assert accepts("video", "video/webm") and not accepts("video", "image/png")


def test_raw_image_body_is_read():
    upload, _ = _read(PNG, "image/png", chunk=500, declared=False)
    assert upload.data == PNG and upload.media_type == "image/png" and upload.stage is None


def test_declared_length_over_the_limit_is_refused_before_reading():
    error = _error(_read, PNG, "image/png", limit=1024)
    assert error.status == 413 and error.details["limit_bytes"] == 1024


def test_chunked_body_over_the_limit_stops_reading_early():
    request, sent = _request(PNG, "image/png", chunk=256, declared=False)
    with pytest.raises(RequestError) as info:
        asyncio.run(read_upload(request, "image", 1024))
    assert info.value.status == 413
    assert sent["bytes"] <= 1024 + 256 < len(PNG)


@pytest.mark.parametrize("ctype", ["text/plain", "application/json", None, "video/mp4"])
def test_unsupported_content_type_is_415(ctype):
    error = _error(_read, PNG, ctype)
    assert error.status == 415 and error.code == "unsupported_media_type"
    assert "image/*" in error.details["accepted"]


def test_empty_body_is_400():
    error = _error(_read, b"", "image/png")
    assert (error.status, error.code) == (400, "empty_body")


def test_multipart_file_and_stage_field():
    body, ctype = _multipart([("stage", None, None, b"2"), ("file", "face.png", "image/png", PNG)])
    upload, _ = _read(body, ctype)
    assert upload.data == PNG and upload.filename == "face.png" and upload.stage == "2"


def test_multipart_errors():
    body, ctype = _multipart([("file", "note.txt", "text/plain", b"hello")])
    assert _error(_read, body, ctype).status == 415
    body, ctype = _multipart([("stage", None, None, b"2")])
    assert _error(_read, body, ctype).code == "missing_file"
    body, ctype = _multipart([("file", "big.png", "image/png", PNG)])
    assert _error(_read, body, ctype, limit=1024).status == 413
    assert _error(_read, b"--x\r\nnonsense", "multipart/form-data").code == "bad_multipart"


def test_multipart_video_without_type_gets_one_from_its_name():
    body, ctype = _multipart([("file", "clip.webm", "application/octet-stream", b"\x1a\x45\xdf\xa3")])
    upload, _ = _read(body, ctype, kind="video")
    assert upload.media_type == "video/webm" and video_suffix(upload) == ".webm"
    assert video_suffix(Upload(b"x", "video/x-msvideo")) == ".avi"


def test_decoded_image_equals_the_training_decoder():
    assert np.array_equal(decode_image(PNG, 32, 10_000), load_image(PNG, 32))
    assert np.array_equal(decode_image(JPEG, 32, 10_000), load_image(JPEG, 32))


@pytest.mark.parametrize("data", [b"not an image at all", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"],
                         ids=["text", "png-signature-only", "jpeg-marker-only"])
def test_non_images_are_400(data):
    error = _error(decode_image, data, 32, 10_000)
    assert (error.status, error.code) == (400, "invalid_image")


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 0.7, 0.9, 0.98])
@pytest.mark.parametrize("original", [PNG, JPEG], ids=["png", "jpeg"])
def test_truncated_images_are_400_wherever_they_are_cut(original, fraction):
    error = _error(decode_image, original[: int(len(original) * fraction)], 32, 10_000)
    assert (error.status, error.code) == (400, "invalid_image"), error


def test_too_many_pixels_is_413_before_decoding():
    big = _encode(np.zeros((200, 200, 3), np.uint8), "PNG")
    error = _error(decode_image, big, 32, 200 * 200 - 1)
    assert (error.status, error.code) == (413, "image_too_large") and error.details["max_pixels"] == 39_999


def test_video_frames_evenly_spaced_and_resized(tmp_path):
    frames = [np.full((24, 24, 3), 20 * i, np.uint8) for i in range(7)]
    data = write_video(frames, tmp_path / "v.mp4").read_bytes()
    video = decode_video(data, ".mp4", 3, 16)
    assert video.total_frames == 7 and video.indices == [0, 3, 6]
    assert video.frames.shape == (3, 16, 16, 3) and video.frames.dtype == np.uint8
    assert abs(int(video.frames[1].mean()) - 60) <= 6  # frame 3 (value 60) after lossy encoding


@pytest.mark.parametrize("data", [b"garbage" * 50, PNG], ids=["garbage", "an-image"])
def test_undecodable_video_is_400(data):
    error = _error(decode_video, data, ".mp4", 4, 16)
    assert (error.status, error.code) == (400, "invalid_video")


def test_video_clips_cut_like_evaluation(tmp_path):
    frames = [np.full((24, 20, 3), 20 * i, np.uint8) for i in range(10)]
    data = write_video(frames, tmp_path / "v.mp4").read_bytes()
    video = decode_video_clips(data, ".mp4", clip_length=4, stride=2, clips_per_video=3, size=16)
    # Valid starts 0..3 (a 4-frame clip with stride 2 spans 7 frames): three evenly spaced.
    assert video.total_frames == 10 and video.starts == [0, 2, 3]
    assert video.clips.shape == (3, 4, 16, 16, 3) and video.clips.dtype == np.uint8
    # Clip 2 starts at frame 2 with stride 2: frames 2, 4, 6, 8 (values 40, 80, 120, 160).
    means = [int(video.clips[1, k].mean()) for k in range(4)]
    assert all(abs(m - v) <= 6 for m, v in zip(means, [40, 80, 120, 160])), means
    short = decode_video_clips(write_video(frames[:2], tmp_path / "s.mp4").read_bytes(), ".mp4", 4, 1, 3, 16)
    assert short.starts == [0] and short.clips.shape == (1, 4, 16, 16, 3)  # the last frame repeats
    assert np.array_equal(short.clips[0, 1], short.clips[0, 3])


@pytest.mark.parametrize("data", [b"garbage" * 50, PNG], ids=["garbage", "an-image"])
def test_undecodable_video_clips_are_400(data):
    error = _error(decode_video_clips, data, ".mp4", 4, 1, 2, 16)
    assert (error.status, error.code) == (400, "invalid_video")


def test_aggregate():
    assert aggregate([0.1, 0.2, 0.9], "mean") == pytest.approx(0.4)
    assert aggregate([0.1, 0.2, 0.9], "median") == pytest.approx(0.2)
    assert aggregate([0.1, 0.2, 0.9], "max") == pytest.approx(0.9)
    with pytest.raises(ValueError):
        aggregate([0.5], "mode")
    with pytest.raises(ValueError):
        aggregate([], "mean")
