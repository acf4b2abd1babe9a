"""FaceForensics++ (Rössler et al., ICCV 2019): youtube originals, five manipulation methods.

Layout of the official download script's output, for one compression level ``c`` (``raw``,
``c23`` or ``c40``)::

    original_sequences/youtube/<c>/videos/000.mp4 ... 999.mp4
    manipulated_sequences/<Method>/<c>/videos/000_003.mp4      target 000, source 003
    manipulated_sequences/<Method>/masks/videos/000_003.mp4    manipulation masks, where released
    splits/train.json, val.json, test.json                      the official pair splits

The split files (from the FaceForensics GitHub repository, ``dataset/splits``) are JSON lists of
pairs ``[["071", "054"], ...]``: reals ``A`` and ``B`` and fakes ``A_B`` and ``B_A`` all belong
to that pair's split (360/70/70 pairs: 720/140/140 original videos), so no identity crosses splits.

Rows: reals have method ``real`` and ids ``FF++/original/000``; fakes the method's folder name
(``Deepfakes``, ``Face2Face``, ``FaceSwap``, ``NeuralTextures``, ``FaceShifter``) and ids
``FF++/Deepfakes/000_003``; ``mask`` is the mask video when the dataset has one. The actors and
DeepFakeDetection folders are the DFD dataset (:mod:`forgesweep.data.importers.dfd`).

Problems (skipped with ``skip_bad``): a missing split file, a split pair naming a video that is
not there, a video in no split, a video whose name is not ``<id>`` / ``<target>_<source>``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from forgesweep.data.importers.base import (
    IMPORTERS, SPLITS, DatasetImporter, ImporterOptions, Problem, Scan, VideoItem, is_video, stem,
)
from forgesweep.data.importers.tree import Tree
from forgesweep.errors import DataError

FFPP_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter")


class FFppOptions(ImporterOptions):
    """Options of the FaceForensics++ importer."""

    compression: Literal["raw", "c23", "c40"] = Field("c23", description="compression level to import")
    methods: Optional[list[str]] = Field(
        None, description="manipulation folders to import; default: every known method present")
    splits: str = Field("splits", description="folder of train/val/test.json, relative to the root or absolute")
    dataset_name: Optional[str] = Field(None, description="manifest dataset name (default FF++)")


@IMPORTERS.register("ffpp")
class FFppImporter(DatasetImporter):
    """FaceForensics++ with its official pair splits."""

    name = "ffpp"
    dataset = "FF++"
    description = "FaceForensics++: original_sequences/youtube + manipulated_sequences/<Method>, splits/*.json"
    Options = FFppOptions

    def scan(self, tree: Tree) -> Scan:
        opts: FFppOptions = self.options  # type: ignore[assignment]
        ds, c = self.dataset_name(tree), opts.compression
        scan = Scan()
        real_dir = f"original_sequences/youtube/{c}/videos"
        if not tree.is_dir(real_dir):
            raise DataError(f"{tree}: not a FaceForensics++ root at compression {c}: {real_dir}/ is missing "
                            f"(compressions present: {', '.join(self._compressions(tree)) or 'none'})")
        methods = self._methods(tree, opts)
        pair_split, pairs, missing_splits = self._read_splits(tree, opts, scan)

        def split_of(*ids: str) -> Optional[str]:
            splits = {pair_split.get(i) for i in ids}
            return splits.pop() if len(splits) == 1 else None

        present: dict[tuple[str, str], str] = {}  # (method, id) -> rel
        for entry in tree.files(real_dir):
            if not is_video(entry.rel) or "/" in entry.rel[len(real_dir) + 1:]:
                scan.ignored.append(Problem(tree.path(entry.rel), "not a video of the videos/ folder"))
                continue
            present[("real", stem(entry.rel))] = entry.rel
        for method in methods:
            fake_dir, mask_dir = f"manipulated_sequences/{method}/{c}/videos", f"manipulated_sequences/{method}/masks/videos"
            masks = {stem(e.rel): e.rel for e in tree.files(mask_dir) if is_video(e.rel)}
            for entry in tree.files(fake_dir):
                if not is_video(entry.rel) or "/" in entry.rel[len(fake_dir) + 1:]:
                    scan.ignored.append(Problem(tree.path(entry.rel), "not a video of the videos/ folder"))
                    continue
                vid = stem(entry.rel)
                if len(vid.split("_")) != 2:
                    scan.problems.append(Problem(tree.path(entry.rel),
                                                 "name is not <target>_<source> (e.g. 000_003.mp4)"))
                    continue
                present[(method, vid)] = entry.rel
                target, source = vid.split("_")
                split = split_of(target, source)
                if split is None:
                    scan.problems.append(Problem(tree.path(entry.rel), _no_split_reason(target, source, pair_split, missing_splits)))
                    continue
                scan.items.append(VideoItem(entry.rel, 1, method, split, f"{ds}/{method}/{vid}", masks.get(vid)))
        for (method, vid), rel in present.items():
            if method != "real":
                continue
            split = pair_split.get(vid)
            if split is None:
                scan.problems.append(Problem(tree.path(rel), _no_split_reason(vid, vid, pair_split, missing_splits)))
            else:
                scan.items.append(VideoItem(rel, 0, "real", split, f"{ds}/original/{vid}"))
        # Split entries that name no video: every pair promises two reals and two fakes per method.
        for pair, split in sorted(pairs.items()):
            a, b = pair
            expected = [("real", a, f"{real_dir}/{a}.mp4"), ("real", b, f"{real_dir}/{b}.mp4")]
            for method in methods:
                for vid in (f"{a}_{b}", f"{b}_{a}"):
                    expected.append((method, vid, f"manipulated_sequences/{method}/{c}/videos/{vid}.mp4"))
            for method, vid, rel in expected:
                if (method, vid) not in present:
                    scan.problems.append(Problem(
                        _split_location(tree, opts.splits, split),
                        f"pair [{a!r}, {b!r}] names video {vid!r}, but {tree.path(rel)} does not exist"))
        scan.items.sort(key=lambda it: (it.method != "real", it.method, it.rel))
        return scan

    # -------------------------------------------------------------------------------------------

    @staticmethod
    def _compressions(tree: Tree) -> list[str]:
        return tree.subdirs("original_sequences/youtube")

    def _methods(self, tree: Tree, opts: FFppOptions) -> list[str]:
        folders = tree.subdirs("manipulated_sequences")
        if opts.methods is None:
            return [m for m in FFPP_METHODS if m in folders and tree.is_dir(f"manipulated_sequences/{m}/{opts.compression}")]
        missing = [m for m in opts.methods if not tree.is_dir(f"manipulated_sequences/{m}/{opts.compression}/videos")]
        if missing:
            raise DataError(f"{tree}: method {missing[0]!r} has no manipulated_sequences/{missing[0]}/"
                            f"{opts.compression}/videos folder; methods present: {', '.join(folders) or 'none'}")
        return list(opts.methods)

    def _read_splits(self, tree: Tree, opts: FFppOptions,
                     scan: Scan) -> tuple[dict[str, str], dict[tuple[str, str], str], list[str]]:
        """(id -> split, pair -> split, missing split files); a missing file is a problem, a
        malformed one fatal."""
        pairs_split: dict[tuple[str, str], str] = {}
        split_of: dict[str, str] = {}
        missing: list[str] = []
        for split in SPLITS:
            text, where = self._split_text(tree, opts.splits, split)
            if text is None:
                missing.append(f"{split}.json")
                scan.problems.append(Problem(where, "missing split file: the videos of this split cannot be "
                                                    "assigned (FaceForensics' dataset/splits/*.json)"))
                continue
            try:
                pairs = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
            if not isinstance(pairs, list) or not all(
                    isinstance(p, list) and len(p) == 2 and all(isinstance(v, str) for v in p) for p in pairs):
                raise DataError(f"{where}: expected a JSON list of [\"A\", \"B\"] id pairs")
            for a, b in pairs:
                for vid in (a, b):
                    other = split_of.setdefault(vid, split)
                    if other != split:
                        raise DataError(f"{where}: id {vid!r} is also in {other}.json; a video cannot be in two splits")
                pairs_split[(a, b)] = split
        return split_of, pairs_split, missing

    @staticmethod
    def _split_text(tree: Tree, folder: str, split: str) -> tuple[Optional[str], str]:
        """(text or None when missing, where it was looked for) of one split file."""
        where = _split_location(tree, folder, split)
        if _absolute(folder):  # split files kept outside the dataset root (always local)
            try:
                return Path(where).read_text(encoding="utf-8"), where
            except FileNotFoundError:
                return None, where
            except (OSError, UnicodeDecodeError) as exc:
                raise DataError(f"cannot read {where}: {exc}") from None
        rel = f"{folder.strip('/')}/{split}.json"
        return (tree.read_text(rel) if tree.exists(rel) else None), where

def _no_split_reason(a: str, b: str, pair_split: dict[str, str], missing: list[str]) -> str:
    if a != b and a in pair_split and b in pair_split:
        return (f"target {a!r} is in {pair_split[a]}.json but source {b!r} in {pair_split[b]}.json; "
                f"a fake's pair must share one split")
    if missing:
        return f"in no split file ({', '.join(missing)} missing)"
    return "in no split file (train.json, val.json, test.json)"


def _absolute(path: str) -> bool:
    return path.startswith("/")


def _split_location(tree: Tree, folder: str, split: str) -> str:
    if _absolute(folder):
        return str(Path(folder) / f"{split}.json")
    return tree.path(f"{folder.strip('/')}/{split}.json")
