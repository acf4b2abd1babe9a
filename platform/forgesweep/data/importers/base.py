"""What every dataset importer shares: found videos, problems, the report and the registry.

An importer scans a dataset root (:mod:`forgesweep.data.importers.tree`: a local folder or an
``s3://`` prefix) and returns a :class:`Scan`:

* ``items`` -- the videos it recognised, each with label, method, split and a ``video_id`` that
  starts with the dataset's name (``FF++/Deepfakes/000_003``), so ids of different datasets never
  collide when their manifests are merged;
* ``problems`` -- bad input, each with its path and a reason (a missing split file, a split id that
  names no video, a video in no split, a label that contradicts its folder, ...). The import stops
  on them, before anything is written, unless ``skip_bad`` is set; then they are skipped and
  counted;
* ``ignored`` -- files outside the dataset's layout (a README, a stray image), listed in the report
  and never fatal.

:func:`forgesweep.data.importers.run_import` then checks the videos themselves (empty files,
containers decord cannot open) and writes the VIDEO-level manifest.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, ClassVar, Optional

from pydantic import BaseModel, ConfigDict

from forgesweep.data.video import VIDEO_SUFFIXES
from forgesweep.data.importers.tree import Tree
from forgesweep.errors import DataError
from forgesweep.registry import Registry

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class VideoItem:
    """One video an importer found; ``rel`` and ``mask_rel`` are relative to the dataset root."""

    rel: str
    label: int
    method: str
    split: str
    video_id: str
    mask_rel: Optional[str] = None


@dataclass(frozen=True)
class Problem:
    """Something at ``path`` that could not be imported, and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class Scan:
    """What an importer found under a root (see the module docstring)."""

    items: list[VideoItem] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    ignored: list[Problem] = field(default_factory=list)


class BadInput(DataError):
    """Bad input found while importing or preprocessing; ``problems`` lists each with path and reason."""

    def __init__(self, message: str, problems: list[Problem]) -> None:
        super().__init__(message)
        self.problems = problems


def describe_problems(what: str, problems: list[Problem], max_listed: int = 20) -> str:
    """``<what>: N problem(s) ...`` followed by the first ``max_listed`` problems, one a line."""
    lines = [f"{what}: {len(problems)} problem(s); nothing was written (pass --skip-bad to skip and count them)"]
    lines += [f"  {p}" for p in problems[:max_listed]]
    if len(problems) > max_listed:
        lines.append(f"  ... and {len(problems) - max_listed} more")
    return "\n".join(lines)


class ImporterOptions(BaseModel):
    """Base of an importer's options: every option is a typed, described field; unknown ones fail."""

    model_config = ConfigDict(extra="forbid")


class DatasetImporter:
    """One dataset layout. Subclasses set the class attributes and implement :meth:`scan`."""

    name: ClassVar[str]  # registry name, e.g. "ffpp"
    dataset: ClassVar[str]  # manifest ``dataset`` of its rows, e.g. "FF++"
    description: ClassVar[str]  # one line for the CLI's help
    Options: ClassVar[type[ImporterOptions]] = ImporterOptions

    def __init__(self, options: Optional[ImporterOptions] = None) -> None:
        self.options = options if options is not None else self.Options()

    def dataset_name(self, tree: Tree) -> str:
        """The manifest ``dataset`` of this import (overridable by an importer option)."""
        return getattr(self.options, "dataset_name", None) or self.dataset

    def scan(self, tree: Tree) -> Scan:
        """Find the videos of ``tree``."""
        raise NotImplementedError


IMPORTERS: Registry[type[DatasetImporter]] = Registry("dataset importer")


@dataclass
class ImportReport:
    """What an import found and left out: counts per method and split, skipped and ignored files."""

    importer: str
    dataset: str
    root: str
    counts: Counter = field(default_factory=Counter)  # (method, split) -> videos
    masks: int = 0
    skipped: list[Problem] = field(default_factory=list)
    ignored: list[Problem] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (written beside the manifest)."""
        return {
            "importer": self.importer, "dataset": self.dataset, "root": self.root, "videos": self.total,
            "masks": self.masks,
            "counts": {m: {s: self.counts[(m, s)] for s in SPLITS if self.counts[(m, s)]} for m in self.methods()},
            "skipped": [{"path": p.path, "reason": p.reason} for p in self.skipped],
            "ignored": [{"path": p.path, "reason": p.reason} for p in self.ignored],
        }

    def methods(self) -> list[str]:
        """Methods in the order ``real`` first, then first seen."""
        seen = list(dict.fromkeys(m for m, _ in self.counts))
        return sorted(seen, key=lambda m: (m != "real", seen.index(m)))

    def format(self, max_listed: int = 20) -> str:
        """A readable table of counts, then the skipped and ignored files (the first ``max_listed``)."""
        lines = [f"{self.dataset} ({self.importer}) from {self.root}: {self.total} videos, {self.masks} with masks"]
        width = max([len("method")] + [len(m) for m in self.methods()])
        lines.append(f"  {'method':<{width}}  " + "  ".join(f"{s:>6}" for s in (*SPLITS, "total")))
        for m in self.methods():
            per = [self.counts[(m, s)] for s in SPLITS]
            lines.append(f"  {m:<{width}}  " + "  ".join(f"{n:>6}" for n in (*per, sum(per))))
        for title, entries in (("skipped (bad input, --skip-bad)", self.skipped),
                               ("ignored (outside the layout)", self.ignored)):
            if entries:
                lines.append(f"{title}: {len(entries)}")
                lines += [f"  {p}" for p in entries[:max_listed]]
                if len(entries) > max_listed:
                    lines.append(f"  ... and {len(entries) - max_listed} more (see the report JSON)")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def is_video(rel: str) -> bool:
    """Whether ``rel`` names a video file (by suffix)."""
    return PurePosixPath(rel).suffix.lower() in VIDEO_SUFFIXES


def stem(rel: str) -> str:
    """File name without its suffix: ``a/b/000_003.mp4`` -> ``000_003``."""
    return PurePosixPath(rel).stem


def without_suffix(rel: str) -> str:
    """``a/b/c.mp4`` -> ``a/b/c``."""
    return str(PurePosixPath(rel).with_suffix(""))


def hash_split(key: str, val_fraction: float, test_fraction: float, seed: int = 0) -> str:
    """A split for ``key`` drawn from a stable hash: the same key always gets the same split.

    About ``test_fraction`` of keys go to ``test`` and ``val_fraction`` to ``val``; adding or
    removing other keys never moves a key to another split.
    """
    digest = hashlib.sha256(f"{seed}:{key}".encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0 ** 64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def ordered_split(names: list[str], val_fraction: float, test_fraction: float) -> dict[str, str]:
    """Split a sorted list of group names (e.g. actors): the last ones test, the ones before val.

    Counts are rounded, but a non-zero fraction always gets at least one name when there are
    enough names to leave one for training.
    """
    names = sorted(names)
    n = len(names)

    def count(fraction: float) -> int:
        return 0 if fraction <= 0 else max(1, round(n * fraction))

    n_test = min(count(test_fraction), max(n - 1, 0))
    n_val = min(count(val_fraction), max(n - 1 - n_test, 0))
    out = {}
    for i, name in enumerate(names):
        out[name] = "test" if i >= n - n_test else "val" if i >= n - n_test - n_val else "train"
    return out
