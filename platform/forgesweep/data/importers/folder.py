"""Custom data in a plain folder layout: ``<root>/<method>/<real|fake>/[<split>/]...``.

Layout::

    <root>/<method>/real/.../*.mp4           reals recorded alongside that method's fakes
    <root>/<method>/fake/.../*.mp4           fakes made by <method>
    <root>/<method>/fake/test/.../*.mp4      an optional train|val|test folder sets the split

Videos (``.mp4``, ``.avi``, ``.webm``, ``.mov``) at any depth below ``real/`` or ``fake/`` are
imported. A video below a ``train``/``val``/``test`` folder gets that split; any other video gets a
split from a stable hash of its path (``val_fraction``, ``test_fraction``), so re-importing never
moves a video. Put split folders in place when videos of one person must stay together.

Rows: ``dataset`` is the root folder's name (or ``dataset_name``); reals have ``method: real``,
fakes the method folder's name; ids ``<dataset>/<method>/<real|fake>/<path below, no suffix>``.
Other folders directly under a method folder and non-video files are listed as ignored.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Optional

from pydantic import Field

from forgesweep.data.importers.base import (
    IMPORTERS, SPLITS, DatasetImporter, ImporterOptions, Problem, Scan, VideoItem, hash_split, is_video,
    without_suffix,
)
from forgesweep.data.importers.tree import Tree
from forgesweep.errors import DataError

KINDS = {"real": 0, "fake": 1}


class FolderOptions(ImporterOptions):
    """Options of the folder importer."""

    dataset_name: Optional[str] = Field(None, description="manifest dataset name (default: the root folder's name)")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of videos outside split folders put in val")
    test_fraction: float = Field(0.2, ge=0, lt=1, description="share of videos outside split folders put in test")


@IMPORTERS.register("folder")
class FolderImporter(DatasetImporter):
    """``<root>/<method>/<real|fake>/...`` folders of videos."""

    name = "folder"
    dataset = "folder"
    description = "generic: <root>/<method>/<real|fake>/[train|val|test/]... videos"
    Options = FolderOptions

    def dataset_name(self, tree: Tree) -> str:
        name = self.options.dataset_name  # type: ignore[attr-defined]
        return name or PurePosixPath(str(tree).rstrip("/")).name or "folder"

    def scan(self, tree: Tree) -> Scan:
        opts: FolderOptions = self.options  # type: ignore[assignment]
        if opts.val_fraction + opts.test_fraction >= 1:
            raise DataError(f"val_fraction ({opts.val_fraction}) + test_fraction ({opts.test_fraction}) must be < 1")
        ds = self.dataset_name(tree)
        scan = Scan()
        methods = tree.subdirs()
        if not any(tree.is_dir(f"{m}/{k}") for m in methods for k in KINDS):
            raise DataError(f"{tree}: no <method>/real/ or <method>/fake/ folder; expected "
                            f"<root>/<method>/<real|fake>/... videos (found: {', '.join(methods) or 'nothing'})")
        for entry in tree.files():
            parts = entry.rel.split("/")
            if len(parts) < 3 or parts[1] not in KINDS:
                scan.ignored.append(Problem(tree.path(entry.rel), "not under <method>/real/ or <method>/fake/"))
                continue
            if not is_video(entry.rel):
                scan.ignored.append(Problem(tree.path(entry.rel), "not a video file"))
                continue
            method, kind, below = parts[0], parts[1], parts[2:]
            label = KINDS[kind]
            if label == 1 and method == "real":
                raise DataError(f"{tree.path(method)}: a method folder may not be named 'real' "
                                f"(that name is reserved for genuine videos)")
            vid = f"{ds}/{method}/{kind}/{without_suffix('/'.join(below))}"
            split = below[0] if len(below) > 1 and below[0] in SPLITS else hash_split(
                vid, opts.val_fraction, opts.test_fraction)
            scan.items.append(VideoItem(entry.rel, label, method if label else "real", split, vid))
        return scan
