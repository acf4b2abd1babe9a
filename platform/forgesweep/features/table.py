"""Cached features of one model, in memory: the rows a heads-only dataset reads."""

from __future__ import annotations

from typing import Sequence

import torch

from forgesweep.errors import DataError
from forgesweep.features.packed import IDENTITY_VIEW


class FeatureTable:
    """Cached features by sample id and view.

    Args:
        keys: sample ids, one per row of ``values``.
        values: ``[N, views, layers, dim]`` (the layers the model reads, in its order), in the
            storage dtype; :meth:`get` returns float32.
        views: the view names of axis 1 (``identity`` first, then ``hflip`` when cached).
    """

    def __init__(self, keys: Sequence[str], values: torch.Tensor, views: Sequence[str]) -> None:
        if values.ndim != 4 or values.shape[0] != len(keys) or values.shape[1] != len(views):
            raise ValueError(f"FeatureTable: values {tuple(values.shape)} do not match {len(keys)} keys x "
                             f"{len(views)} views")
        if not views or views[0] != IDENTITY_VIEW:
            raise ValueError(f"FeatureTable: the first view must be {IDENTITY_VIEW!r}, got {list(views)}")
        self.keys = list(keys)
        self.values = values
        self.views = tuple(views)
        self._row = {k: i for i, k in enumerate(self.keys)}
        if len(self._row) != len(self.keys):
            raise ValueError("FeatureTable: repeated sample id")

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: object) -> bool:
        return key in self._row

    def has_view(self, view: str) -> bool:
        """Whether ``view`` (e.g. ``hflip``) is cached."""
        return view in self.views

    def get(self, key: str, view: str = IDENTITY_VIEW) -> torch.Tensor:
        """``[layers, dim]`` float32 features of sample ``key`` seen through ``view``.

        Raises:
            DataError: the sample or the view is not cached (a dataset row outside the cache).
        """
        row = self._row.get(key)
        if row is None:
            raise DataError(f"feature cache: sample {key!r} has no cached features")
        if view not in self.views:
            raise DataError(f"feature cache: view {view!r} is not cached (cached: {', '.join(self.views)})")
        return self.values[row, self.views.index(view)].float()
