"""Dataset importers: scan a dataset root, write a VIDEO-level manifest.

Design: an import writes one manifest row per **video** (``path`` is the video file, local or
``s3://``; ``mask`` the mask video where the dataset has one). Such a manifest is already valid
input for clip models (:mod:`forgesweep.data.clips` decodes video rows with decord), and it is the
input of the preprocessing job (:mod:`forgesweep.preprocessing`), which decodes, crops and
writes the FRAME-level manifest image models train on. Importing is cheap (listing, JSON, a
container probe) and preprocessing is the expensive, resumable step, so they are separate.

Importers (``forgesweep import <name> <root>``), in :data:`IMPORTERS`:

==========  ==========  ===============================================================
name        dataset     layout
==========  ==========  ===============================================================
``ffpp``    ``FF++``    FaceForensics++ with the official pair splits
``celebdf`` ``CDF2``    Celeb-DF v2 with List_of_testing_videos.txt
``dfdc``    ``DFDC-P``  DFDC preview (dataset.json), or full DFDC (metadata.json parts)
``dfd``     ``DFD``     DeepFakeDetection actors, split by actor
``folder``  root name   ``<root>/<method>/<real|fake>/[split/]...``
==========  ==========  ===============================================================

Example:
    >>> result = run_import("ffpp", "/data/FaceForensics", "data/ffpp_c23/videos.jsonl",
    ...                     options={"compression": "c23"})  # doctest: +SKIP
    >>> print(result.report.format())  # doctest: +SKIP
"""

from __future__ import annotations

import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from pydantic import ValidationError

from forgesweep.data.importers import celebdf, dfd, dfdc, ffpp, folder  # noqa: F401  (register the importers)
from forgesweep.data.importers.base import (
    IMPORTERS, BadInput, DatasetImporter, ImportReport, Problem, Scan, VideoItem, describe_problems,
)
from forgesweep.data.importers.tree import LocalTree, Tree, open_tree
from forgesweep.data.manifest import Manifest, ManifestRow, write_manifest
from forgesweep.data.object_store import is_s3, shared_cache
from forgesweep.errors import DataError, describe_validation_error

__all__ = ["IMPORTERS", "BadInput", "ImportReport", "ImportResult", "Problem", "build_importer", "run_import"]


@dataclass
class ImportResult:
    """Rows of an import, its report, and where the manifest was written (None when not written)."""

    rows: list[ManifestRow]
    report: ImportReport
    manifest: Optional[str] = None


def build_importer(name: str, options: Optional[Mapping[str, Any]] = None) -> DatasetImporter:
    """The importer registered as ``name`` with validated ``options``.

    Raises:
        UserError: unknown importer (listing the known ones), or an unknown/invalid option.
    """
    cls = IMPORTERS.get(name)
    try:
        opts = cls.Options.model_validate(dict(options or {}))
    except ValidationError as exc:
        raise DataError(f"importer {name!r}: option {describe_validation_error(exc)}") from None
    return cls(opts)


def probe_video(path: str) -> Optional[str]:
    """Why decord cannot use the local video ``path``, or None when it opens and has frames."""
    import decord

    try:
        frames = len(decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1))
    except Exception as exc:  # decord raises its own DECORDError (and RuntimeError) on bad input
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"decord cannot open it ({first[:200]})"
    return None if frames > 0 else "the container holds no frames"


def _check_files(tree: Tree, scan: Scan, check_videos: bool, workers: int) -> list[Problem]:
    """Problems of the found files themselves: missing, empty, not decodable; masks likewise."""
    problems: list[Problem] = []
    to_probe: list[VideoItem] = []
    for item in scan.items:
        size = tree.size(item.rel)
        if size < 0:
            problems.append(Problem(tree.path(item.rel), "file not found"))
        elif size == 0:
            problems.append(Problem(tree.path(item.rel), "empty file (0 bytes)"))
        elif check_videos and isinstance(tree, LocalTree):
            to_probe.append(item)
        if item.mask_rel is not None and tree.size(item.mask_rel) <= 0:
            problems.append(Problem(tree.path(item.mask_rel), "mask video is missing or empty; with --skip-bad "
                                                              "the video is imported without its mask"))
    if to_probe:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            reasons = list(pool.map(lambda it: probe_video(tree.path(it.rel)), to_probe))
        problems += [Problem(tree.path(it.rel), r) for it, r in zip(to_probe, reasons) if r is not None]
    return problems


