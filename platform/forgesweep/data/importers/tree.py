"""A dataset root as a tree of files, local or ``s3://``: what importers scan.

Importers only ever list files under a folder, read small text files (split lists, metadata JSON)
and turn relative paths into the paths manifest rows store. :class:`LocalTree` and
:class:`S3Tree` do that for a local folder and an S3 prefix, so every importer reads datasets
from either without knowing which (``s3://`` anywhere a path is accepted).

S3 listings come from ``list_objects_v2`` (one request per 1000 keys), split files through the
local object cache (:mod:`forgesweep.data.object_store`); credentials from the standard AWS chain.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

from forgesweep.data.object_store import describe_s3_error, is_s3, shared_cache
from forgesweep.errors import DataError


@dataclass(frozen=True)
class FileEntry:
    """One file under a tree: its path relative to the root (``/``-separated) and size in bytes."""

    rel: str
    size: int


class LocalTree:
    """A dataset root on the local filesystem."""

    def __init__(self, root: Union[str, Path]) -> None:
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise DataError(f"dataset root not found or not a folder: {root}")

    def __str__(self) -> str:
        return str(self.root)

    def is_dir(self, rel: str) -> bool:
        """Whether ``rel`` is a folder under the root."""
        return (self.root / rel).is_dir()

    def exists(self, rel: str) -> bool:
        """Whether ``rel`` is a file under the root."""
        return (self.root / rel).is_file()

    def subdirs(self, rel: str = "") -> list[str]:
        """Names of the folders directly under ``rel`` (sorted; hidden ones left out)."""
        base = self.root / rel
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))

    def files(self, rel: str = "") -> Iterator[FileEntry]:
        """Every file under ``rel``, recursively, sorted by path (hidden files and folders left out)."""
        base = self.root / rel
        if not base.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                path = Path(dirpath) / name
                yield FileEntry(path.relative_to(self.root).as_posix(), path.stat().st_size)

    def size(self, rel: str) -> int:
        """Size in bytes of the file ``rel`` (-1 when it does not exist)."""
        try:
            return (self.root / rel).stat().st_size
        except OSError:
            return -1

    def read_text(self, rel: str) -> str:
        """Text of the file ``rel`` (DataError naming it when missing or unreadable)."""
        path = self.root / rel
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(f"file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read {path}: {exc}") from None

    def path(self, rel: str) -> str:
        """The path a manifest row stores for ``rel``: absolute, so the manifest can live anywhere."""
        return str(self.root / rel)


class S3Tree:
    """A dataset root under an ``s3://bucket/prefix``; the listing is read once and kept."""

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")
        # The root may be a whole bucket (no key), which parse_s3_uri rightly refuses for objects.
        bucket, _, key = self.uri[len("s3://"):].partition("/")
        if not bucket:
            raise DataError(f"s3 root {uri!r} must name a bucket: s3://bucket[/prefix]")
        self.bucket = bucket
        self.prefix = key.strip("/") + "/" if key.strip("/") else ""
        self._entries = self._list()
        if not self._entries:
            raise DataError(f"dataset root {self.uri} holds no objects")

    def __str__(self) -> str:
        return self.uri

    def _list(self) -> dict[str, int]:
        client = shared_cache().client
        entries: dict[str, int] = {}
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(self.prefix):]
                    if rel and not rel.endswith("/") and not any(p.startswith(".") for p in rel.split("/")):
                        entries[rel] = int(obj["Size"])
        except Exception as exc:  # botocore raises several unrelated types: all become one line
            raise DataError(describe_s3_error(exc, f"s3://{self.bucket}/{self.prefix or ''}", client)) from None
        return dict(sorted(entries.items()))

    def is_dir(self, rel: str) -> bool:
        base = rel.rstrip("/") + "/" if rel else ""
        return any(k.startswith(base) for k in self._entries)

    def exists(self, rel: str) -> bool:
        return rel in self._entries

    def subdirs(self, rel: str = "") -> list[str]:
        base = rel.rstrip("/") + "/" if rel else ""
        names = {k[len(base):].split("/", 1)[0] for k in self._entries if k.startswith(base) and "/" in k[len(base):]}
        return sorted(names)

    def files(self, rel: str = "") -> Iterator[FileEntry]:
        base = rel.rstrip("/") + "/" if rel else ""
        for key, size in self._entries.items():
            if key.startswith(base):
                yield FileEntry(key, size)

    def size(self, rel: str) -> int:
        return self._entries.get(rel, -1)

    def read_text(self, rel: str) -> str:
        if rel not in self._entries:
            raise DataError(f"file not found: {self.path(rel)}")
        path = shared_cache().fetch(self.path(rel))
        try:
            return Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read {self.path(rel)}: {exc}") from None

    def path(self, rel: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{rel}"


Tree = Union[LocalTree, S3Tree]


def open_tree(root: Union[str, Path]) -> Tree:
    """:class:`S3Tree` for an ``s3://`` root, else :class:`LocalTree`."""
    return S3Tree(str(root)) if is_s3(str(root)) else LocalTree(root)
