"""The Tune trial: runs one continual run over the whole task sequence.

Tune samples the searched keys; the trial puts them into the base config, validates it and runs
the continual loop in one of two ways (``sweep.trial_executor``):

* ``torch_trainer``: a small driver that fits one Ray Train ``TorchTrainer`` (any number of DDP
  workers, each holding ``train.cpus_per_worker`` / ``train.gpus_per_worker``); the workers'
  per-stage reports reach Tune through ``TuneReportCallback``.
* ``in_trial``: a single-worker run inside the trial's own process, which Tune gave the worker's
  resources (``tune.with_resources``, fractions allowed); :class:`TuneTrialContext` reports each
  stage with ``tune.report``. No controller and no worker actor start per trial, and Tune reuses
  the warm trial processes, which is what short head-only trials (``features.cache``) need.

Either way each stage's metrics reach Tune as one result, so the scheduler (ASHA) can stop weak
trials after an early stage.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from forgesweep.config import ExperimentConfig, apply_params, validate_config
from forgesweep.train.trainer import build_trainer, storage_path

CHECKPOINT_PATH_KEY = "checkpoint_path"  # the result key the MLflow callback reads (as TuneReportCallback sets it)


def run_trial(sampled: Mapping[str, Any], base_config: Mapping[str, Any], sweep_name: str, use_gpu: bool,
              in_trial: bool = False) -> None:
    """Tune trainable: ``sampled`` holds the dotted keys Optuna chose for this trial.

    Args:
        in_trial: run the loop in this process (:class:`TuneTrialContext`) instead of fitting a
            ``TorchTrainer``.
    """
    cfg = validate_config(apply_params(base_config, sampled))
    if in_trial:
        _run_in_trial(cfg, sweep_name, use_gpu)
    else:
        _fit(cfg, sweep_name, use_gpu)


def run_cell_trial(sampled: Mapping[str, Any], cells: Mapping[str, Mapping[str, Any]], sweep_name: str,
                   use_gpu: bool) -> None:
    """Tune trainable of the comparison matrix: ``sampled["cell"]`` names one cell's full config."""
    _fit(validate_config(cells[sampled["cell"]]), sweep_name, use_gpu)


def _fit(cfg, sweep_name: str, use_gpu: bool) -> None:
    trial_id = tune.get_context().get_trial_id()
    trainer = build_trainer(cfg, name=f"{sweep_name}-{trial_id}", callbacks=[TuneReportCallback()], use_gpu=use_gpu)
    result = trainer.fit()
    _wait_for_forwarded_results()
    if result.error is not None:
        raise result.error


def _wait_for_forwarded_results(settle_s: float = 1.0, timeout_s: float = 120.0) -> None:
    """Return only once Tune has taken every stage result ``TuneReportCallback`` forwarded.

    Why: the callback hands results to the trial through a one-slot queue that the trial's main
    thread moves into a second one-slot queue which that same thread drains. If this function
    returned while a forwarded result was still in flight, Tune would put its end-of-trial
    marker into the second queue first and the main thread would block on it for ever (seen
    under load, when the driver's MLflow callback is slow). Both queues must stay empty for
    ``settle_s`` to cover the moment between taking a result from one and putting it into the
    other. Ray internals: if they change shape, nothing is waited for (the old behaviour).
    """
    import time

    from ray.train._internal import session as train_session

    session = train_session.get_session()
    forwarded = getattr(session, "_inter_actor_queue", None)
    results = getattr(session, "result_queue", None)
    if forwarded is None or results is None:
        return
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    while time.monotonic() < deadline:
        if forwarded.empty() and results.empty():
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= settle_s:
                return
        else:
            quiet_since = None
        time.sleep(0.05)


