"""DFDC preview (Dolhansky et al., 2019), and the full DFDC's per-part metadata, from their JSON.

The preview set (``dfdc_preview_set``) describes every video in one ``dataset.json`` at its
root, keyed by the video's path::

    {"original_videos/1255229/1255229_A_001.mp4": {"label": "real", "set": "train", ...},
     "method_A/1255229/1255229_A_001/1255229_A_001_B.mp4": {"label": "fake", "set": "test", ...}}

Reals live under ``original_videos/``, fakes under ``method_A/`` and ``method_B/`` (its two
face-swap methods). The full DFDC training set instead has a ``metadata.json`` per part folder
(``dfdc_train_part_0/metadata.json``: ``{"aaqaifqrwn.mp4": {"label": "FAKE", "split": "train",
"original": "..."}}``); the importer reads whichever the root has (``dataset.json`` first).

Rows: ``dataset`` ``DFDC-P`` (``DFDC`` for the full set); reals ``method: real``; fakes the
preview's method folder (``method_A``, ``method_B``), ``DFDC`` for the full set; ids
``DFDC-P/<path without .mp4>``. The metadata's split is kept (``validation`` means ``val``).

Problems (skipped with ``skip_bad``): no metadata file (then no video has a label), an entry that
names no video, a video no entry describes, an entry whose label or split is not one of the known
values. A metadata file that is not a JSON object of objects is fatal.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any, Optional

from pydantic import Field

from forgesweep.data.importers.base import (
    IMPORTERS, DatasetImporter, ImporterOptions, Problem, Scan, VideoItem, is_video, without_suffix,
)
from forgesweep.data.importers.tree import Tree
from forgesweep.errors import DataError

PREVIEW_INDEX = "dataset.json"
PART_INDEX = "metadata.json"
_SPLITS = {"train": "train", "training": "train", "val": "val", "validation": "val", "dev": "val", "test": "test"}
_LABELS = {"real": 0, "fake": 1}


class DFDCOptions(ImporterOptions):
    """Options of the DFDC importer."""

    dataset_name: Optional[str] = Field(None, description="manifest dataset name (default DFDC-P, or DFDC "
                                                          "for a full-DFDC root with metadata.json files)")


@IMPORTERS.register("dfdc")
class DFDCImporter(DatasetImporter):
    """DFDC preview (dataset.json) or full DFDC parts (metadata.json)."""

    name = "dfdc"
    dataset = "DFDC-P"
    description = "DFDC preview: dataset.json + original_videos, method_A, method_B (or DFDC metadata.json parts)"
    Options = DFDCOptions

    def scan(self, tree: Tree) -> Scan:
        scan = Scan()
        videos = {e.rel for e in tree.files() if is_video(e.rel)}
        metadata = [e.rel for e in tree.files() if PurePosixPath(e.rel).name == PART_INDEX]
        if tree.exists(PREVIEW_INDEX):
            entries, full = self._preview_entries(tree), False
        elif metadata:
            entries, full = self._part_entries(tree, metadata), True
        else:
            if not videos:
                raise DataError(f"{tree}: not a DFDC root: no {PREVIEW_INDEX}, no {PART_INDEX} and no videos")
            scan.problems.append(Problem(tree.path(PREVIEW_INDEX), f"missing split file: neither {PREVIEW_INDEX} "
                                                                   f"nor any {PART_INDEX} describes the videos"))
            scan.problems += [Problem(tree.path(v), "no label or split: no metadata file") for v in sorted(videos)]
            return scan
        ds = self.options.dataset_name or ("DFDC" if full else self.dataset)  # type: ignore[attr-defined]
        described: set[str] = set()
        for rel, info, where in entries:
            described.add(rel)
            if rel not in videos:
                scan.problems.append(Problem(where, f"entry {rel!r} names no video: {tree.path(rel)} does not exist"))
                continue
            label = _LABELS.get(str(info.get("label", "")).lower())
            split = _SPLITS.get(str(info.get("set", info.get("split", ""))).lower())
            if label is None or split is None:
                scan.problems.append(Problem(where, f"entry {rel!r}: label {info.get('label')!r} / split "
                                                    f"{info.get('set', info.get('split'))!r} not understood "
                                                    f"(labels real|fake, splits train|val|test)"))
                continue
            method = "real" if label == 0 else ("DFDC" if full else rel.split("/", 1)[0])
            if not full and label == 1 and method == "original_videos":
                scan.problems.append(Problem(where, f"entry {rel!r} is labelled fake but lies in original_videos/"))
                continue
            scan.items.append(VideoItem(rel, label, method, split, f"{ds}/{without_suffix(rel)}"))
        for rel in sorted(videos - described):
            scan.problems.append(Problem(tree.path(rel), f"no metadata entry describes this video "
                                                         f"({PART_INDEX if full else PREVIEW_INDEX})"))
        for e in tree.files():
            if not is_video(e.rel) and PurePosixPath(e.rel).name not in (PREVIEW_INDEX, PART_INDEX):
                scan.ignored.append(Problem(tree.path(e.rel), "not a video or a metadata file"))
        scan.items.sort(key=lambda it: it.rel)
        return scan

    @staticmethod
    def _load(tree: Tree, rel: str) -> dict[str, Any]:
        where = tree.path(rel)
        try:
            data = json.loads(tree.read_text(rel))
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise DataError(f"{where}: expected a JSON object mapping each video to an object with its label and split")
        return data

    def _preview_entries(self, tree: Tree) -> list[tuple[str, dict, str]]:
        where = tree.path(PREVIEW_INDEX)
        return [(k.lstrip("./"), v, where) for k, v in self._load(tree, PREVIEW_INDEX).items()]

    def _part_entries(self, tree: Tree, files: list[str]) -> list[tuple[str, dict, str]]:
        out = []
        for rel in sorted(files):
            folder = str(PurePosixPath(rel).parent)
            prefix = "" if folder == "." else folder + "/"
            out += [(prefix + k, v, tree.path(rel)) for k, v in self._load(tree, rel).items()]
        return out
