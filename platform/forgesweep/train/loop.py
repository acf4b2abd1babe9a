"""The continual training loop: plain PyTorch, run by every Ray Train worker (or locally).

For each task in order: train ``epochs_per_task`` epochs on the task's training split plus the
strategy's replay samples, let the strategy update its memory, evaluate on the test split of
every task seen so far (ACC and AUC into the accuracy matrices), then report the stage's metrics
with a stage checkpoint. Ray is reached only through the :class:`LoopContext` the caller
passes, so this module is testable without Ray.

Clip models (``input_kind == "clip"``, e.g. StyleFlow) train on clips of the whole videos their
rows belong to (:class:`~forgesweep.data.clips.ClipReader`, cut as ``data.clips`` says; replayed
frame keys bring back their videos) and are evaluated per video: a video's probability is the
sigmoid of its clips' mean logit, and the accuracy matrices hold video-level ACC/AUC.

Frozen-feature cache (``features.cache: true``, models with a frozen tower such as ``rine_ssca``):
the tower's features of every sample come from :mod:`forgesweep.features` (filled once per sweep;
whatever is missing or corrupted is recomputed here), and every dataset of the run yields the
packed heads-only input, so the tower never runs in training, evaluation or strategy passes.

GPU path: forward passes run under autocast in ``train.precision`` (``auto``: bf16 on CUDA, fp32
on CPU), models with convolutions use the channels-last memory format on CUDA
(``train.channels_last``), and loaders pin host memory on CUDA so copies overlap compute. On a
CPU with the defaults nothing changes.
"""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Protocol, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, default_collate

from forgesweep.config import ExperimentConfig
from forgesweep.continual import Strategy, build_strategy
from forgesweep.continual.replay_buffer import Candidate
from forgesweep.continual.samples import SampleAccess
from forgesweep.data.clips import ClipReader, ClipSampling
from forgesweep.data.datasets import FrameCache, FrameDataset
from forgesweep.data.manifest import Manifest, ManifestRow, read_manifest
from forgesweep.data.tasks import Task, build_task_sequence
from forgesweep.errors import ConfigError
from forgesweep.features.extract import load_feature_table, plan_cache
from forgesweep.features.key import cached_rows
from forgesweep.features.table import FeatureTable
from forgesweep.metrics import AccuracyMatrix, binary_metrics
from forgesweep.models import Detector, build_model, unwrap_model
from forgesweep.train.checkpoint import load_weights, read_state, save_stage_checkpoint


class LoopContext(Protocol):
    """What the loop needs from its runner (Ray Train or a local process)."""

    device: torch.device
    world_rank: int
    world_size: int

    def prepare_model(self, model: nn.Module) -> nn.Module: ...
    def prepare_loader(self, loader: DataLoader) -> DataLoader: ...
    def latest_checkpoint(self) -> Optional[Path]: ...
    def report(self, metrics: dict[str, Any], checkpoint_dir: Optional[Path]) -> None: ...


@dataclass
class LocalContext:
    """Runs the loop in this process: checkpoints go to ``output_dir/stage-<k>``."""

    output_dir: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    world_rank: int = 0
    world_size: int = 1
    reports: list[dict[str, Any]] = field(default_factory=list)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model

    def prepare_loader(self, loader: DataLoader) -> DataLoader:
        return loader

    def latest_checkpoint(self) -> Optional[Path]:
        stages = sorted(Path(self.output_dir).glob("stage-*"), key=lambda p: int(p.name.split("-")[1]))
        return stages[-1] if stages else None

    def report(self, metrics: dict[str, Any], checkpoint_dir: Optional[Path]) -> None:
        if checkpoint_dir is not None:
            target = Path(self.output_dir) / f"stage-{metrics['stage']}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(checkpoint_dir), str(target))  # rename() fails across filesystems
            metrics = {**metrics, "checkpoint_path": str(target)}
        self.reports.append(metrics)


