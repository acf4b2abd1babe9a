"""Ray Train adapter: the ``train_loop_per_worker`` a ``TorchTrainer`` runs, and its context.

Every Ray Train call of the project lives here (Ray's reporting API has changed several times;
keeping it in one place keeps the change small next time).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import ray.train
import ray.train.torch
import torch
from torch import nn
from torch.utils.data import DataLoader

from forgesweep.config import validate_config
from forgesweep.train.loop import run_continual


class RayTrainContext:
    """:class:`~forgesweep.train.loop.LoopContext` backed by the Ray Train worker session."""

    def __init__(self) -> None:
        ctx = ray.train.get_context()
        self.world_rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        # 1. The device Ray Train assigned to this worker (a GPU when use_gpu, else the CPU).
        self.device = ray.train.torch.get_device()
        self._restored_dir: Optional[Path] = None

    def prepare_model(self, model: nn.Module) -> nn.Module:
        # 2. Moves the model to the device and wraps it in DDP when there are several workers.
        return ray.train.torch.prepare_model(model)

    def prepare_loader(self, loader: DataLoader) -> DataLoader:
        # 3. Adds a DistributedSampler so each worker sees its shard of every epoch.
        return ray.train.torch.prepare_data_loader(loader)

    def latest_checkpoint(self) -> Optional[Path]:
        # 4. After a worker failure, Ray restarts the group with the last reported checkpoint.
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        self._restored_dir = Path(tempfile.mkdtemp(prefix="forgesweep-restore-"))
        checkpoint.to_directory(str(self._restored_dir))
        return self._restored_dir

    def report(self, metrics: dict[str, Any], checkpoint_dir: Optional[Path]) -> None:
        # 5. Every worker reports (it is a barrier); only rank 0 hands over a checkpoint.
        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        try:
            ray.train.report(metrics, checkpoint=checkpoint)
        finally:
            if checkpoint_dir is not None:
                shutil.rmtree(checkpoint_dir, ignore_errors=True)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Entry point of each Ray Train worker: ``loop_config["experiment"]`` is the config dict."""
    cfg = validate_config(loop_config["experiment"])
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    run_continual(cfg, RayTrainContext())
