"""Torch datasets over manifest rows, with a per-process cache of decoded frames.

Tasks of a sequence share their real videos, and replay revisits old samples, so each frame is
decoded once per process and kept as uint8 (64x64x3 = 12 KiB a frame).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset

from forgesweep.data.manifest import Manifest, ManifestRow
from forgesweep.data.preprocess import load_image, to_model_input


class FrameCache:
    """Decoded ``[3, H, W]`` uint8 frames keyed by sample id, for one manifest and size."""

    def __init__(self, manifest: Manifest, image_size: int) -> None:
        self.manifest = manifest
        self.image_size = image_size
        self._frames: dict[str, torch.Tensor] = {}

    def get(self, row: ManifestRow) -> torch.Tensor:
        """The row's frame, decoded on first use (DataError if unreadable)."""
        frame = self._frames.get(row.key)
        if frame is None:
            array = load_image(self.manifest.resolve(row), self.image_size)
            frame = torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
            self._frames[row.key] = frame
        return frame

    def stack(self, rows: Sequence[ManifestRow]) -> torch.Tensor:
        """``[N, 3, H, W]`` uint8 frames of ``rows``."""
        return torch.stack([self.get(r) for r in rows]) if rows else torch.empty(0, 3, self.image_size, self.image_size, dtype=torch.uint8)


class FrameDataset(Dataset):
    """Samples ``{"images": float [3,H,W], "labels": int, "keys": str}`` of the given rows.

    All frames are decoded when the dataset is built, so an unreadable frame fails before
    training starts rather than in the middle of an epoch.

    Args:
        rows: manifest rows, in order.
        cache: the process's frame cache.
        horizontal_flip: flip each sample with probability 1/2 (training only).
        seed: seeds the flip generator, so runs repeat.
    """

    def __init__(self, rows: Sequence[ManifestRow], cache: FrameCache, horizontal_flip: bool = False,
                 seed: int = 0) -> None:
        self.rows = list(rows)
        self.frames = cache.stack(self.rows)
        self.labels = torch.tensor([r.label for r in self.rows], dtype=torch.long)
        self.horizontal_flip = horizontal_flip
        self._generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        image = self.frames[index]
        if self.horizontal_flip and torch.rand((), generator=self._generator).item() < 0.5:
            image = image.flip(-1)
        return {"images": to_model_input(image), "labels": self.labels[index], "keys": self.rows[index].key}