def seed_everything(seed: int) -> None:
    """Seed Python-visible RNGs the loop uses (torch and NumPy)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def build_run_model(cfg: ExperimentConfig) -> Detector:
    """The run's model as every process of the run builds it: seeded with ``cfg.seed`` first, so
    random-weight towers are identical in every trial (and in the sweep's feature extraction)."""
    seed_everything(cfg.seed)
    return build_model(cfg.model.name, cfg.model.params)


def resolve_precision(setting: str, device: torch.device) -> str:
    """``train.precision`` on ``device``: ``bf16`` or ``fp32`` (``auto``: bf16 on CUDA only)."""
    if setting == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return setting


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast to bf16 on ``device`` for ``precision == "bf16"``; no-op for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def use_channels_last(setting, device: torch.device, model: nn.Module) -> bool:
    """``train.channels_last``: True/False as given; ``auto`` = on CUDA for models with 2-D convolutions."""
    if setting != "auto":
        return bool(setting)
    return device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules())


def to_device(batch: dict[str, Any], device: torch.device, channels_last: bool = False) -> dict[str, Any]:
    """A batch's tensors on ``device`` (asynchronously from pinned memory); 4-D images channels-last
    when asked."""
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            v = v.to(device, non_blocking=device.type == "cuda")
            if channels_last and k == "images" and v.ndim == 4:
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


def frozen_features(cfg: ExperimentConfig, manifest: Manifest, tasks: list[Task], model: Detector,
                    device: torch.device) -> Optional[FeatureTable]:
    """The model's cached frozen-tower features when ``features.cache`` is on and it has a tower.

    Every sample of the sequence (all splits) is covered; missing or corrupted shards are
    recomputed in this process (a sweep fills the cache before its trials start).
    """
    if not cfg.features.cache or model.frozen_feature_spec() is None:
        return None
    rows = cached_rows(split for t in tasks for split in (t.train, t.val, t.test))
    precision = resolve_precision(cfg.train.precision, device)
    plan = plan_cache(cfg.features, cfg.data, manifest, rows, model, [model.frozen_feature_spec().variant], precision)
    model.to(device)
    return load_feature_table(plan, model, FrameCache(manifest, cfg.data.image_size), device,
                              echo=lambda line: print(line, flush=True))


def _make_optimizer(cfg: ExperimentConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    t = cfg.train
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay)


# Tensor state of the strategy (e.g. EWC's Fisher information), beside the stage checkpoint.
STRATEGY_TENSORS_FILE = "strategy.safetensors"


class LoopSamples(SampleAccess):
    """The loop's :class:`SampleAccess`: manifest rows by sample id through the frame cache,
    un-augmented, in the format the model trains on (with masks when the model uses them)."""

    def __init__(self, manifest: Manifest, cache: FrameCache, model: nn.Module, batch_size: int,
                 device: torch.device, features: Optional[FeatureTable] = None) -> None:
        self.manifest, self.cache = manifest, cache
        self.detector = unwrap_model(model)
        self.batch_size, self.device = batch_size, device
        self.features = features

    def batches(self, keys: Sequence[str], batch_size: Optional[int] = None, shuffle: bool = False,
                seed: int = 0) -> Iterator[dict[str, Any]]:
        if self.detector.input_kind != "image":
            raise ConfigError(f"this strategy reads samples by id (scores, Fisher, logits), which is supported "
                              f"for image models only; {type(self.detector).__name__} takes clips")
        rows = [self.manifest.by_key(k) for k in keys]
        if shuffle:
            random.Random(seed).shuffle(rows)
        size = batch_size or self.batch_size
        for start in range(0, len(rows), size):
            # One small dataset per batch: a dataset stacks its frames, and a task may be large.
            chunk = FrameDataset(rows[start:start + size], self.cache, with_masks=self.detector.uses_masks,
                                 features=self.features)
            batch = default_collate([chunk[i] for i in range(len(chunk))])
            yield to_device(batch, self.device)


