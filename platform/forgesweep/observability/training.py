"""What a Ray Train worker records: throughput, stage/epoch, and each stage's results.

The continual loop reaches Ray only through its context (``train/ray_worker.py``), which
calls this module at the two points the loop already gives it:

* ``prepare_loader`` -- once per task stage: the prepared loader is wrapped in a
  :class:`MeteredLoader`, whose passes are the stage's epochs and whose batches are counted
  (samples/s per worker, samples total, current stage and epoch);
* ``report`` -- once per stage, with the stage's metrics dict: rank 0 sets the per-stage
  ACC/AUC gauges (one series per cell of the accuracy matrix), average ACC/AUC, forgetting,
  stage time, loss terms and the replay buffer size (``replay_size`` of the report).

Every rank runs the same evaluation, so run-level results are recorded by rank 0 only;
throughput, stage and epoch are per worker (tag ``ray_train_worker_world_rank``).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterator, Mapping, Optional

from forgesweep.observability.metrics import MetricRecorder

# The throughput gauge is refreshed at most this often (and at every epoch's end).
THROUGHPUT_WINDOW_S = 1.0


def batch_size(batch: Any) -> int:
    """Samples in a loader batch: the first dimension of its first tensor (``images``), else
    the number of its ``keys``; 0 when neither exists."""
    if isinstance(batch, Mapping):
        first = batch.get("images")
        values = [first] if first is not None else list(batch.values())
        for value in values:
            shape = getattr(value, "shape", None)
            if shape is not None and len(shape) > 0:
                return int(shape[0])
        keys = batch.get("keys")
        return len(keys) if keys is not None else 0
    shape = getattr(batch, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) > 0 else 0


class TrainingMetrics:
    """The metrics of one Ray Train worker.

    Args:
        run: the Ray Train run name (``ray.train.get_context().get_experiment_name()``; in a
            sweep ``<sweep>-<trial id>``).
        model: ``model.name`` of the run's config.
        strategy: ``strategy.name`` of the run's config.
        rank: the worker's world rank.
        recorder: where values go (default: Ray's metrics through :class:`MetricRecorder`).
        clock: monotonic seconds (tests pass a fake).
    """

    def __init__(self, run: str, model: str, strategy: str, rank: int,
                 recorder: Optional[MetricRecorder] = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.run_tags = {"ray_train_run_name": run, "model": model, "strategy": strategy}
        self.worker_tags = {**self.run_tags, "ray_train_worker_world_rank": str(rank)}
        self.rank = rank
        self.recorder = recorder or MetricRecorder()
        self.clock = clock
        self.completed_stages = 0

    def resumed_after(self, stage: int) -> None:
        """The run restarts from the checkpoint of ``stage``: the next loader trains ``stage + 1``."""
        self.completed_stages = int(stage)

    def wrap_loader(self, loader: Any) -> "MeteredLoader":
        """Meter the loader of the next stage (the loop prepares one loader per stage)."""
        return MeteredLoader(loader, self, self.completed_stages + 1)

    # -- per worker ----------------------------------------------------------------------------
    def epoch_started(self, stage: int, epoch: int) -> None:
        self.recorder.set("forgesweep_train_stage", stage, self.worker_tags)
        self.recorder.set("forgesweep_train_epoch", epoch, self.worker_tags)

    def samples_done(self, count: int) -> None:
        if count:
            self.recorder.inc("forgesweep_train_samples_total", count, self.worker_tags)

    def throughput(self, samples_per_second: float) -> None:
        self.recorder.set("forgesweep_train_samples_per_second", samples_per_second, self.worker_tags)

    # -- per stage -----------------------------------------------------------------------------
    def stage_reported(self, metrics: Mapping[str, Any]) -> None:
        """Record a stage's report (the dict the loop passes to ``ctx.report``)."""
        stage = int(metrics["stage"])
        self.completed_stages = stage
        if self.rank != 0:
            return
        rec, tags = self.recorder, self.run_tags
        for key, value in metrics.items():
            if not _finite(value):
                continue
            if key.startswith("acc/"):
                rec.set("forgesweep_task_accuracy", value, {**tags, "stage": stage, "task": key[4:]})
            elif key.startswith("auc/"):
                rec.set("forgesweep_task_auc", value, {**tags, "stage": stage, "task": key[4:]})
            elif key.startswith("train/"):
                rec.set("forgesweep_train_loss", value, {**tags, "term": key[6:]})
        for key, name in (("avg_acc", "forgesweep_avg_accuracy"), ("avg_auc", "forgesweep_avg_auc"),
                          ("forgetting", "forgesweep_forgetting"), ("stage_seconds", "forgesweep_stage_seconds"),
                          ("replay_size", "forgesweep_replay_buffer_size")):
            if _finite(metrics.get(key)):
                rec.set(name, metrics[key], tags)
        rec.set("forgesweep_stages_completed", stage, tags)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class MeteredLoader:
    """A prepared loader whose passes are counted as epochs and whose batches as samples.

    Everything else (``sampler.set_epoch``, ``len``, ``dataset``) goes to the wrapped loader.
    A batch counts as processed when the consumer asks for the next one, so the rate includes
    the training step, not just data loading.
    """

    def __init__(self, loader: Any, meter: TrainingMetrics, stage: int) -> None:
        self._loader, self._meter, self._stage, self._epochs = loader, meter, stage, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[Any]:
        meter, clock = self._meter, self._meter.clock
        self._epochs += 1
        meter.epoch_started(self._stage, self._epochs)
        began = window_start = clock()
        total = window = 0
        for batch in self._loader:
            count = batch_size(batch)
            yield batch
            meter.samples_done(count)
            total += count
            window += count
            now = clock()
            if now - window_start >= THROUGHPUT_WINDOW_S:
                meter.throughput(window / (now - window_start))
                window_start, window = now, 0
        elapsed = clock() - began
        if total and elapsed > 0:
            meter.throughput(total / elapsed)  # the epoch's mean rate stays until the next epoch
