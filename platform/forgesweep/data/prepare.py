"""Getting the data of an experiment ready before anything is launched.

The sweep driver and the single-run job call :func:`prepare_data` first: it generates the
synthetic benchmark when the configured manifest is absent (and generation is allowed), then
reads and validates the manifest -- every frame file of the sequence checked to be a readable
image (``data.verify_frames``) -- and builds the task sequence,
so bad data fails here with one clear line, before Ray or MLflow have written anything.
"""

from __future__ import annotations

from typing import Callable

from forgesweep.config import ExperimentConfig
from forgesweep.data.clips import is_video_row, video_frame_count
from forgesweep.data.manifest import Manifest, read_manifest
from forgesweep.data.object_store import is_s3, shared_cache
from forgesweep.data.preprocess import verify_image
from forgesweep.data.tasks import Task, build_task_sequence
from forgesweep.errors import DataError


def prepare_data(cfg: ExperimentConfig, echo: Callable[[str], None] = print) -> tuple[Manifest, list[Task]]:
    """Ensure the manifest exists (generating the synthetic benchmark if allowed) and validate it.

    Returns:
        The manifest and the task sequence.

    Raises:
        DataError: missing manifest, bad rows, missing frames, tasks without both classes.
    """
    path = cfg.data.manifest_path()
    if not is_s3(path) and not path.exists():
        if cfg.data.manifest is not None or not cfg.data.generate_if_missing:
            raise DataError(f"manifest not found: {path}")
        from forgesweep.data.synthetic.generate import generate_synthetic

        echo(f"[data] no manifest at {path}: generating the synthetic benchmark in {path.parent}")
        generate_synthetic(path.parent, cfg.data.synthetic)
    manifest = read_manifest(path, check_files=True)
    tasks = build_task_sequence(manifest, cfg.data.sequence)
    if cfg.data.verify_frames:
        used = {r.key: r for t in tasks for split in (t.train, t.val, t.test) for r in split}
        remote = []
        for row in used.values():
            source = manifest.resolve(row)
            if is_s3(source):
                remote.append(source)
            elif is_video_row(row):
                video_frame_count(source)  # opens the container: DataError if decord cannot read it
            else:
                verify_image(source)
        # Remote frames: existence and access checked up front (HEAD, in parallel); their
        # content is decoded when a worker first reads them.
        shared_cache().head_many(remote)
    sizes = ", ".join(f"{t.name} {len(t.train)}/{len(t.test)}" for t in tasks)
    echo(f"[data] {path}: {len(manifest)} frames; tasks (train/test): {sizes}")
    return manifest, tasks