class TuneTrialContext:
    """:class:`~forgesweep.train.loop.LoopContext` of a run inside a Tune trial's process.

    Stage checkpoints are persisted under ``<storage>/<sweep>-<trial id>/stage-<k>`` (a local
    folder or ``s3://``: files first, ``state.json`` last, so a partial copy never looks
    complete) and their path goes to Tune in the result's ``checkpoint_path``, as with
    ``TorchTrainer`` trials. A retried trial (``train.max_failures``) resumes from the latest
    complete stage there.
    """

    world_rank = 0
    world_size = 1

    def __init__(self, root: str, device: torch.device) -> None:
        self.root = root.rstrip("/")
        self.device = device
        self._restored: Optional[Path] = None

    def prepare_model(self, model):
        return model

    def prepare_loader(self, loader):
        return loader

    def _fs(self):
        import pyarrow.fs

        return pyarrow.fs.FileSystem.from_uri(self.root)

    def latest_checkpoint(self) -> Optional[Path]:
        import pyarrow.fs

        fs, base = self._fs()
        found = fs.get_file_info(pyarrow.fs.FileSelector(base, allow_not_found=True))
        stages = []
        for info in found:
            name = info.path.rstrip("/").rsplit("/", 1)[-1]
            if info.type == pyarrow.fs.FileType.Directory and name.startswith("stage-") and name[6:].isdigit():
                if fs.get_file_info(f"{info.path}/state.json").type == pyarrow.fs.FileType.File:
                    stages.append((int(name[6:]), name))
        if not stages:
            return None
        _, name = max(stages)
        self._restored = Path(tempfile.mkdtemp(prefix="forgesweep-restore-"))
        pyarrow.fs.copy_files(f"{base}/{name}", str(self._restored), source_filesystem=fs,
                              destination_filesystem=pyarrow.fs.LocalFileSystem())
        return self._restored

    def report(self, metrics: dict[str, Any], checkpoint_dir: Optional[Path]) -> None:
        if checkpoint_dir is not None:
            try:
                metrics = {**metrics, CHECKPOINT_PATH_KEY: self._persist(Path(checkpoint_dir), int(metrics["stage"]))}
            finally:
                shutil.rmtree(checkpoint_dir, ignore_errors=True)
        tune.report(metrics)

    def _persist(self, local: Path, stage: int) -> str:
        import pyarrow.fs

        if "://" not in self.root:
            # Local storage: one rename of the whole folder (via a partial name if it must be
            # copied across filesystems), so a stage folder is either complete or absent.
            target = Path(self.root) / f"stage-{stage}"
            partial = target.with_name(f".{target.name}.partial")
            shutil.rmtree(partial, ignore_errors=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(local), str(partial))
            if target.exists():  # a retried trial re-reports a stage it had written
                shutil.rmtree(target)
            os.replace(partial, target)
            return str(target)
        fs, base = self._fs()
        target = f"{base}/stage-{stage}"
        fs.create_dir(target, recursive=True)
        files = sorted((p for p in local.rglob("*") if p.is_file()), key=lambda p: p.name == "state.json")
        for path in files:  # state.json last: the stage counts as complete once it exists
            rel = path.relative_to(local).as_posix()
            with path.open("rb") as src, fs.open_output_stream(f"{target}/{rel}") as dst:
                shutil.copyfileobj(src, dst, length=8 * 1024 * 1024)
        return f"{self.root}/stage-{stage}"


def trial_device(use_gpu: bool) -> torch.device:
    """The device of an in-trial run: the GPU Tune assigned to this process, else the CPU."""
    return torch.device("cuda") if use_gpu and torch.cuda.is_available() else torch.device("cpu")


def _run_in_trial(cfg: ExperimentConfig, sweep_name: str, use_gpu: bool) -> None:
    from forgesweep.train.loop import run_continual

    trial_id = tune.get_context().get_trial_id()
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    root = storage_path(cfg)
    ctx = TuneTrialContext(f"{root}/{sweep_name}-{trial_id}" if "://" in root
                           else str(Path(root) / f"{sweep_name}-{trial_id}"), trial_device(use_gpu))
    try:
        run_continual(cfg, ctx)
    finally:
        if ctx._restored is not None:
            shutil.rmtree(ctx._restored, ignore_errors=True)
