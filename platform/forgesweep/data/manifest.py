"""The manifest: one JSON object per line describing one frame (or one video).

Fields (DESIGN.md, "Sample / manifest"):

* ``path``     -- local path (relative paths are relative to the manifest's folder) or ``s3://``
* ``label``    -- 0 real, 1 fake
* ``method``   -- ``real`` for genuine faces, else the forgery method (``Deepfakes``, ...)
* ``dataset``  -- where the sample comes from (``synthetic``, ``FF++``, ...)
* ``split``    -- ``train`` | ``val`` | ``test``
* ``video_id`` -- the video the frame belongs to; a video never crosses splits
* ``frame``    -- optional frame index inside the video
* ``mask``     -- optional path of a manipulation mask (same resolution as the frame)

Every row is validated on load; the first bad row is reported with its line number and field.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterable, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from forgesweep.data.object_store import is_s3, shared_cache
from forgesweep.errors import DataError, describe_validation_error

Split = Literal["train", "val", "test"]
REAL_METHOD = "real"


class ManifestRow(BaseModel):
    """One validated manifest row."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(min_length=1)
    label: Literal[0, 1]
    method: str = Field(min_length=1)
    dataset: str = Field(min_length=1)
    split: Split
    video_id: str = Field(min_length=1)
    frame: Optional[int] = Field(default=None, ge=0)
    mask: Optional[str] = None

    @model_validator(mode="after")
    def _label_matches_method(self) -> "ManifestRow":
        if (self.label == 0) != (self.method == REAL_METHOD):
            raise ValueError(
                f"label {self.label} contradicts method {self.method!r} "
                f"(label 0 goes with method {REAL_METHOD!r} and only with it)"
            )
        return self

    @property
    def key(self) -> str:
        """Stable sample id (the path as written in the manifest); replay buffers store these."""
        return self.path


class Manifest:
    """Validated rows plus the folder their relative paths are resolved against."""

    def __init__(self, rows: list[ManifestRow], root: Path | str, source: str = "<memory>") -> None:
        self.rows = rows
        # An s3:// manifest resolves its relative paths against its own s3 prefix.
        self.root: Path | str = root.rstrip("/") if is_s3(root) else Path(root)
        self.source = source
        self._by_key = {r.key: r for r in rows}
        if len(self._by_key) != len(rows):
            dup = next(k for k, n in Counter(r.key for r in rows).items() if n > 1)
            raise DataError(f"{source}: path {dup!r} appears more than once")
        _check_videos_stay_in_one_split(rows, source)

    def __len__(self) -> int:
        return len(self.rows)

    def resolve(self, row: ManifestRow) -> str:
        """Absolute local path (or the ``s3://`` URI unchanged) of a row's frame."""
        return _resolve(self.root, row.path)

    def resolve_mask(self, row: ManifestRow) -> Optional[str]:
        """Like :meth:`resolve` for the row's mask, or None."""
        return None if row.mask is None else _resolve(self.root, row.mask)

    def by_key(self, key: str) -> ManifestRow:
        """Row with sample id ``key``.

        Raises:
            DataError: if no row has that id (e.g. a checkpoint from another dataset).
        """
        try:
            return self._by_key[key]
        except KeyError:
            raise DataError(f"{self.source}: no sample with path {key!r}") from None

    def select(self, split: str, methods: Iterable[str]) -> list[ManifestRow]:
        """Rows of ``split`` whose method is one of ``methods`` (manifest order kept)."""
        wanted = set(methods)
        return [r for r in self.rows if r.split == split and r.method in wanted]

    def methods(self) -> list[str]:
        """Distinct methods in first-seen order."""
        return list(dict.fromkeys(r.method for r in self.rows))


def _resolve(root: Path | str, path: str) -> str:
    if is_s3(path) or Path(path).is_absolute():
        return path
    if is_s3(root):
        return f"{root}/{path}"
    return str(Path(root) / path)


def _check_videos_stay_in_one_split(rows: list[ManifestRow], source: str) -> None:
    split_of: dict[str, str] = {}
    for r in rows:
        seen = split_of.setdefault(r.video_id, r.split)
        if seen != r.split:
            raise DataError(
                f"{source}: video_id {r.video_id!r} appears in both {seen!r} and {r.split!r} splits"
            )


def read_manifest(path: str | Path, check_files: bool = True) -> Manifest:
    """Read and validate a JSONL manifest.

    Args:
        path: the manifest file.
        check_files: also check that every local ``path`` (and ``mask``) exists.

    Returns:
        The validated :class:`Manifest`.

    Raises:
        DataError: naming the file, the line number and the bad field, or the missing file.
    """
    if is_s3(path):  # fetched into the local object cache; rows resolve against its s3 prefix
        source, root = str(path), str(path).rsplit("/", 1)[0]
        path = shared_cache().fetch(str(path))
    else:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"manifest not found: {path}")
        source, root = str(path), path.resolve().parent
    rows: list[ManifestRow] = []
    with path.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{source}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(raw, dict):
                raise DataError(f"{source}:{lineno}: expected a JSON object, got {type(raw).__name__}")
            try:
                row = ManifestRow.model_validate(raw)
            except ValidationError as exc:
                raise DataError(f"{source}:{lineno}: field {describe_validation_error(exc)}") from None
            if check_files:
                for field in ("path", "mask"):
                    value = getattr(row, field)
                    # s3 objects are checked in bulk by prepare_data (one HEAD each, in parallel).
                    if value is not None and not is_s3(_resolve(root, value)):
                        if not Path(_resolve(root, value)).is_file():
                            raise DataError(f"{source}:{lineno}: field {field!r}: file not found: {value}")
            rows.append(row)
    if not rows:
        raise DataError(f"manifest {source} has no rows")
    return Manifest(rows, root, source=source)


def write_manifest(rows: Iterable[ManifestRow], path: str | Path) -> Path:
    """Write rows as JSONL atomically (a temporary file renamed into place).

    A crash mid-write therefore never leaves a truncated manifest behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row.model_dump(exclude_none=True), sort_keys=True) + "\n")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
