"""What a detector's frozen tower can cache, and the heads-only input that carries cached features.

A detector with a frozen tower describes it with :class:`FrozenFeatureSpec`
(``Detector.frozen_feature_spec()``). When the features are cached, the training loop does not
hand the model images but :func:`pack_inputs` of the images and the cached features: one float
tensor ``[B, 3*H*W + L*D]`` per batch. Because it is an ordinary tensor with a batch axis,
everything that moves batches around -- the DataLoader's collation, ``.to(device)``, DDP,
strategies that select rows (``images[rows]``), frozen teachers that are called with the same
batch -- works unchanged; only the model's ``forward`` looks inside (:func:`unpack_inputs`).
Images are 4-D, packed inputs 2-D, so the two can never be confused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

IDENTITY_VIEW = "identity"
HFLIP_VIEW = "hflip"
KNOWN_VIEWS = (IDENTITY_VIEW, HFLIP_VIEW)


@dataclass(frozen=True)
class FrozenFeatureSpec:
    """What a model's frozen tower produces, so it can be computed once and cached.

    Attributes:
        tower: the frozen module whose weights define the features (its weights are hashed into
            the cache key, so changed weights never reuse old features).
        identity: JSON-safe description of the tower (architecture config, weights source).
        preprocessing: JSON-safe description of how the model turns its input images into the
            tower's input (resize, mean/std): part of the cache key.
        variants: every activation the tower can provide (e.g. ``layer_norm2``, ``block_output``);
            the cache stores each variant under its own key.
        variant: the variant this model uses.
        variant_field: the model parameter that selects the variant (so a sweep over it can
            extract every value it may pick), or None.
        num_layers: cached layers per sample (all of them, so a layer subset is a slice).
        dim: width of one cached token.
        layers: the cached layers this model reads, in the order it reads them.
        tower_fields: model parameters that change the tower or its preprocessing (a sweep that
            searches one of them cannot share one cache across its trials).
    """

    tower: nn.Module = field(repr=False, compare=False)
    identity: dict[str, Any]
    preprocessing: dict[str, Any]
    variants: tuple[str, ...]
    variant: str
    variant_field: str | None
    num_layers: int
    dim: int
    layers: tuple[int, ...]
    tower_fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.variant not in self.variants:
            raise ValueError(f"variant {self.variant!r} is not one of {self.variants}")
        bad = [i for i in self.layers if not 0 <= i < self.num_layers]
        if bad or not self.layers:
            raise ValueError(f"layers {list(self.layers)} must be a non-empty subset of 0..{self.num_layers - 1}")

    @property
    def packed_width(self) -> int:
        """Width of the feature part of one packed sample (``len(layers) * dim``)."""
        return len(self.layers) * self.dim


def pack_inputs(images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Images and their cached features as one tensor: ``[..., 3*H*W + L*D]``.

    Args:
        images: ``[3, H, W]`` (one sample) or ``[B, 3, H, W]``, square.
        features: ``[L, D]`` or ``[B, L, D]``: the cached features the model reads, in its order.

    Raises:
        ValueError: mismatched batch sizes or non-square images.
    """
    if images.ndim not in (3, 4) or features.ndim != images.ndim - 1:
        raise ValueError(f"pack_inputs: expected [3,H,W] with [L,D] or [B,3,H,W] with [B,L,D], got "
                         f"{tuple(images.shape)} and {tuple(features.shape)}")
    if images.shape[-1] != images.shape[-2] or images.shape[-3] != 3:
        raise ValueError(f"pack_inputs: images must be square RGB, got {tuple(images.shape)}")
    if images.ndim == 4 and images.shape[0] != features.shape[0]:
        raise ValueError(f"pack_inputs: {images.shape[0]} images but {features.shape[0]} feature rows")
    return torch.cat([images.flatten(-3), features.to(images.dtype).flatten(-2)], dim=-1)


def is_packed(inputs: torch.Tensor) -> bool:
    """Whether ``inputs`` is a packed heads-only batch (2-D) rather than images (4-D)."""
    return inputs.ndim == 2


def unpack_inputs(packed: torch.Tensor, num_layers: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a packed batch ``[B, 3*H*W + L*D]`` into images ``[B, 3, H, W]`` and features ``[B, L, D]``.

    Raises:
        ValueError: when the width does not hold ``L*D`` features plus a square RGB image
            (e.g. features cached for another layer subset or tower).
    """
    if packed.ndim != 2:
        raise ValueError(f"unpack_inputs: expected a [B, N] packed batch, got {tuple(packed.shape)}")
    width = num_layers * dim
    pixels = packed.shape[1] - width
    side = math.isqrt(max(pixels // 3, 0))
    if pixels <= 0 or 3 * side * side != pixels:
        raise ValueError(f"unpack_inputs: a packed row of {packed.shape[1]} values does not hold {num_layers} x {dim} "
                         f"cached features plus a square RGB image; were the features cached for this model?")
    images = packed[:, :pixels].reshape(-1, 3, side, side)
    features = packed[:, pixels:].reshape(-1, num_layers, dim)
    return images, features