def run_import(name: str, root: Union[str, Path], out: Optional[Union[str, Path]] = None, *,
               skip_bad: bool = False, check_videos: bool = True, options: Optional[Mapping[str, Any]] = None,
               workers: int = 4) -> ImportResult:
    """Scan ``root`` with importer ``name`` and write its video-level manifest to ``out``.

    Args:
        name: an importer of :data:`IMPORTERS` (``ffpp``, ``celebdf``, ``dfdc``, ``dfd``, ``folder``).
        root: the dataset root, a local folder or ``s3://bucket/prefix``.
        out: the manifest to write (local or ``s3://``); None only returns the rows. A report
            ``<out without .jsonl>.import.json`` is written beside it.
        skip_bad: skip bad items (listed and counted in the report) instead of stopping.
        check_videos: open every local video with decord (catches corrupt containers early).
        options: the importer's options (e.g. ``{"compression": "c40"}``).
        workers: threads probing videos.

    Returns:
        The rows, the report and the manifest location.

    Raises:
        BadInput: bad items without ``skip_bad`` (each with path and reason); nothing is written.
        DataError: a root that is not that dataset, a malformed split/metadata file, no videos.
    """
    importer = build_importer(name, options)
    tree = open_tree(root)
    scan = importer.scan(tree)
    dataset = importer.dataset_name(tree)
    problems = scan.problems + _check_files(tree, scan, check_videos, workers)
    if problems and not skip_bad:
        raise BadInput(describe_problems(f"import of {dataset} from {tree}", problems), problems)
    bad_paths = {p.path for p in problems}
    report = ImportReport(importer=name, dataset=dataset, root=str(tree), skipped=problems, ignored=scan.ignored)
    rows = []
    for item in scan.items:
        if tree.path(item.rel) in bad_paths:
            continue
        mask = None
        if item.mask_rel is not None and tree.path(item.mask_rel) not in bad_paths:
            mask = tree.path(item.mask_rel)
            report.masks += 1
        rows.append(ManifestRow(path=tree.path(item.rel), label=item.label, method=item.method, dataset=dataset,
                                split=item.split, video_id=item.video_id, mask=mask))
        report.counts[(item.method, item.split)] += 1
    if not rows:
        raise DataError(f"import of {dataset} from {tree}: no videos to import"
                        + (f" ({len(problems)} bad item(s) skipped)" if problems else ""))
    Manifest(rows, ".", source=f"import of {dataset} from {tree}")  # duplicate paths, ids in two splits
    written = None
    if out is not None:
        written = _write(rows, report, str(out))
    return ImportResult(rows, report, written)


def _write(rows: list[ManifestRow], report: ImportReport, out: str) -> str:
    """Write the manifest (atomically) and its report; returns where the manifest is."""
    report_name = (out[:-len(".jsonl")] if out.endswith(".jsonl") else out) + ".import.json"
    if not is_s3(out):
        write_manifest(rows, out)
        tmp = Path(report_name + ".tmp")
        tmp.write_text(report.to_json(), encoding="utf-8")
        tmp.replace(report_name)
        return str(Path(out).resolve())
    with tempfile.TemporaryDirectory(prefix="forgesweep-import-") as tmp:
        local = write_manifest(rows, Path(tmp) / "manifest.jsonl")
        (Path(tmp) / "report.json").write_text(report.to_json(), encoding="utf-8")
        cache = shared_cache()
        cache.upload(Path(tmp) / "report.json", report_name)
        cache.upload(local, out)  # the manifest last: its presence means the import is complete
    return out

