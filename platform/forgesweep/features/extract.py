"""Computing cached features and loading them back verified (plain PyTorch, no Ray).

:func:`plan_cache` derives everything a cache needs from the config, the manifest rows and the
model: the views, the storage dtype, the shard plan and one :class:`~forgesweep.features.key.CacheKey`
per activation variant. :func:`scan_shards` checks what a folder holds (and loads the layers a
model reads); :func:`compute_shard` extracts one shard of every requested variant with one pass
of the tower; :func:`load_feature_table` puts these together for a training process: read what
is valid, recompute in-process whatever is missing or corrupted, rewrite the index, and return
the :class:`~forgesweep.features.table.FeatureTable`. A sweep first fills the cache in parallel
(:mod:`forgesweep.features.ray_job`), so its trials normally only read.

What is cached per sample: the tower's tokens of every layer for each view -- ``identity`` (the
frame as evaluation sees it) and, when training flips frames (``data.horizontal_flip``), also
``hflip`` (the mirrored frame). Training then draws the same random flip as without the cache
and reads the matching view, so cached training sees exactly the inputs it would otherwise
compute. ``features.views: identity`` halves the storage: flipped frames then pair the
unflipped CLIP tokens with the flipped pixels (an approximation, documented in the config).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from forgesweep.data.datasets import FrameCache
from forgesweep.data.manifest import Manifest, ManifestRow
from forgesweep.data.preprocess import to_model_input
from forgesweep.errors import ConfigError
from forgesweep.features.key import CacheKey, cache_key, frames_fingerprint, tower_digest
from forgesweep.features.packed import HFLIP_VIEW, IDENTITY_VIEW, FrozenFeatureSpec
from forgesweep.features.store import FeatureStore, ShardRecord
from forgesweep.features.table import FeatureTable
from forgesweep.models.registry import Detector

STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def resolve_views(setting: str, horizontal_flip: bool) -> tuple[str, ...]:
    """``features.views`` as a tuple of view names (``auto``: flip view iff training flips)."""
    if setting == "auto":
        return (IDENTITY_VIEW, HFLIP_VIEW) if horizontal_flip else (IDENTITY_VIEW,)
    return tuple(setting.split("+"))


@dataclass(frozen=True)
class CachePlan:
    """Everything needed to fill or read one model's cache.

    Attributes:
        store: where the folders live.
        spec: the model's frozen-feature spec.
        keys: activation variant -> its cache key.
        rows: the cached samples, ordered by sample id.
        shards: ``(stem, rows)`` of a fresh cache (an existing index keeps its own partition).
        views, dtype, batch_size, precision: extraction settings (all but batch size are in the keys).
    """

    store: FeatureStore
    spec: FrozenFeatureSpec
    keys: dict[str, CacheKey]
    rows: tuple[ManifestRow, ...]
    shards: tuple[tuple[str, tuple[ManifestRow, ...]], ...]
    views: tuple[str, ...]
    dtype: str
    batch_size: int
    precision: str


def plan_cache(features_cfg, data_cfg, manifest: Manifest, rows: Sequence[ManifestRow], model: Detector,
               variants: Sequence[str], precision: str) -> CachePlan:
    """The cache plan of ``model`` over ``rows`` for the activation ``variants``.

    Args:
        features_cfg: the config's ``features`` section; data_cfg: its ``data`` section.
        precision: ``fp32`` or ``bf16``: the autocast dtype of the extraction (in the key).

    Raises:
        ConfigError: the model has no frozen tower, or a variant it does not know.
        DataError: a frame cannot be fingerprinted (missing file, unreachable object).
    """
    spec = model.frozen_feature_spec()
    if spec is None:
        raise ConfigError(f"features.cache: model {type(model).__name__} has no frozen tower whose features "
                          f"could be cached")
    unknown = [v for v in variants if v not in spec.variants]
    if unknown:
        raise ConfigError(f"features: unknown variant {unknown[0]!r}; {type(model).__name__} provides "
                          f"{', '.join(spec.variants)}")
    rows = tuple(sorted({r.key: r for r in rows}.values(), key=lambda r: r.key))
    views = resolve_views(features_cfg.views, data_cfg.horizontal_flip)
    weights, frames = tower_digest(spec.tower), frames_fingerprint(manifest, rows)
    keys = {v: cache_key(spec, v, weights=weights, frames=frames, image_size=data_cfg.image_size, views=views,
                         dtype=features_cfg.dtype, precision=precision) for v in dict.fromkeys(variants)}
    return CachePlan(FeatureStore(features_cfg.root), spec, keys, rows, split_shards(rows, features_cfg.shard_size),
                     views, features_cfg.dtype, features_cfg.batch_size, precision)


def split_shards(rows: Sequence[ManifestRow], size: int) -> tuple[tuple[str, tuple[ManifestRow, ...]], ...]:
    """``(stem, rows)`` shards of at most ``size`` rows, in order (``shard-00000``, ...)."""
    rows = tuple(rows)
    return tuple((f"shard-{i // size:05d}", rows[i:i + size]) for i in range(0, len(rows), size))


@torch.no_grad()
def extract_views(model: Detector, frames: torch.Tensor, views: Sequence[str], variants: Sequence[str],
                  batch_size: int, device: torch.device, precision: str) -> dict[str, torch.Tensor]:
    """Tower features of uint8 frames ``[n, 3, H, W]``: ``{variant: [n, views, layers, dim]}`` float32.

    Each view transforms the uint8 frame exactly as the training dataset does (the flip first,
    then the normalisation), so a cached view equals what training would compute.
    """
    model.eval()
    amp = AUTOCAST_DTYPES[precision]
    per_view: dict[str, list[torch.Tensor]] = {v: [] for v in variants}
    for view in views:
        chunks: dict[str, list[torch.Tensor]] = {v: [] for v in variants}
        for start in range(0, len(frames), batch_size):
            batch = frames[start:start + batch_size]
            if view == HFLIP_VIEW:
                batch = batch.flip(-1)
            images = to_model_input(batch).to(device)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                out = model.extract_frozen_features(images, variants)
            for v in variants:
                chunks[v].append(out[v].float().cpu())
        for v in variants:
            per_view[v].append(torch.cat(chunks[v]) if chunks[v] else torch.empty(0))
    return {v: torch.stack(per_view[v], dim=1) for v in variants}


def compute_shard(plan: CachePlan, model: Detector, frames: FrameCache, stem: str, rows: Sequence[ManifestRow],
                  variants: Sequence[str], device: torch.device) -> dict[str, tuple[ShardRecord, torch.Tensor]]:
    """Extract and write shard ``stem`` of every variant in ``variants`` (one pass of the tower).

    Returns:
        variant -> (its index record, the stored tensor ``[n, views, layers, dim]``).
    """
    features = extract_views(model, frames.stack(rows), plan.views, variants, plan.batch_size, device,
                             plan.precision)
    keys = [r.key for r in rows]
    out = {}
    for variant in variants:
        stored = features[variant].to(STORAGE_DTYPES[plan.dtype])
        out[variant] = (plan.store.put_shard(plan.keys[variant], stem, stored, keys), stored)
    return out


@dataclass
class ScanResult:
    """What one variant's folder holds: valid shards, shards to (re)compute, and why."""

    good: dict[str, ShardRecord]
    loaded: dict[str, torch.Tensor]
    todo: list[tuple[str, tuple[ManifestRow, ...]]]
    notes: list[str]
    had_index: bool


