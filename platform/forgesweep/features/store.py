"""Where cached features live: one folder per cache key, on a local disk or under ``s3://``.

Layout of ``<root>/<key digest>/``::

    shard-00000-<sha256[:16]>.safetensors   features [n, views, layers, dim] of n samples; the
    shard-00001-<sha256[:16]>.safetensors   metadata lists their sample ids
    ...
    index.json                              written last: the key's material, the views, and per
                                            shard its file name, SHA-256 and sample ids

Integrity: a shard is read only after the SHA-256 of its bytes matched the index, and its
sample ids matched too; anything else (missing, truncated, flipped bytes, unparsable) is
reported as corrupted and the caller recomputes it. An index whose material differs from the
key's (a stale or foreign folder) or that cannot be parsed is never used. Every file is
written whole under a temporary name and renamed (local) or put in one request (S3), and the
index only after the shards it lists, so a crash never leaves a folder that looks complete.
Shard names carry their hash, so two writers of one shard never overwrite each other's
half-finished file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from forgesweep.data.object_store import describe_s3_error, is_s3, parse_s3_uri, shared_cache
from forgesweep.errors import DataError
from forgesweep.features.key import FORMAT_VERSION, CacheKey, canonical_json

INDEX_FILE = "index.json"
FEATURES_TENSOR = "features"


@dataclass(frozen=True)
class ShardRecord:
    """One shard as the index lists it."""

    stem: str
    file: str
    sha256: str
    keys: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"stem": self.stem, "file": self.file, "sha256": self.sha256, "keys": list(self.keys)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ShardRecord":
        return cls(str(data["stem"]), str(data["file"]), str(data["sha256"]), tuple(str(k) for k in data["keys"]))


class FeatureStore:
    """Cache folders under ``root`` (a local directory or ``s3://bucket/prefix``).

    Args:
        root: the cache root (``features.root``); local roots are created on first write.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = str(root).rstrip("/") if is_s3(str(root)) else str(Path(root).expanduser())

    def location(self, key: CacheKey, name: str = "") -> str:
        """Path or URI of ``name`` in ``key``'s folder (the folder itself when ``name`` is empty)."""
        base = f"{self.root}/{key.digest}"
        return f"{base}/{name}" if name else base

    # ------------------------------------------------------------------ raw objects

    def _read(self, key: CacheKey, name: str) -> Optional[bytes]:
        """The bytes of ``name``, or None when it does not exist."""
        where = self.location(key, name)
        if not is_s3(where):
            try:
                return Path(where).read_bytes()
            except FileNotFoundError:
                return None
        parsed = parse_s3_uri(where)
        client = shared_cache().client
        try:
            return client.get_object(Bucket=parsed.bucket, Key=parsed.key)["Body"].read()
        except Exception as exc:  # botocore raises several unrelated types
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound"):
                return None
            raise DataError(f"feature cache: {describe_s3_error(exc, where, client)}") from None

    @staticmethod
    def _read_head(uri: str) -> Optional[dict[str, Any]]:
        """HEAD of an S3 object, or None when it does not exist."""
        parsed = parse_s3_uri(uri)
        client = shared_cache().client
        try:
            return client.head_object(Bucket=parsed.bucket, Key=parsed.key)
        except Exception as exc:
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound"):
                return None
            raise DataError(f"feature cache: {describe_s3_error(exc, uri, client)}") from None

    def _write(self, key: CacheKey, name: str, data: bytes) -> None:
        """Write ``name`` whole: a temporary file renamed into place, or a single S3 PUT."""
        where = self.location(key, name)
        if is_s3(where):
            parsed = parse_s3_uri(where)
            client = shared_cache().client
            try:
                client.put_object(Bucket=parsed.bucket, Key=parsed.key, Body=data)
            except Exception as exc:
                raise DataError(f"feature cache: {describe_s3_error(exc, where, client)}") from None
            return
        folder = Path(where).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.partial-")
        except OSError as exc:
            raise DataError(f"feature cache: cannot write into {folder}: {exc.strerror or exc}") from None
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, where)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # ------------------------------------------------------------------ index

    def read_index(self, key: CacheKey) -> tuple[Optional[dict[str, Any]], str]:
        """``(index, "")`` when ``key``'s folder holds a usable index, else ``(None, why not)``.

        An index is usable when it parses, has this format version, and its material equals
        ``key.material`` exactly (a stale or foreign folder is never read).
        """
        raw = self._read(key, INDEX_FILE)
        if raw is None:
            return None, "no cache yet"
        try:
            index = json.loads(raw)
            shards = [ShardRecord.from_json(s) for s in index["shards"]]
        except (ValueError, KeyError, TypeError) as exc:
            return None, f"unreadable index {self.location(key, INDEX_FILE)} ({type(exc).__name__}): recomputing"
        same = canonical_json(index.get("material")) == canonical_json(key.material)
        if index.get("format") != FORMAT_VERSION or not same:
            return None, f"stale index {self.location(key, INDEX_FILE)} (its key material differs): not read"
        index["shards"] = shards
        return index, ""

    def write_index(self, key: CacheKey, shards: Sequence[ShardRecord], extra: Optional[dict[str, Any]] = None) -> None:
        """Write the index listing ``shards`` (after they were written): the folder's commit point."""
        index = {"format": FORMAT_VERSION, "key": key.digest, "material": key.material, **(extra or {}),
                 "samples": sum(len(s.keys) for s in shards),
                 "shards": [s.to_json() for s in sorted(shards, key=lambda s: s.stem)]}
        self._write(key, INDEX_FILE, json.dumps(index, indent=1, sort_keys=True).encode("utf-8"))

    # ------------------------------------------------------------------ shards

    def put_shard(self, key: CacheKey, stem: str, features: torch.Tensor, keys: Sequence[str]) -> ShardRecord:
        """Write one shard (``features`` ``[n, views, layers, dim]`` of the samples ``keys``).

        Returns:
            Its index record (file name and SHA-256 of the bytes written).
        """
        if features.shape[0] != len(keys):
            raise ValueError(f"shard {stem}: {features.shape[0]} feature rows for {len(keys)} sample ids")
        data = save_safetensors({FEATURES_TENSOR: features.contiguous().cpu()},
                                metadata={"format": str(FORMAT_VERSION), "keys": json.dumps(list(keys))})
        sha = hashlib.sha256(data).hexdigest()
        name = f"{stem}-{sha[:16]}.safetensors"
        self._write(key, name, data)
        where = self.location(key, name)
        if not is_s3(where):
            # A recomputed shard need not hash like the one it replaces (its metadata may differ):
            # drop the older files of this stem, which no index will list again.
            for old in Path(where).parent.glob(f"{stem}-*.safetensors"):
                if old.name != name:
                    old.unlink(missing_ok=True)
        return ShardRecord(stem, name, sha, tuple(keys))

    def read_shard(self, key: CacheKey, record: ShardRecord) -> tuple[Optional[torch.Tensor], str]:
        """``(features, "")`` of a shard whose bytes match its record, else ``(None, why)``."""
        where = self.location(key, record.file)
        local: Optional[Path] = None
        if is_s3(where):
            # Through the node's object cache (keyed by ETag): trials on one node download a shard once.
            if self._read_head(where) is None:
                return None, f"shard {where} is missing"
            local = shared_cache().fetch(where)
            data: Optional[bytes] = local.read_bytes()
        else:
            data = self._read(key, record.file)
        if data is None:
            return None, f"shard {where} is missing"
        if hashlib.sha256(data).hexdigest() != record.sha256:
            if local is not None:
                local.unlink(missing_ok=True)  # a bad local copy must not be served again
            return None, f"shard {where} is corrupted (SHA-256 differs from the index)"
        try:
            features = load_safetensors(data)[FEATURES_TENSOR]
        except (SafetensorError, KeyError, ValueError) as exc:  # only if the index itself lies
            return None, f"shard {where} is unreadable ({exc})"
        if features.shape[0] != len(record.keys):
            return None, f"shard {where} holds {features.shape[0]} rows, the index lists {len(record.keys)}"
        return features, ""
