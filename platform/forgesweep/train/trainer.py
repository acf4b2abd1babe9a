"""Builds the ``TorchTrainer`` for one continual run (used alone or inside a sweep trial)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import ray
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from forgesweep.config import ExperimentConfig
from forgesweep.train.ray_worker import train_loop_per_worker


def resolve_use_gpu(cfg: ExperimentConfig) -> bool:
    """``train.use_gpu``: True/False as given; ``auto`` = the connected cluster has GPUs."""
    if cfg.train.use_gpu != "auto":
        return bool(cfg.train.use_gpu)
    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0


def storage_path(cfg: ExperimentConfig) -> str:
    """Absolute local path or URI (``s3://``) where Ray keeps checkpoints."""
    path = cfg.train.storage_path
    return path if "://" in path else str(Path(path).resolve())


def build_trainer(cfg: ExperimentConfig, name: str, callbacks: Optional[Sequence] = None,
                  use_gpu: Optional[bool] = None) -> TorchTrainer:
    """A ``TorchTrainer`` that runs :func:`train_loop_per_worker` on ``cfg``.

    Args:
        cfg: the validated experiment config.
        name: the run's name under the storage path (unique per run; re-using a name resumes it).
        callbacks: Ray Train callbacks (e.g. Tune's report forwarding inside a sweep trial).
        use_gpu: overrides ``train.use_gpu`` (a sweep resolves ``auto`` once, on the driver).
    """
    gpu = resolve_use_gpu(cfg) if use_gpu is None else use_gpu
    resources = {"CPU": cfg.train.cpus_per_worker}
    if gpu:
        resources["GPU"] = cfg.train.gpus_per_worker
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"experiment": cfg.to_dict()},
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path(cfg),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            callbacks=list(callbacks or []),
        ),
    )