@torch.no_grad()
def predict_probs(model: nn.Module, rows: Iterable[ManifestRow], cache: FrameCache, batch_size: int,
                  device: torch.device, strategy: Optional[Strategy] = None, features: Optional[FeatureTable] = None,
                  precision: str = "fp32", channels_last: bool = False) -> dict[str, float]:
    """Fake probability of every row, keyed by sample id (model put in eval mode).

    With a ``strategy``, its :meth:`~forgesweep.continual.Strategy.predict_logits` turns the
    model's output into logits (e.g. iCaRL's nearest-mean classifier); else the model's logits.
    With ``features`` the model gets packed heads-only inputs (identity view); ``precision``
    and ``channels_last`` as in training.
    """
    model = unwrap_model(model)
    model.eval()
    rows = list({r.key: r for r in rows}.values())
    probs: dict[str, float] = {}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        dataset = FrameDataset(chunk, cache, features=features)
        images = to_device({"images": torch.stack([dataset[i]["images"] for i in range(len(chunk))])}, device,
                           channels_last)["images"]
        with autocast(precision, device):
            output = model(images)
            logits = strategy.predict_logits(output) if strategy is not None else output.logits
        out = torch.sigmoid(logits).float().cpu().tolist()
        probs.update({r.key: p for r, p in zip(chunk, out)})
    return probs


def clip_sampling(cfg: ExperimentConfig) -> ClipSampling:
    """How clip models cut their clips: the config's ``data.clips`` section."""
    return cfg.data.clips


