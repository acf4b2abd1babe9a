"""The parallel extraction job: Ray tasks over shards of the manifest, run once before a sweep.

The driver builds the run's model once (seeded like every trial, so a random-weight tower is the
trials' tower), computes the cache keys, and checks which shards of which variants are missing
or corrupted. The tower's weights go into Ray's object store once; one task per missing shard
rebuilds the model around them (checking their digest against the key), decodes its frames,
runs the tower over every view and writes that shard of every variant
(``features.cpus_per_task`` / ``features.gpus_per_task`` each). When all tasks are done the
driver writes each variant's index, the commit point that trials look for.

Variants: the config's own (e.g. ``model.clip_activation``) plus every value a categorical
sweep dimension over that parameter can pick, so any trial finds its features; one tower pass
serves all of them.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import ray
import torch

from forgesweep.config import ExperimentConfig
from forgesweep.data.datasets import FrameCache
from forgesweep.data.manifest import Manifest, ManifestRow
from forgesweep.data.tasks import Task
from forgesweep.features.extract import (CachePlan, compute_shard, index_extra, plan_cache, scan_shards,
                                         split_shards)
from forgesweep.features.key import cached_rows, tower_digest
from forgesweep.features.packed import FrozenFeatureSpec
from forgesweep.features.store import FeatureStore, ShardRecord
from forgesweep.models import Detector, build_model
from forgesweep.train.loop import build_run_model, resolve_precision


@dataclass(frozen=True)
class CacheReport:
    """What :func:`prepare_sweep_cache` did: ``line`` says it in words."""

    line: str
    samples: int
    extracted: int
    tasks: int
    seconds: float
    keys: dict[str, str]


def sweep_variants(cfg: ExperimentConfig, spec: FrozenFeatureSpec) -> list[str]:
    """The variants the sweep's trials can use: the config's, then each categorical choice of
    ``model.<spec.variant_field>`` in ``sweep.space`` (in order, without repeats)."""
    variants = [spec.variant]
    dim = cfg.sweep.space.get(f"model.{spec.variant_field}") if spec.variant_field else None
    if dim is not None and dim.type == "categorical":
        variants += [str(c) for c in dim.choices if str(c) in spec.variants]
    return list(dict.fromkeys(variants))


# Config keys outside the model that are part of every cache key (with the features section).
KEYED_CONFIG = ("seed", "data.root", "data.manifest", "data.sequence", "data.image_size", "data.horizontal_flip",
                "train.precision")


def unshared_keys(cfg: ExperimentConfig, spec: FrozenFeatureSpec) -> list[str]:
    """Searched keys that change the cache key: trials that pick another value than the base
    config's extract their own features (in their process) instead of reading the sweep's."""
    tower = {f"model.{f}" for f in spec.tower_fields}
    return [k for k in cfg.sweep.space if k in tower or k in KEYED_CONFIG or k.startswith("features.")]


def _parallel_slots(features_cfg, use_gpu: bool) -> int:
    """How many extraction tasks the connected cluster runs at once."""
    resources = ray.cluster_resources()
    slots = resources.get("CPU", 1) / features_cfg.cpus_per_task
    if use_gpu and features_cfg.gpus_per_task > 0:
        slots = min(slots, resources.get("GPU", 0) / features_cfg.gpus_per_task)
    return max(1, int(slots))


def _no_init_weights():
    """transformers' context that skips random initialisation (the weights are loaded next)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers < 5
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()


def _model_with_tower(settings: dict[str, Any], tower: dict[str, torch.Tensor]) -> Detector:
    """The run's model with the driver's tower weights, checked against the cache key's digest.

    The model is rebuilt here rather than unpickled (a transformers model that ran carries
    hooks that do not survive pickling), without paying for a random initialisation.
    """
    with _no_init_weights():
        model = build_model(settings["model"]["name"], {k: v for k, v in settings["model"].items() if k != "name"})
    spec = model.frozen_feature_spec()
    spec.tower.load_state_dict(tower)
    if tower_digest(spec.tower) != settings["weights_sha256"]:
        raise RuntimeError("feature extraction: the tower rebuilt in the task does not hash to the cache key's "
                           "weights digest")
    return model


def _extract_shard(tower: dict[str, torch.Tensor], settings: dict[str, Any], stem: str, rows: Sequence[ManifestRow],
                   variants: Sequence[str]) -> dict[str, Any]:
    """One Ray task: extract shard ``stem`` of ``variants`` and write it; returns the records."""
    began = time.perf_counter()
    torch.set_num_threads(max(1, int(settings["cpus"])))
    use_cuda = settings["gpus"] > 0 and torch.cuda.is_available()
    device = torch.device("cuda") if use_cuda else torch.device("cpu")
    model = _model_with_tower(settings, tower)
    plan = CachePlan(FeatureStore(settings["root"]), model.frozen_feature_spec(), settings["keys"], tuple(rows), (),
                     settings["views"], settings["dtype"], settings["batch_size"], settings["precision"])
    manifest = Manifest(list(rows), settings["manifest_root"], settings["manifest_source"])
    model.to(device)
    written = compute_shard(plan, model, FrameCache(manifest, settings["image_size"]), stem, rows, variants, device)
    return {"records": {v: record.to_json() for v, (record, _) in written.items()},
            "seconds": time.perf_counter() - began, "samples": len(rows)}


