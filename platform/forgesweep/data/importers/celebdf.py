"""Celeb-DF v2 (Li et al., CVPR 2020): celebrity interviews and their improved deepfakes.

Layout::

    Celeb-real/id0_0000.mp4            real, celebrity
    YouTube-real/00000.mp4             real, other YouTube videos
    Celeb-synthesis/id0_id1_0000.mp4   fake: target id0's video with id1's face
    List_of_testing_videos.txt         the official test set: "<label> <folder>/<file>" per line,
                                       label 1 = real, 0 = synthesized (the file's own convention)

Every video the list names is test; the others are train, except that ``val_fraction`` of them
(by a stable hash of the video id) go to val -- Celeb-DF has no official validation split.

Rows: reals ``method: real`` (ids ``CDF2/Celeb-real/id0_0000``, ``CDF2/YouTube-real/00000``);
fakes ``method: Celeb-synthesis`` (ids ``CDF2/Celeb-synthesis/id0_id1_0000``).

Problems (skipped with ``skip_bad``): a missing list file (then no video has a known split), a
listed video that is not there, a label in the list that contradicts the video's folder. A line
that is not ``<0|1> <path>`` is fatal (the list itself is broken).
"""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from forgesweep.data.importers.base import (
    IMPORTERS, DatasetImporter, ImporterOptions, Problem, Scan, VideoItem, hash_split, is_video, without_suffix,
)
from forgesweep.data.importers.tree import Tree
from forgesweep.errors import DataError

REAL_FOLDERS = ("Celeb-real", "YouTube-real")
FAKE_FOLDER = "Celeb-synthesis"
TEST_LIST = "List_of_testing_videos.txt"


class CelebDFOptions(ImporterOptions):
    """Options of the Celeb-DF v2 importer."""

    val_fraction: float = Field(0.0, ge=0, lt=1, description="share of the non-test videos put in val")
    test_list: str = Field(TEST_LIST, description="the test list, relative to the root")
    dataset_name: Optional[str] = Field(None, description="manifest dataset name (default CDF2)")


@IMPORTERS.register("celebdf")
class CelebDFImporter(DatasetImporter):
    """Celeb-DF v2 with its official test list."""

    name = "celebdf"
    dataset = "CDF2"
    description = "Celeb-DF v2: Celeb-real, YouTube-real, Celeb-synthesis, List_of_testing_videos.txt"
    Options = CelebDFOptions

    def scan(self, tree: Tree) -> Scan:
        opts: CelebDFOptions = self.options  # type: ignore[assignment]
        ds = self.dataset_name(tree)
        folders = [f for f in (*REAL_FOLDERS, FAKE_FOLDER) if tree.is_dir(f)]
        if not folders:
            raise DataError(f"{tree}: not a Celeb-DF v2 root: none of {', '.join((*REAL_FOLDERS, FAKE_FOLDER))} "
                            f"exists (found: {', '.join(tree.subdirs()) or 'nothing'})")
        scan = Scan()
        videos: dict[str, int] = {}  # rel -> label
        for folder in folders:
            for entry in tree.files(folder):
                if is_video(entry.rel):
                    videos[entry.rel] = int(folder == FAKE_FOLDER)
                else:
                    scan.ignored.append(Problem(tree.path(entry.rel), "not a video file"))
        test = self._read_test_list(tree, opts, videos, scan)
        for rel, label in videos.items():
            vid = f"{ds}/{without_suffix(rel)}"
            if test is None:
                scan.problems.append(Problem(tree.path(rel), f"split unknown: {opts.test_list} is missing"))
                continue
            split = "test" if rel in test else hash_split(vid, opts.val_fraction, 0.0)
            scan.items.append(VideoItem(rel, label, FAKE_FOLDER if label else "real", split, vid))
        return scan

    @staticmethod
    def _read_test_list(tree: Tree, opts: CelebDFOptions, videos: dict[str, int], scan: Scan) -> Optional[set[str]]:
        """Paths the list names (None when the list is missing); bad entries become problems."""
        if not tree.exists(opts.test_list):
            scan.problems.append(Problem(tree.path(opts.test_list),
                                         "missing split file: the official test list of Celeb-DF v2"))
            return None
        where = tree.path(opts.test_list)
        test: set[str] = set()
        for lineno, line in enumerate(tree.read_text(opts.test_list).splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or parts[0] not in ("0", "1"):
                raise DataError(f"{where}:{lineno}: expected '<1 real | 0 fake> <folder>/<file>.mp4', got {line!r}")
            listed_real, rel = parts[0] == "1", parts[1].lstrip("./")
            if rel not in videos:
                scan.problems.append(Problem(f"{where}:{lineno}", f"names {rel!r}, but {tree.path(rel)} does not exist"))
                continue
            if listed_real != (videos[rel] == 0):
                scan.problems.append(Problem(f"{where}:{lineno}", f"labels {rel!r} {'real' if listed_real else 'fake'}, "
                                                                  f"but it is in {rel.split('/')[0]}/"))
                del videos[rel]  # neither label can be trusted: leave the video out
                continue
            test.add(rel)
        return test