@torch.no_grad()
def predict_video_probs(model: nn.Module, rows: Iterable[ManifestRow], clips: ClipReader, batch_size: int,
                        device: torch.device, strategy: Optional[Strategy] = None) -> dict[str, float]:
    """Video-level fake probability of every video of ``rows``, keyed by video id (clip models).

    A video's probability is the sigmoid of the mean logit over its ``eval_clips_per_video``
    evenly spaced clips. ``batch_size`` counts frames: a batch holds
    ``batch_size // clip_length`` clips (at least one).
    """
    model = unwrap_model(model)
    model.eval()
    dataset = clips.dataset(rows, train=False)
    per_batch = max(1, batch_size // clips.clip_length)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for start in range(0, len(dataset), per_batch):
        items = [dataset[i] for i in range(start, min(start + per_batch, len(dataset)))]
        output = model(torch.stack([item["images"] for item in items]).to(device))
        logits = strategy.predict_logits(output) if strategy is not None else output.logits
        for item, logit in zip(items, logits.float().cpu().tolist()):
            sums[item["video_id"]] = sums.get(item["video_id"], 0.0) + logit
            counts[item["video_id"]] = counts.get(item["video_id"], 0) + 1
    mean = torch.tensor([sums[v] / counts[v] for v in sums], dtype=torch.float64)
    return dict(zip(sums, torch.sigmoid(mean).tolist()))


def evaluate_stage(model: nn.Module, tasks: list[Task], stage: int, cache: FrameCache, batch_size: int,
                   device: torch.device, acc: AccuracyMatrix, auc: AccuracyMatrix,
                   strategy: Optional[Strategy] = None, clips: Optional[ClipReader] = None,
                   features: Optional[FeatureTable] = None, precision: str = "fp32",
                   channels_last: bool = False) -> dict[str, float]:
    """Evaluate tasks ``0..stage`` on their test splits; fill row ``stage`` of both matrices.

    Reals shared by several tasks are scored once. Clip models (``clips`` given) are evaluated
    per video: the matrices hold video-level ACC/AUC (see :func:`predict_video_probs`).
    """
    seen = tasks[: stage + 1]
    rows = (r for t in seen for r in t.test)
    if clips is not None:
        probs = predict_video_probs(model, rows, clips, batch_size, device, strategy)
        sample_id = _video_id
    else:
        probs = predict_probs(model, rows, cache, batch_size, device, strategy, features, precision, channels_last)
        sample_id = _row_key
    out: dict[str, float] = {}
    for task in seen:
        labels = {sample_id(r): r.label for r in task.test}  # one entry per frame, or per video
        p = [probs[k] for k in labels]
        y = list(labels.values())
        m = binary_metrics(p, y)
        acc.set(stage, task.index, m["acc"])
        auc.set(stage, task.index, m["auc"])
        for name in ("acc", "auc", "eer", "ap"):
            out[f"{name}/{task.name}"] = m[name]
    return out


def _row_key(row: ManifestRow) -> str:
    return row.key


def _video_id(row: ManifestRow) -> str:
    return row.video_id


def _train_one_task(cfg: ExperimentConfig, ctx: LoopContext, model: nn.Module, strategy, rows: list[ManifestRow],
                    cache: FrameCache, stage: int, clips: Optional[ClipReader] = None,
                    features: Optional[FeatureTable] = None, channels_last: bool = False) -> dict[str, float]:
    seed = cfg.seed * 1009 + stage
    detector = unwrap_model(model)
    if clips is not None:
        # Clips of the whole videos the rows belong to (replayed frame keys bring their videos).
        dataset = clips.dataset(rows, train=True, horizontal_flip=cfg.data.horizontal_flip,
                                seed=seed + ctx.world_rank)
    else:
        dataset = FrameDataset(rows, cache, horizontal_flip=cfg.data.horizontal_flip, seed=seed + ctx.world_rank,
                               with_masks=detector.uses_masks, features=features)
    # Pinned host memory lets the copies to a GPU run asynchronously (to_device: non_blocking).
    loader = DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed), pin_memory=ctx.device.type == "cuda")
    precision = resolve_precision(cfg.train.precision, ctx.device)
    loader = ctx.prepare_loader(loader)
    sums: dict[str, float] = {}
    epoch = 0
    for phase, phase_epochs in detector.training_phases(cfg.train.epochs_per_task):
        detector.begin_phase(phase)
        # A fresh optimiser per phase: each phase trains its own parameter set.
        optimizer = _make_optimizer(cfg, model)
        for _ in range(phase_epochs):
            if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(epoch)
            epoch += 1
            model.train()
            sums, batches = {}, 0
            for batch in loader:
                batch = to_device(batch, ctx.device, channels_last)
                optimizer.zero_grad(set_to_none=True)
                # bf16 autocast needs no loss scaling (same exponent range as fp32).
                with autocast(precision, ctx.device):
                    _, terms = strategy.compute_loss(model, batch)
                loss = terms["loss"]
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"loss became {loss.item()} at stage {stage + 1}, phase {phase}, epoch {epoch}; "
                        f"terms: { {k: float(v) for k, v in terms.items()} }")
                loss.backward()
                optimizer.step()
                detector.after_optimizer_step()
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                batches += 1
    # Mean loss terms of the last epoch.
    return {f"train/{k}": v / max(batches, 1) for k, v in sums.items()}