def scan_shards(plan: CachePlan, variant: str, layers: Optional[Sequence[int]] = None) -> ScanResult:
    """Check every shard of ``variant``'s folder against its index (SHA-256 and sample ids).

    Args:
        layers: keep the verified features of these layers in memory (None: verify only).
    """
    key = plan.keys[variant]
    index, why = plan.store.read_index(key)
    if index is None:
        return ScanResult({}, {}, list(plan.shards), [why], False)
    by_key = {r.key: r for r in plan.rows}
    result = ScanResult({}, {}, [], [], True)
    listed = set()
    for record in index["shards"]:
        listed.update(record.keys)
        if any(k not in by_key for k in record.keys):  # cannot happen with a matching key; never trust it
            result.notes.append(f"shard {record.file} lists samples outside the cache: recomputing everything")
            return ScanResult({}, {}, list(plan.shards), result.notes, False)
        features, why = plan.store.read_shard(key, record)
        if features is not None and tuple(features.shape[1:3]) != (len(plan.views), plan.spec.num_layers):
            features, why = None, f"shard {record.file} has shape {tuple(features.shape)}, not [n, views, layers, dim]"
        if features is None:
            result.notes.append(why + ": recomputing it")
            result.todo.append((record.stem, tuple(by_key[k] for k in record.keys)))
            continue
        result.good[record.stem] = record
        if layers is not None:
            result.loaded[record.stem] = features[:, :, list(layers)]  # indexing copies: the shard is freed
    missing = [r for r in plan.rows if r.key not in listed]
    if missing:  # also cannot happen with a matching key
        result.notes.append(f"{len(missing)} samples are not in the index: recomputing them")
        result.todo.append((f"shard-extra-{len(index['shards']):05d}", tuple(missing)))
    return result


def load_feature_table(plan: CachePlan, model: Detector, frames: FrameCache, device: torch.device,
                       echo: Callable[[str], None] = print) -> FeatureTable:
    """The model's cached features (its variant, its layers), recomputing what is not valid.

    Missing or corrupted shards are extracted here, in this process, written, and the index is
    rewritten to list them; valid shards are only read.
    """
    spec = plan.spec
    variant = spec.variant
    began = time.perf_counter()
    scan = scan_shards(plan, variant, spec.layers)
    for note in scan.notes:
        echo(f"[features] {note}")
    if scan.todo:
        echo(f"[features] extracting {sum(len(r) for _, r in scan.todo)} samples into "
             f"{plan.store.location(plan.keys[variant])} in this process")
        for stem, rows in scan.todo:
            (record, stored), = compute_shard(plan, model, frames, stem, rows, [variant], device).values()
            scan.good[stem] = record
            scan.loaded[stem] = stored[:, :, list(spec.layers)]
        plan.store.write_index(plan.keys[variant], list(scan.good.values()), index_extra(plan, variant))
    stems = sorted(scan.good)
    keys = [k for stem in stems for k in scan.good[stem].keys]
    values = torch.cat([scan.loaded[stem] for stem in stems])
    echo(f"[features] {len(keys)} samples x {len(plan.views)} views of {variant} ready in "
         f"{time.perf_counter() - began:.1f}s ({plan.store.location(plan.keys[variant])})")
    return FeatureTable(keys, values, plan.views)


def index_extra(plan: CachePlan, variant: str) -> dict:
    """Human-readable fields of an index beside the key material."""
    return {"variant": variant, "views": list(plan.views), "layers": plan.spec.num_layers, "dim": plan.spec.dim,
            "dtype": plan.dtype, "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
