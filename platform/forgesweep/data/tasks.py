"""Task sequences: ordered subsets of the manifest that a detector learns one after another."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from forgesweep.data.manifest import Manifest, ManifestRow
from forgesweep.errors import DataError


@dataclass(frozen=True)
class Task:
    """One task: its name, position and the manifest rows of each split."""

    index: int
    name: str
    train: tuple[ManifestRow, ...]
    val: tuple[ManifestRow, ...]
    test: tuple[ManifestRow, ...]


def build_task_sequence(manifest: Manifest, specs: Sequence) -> list[Task]:
    """Turn task specs (``name``, ``methods``, optional ``datasets``) into tasks of the manifest.

    Raises:
        DataError: when a task selects no training or test rows, or only one class; the message
            names the task and lists what the manifest holds.
    """
    tasks = []
    for index, spec in enumerate(specs):
        datasets = set(spec.datasets) if spec.datasets else None
        splits = {}
        for split in ("train", "val", "test"):
            rows = manifest.select(split, spec.methods)
            if datasets is not None:
                rows = [r for r in rows if r.dataset in datasets]
            splits[split] = tuple(rows)
        for split in ("train", "test"):
            labels = Counter(r.label for r in splits[split])
            if len(labels) < 2:
                have = ", ".join(manifest.methods())
                raise DataError(
                    f"task {spec.name!r} (methods {spec.methods}) has {dict(labels) or 'no rows'} "
                    f"in the {split} split of {manifest.source}; it needs real and fake samples. "
                    f"Methods in the manifest: {have}"
                )
        tasks.append(Task(index, spec.name, splits["train"], splits["val"], splits["test"]))
    return tasks