def run_continual(cfg: ExperimentConfig, ctx: LoopContext, manifest: Optional[Manifest] = None) -> AccuracyMatrix:
    """Train ``cfg``'s model on its task sequence with its strategy; report after every stage.

    Resumes after the last completed stage when ``ctx.latest_checkpoint()`` returns one.

    Returns:
        The final accuracy matrix.
    """
    seed_everything(cfg.seed)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True)
    manifest = manifest or read_manifest(cfg.data.manifest_path(), check_files=False)
    tasks = build_task_sequence(manifest, cfg.data.sequence)
    names = [t.name for t in tasks]
    cache = FrameCache(manifest, cfg.data.image_size)

    model = build_run_model(cfg)
    clips = ClipReader(cache, model.clip_length(), clip_sampling(cfg)) if model.input_kind == "clip" else None
    if clips is not None and model.uses_masks:
        raise ConfigError(f"model {cfg.model.name!r} takes clips and asks for masks; clip datasets carry no masks")
    strategy = build_strategy(cfg.strategy.name, cfg.strategy.params, seed=cfg.seed)
    if clips is not None and strategy.reads_samples():
        raise ConfigError(f"strategy {cfg.strategy.name!r} (with these parameters) scores samples by id, which is "
                          f"supported for image models only; model {cfg.model.name!r} takes clips")
    acc, auc = AccuracyMatrix(len(tasks)), AccuracyMatrix(len(tasks))
    start = 0
    resume_from = ctx.latest_checkpoint()
    if resume_from is not None:
        state = read_state(resume_from)
        model.load_state_dict(load_weights(resume_from))
        strategy.load_state_dict(state["strategy"])
        tensors_file = Path(resume_from) / STRATEGY_TENSORS_FILE
        strategy.load_tensor_state(load_file(str(tensors_file)) if tensors_file.is_file() else {})
        acc, auc = AccuracyMatrix.from_dict(state["acc_matrix"]), AccuracyMatrix.from_dict(state["auc_matrix"])
        start = int(state["stage"])
    # Before DDP wraps the model: the cache key hashes this model's own frozen tower (never trained).
    features = frozen_features(cfg, manifest, tasks, model, ctx.device) if clips is None else None
    channels_last = use_channels_last(cfg.train.channels_last, ctx.device, model)
    precision = resolve_precision(cfg.train.precision, ctx.device)
    model.to(ctx.device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model = ctx.prepare_model(model)
    samples = LoopSamples(manifest, cache, model, cfg.data.eval_batch_size, ctx.device, features)

    for t in range(start, len(tasks)):
        began = time.perf_counter()
        # Seeded per stage, so a run resumed from stage t's checkpoint repeats an uninterrupted one.
        seed_everything(cfg.seed * 1009 + t)
        task = tasks[t]
        candidates = [Candidate(r.key, r.label) for r in task.train]
        strategy.before_task(t, model, candidates, samples)
        replay = [manifest.by_key(k) for k in strategy.replay_keys()]
        losses = _train_one_task(cfg, ctx, model, strategy, list(task.train) + replay, cache, t, clips, features,
                                 channels_last)
        strategy.after_task(t, model, candidates, samples)
        per_task = evaluate_stage(model, tasks, t, cache, cfg.data.eval_batch_size, ctx.device, acc, auc, strategy,
                                  clips, features, precision, channels_last)
        summary = acc.summary(t)
        metrics: dict[str, Any] = {
            "stage": t + 1,
            "task": task.name,
            "avg_acc": summary["avg_acc"],
            "avg_auc": auc.average(t),
            "forgetting": summary["forgetting"],
            "bwt": summary["bwt"],
            "replay_size": len(replay),
            "train_samples": len(task.train) + len(replay),
            "stage_seconds": time.perf_counter() - began,
            **({"heads_only": float(features is not None)} if cfg.features.cache else {}),
            **per_task,
            **losses,
        }
        checkpoint_dir = None
        if ctx.world_rank == 0:
            checkpoint_dir = Path(tempfile.mkdtemp(prefix=f"forgesweep-stage{t + 1}-"))
            tensors = strategy.tensor_state()
            if tensors:  # written first: the checkpoint counts as complete only once state.json exists
                save_file(tensors, str(checkpoint_dir / STRATEGY_TENSORS_FILE))
            save_stage_checkpoint(checkpoint_dir, model, {
                "stage": t + 1,
                "task_names": names,
                "config": cfg.to_dict(),
                "strategy": strategy.state_dict(),
                "acc_matrix": acc.to_dict(),
                "auc_matrix": auc.to_dict(),
                "seed": cfg.seed,
                "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)},
            })
        ctx.report(metrics, checkpoint_dir)
    return acc
