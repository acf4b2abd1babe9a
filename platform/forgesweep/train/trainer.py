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
    """``train.use_gpu``: True/False as given; ``auto`` = the connected cluster has GPUs, now
    or once its autoscaler starts them (see :func:`cluster_can_provide_gpus`)."""
    if cfg.train.use_gpu != "auto":
        return bool(cfg.train.use_gpu)
    return ray.is_initialized() and cluster_can_provide_gpus()


def cluster_can_provide_gpus() -> bool:
    """Whether the connected cluster has GPUs or GPU node types its autoscaler may start.

    An autoscaling cluster whose GPU workers have ``min_workers: 0`` has no GPU while idle; a
    job submitted then must still train on GPUs (the autoscaler adds GPU nodes for the GPU
    requests). Autoscaler v2 (the default of ``ray up`` since Ray 2.50 and of KubeRay)
    publishes its node types; Ray Train reads them through the same call to check a worker
    group fits the cluster.
    """
    if ray.cluster_resources().get("GPU", 0) > 0:
        return True
    try:
        from ray._private.state import state  # private: may move in another Ray version
        max_resources = state.get_max_resources_from_cluster_config() or {}
    except (ImportError, AttributeError):
        return False
    return max_resources.get("GPU", 0) > 0


def storage_path(cfg: ExperimentConfig) -> str:
    """Absolute local path or URI (``s3://``) where Ray keeps checkpoints."""
    path = cfg.train.storage_path
    return path if "://" in path else str(Path(path).resolve())


def build_trainer(cfg: ExperimentConfig, name: str, callbacks: Optional[Sequence] = None,
                  use_gpu: Optional[bool] = None, trace_dir: Optional[str] = None) -> TorchTrainer:
    """A ``TorchTrainer`` that runs :func:`train_loop_per_worker` on ``cfg``.

    Args:
        cfg: the validated experiment config.
        name: the run's name under the storage path (unique per run; re-using a name resumes it).
        callbacks: Ray Train callbacks (e.g. Tune's report forwarding inside a sweep trial).
        use_gpu: overrides ``train.use_gpu`` (a sweep resolves ``auto`` once, on the driver).
        trace_dir: a directory every worker can write (shared storage on a multi-node cluster)
            where each writes what it trained on and its weights per stage
            (:class:`~forgesweep.train.ray_worker.WorkerTrace`); for checking data parallelism.
    """
    gpu = resolve_use_gpu(cfg) if use_gpu is None else use_gpu
    resources = {"CPU": cfg.train.cpus_per_worker}
    if gpu:
        resources["GPU"] = cfg.train.gpus_per_worker
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"experiment": cfg.to_dict(), "trace_dir": trace_dir},
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path(cfg),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            callbacks=list(callbacks or []),
        ),
    )
