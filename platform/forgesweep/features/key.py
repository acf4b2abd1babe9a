"""The content-addressed cache key: what the cached features depend on, hashed.

A cached feature depends on the tower (architecture and weights), on how a frame becomes the
tower's input (the dataset's resize and normalisation, the model's own resize and mean/std), on
the frames themselves, on the view (identity or horizontally flipped), on the activation variant
and on the numerics (autocast dtype, storage dtype). All of that goes into
:class:`CacheKey.material`; the key is the SHA-256 of its canonical JSON, and names the cache's
folder. Any change gives another folder, so stale features are never found, let alone read; the
index inside a folder repeats the material, and a reader compares it before trusting anything.

Frames: the manifest rows of every cached sample (path, label, split, ...) and, per frame, its
size and modification time (local files) or its ETag (``s3://`` objects). Re-generating a
benchmark in place therefore changes the key even when the manifest text is identical; copying
the data elsewhere (new mtimes) costs one re-extraction, never a stale read.
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from forgesweep.data.manifest import Manifest, ManifestRow
from forgesweep.data.object_store import is_s3, shared_cache
from forgesweep.data.preprocess import MEAN, STD
from forgesweep.errors import DataError
from forgesweep.features.packed import FrozenFeatureSpec

# Bump when the layout or the meaning of cached tensors changes: old caches then miss.
FORMAT_VERSION = 1


@dataclass(frozen=True)
class CacheKey:
    """A cache key: ``digest`` (hex SHA-256, the folder name) of ``material`` (JSON-safe)."""

    material: dict[str, Any]
    digest: str

    @classmethod
    def of(cls, material: dict[str, Any]) -> "CacheKey":
        return cls(material, hashlib.sha256(canonical_json(material).encode("utf-8")).hexdigest())


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def tower_digest(module: nn.Module) -> str:
    """SHA-256 of a module's weights: every parameter and buffer's name, dtype, shape and bytes.

    Remembered per module while its tensors stay the same objects at the same version (any
    in-place change bumps a tensor's version; a replaced tensor has another identity), so a trial
    that needs the digest twice hashes its 300M-parameter tower once.
    """
    state = module.state_dict()
    stamp = tuple((name, id(t), t.data_ptr(), t._version) for name, t in state.items())
    known = _DIGESTS.get(module)
    if known is not None and known[0] == stamp:
        return known[1]
    digest = weights_digest(state)
    _DIGESTS[module] = (stamp, digest)
    return digest


# module -> (stamp of its tensors, digest); weak keys: an entry dies with its module, so a new
# module at a recycled address never finds an old digest.
_DIGESTS: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, str]]" = weakref.WeakKeyDictionary()


def weights_digest(weights: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict (names, dtypes, shapes and bytes, in name order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(weights.items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode("utf-8"))
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cached_rows(splits: Iterable[Iterable[ManifestRow]]) -> list[ManifestRow]:
    """The distinct rows of all ``splits`` (tasks share their reals), ordered by sample id."""
    return sorted({r.key: r for split in splits for r in split}.values(), key=lambda r: r.key)


def frames_fingerprint(manifest: Manifest, rows: Sequence[ManifestRow]) -> str:
    """SHA-256 of the rows (canonical JSON) and of each frame's size+mtime or ETag.

    Raises:
        DataError: a local frame is missing, or an ``s3://`` object cannot be reached.
    """
    sources = {r.key: manifest.resolve(r) for r in rows}
    etags = shared_cache().head_many(str(s) for s in sources.values() if is_s3(s))
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r.key):
        source = sources[row.key]
        if is_s3(source):
            stamp = etags[str(source)]
        else:
            try:
                st = os.stat(source)
            except FileNotFoundError:
                raise DataError(f"frame not found: {source}") from None
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        digest.update(canonical_json(row.model_dump(mode="json")).encode("utf-8"))
        digest.update(f"|{stamp}\n".encode("utf-8"))
    return digest.hexdigest()


def cache_key(spec: FrozenFeatureSpec, variant: str, *, weights: str, frames: str, image_size: int,
              views: Sequence[str], dtype: str, precision: str) -> CacheKey:
    """The key of one variant's cached features.

    Args:
        spec: the model's frozen-feature spec (tower identity and preprocessing).
        variant: the activation variant stored under this key.
        weights: :func:`tower_digest` of ``spec.tower``.
        frames: :func:`frames_fingerprint` of the cached rows.
        image_size: the dataset's frame size (``data.image_size``).
        views: cached views in order (``identity``, ``hflip``).
        dtype: storage dtype (``float32`` or ``float16``).
        precision: autocast dtype of the extraction (``fp32`` or ``bf16``).
    """
    if variant not in spec.variants:
        raise ValueError(f"variant {variant!r} is not one of {spec.variants}")
    return CacheKey.of({
        "format": FORMAT_VERSION,
        "tower": {**spec.identity, "weights_sha256": weights},
        "preprocessing": {"dataset": {"image_size": image_size, "resize": "bilinear", "mean": MEAN, "std": STD},
                          "model": spec.preprocessing},
        "frames": frames,
        "variant": variant,
        "layers": spec.num_layers,
        "dim": spec.dim,
        "views": list(views),
        "dtype": dtype,
        "precision": precision,
    })
