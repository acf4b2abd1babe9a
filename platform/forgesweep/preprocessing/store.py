"""Where preprocessing writes: a local folder or an ``s3://`` prefix, with the same layout.

::

    <out>/preprocess.json                 the recipe (PreprocessSpec.output_key), inputs, last summary
    <out>/frames/<video_id>/<frame>.png   face crops, frame = index in the source video (6 digits)
    <out>/masks/<video_id>/<frame>.png    manipulation masks cropped like their frame (where given)
    <out>/parts/<video_id>.jsonl          one video's frame rows: written last, it marks the video done
    <out>/manifest.jsonl                  every row, written once every video is done or skipped

Every file is written atomically: locally a temporary file renamed into place; on S3 an object
appears whole when its upload completes. A part file is written only after all its frames, so a
video whose part exists is complete, and a killed run leaves at worst frames that the next run
overwrites.
"""

from __future__ import annotations

import os
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

from forgesweep.data.object_store import describe_s3_error, is_s3, shared_cache
from forgesweep.errors import DataError

_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]")


def safe_rel(video_id: str) -> str:
    """A relative path for ``video_id``: each ``/``-separated part with unusual characters replaced
    by ``_``, and ``.``/``..``/empty parts made harmless (ids come from file names in datasets)."""
    parts = []
    for part in video_id.split("/"):
        part = _UNSAFE.sub("_", part)
        parts.append("_" + part if part in ("", ".", "..") else part)
    return "/".join(parts)


class OutputStore:
    """Files under an output root (local folder or ``s3://bucket/prefix``)."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/") if is_s3(root) else str(Path(root).expanduser().resolve())
        self.remote = is_s3(root)
        if self.remote and "/" not in self.root[len("s3://"):]:
            raise DataError(f"output {root!r} must name a bucket and a prefix: s3://bucket/prefix")

    def uri(self, rel: str) -> str:
        """Local path or ``s3://`` URI of ``rel``."""
        return f"{self.root}/{rel}" if self.remote else str(Path(self.root) / rel)

    def put_file(self, local: Path, rel: str) -> None:
        """Move (local) or upload (S3) the finished file ``local`` to ``rel``."""
        if self.remote:
            shared_cache().upload(local, self.uri(rel))
            return
        target = Path(self.uri(rel))
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(local, target)

    def put_text(self, rel: str, text: str) -> None:
        """Write ``text`` to ``rel`` atomically."""
        fd, tmp = tempfile.mkstemp(prefix=".put-", dir=None if self.remote else self._ensure_dir(rel))
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            self.put_file(Path(tmp), rel)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _ensure_dir(self, rel: str) -> str:
        folder = Path(self.uri(rel)).parent
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder)

    def staging_dir(self, rel: str) -> str:
        """A folder to write files into before :meth:`put_file`: beside their target locally (so the
        rename stays on one filesystem), a temporary folder for S3."""
        return self._ensure_dir(rel + "/x") if not self.remote else tempfile.mkdtemp(prefix="forgesweep-pre-")

    def read_text(self, rel: str) -> str | None:
        """Text of ``rel``, or None when it does not exist."""
        if not self.remote:
            path = Path(self.uri(rel))
            return path.read_text(encoding="utf-8") if path.is_file() else None
        return self._get(rel, missing_ok=True)

    def read_many(self, rels: Iterable[str]) -> dict[str, str]:
        """Texts of several existing files (S3 objects read in parallel)."""
        rels = list(rels)
        if not self.remote:
            return {r: Path(self.uri(r)).read_text(encoding="utf-8") for r in rels}
        if not rels:
            return {}
        with ThreadPoolExecutor(max_workers=min(8, len(rels))) as pool:
            texts = list(pool.map(self._get, rels))
        return dict(zip(rels, texts))

    def _get(self, rel: str, missing_ok: bool = False) -> str | None:
        # Read directly, not through the object cache: these small files change between runs,
        # and the cache keeps one version per URI for the life of a process.
        client = shared_cache().client
        try:
            body = client.get_object(Bucket=self._bucket, Key=self._key(rel))["Body"].read()
        except Exception as exc:
            if missing_ok and _is_not_found(exc):
                return None
            raise DataError(describe_s3_error(exc, self.uri(rel), client)) from None
        return body.decode("utf-8")

    def list(self, rel_dir: str) -> set[str]:
        """Relative paths of every file under ``rel_dir`` (recursively)."""
        if not self.remote:
            base = Path(self.uri(rel_dir))
            if not base.is_dir():
                return set()
            return {p.relative_to(self.root).as_posix() for p in base.rglob("*")
                    if p.is_file() and not p.name.startswith(".")}
        cache = shared_cache()
        prefix = self._key(rel_dir.rstrip("/") + "/")
        found = set()
        try:
            for page in cache.client.get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    found.add(obj["Key"][len(self._key("")):])
        except Exception as exc:
            raise DataError(describe_s3_error(exc, self.uri(rel_dir), cache.client)) from None
        return found

    @property
    def _bucket(self) -> str:
        return self.root[len("s3://"):].split("/", 1)[0]

    def _key(self, rel: str) -> str:
        prefix = self.root[len("s3://"):].split("/", 1)[1]
        return f"{prefix}/{rel}"


def _is_not_found(exc: Exception) -> bool:
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return False
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404
