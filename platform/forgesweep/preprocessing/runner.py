"""The preprocessing run: video manifests in, face-crop frames and a frame-level manifest out.

:func:`run_preprocess` reads one or more VIDEO-level manifests (``forgesweep import`` writes
them; several are merged, e.g. FF++ + DFDC-P + CDF2 for the dataset-incremental protocol), checks
every video exists and is not empty, then runs :func:`~forgesweep.preprocessing.video_task.process_video`
for each video not done yet as a Ray task (at most ``max_in_flight`` at once, default one per
CPU of the cluster), printing a progress line every ``progress_every_s`` seconds::

    [preprocess] 48/120 videos, 1536 frames, 211.4 frames/s, 0 failed, ETA 11 s

Resumable: a video is done when its part file exists (written after all its frames), so a
re-run -- after a crash, a kill, or with more input videos -- skips finished videos and says how
many. Bad videos are reported with path and reason; without ``skip_bad`` the run stops before
writing the manifest (missing and empty files are found before any work starts; videos that fail
to decode are collected while the others finish, so one run lists them all, and the finished
videos stay done for the next run); with ``skip_bad`` they are left out and counted, and listed in
``preprocess.json``.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

from forgesweep.data.face_crop import build_detector
from forgesweep.data.importers.base import BadInput, Problem, describe_problems
from forgesweep.data.manifest import Manifest, ManifestRow, read_manifest
from forgesweep.data.object_store import is_s3, shared_cache
from forgesweep.data.video import VIDEO_SUFFIXES
from forgesweep.errors import DataError
from forgesweep.preprocessing.spec import PreprocessSpec
from forgesweep.preprocessing.store import OutputStore
from forgesweep.preprocessing.video_task import VideoOutcome, VideoTask, process_video

RECIPE = "preprocess.json"
MANIFEST = "manifest.jsonl"


@dataclass
class PreprocessSummary:
    """What a run did."""

    manifest: str
    videos: int = 0
    already_done: int = 0
    processed: int = 0
    frames: int = 0  # frames written by this run
    rows: int = 0  # rows of the final manifest
    seconds: float = 0.0
    skipped: list[Problem] = field(default_factory=list)
    crops: Counter = field(default_factory=Counter)

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def format(self) -> str:
        """One paragraph for the console."""
        lines = [f"[preprocess] {self.videos} videos: {self.processed} processed now, {self.already_done} "
                 f"already done (skipped), {len(self.skipped)} bad (skipped); {self.frames} frames written in "
                 f"{self.seconds:.1f} s ({self.frames_per_s:.1f} frames/s)"]
        if self.crops:
            lines.append("[preprocess] face boxes: " + ", ".join(f"{k} {v}" for k, v in sorted(self.crops.items())))
        lines += [f"[preprocess] skipped {p}" for p in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"[preprocess] ... and {len(self.skipped) - 20} more skipped (see {RECIPE})")
        lines.append(f"[preprocess] manifest: {self.manifest} ({self.rows} frames)")
        return "\n".join(lines)


def video_tasks(inputs: Sequence[str]) -> list[VideoTask]:
    """The videos of one or more video-level manifests, in order.

    Raises:
        DataError: an input missing or invalid, a row that is not a video, a video id twice.
    """
    if not inputs:
        raise DataError("no input manifest given")
    tasks: list[VideoTask] = []
    seen: dict[str, str] = {}
    rows: list[ManifestRow] = []
    for source in inputs:
        manifest = read_manifest(source, check_files=False)  # files are checked below, all at once
        for row in manifest.rows:
            if Path(row.path).suffix.lower() not in VIDEO_SUFFIXES:
                raise DataError(f"{manifest.source}: row {row.path!r} is not a video ({', '.join(VIDEO_SUFFIXES)}); "
                                f"preprocessing reads video-level manifests (forgesweep import writes them)")
            if row.video_id in seen:
                raise DataError(f"video_id {row.video_id!r} appears in {seen[row.video_id]} and {manifest.source}; "
                                f"each video must have one row")
            seen[row.video_id] = manifest.source
            # Checked below by their resolved paths: two manifests may both say "videos/0.mp4".
            rows.append(row.model_copy(update={"path": manifest.resolve(row)}))
            tasks.append(VideoTask(row.video_id, manifest.resolve(row), row.label, row.method, row.dataset, row.split,
                                   manifest.resolve_mask(row)))
    Manifest(rows, ".", source=" + ".join(inputs))  # duplicate paths, a video id in two splits
    rels = Counter(t.rel for t in tasks)
    clash = [t for t in tasks if rels[t.rel] > 1]
    if clash:
        same = [t.video_id for t in clash if t.rel == clash[0].rel]
        raise DataError(f"video ids {same[:2]} map to the same output folder frames/{clash[0].rel}; rename one of them")
    return tasks


def check_sources(tasks: Sequence[VideoTask]) -> list[Problem]:
    """Missing and empty videos (and masks): local files by stat, S3 objects by HEAD in parallel."""
    problems: list[Problem] = []
    remote = []
    for task in tasks:
        for path in (task.source, task.mask):
            if path is None:
                continue
            if is_s3(path):
                remote.append(path)
                continue
            p = Path(path)
            if not p.is_file():
                problems.append(Problem(path, "file not found"))
            elif p.stat().st_size == 0:
                problems.append(Problem(path, "empty file (0 bytes)"))
    if remote:
        cache = shared_cache()

        def head(uri: str) -> Optional[Problem]:
            try:
                cache.head(uri)
            except DataError as exc:
                text = str(exc)
                return Problem(uri, text[len(uri) + 2:] if text.startswith(f"{uri}: ") else text)
            return None

        with ThreadPoolExecutor(max_workers=min(16, len(remote))) as pool:
            problems += [p for p in pool.map(head, remote) if p is not None]
    return problems


def _check_recipe(store: OutputStore, spec: PreprocessSpec, inputs: Sequence[str]) -> None:
    text = store.read_text(RECIPE)
    if text is not None:
        try:
            previous = json.loads(text).get("recipe")
        except (json.JSONDecodeError, AttributeError):
            raise DataError(f"{store.uri(RECIPE)} is not valid JSON; remove it (and the folder) to start over") from None
        if previous != spec.output_key():
            diff = {k: (previous.get(k) if isinstance(previous, dict) else None, v)
                    for k, v in spec.output_key().items() if not isinstance(previous, dict) or previous.get(k) != v}
            raise DataError(f"{store.root} was preprocessed with another recipe ({', '.join(f'{k}: {a!r} then, {b!r} now' for k, (a, b) in diff.items())}); "
                            f"use another output folder, or the same options as before to resume")
    store.put_text(RECIPE, json.dumps({"recipe": spec.output_key(), "inputs": list(inputs)}, indent=2) + "\n")


def run_preprocess(inputs: Sequence[str], out: str, spec: Optional[PreprocessSpec] = None,
                   echo: Callable[[str], None] = print) -> PreprocessSummary:
    """Preprocess every video of ``inputs`` into ``out`` (a folder or ``s3://bucket/prefix``).

    Connects to Ray (``RAY_ADDRESS``, as ``ray job submit`` sets, else a local instance) only
    when there is a video left to process.

    Returns:
        The run's summary; the frame-level manifest is ``<out>/manifest.jsonl``.

    Raises:
        BadInput: bad videos without ``spec.skip_bad`` (each with path and reason); the manifest is
            not written.
        DataError: bad inputs (missing manifest, non-video rows), an output folder made with
            another recipe.
    """
    spec = spec or PreprocessSpec()
    began = time.perf_counter()
    build_detector(spec.detector)  # a missing OpenCV fails here, in one line, not inside every Ray task
    tasks = video_tasks(inputs)
    store = OutputStore(out)
    problems = check_sources(tasks)
    if problems and not spec.skip_bad:
        raise BadInput(describe_problems(f"preprocessing {len(tasks)} videos into {store.root}", problems), problems)
    bad = {p.path for p in problems}
    # A video whose mask is bad is still usable, without its mask (the mask problem is listed).
    usable = [replace(t, mask=None) if t.mask in bad else t for t in tasks if t.source not in bad]
    _check_recipe(store, spec, inputs)
    done_parts = store.list("parts")
    todo = [t for t in usable if t.part not in done_parts]
    summary = PreprocessSummary(manifest=store.uri(MANIFEST), videos=len(tasks), already_done=len(usable) - len(todo))
    echo(f"[preprocess] {len(tasks)} videos -> {store.root}: {summary.already_done} already done (skipped), "
         f"{len(todo)} to process, {len(problems)} bad")
    outcomes = _run_ray(todo, spec, store.root, echo) if todo else []
    failures = [Problem(o.error_path or o.video_id, o.error or "") for o in outcomes if not o.ok]
    for o in outcomes:
        summary.frames += o.frames
        summary.crops.update(o.crops)
    summary.processed = sum(o.ok for o in outcomes)
    summary.skipped = problems + failures
    summary.seconds = time.perf_counter() - began
    if failures and not spec.skip_bad:
        raise BadInput(describe_problems(
            f"preprocessing into {store.root}: {summary.processed} videos done (kept for the next run), "
            f"{len(failures)} failed", failures), failures)
    failed_ids = {o.video_id for o in outcomes if not o.ok}
    finished = [t for t in usable if t.video_id not in failed_ids]
    parts = store.read_many(t.part for t in finished)
    lines = [line for t in finished for line in parts[t.part].splitlines() if line.strip()]
    summary.rows = len(lines)
    if not lines:
        raise DataError(f"preprocessing into {store.root}: no frames at all ({len(summary.skipped)} bad videos skipped)")
    store.put_text(RECIPE, json.dumps({
        "recipe": spec.output_key(), "inputs": list(inputs), "videos": len(tasks), "frames": len(lines),
        "skipped": [{"path": p.path, "reason": p.reason} for p in summary.skipped]}, indent=2) + "\n")
    store.put_text(MANIFEST, "\n".join(lines) + "\n")  # last: its presence means the run is complete
    if not store.remote:
        read_manifest(store.uri(MANIFEST), check_files=False)  # the rows validate as a manifest
    echo(summary.format())
    return summary


def _run_ray(todo: list[VideoTask], spec: PreprocessSpec, out: str, echo: Callable[[str], None]) -> list[VideoOutcome]:
    """Run one Ray task per video, ``max_in_flight`` at a time, with progress lines."""
    import ray

    from forgesweep.train.ray_session import connect_ray

    echo(f"[ray] {connect_ray()}")
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1) // spec.cpus_per_task))
    limit = spec.max_in_flight or cpus
    remote = ray.remote(num_cpus=spec.cpus_per_task, max_retries=1)(process_video)
    spec_ref, pending, queue = ray.put(spec), {}, list(todo)
    outcomes: list[VideoOutcome] = []
    began = last = time.perf_counter()
    frames = failed = 0
    while queue or pending:
        while queue and len(pending) < limit:
            task = queue.pop(0)
            pending[remote.remote(task, spec_ref, out)] = task
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            pending.pop(ref)
            outcome: VideoOutcome = ray.get(ref)
            outcomes.append(outcome)
            frames += outcome.frames
            failed += not outcome.ok
        now = time.perf_counter()
        if now - last >= spec.progress_every_s or not (queue or pending):
            rate = frames / max(now - began, 1e-9)
            left = len(todo) - len(outcomes)
            eta = left * (now - began) / max(len(outcomes), 1)
            echo(f"[preprocess] {len(outcomes)}/{len(todo)} videos, {frames} frames, {rate:.1f} frames/s, "
                 f"{failed} failed, ETA {eta:.0f} s")
            last = now
    return outcomes
