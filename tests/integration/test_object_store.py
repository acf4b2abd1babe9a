"""s3:// data through a real S3-compatible server (moto on loopback): cache, ETags, errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from forgesweep.config import load_config
from forgesweep.data.datasets import FrameCache, FrameDataset
from forgesweep.data.object_store import ObjectCache, describe_s3_error, parse_s3_uri
from forgesweep.data.prepare import prepare_data
from forgesweep.errors import DataError

DEFAULT = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "default.yaml"


@pytest.fixture()
def bucket(s3_env, request):
    name = "fs-" + request.node.name.replace("_", "-")[:40].lower()
    s3_env.client().create_bucket(Bucket=name)
    return name


def test_fetch_downloads_once_per_etag(s3_env, bucket, tmp_path):
    s3 = s3_env.client()
    s3.put_object(Bucket=bucket, Key="a/frame.png", Body=b"version-1")
    uri = f"s3://{bucket}/a/frame.png"
    first = ObjectCache(tmp_path / "c")
    path = first.fetch(uri)
    assert path.read_bytes() == b"version-1" and path.name == "frame.png" and first.downloads == 1
    again = ObjectCache(tmp_path / "c")  # a new process: same cache folder, same ETag
    assert again.fetch(uri) == path and again.downloads == 0
    s3.put_object(Bucket=bucket, Key="a/frame.png", Body=b"version-2")
    fresh = ObjectCache(tmp_path / "c")
    changed = fresh.fetch(uri)
    assert changed != path and changed.read_bytes() == b"version-2" and fresh.downloads == 1
    assert path.read_bytes() == b"version-1"  # the old copy is never overwritten in place
    assert not list((tmp_path / "c").rglob(".partial-*"))


def test_fetch_many_in_parallel(s3_env, bucket, tmp_path):
    s3 = s3_env.client()
    uris = []
    for i in range(12):
        s3.put_object(Bucket=bucket, Key=f"f/{i}.bin", Body=bytes([i]) * 10)
        uris.append(f"s3://{bucket}/f/{i}.bin")
    cache = ObjectCache(tmp_path / "c", max_workers=4)
    got = cache.fetch_many(uris + uris[:3])
    assert len(got) == 12 and cache.downloads == 12
    assert all(got[u].read_bytes() == bytes([i]) * 10 for i, u in enumerate(uris))


def test_missing_bucket_key_and_unreachable_endpoint_are_named(s3_env, bucket, tmp_path, monkeypatch):
    cache = ObjectCache(tmp_path / "c")
    with pytest.raises(DataError, match=rf"no object 'nope.png' in bucket '{bucket}' at http://127\.0\.0\.1"):
        cache.fetch(f"s3://{bucket}/nope.png")
    with pytest.raises(DataError, match="no-such-bucket-xyz"):
        cache.fetch("s3://no-such-bucket-xyz/k.png")
    with pytest.raises(DataError, match="must name a bucket and a key"):
        parse_s3_uri("s3://only-bucket")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on port 9
    with pytest.raises(DataError, match=r"cannot reach the S3 endpoint http://127\.0\.0\.1:9"):
        ObjectCache(tmp_path / "c2").fetch(f"s3://{bucket}/x.png")


def test_access_denied_message_names_the_chain_not_the_secret():
    from botocore.exceptions import ClientError

    exc = ClientError({"Error": {"Code": "InvalidAccessKeyId", "Message": "bad key AKIA123"},
                       "ResponseMetadata": {"HTTPStatusCode": 403}}, "HeadObject")
    text = describe_s3_error(exc, "s3://b/k.png")
    assert "access denied" in text and "standard AWS chain" in text and "AKIA123" not in text


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _upload_benchmark(s3, bucket: str, missing: bool = False) -> str:
    rows = []
    for split in ("train", "test"):
        for i in range(4):
            for label, method in ((0, "real"), (1, "Deepfakes")):
                key = f"bench/{split}/{method}/{i}.png"
                if not (missing and split == "test" and i == 3 and label == 1):
                    s3.put_object(Bucket=bucket, Key=key, Body=_png(40 + 150 * label + i))
                rows.append({"path": key[len("bench/"):], "label": label, "method": method, "dataset": "s3set",
                             "split": split, "video_id": f"{split}-{method}-{i}"})
    s3.put_object(Bucket=bucket, Key="bench/manifest.jsonl", Body="\n".join(json.dumps(r) for r in rows).encode())
    return f"s3://{bucket}/bench/manifest.jsonl"


def test_an_s3_manifest_trains_from_cached_frames(s3_env, bucket, tmp_path):
    uri = _upload_benchmark(s3_env.client(), bucket)
    cfg = load_config(DEFAULT, [f"data.manifest={uri}", "data.sequence=[Deepfakes]", "data.image_size=16"])
    manifest, tasks = prepare_data(cfg, echo=lambda _: None)
    assert manifest.resolve(tasks[0].train[0]).startswith(f"s3://{bucket}/bench/")
    dataset = FrameDataset(tasks[0].test, FrameCache(manifest, 16))
    sample = dataset[0]
    assert sample["images"].shape == (3, 16, 16)
    # Decoded from the downloaded object: a real frame of value 40 + i maps below zero.
    assert float(sample["images"].mean()) < -0.5


def test_a_vanished_s3_frame_fails_before_training_naming_its_key(s3_env, bucket):
    uri = _upload_benchmark(s3_env.client(), bucket, missing=True)
    cfg = load_config(DEFAULT, [f"data.manifest={uri}", "data.sequence=[Deepfakes]", "data.image_size=16"])
    with pytest.raises(DataError, match=rf"s3://{bucket}/bench/test/Deepfakes/3.png: no object"):
        prepare_data(cfg, echo=lambda _: None)