def prepare_sweep_cache(cfg: ExperimentConfig, manifest: Manifest, tasks: Sequence[Task], use_gpu: bool) -> CacheReport:
    """Fill the feature cache of ``cfg``'s model for every sample of ``tasks`` (Ray must be connected).

    Args:
        use_gpu: whether the trials train on GPUs: the cached features are computed in the
            precision the trials resolve there (``train.precision``), which is in the key.

    Returns:
        What was found and extracted (``line`` for the sweep's progress output).
    """
    began = time.perf_counter()
    model = build_run_model(cfg)
    spec = model.frozen_feature_spec()
    if spec is None:
        return CacheReport(f"[features] model {cfg.model.name!r} has no frozen tower: features.cache has no effect",
                           0, 0, 0, time.perf_counter() - began, {})
    rows = cached_rows(split for t in tasks for split in (t.train, t.val, t.test))
    precision = resolve_precision(cfg.train.precision, torch.device("cuda" if use_gpu else "cpu"))
    variants = sweep_variants(cfg, spec)
    plan = plan_cache(cfg.features, cfg.data, manifest, rows, model, variants, precision)

    # A fresh cache is cut into at least as many shards as tasks can run at once (the partition
    # is not part of the key: an existing index keeps its own).
    slots = _parallel_slots(cfg.features, use_gpu)
    if len(plan.shards) < slots and len(rows) > len(plan.shards):
        plan = dataclasses.replace(plan, shards=split_shards(rows, max(1, math.ceil(len(rows) / slots))))

    # What each variant's folder lacks; shards are grouped so one task serves all variants.
    good: dict[str, dict[str, ShardRecord]] = {}
    work: dict[tuple[str, tuple[str, ...]], tuple[tuple[ManifestRow, ...], list[str]]] = {}
    notes: list[str] = []
    for variant in variants:
        scan = scan_shards(plan, variant)
        good[variant] = scan.good
        notes += [n for n in scan.notes if scan.had_index]
        for stem, shard_rows in scan.todo:
            entry = work.setdefault((stem, tuple(r.key for r in shard_rows)), (shard_rows, []))
            entry[1].append(variant)
    where = plan.store.root
    keys = {v: k.digest for v, k in plan.keys.items()}
    unshared = unshared_keys(cfg, spec)
    warning = [f"warning: the sweep searches {', '.join(unshared)}, which the cache key depends on: trials with "
               f"other values than the base config's extract their own features"] if unshared else []
    if not work:
        seconds = time.perf_counter() - began
        line = (f"[features] {len(rows)} samples x {len(plan.views)} views of {', '.join(variants)} already cached "
                f"in {where} (checked in {seconds:.1f}s)" + (f" ({warning[0]})" if warning else ""))
        return CacheReport(line, len(rows), 0, 0, seconds, keys)

    weights = next(iter(plan.keys.values())).material["tower"]["weights_sha256"]
    settings = {"model": cfg.to_dict()["model"], "weights_sha256": weights, "root": plan.store.root,
                "keys": plan.keys, "views": plan.views, "dtype": plan.dtype,
                "batch_size": plan.batch_size, "precision": plan.precision, "manifest_root": manifest.root,
                "manifest_source": manifest.source, "image_size": cfg.data.image_size,
                "cpus": cfg.features.cpus_per_task, "gpus": cfg.features.gpus_per_task if use_gpu else 0.0}
    task = ray.remote(_extract_shard).options(num_cpus=settings["cpus"], num_gpus=settings["gpus"],
                                              name="forgesweep-extract-features")
    # The tower's weights go into the object store once; every task reads them from there.
    tower_ref = ray.put({k: v.detach().cpu() for k, v in spec.tower.state_dict().items()})
    futures = [task.remote(tower_ref, settings, stem, shard_rows, shard_variants)
               for (stem, _), (shard_rows, shard_variants) in work.items()]
    results = ray.get(futures)
    for result in results:
        for variant, record in result["records"].items():
            good[variant][record["stem"]] = ShardRecord.from_json(record)
    for variant in variants:
        if any(variant in v for _, v in work.values()):
            plan.store.write_index(plan.keys[variant], list(good[variant].values()), index_extra(plan, variant))
    extracted = sum(len(r) for r, _ in work.values())
    task_seconds = sum(r["seconds"] for r in results)
    detail = "; ".join(notes + warning)
    seconds = time.perf_counter() - began
    line = (f"[features] extracted {extracted} samples x {len(plan.views)} views of {', '.join(variants)} with "
            f"{len(futures)} Ray tasks in {seconds:.1f}s (task time {task_seconds:.1f}s) into {where}"
            + (f" ({detail})" if detail else ""))
    return CacheReport(line, len(rows), extracted, len(futures), seconds, keys)
