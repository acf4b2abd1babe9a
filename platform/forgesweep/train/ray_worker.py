"""Ray Train adapter: the ``train_loop_per_worker`` a ``TorchTrainer`` runs, and its context.

Every Ray Train call of the project lives here (Ray's reporting API has changed several times;
keeping it in one place keeps the change small next time).

With ``loop_config["trace_dir"]`` set, every worker also writes a :class:`WorkerTrace` there:
the sample ids of every training batch it drew and its weights at the end of every stage. It
exists to check data-parallel training (each rank sees its own shard of every epoch; DDP keeps
the ranks' weights identical); it costs one JSON line per epoch and one weights file per stage.

Every worker also records the project's training metrics through Ray's metrics API
(:mod:`forgesweep.observability.training`): samples/s, current stage and epoch per worker,
and, on rank 0, each stage's ACC/AUC, forgetting and replay buffer size.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

import ray.train
import ray.train.torch
import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader

from forgesweep.config import validate_config
from forgesweep.models import Detector, unwrap_model
from forgesweep.observability.training import TrainingMetrics
from forgesweep.train.checkpoint import read_state
from forgesweep.train.loop import run_continual


class WorkerTrace:
    """What one worker trained on, written under ``<trace_dir>/rank-<r>/``.

    * ``samples.jsonl``: one line per pass over a training loader,
      ``{"loader": i, "epoch": j, "keys": [sample ids in the order drawn]}`` (loader ``i`` is the
      ``i``-th task the worker trained, counting from 0; epoch ``j`` counts passes over it);
    * ``stage-<k>.safetensors``: the worker's model weights (state dict) when stage ``k`` reports;
    * ``worker.json``: rank, world size, device, the process group's backend and the type of the
      prepared model (``DistributedDataParallel`` with several workers).
    """

    def __init__(self, trace_dir: str | Path, rank: int) -> None:
        self.dir = Path(trace_dir) / f"rank-{rank}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._loaders = 0

    def describe(self, rank: int, world_size: int, device: torch.device, model: nn.Module) -> None:
        backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else None
        info = {"rank": rank, "world_size": world_size, "device": str(device), "backend": backend,
                "model_type": type(model).__name__}
        (self.dir / "worker.json").write_text(json.dumps(info))

    def wrap(self, loader: DataLoader) -> "_TracedLoader":
        self._loaders += 1
        return _TracedLoader(loader, self, self._loaders - 1)

    def record(self, loader_index: int, epoch: int, keys: list[str]) -> None:
        with open(self.dir / "samples.jsonl", "a") as f:
            f.write(json.dumps({"loader": loader_index, "epoch": epoch, "keys": keys}) + "\n")

    def save_weights(self, stage: int, model: nn.Module) -> None:
        weights = {k: v.detach().cpu().contiguous() for k, v in unwrap_model(model).state_dict().items()}
        save_file(weights, str(self.dir / f"stage-{stage}.safetensors"))


class _TracedLoader:
    """A prepared loader that records the ``keys`` of every batch it yields; everything else
    (``sampler.set_epoch``, ``len``) goes to the wrapped loader."""

    def __init__(self, loader: DataLoader, trace: WorkerTrace, index: int) -> None:
        self._loader, self._trace, self._index, self._epoch = loader, trace, index, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[Any]:
        keys: list[str] = []
        for batch in self._loader:
            # Frame batches carry sample ids; clip batches the ids of their videos.
            keys.extend(batch.get("keys", batch.get("video_id", [])))
            yield batch
        self._trace.record(self._index, self._epoch, keys)
        self._epoch += 1


class RayTrainContext:
    """:class:`~forgesweep.train.loop.LoopContext` backed by the Ray Train worker session.

    Args:
        trace_dir: when given, write a :class:`WorkerTrace` of this worker there.
        model_name: ``model.name``, a tag of this worker's metrics.
        strategy_name: ``strategy.name``, a tag of this worker's metrics.
    """

    def __init__(self, trace_dir: Optional[str] = None, model_name: str = "unknown",
                 strategy_name: str = "unknown") -> None:
        ctx = ray.train.get_context()
        self.world_rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        # 1. The device Ray Train assigned to this worker (a GPU when use_gpu, else the CPU).
        self.device = ray.train.torch.get_device()
        self._restored_dir: Optional[Path] = None
        self._trace = WorkerTrace(trace_dir, self.world_rank) if trace_dir else None
        self._model: Optional[nn.Module] = None
        self.metrics = TrainingMetrics(ctx.get_experiment_name(), model_name, strategy_name, self.world_rank)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        # 2. Moves the model to the device and wraps it in DDP when there are several workers.
        # A model that trains in phases (e.g. StyleFlow: StyleGRU, then the detector with the
        # StyleGRU frozen) changes which parameters get gradients after DDP wrapped it; DDP must
        # then look for unused parameters every step instead of waiting for their gradients.
        phased = type(model).training_phases is not Detector.training_phases
        kwargs = {"find_unused_parameters": True} if phased else None
        self._model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs=kwargs)
        if self._trace is not None:
            self._trace.describe(self.world_rank, self.world_size, self.device, self._model)
        return self._model

    def prepare_loader(self, loader: DataLoader) -> DataLoader:
        # 3. Adds a DistributedSampler so each worker sees its shard of every epoch.
        prepared = ray.train.torch.prepare_data_loader(loader)
        traced = self._trace.wrap(prepared) if self._trace is not None else prepared
        # The loop prepares one loader per stage: its passes are the stage's epochs.
        return self.metrics.wrap_loader(traced)

    def latest_checkpoint(self) -> Optional[Path]:
        # 4. After a worker failure, Ray restarts the group with the last reported checkpoint.
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        self._restored_dir = Path(tempfile.mkdtemp(prefix="forgesweep-restore-"))
        checkpoint.to_directory(str(self._restored_dir))
        self.metrics.resumed_after(int(read_state(self._restored_dir)["stage"]))
        return self._restored_dir

    def report(self, metrics: dict[str, Any], checkpoint_dir: Optional[Path]) -> None:
        if self._trace is not None and self._model is not None:
            self._trace.save_weights(int(metrics["stage"]), self._model)
        self.metrics.stage_reported(metrics)
        # 5. Every worker reports (it is a barrier); only rank 0 hands over a checkpoint.
        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        try:
            ray.train.report(metrics, checkpoint=checkpoint)
        finally:
            if checkpoint_dir is not None:
                shutil.rmtree(checkpoint_dir, ignore_errors=True)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Entry point of each Ray Train worker: ``loop_config["experiment"]`` is the config dict;
    ``loop_config["trace_dir"]`` (optional) turns on the :class:`WorkerTrace`."""
    cfg = validate_config(loop_config["experiment"])
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    run_continual(cfg, RayTrainContext(loop_config.get("trace_dir"), cfg.model.name, cfg.strategy.name))
