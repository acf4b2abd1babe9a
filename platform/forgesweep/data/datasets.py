"""Torch datasets over manifest rows, with a per-process cache of decoded frames.

Tasks of a sequence share their real videos, and replay revisits old samples, so each frame is
decoded once per process and kept as uint8 (64x64x3 = 12 KiB a frame).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch.utils.data import Dataset

from forgesweep.data.manifest import Manifest, ManifestRow
from forgesweep.data.object_store import is_s3, local_path, shared_cache
from forgesweep.data.preprocess import load_image, load_mask, to_model_input
from forgesweep.errors import DataError
from forgesweep.features.packed import HFLIP_VIEW, IDENTITY_VIEW, pack_inputs
from forgesweep.features.table import FeatureTable


class FrameCache:
    """Decoded ``[3, H, W]`` uint8 frames keyed by sample id, for one manifest and size."""

    def __init__(self, manifest: Manifest, image_size: int) -> None:
        self.manifest = manifest
        self.image_size = image_size
        self._frames: dict[str, torch.Tensor] = {}
        self._masks: dict[str, torch.Tensor] = {}

    def get(self, row: ManifestRow) -> torch.Tensor:
        """The row's frame, decoded on first use (DataError if unreadable)."""
        frame = self._frames.get(row.key)
        if frame is None:
            array = load_image(local_path(self.manifest.resolve(row)), self.image_size)
            frame = torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
            self._frames[row.key] = frame
        return frame

    def get_mask(self, row: ManifestRow) -> tuple[torch.Tensor, bool]:
        """The row's ``[1, H, W]`` uint8 0/1 mask and whether it is known.

        A real frame's mask is all zero by definition; a fake without a mask file gets an
        all-zero mask marked unknown, so mask losses skip it.
        """
        cached = self._masks.get(row.key)
        if cached is not None:
            return cached, True
        source = self.manifest.resolve_mask(row)
        if source is None:
            return torch.zeros(1, self.image_size, self.image_size, dtype=torch.uint8), row.label == 0
        mask = torch.from_numpy(load_mask(local_path(source), self.image_size)).unsqueeze(0)
        self._masks[row.key] = mask
        return mask, True

    def stack(self, rows: Sequence[ManifestRow]) -> torch.Tensor:
        """``[N, 3, H, W]`` uint8 frames of ``rows`` (s3 objects downloaded in parallel first)."""
        remote = [self.manifest.resolve(r) for r in rows if r.key not in self._frames]
        shared_cache().fetch_many(u for u in remote if is_s3(u))
        return torch.stack([self.get(r) for r in rows]) if rows else torch.empty(0, 3, self.image_size, self.image_size, dtype=torch.uint8)


class FrameDataset(Dataset):
    """Samples ``{"images": float [3,H,W], "labels": int, "keys": str}`` of the given rows.

    With ``with_masks`` samples also carry ``masks`` (float ``[1,H,W]`` of 0/1, flipped with
    the image) and ``mask_valid`` (bool), see :meth:`FrameCache.get_mask`.

    All frames are decoded when the dataset is built, so an unreadable frame fails before
    training starts rather than in the middle of an epoch.

    With ``features`` (a :class:`~forgesweep.features.table.FeatureTable` of the model's cached
    frozen-tower features), ``images`` is the packed heads-only input
    (:func:`~forgesweep.features.packed.pack_inputs`): the image plus its cached features, of the
    flipped view when the image was flipped and that view is cached (else the identity view).
    The flip draws are the same with or without features, so both see the same flips.

    Args:
        rows: manifest rows, in order.
        cache: the process's frame cache.
        horizontal_flip: flip each sample with probability 1/2 (training only).
        seed: seeds the flip generator, so runs repeat.
        with_masks: also load manipulation masks.
        features: cached frozen-tower features of every row (None: plain images).
    """

    def __init__(self, rows: Sequence[ManifestRow], cache: FrameCache, horizontal_flip: bool = False,
                 seed: int = 0, with_masks: bool = False, features: Optional[FeatureTable] = None) -> None:
        self.rows = list(rows)
        self.frames = cache.stack(self.rows)
        self.masks: list[tuple[torch.Tensor, bool]] | None = (
            [cache.get_mask(r) for r in self.rows] if with_masks else None)
        self.labels = torch.tensor([r.label for r in self.rows], dtype=torch.long)
        self.horizontal_flip = horizontal_flip
        self._generator = torch.Generator().manual_seed(seed)
        self.features = features
        if features is not None:
            absent = [r.key for r in self.rows if r.key not in features]
            if absent:  # fail before training, not in the middle of an epoch
                raise DataError(f"feature cache: {len(absent)} samples have no cached features, e.g. {absent[0]!r}")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        image = self.frames[index]
        flip = self.horizontal_flip and torch.rand((), generator=self._generator).item() < 0.5
        if flip:
            image = image.flip(-1)
        key = self.rows[index].key
        pixels = to_model_input(image)
        if self.features is not None:
            view = HFLIP_VIEW if flip and self.features.has_view(HFLIP_VIEW) else IDENTITY_VIEW
            pixels = pack_inputs(pixels, self.features.get(key, view))
        sample = {"images": pixels, "labels": self.labels[index], "keys": key}
        if self.masks is not None:
            mask, valid = self.masks[index]
            sample["masks"] = (mask.flip(-1) if flip else mask).float()
            sample["mask_valid"] = torch.tensor(valid)
        return sample
