"""DeepFakeDetection (DFD, Google/Jigsaw 2019), distributed inside the FaceForensics++ download.

Layout for one compression level ``c``::

    original_sequences/actors/<c>/videos/01__exit_phone_room.mp4                  <actor>__<scene>
    manipulated_sequences/DeepFakeDetection/<c>/videos/01_02__exit_phone_room__YVGY8LOK.mp4
    manipulated_sequences/DeepFakeDetection/masks/videos/<same name>.mp4          masks, where present

DFD has no official split. Videos are split **by actor** (the target actor, the first id of a
fake's name), so an actor's real and fake videos stay together: the actors sorted by id, the last
``test_fraction`` of them test, the ``val_fraction`` before them val (see ``ordered_split``).

Rows: reals ``method: real`` with ids ``DFD/actors/01__exit_phone_room``; fakes
``method: DeepFakeDetection`` with ids ``DFD/DeepFakeDetection/01_02__exit_phone_room__YVGY8LOK``.
A file whose name does not follow the pattern is a problem (skipped with ``skip_bad``).
"""

from __future__ import annotations

import re
from typing import Literal, Optional

from pydantic import Field

from forgesweep.data.importers.base import (
    IMPORTERS, DatasetImporter, ImporterOptions, Problem, Scan, VideoItem, is_video, ordered_split, stem,
)
from forgesweep.data.importers.tree import Tree
from forgesweep.errors import DataError

METHOD = "DeepFakeDetection"
_REAL = re.compile(r"^(\d+)__[^_].*$")
_FAKE = re.compile(r"^(\d+)_(\d+)__.+__[A-Za-z0-9]+$")


class DFDOptions(ImporterOptions):
    """Options of the DFD importer."""

    compression: Literal["raw", "c23", "c40"] = Field("c23", description="compression level to import")
    test_fraction: float = Field(0.2, ge=0, lt=1, description="share of actors (the last by id) in test")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of actors (before the test ones) in val")
    dataset_name: Optional[str] = Field(None, description="manifest dataset name (default DFD)")


@IMPORTERS.register("dfd")
class DFDImporter(DatasetImporter):
    """DeepFakeDetection actors and their deepfakes, split by actor."""

    name = "dfd"
    dataset = "DFD"
    description = "DeepFakeDetection: original_sequences/actors + manipulated_sequences/DeepFakeDetection"
    Options = DFDOptions

    def scan(self, tree: Tree) -> Scan:
        opts: DFDOptions = self.options  # type: ignore[assignment]
        ds, c = self.dataset_name(tree), opts.compression
        real_dir = f"original_sequences/actors/{c}/videos"
        fake_dir = f"manipulated_sequences/{METHOD}/{c}/videos"
        mask_dir = f"manipulated_sequences/{METHOD}/masks/videos"
        if not tree.is_dir(real_dir) and not tree.is_dir(fake_dir):
            raise DataError(f"{tree}: not a DFD root at compression {c}: neither {real_dir}/ nor {fake_dir}/ exists")
        scan = Scan()
        found: list[tuple[str, str, str, int]] = []  # (rel, actor, name, label)
        for folder, pattern, label, example in ((real_dir, _REAL, 0, "01__exit_phone_room.mp4"),
                                                (fake_dir, _FAKE, 1, "01_02__exit_phone_room__YVGY8LOK.mp4")):
            for entry in tree.files(folder):
                if not is_video(entry.rel):
                    scan.ignored.append(Problem(tree.path(entry.rel), "not a video file"))
                    continue
                match = pattern.match(stem(entry.rel))
                if match is None:
                    scan.problems.append(Problem(tree.path(entry.rel), f"name does not follow the DFD pattern "
                                                                       f"(e.g. {example})"))
                    continue
                found.append((entry.rel, match.group(1), stem(entry.rel), label))
        masks = {stem(e.rel): e.rel for e in tree.files(mask_dir) if is_video(e.rel)}
        split_of = ordered_split(sorted({actor for _, actor, _, _ in found}), opts.val_fraction, opts.test_fraction)
        for rel, actor, name, label in found:
            if label == 0:
                scan.items.append(VideoItem(rel, 0, "real", split_of[actor], f"{ds}/actors/{name}"))
            else:
                scan.items.append(VideoItem(rel, 1, METHOD, split_of[actor], f"{ds}/{METHOD}/{name}", masks.get(name)))
        return scan
