"""The interaction modules of RSIA-Net: SFIA, MSFE, RSIA (with FRM) and FAF.

Citation: CFFD / RSIA-Net as specified by the user's seed notes (``shared/seeds/004_*``,
REFERENCE.md section 5). The paper is not public; the design choices are explained in
:mod:`forgesweep.models.rsia_net` and in each class docstring here.

The cross-domain attention itself is :class:`forgesweep.models.blocks.CrossDomainAttention`
(shared with ``rsia_lite``); this file adds what the full network needs on top of it.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from forgesweep.models.blocks import CrossDomainAttention, conv_bn_act

# Dilations of the 3x3 convolutions of MSFE: receptive fields 2d + 1 = 3, 5, 7.
MSFE_DILATIONS = (1, 2, 3)


class SpatialFrequencyInteraction(nn.Module):
    """SFIA: each domain gathers the other domain's features where they correlate with its own.

    For spatial features ``s`` and frequency features ``f`` of the same shape ``[B, C, H, W]``:
    the correlation of every position of ``s`` with every position of ``f`` (scaled dot product
    of 1x1-projected queries and keys) is softmax-normalised into weights that aggregate ``f``'s
    (projected) values, and the result is summed back into ``s`` through a zero-initialised gate;
    symmetrically for ``f``. Both directions read the *input* features, so the exchange is
    simultaneous, not sequential.

    Keys and values are average-pooled to at most ``kv_size`` x ``kv_size`` positions first
    (spatial-reduction attention): the correlation then costs ``HW * kv_size^2`` instead of
    ``(HW)^2``, which matters at stage 1 of a 224 px input (56 x 56 positions). Maps already
    that small are used as they are.
    """

    def __init__(self, channels: int, reduction: int, kv_size: int) -> None:
        super().__init__()
        if kv_size < 1:
            raise ValueError(f"kv_size must be >= 1, got {kv_size}")
        self.kv_size = kv_size
        self.s_from_f = CrossDomainAttention(channels, reduction)
        self.f_from_s = CrossDomainAttention(channels, reduction)

    def _keys(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h <= self.kv_size and w <= self.kv_size:
            return x
        return F.adaptive_avg_pool2d(x, (min(h, self.kv_size), min(w, self.kv_size)))

    def forward(self, s: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if s.shape != f.shape:
            raise ValueError(f"SFIA needs aligned domains, got spatial {tuple(s.shape)} and frequency {tuple(f.shape)}")
        return self.s_from_f(s, self._keys(f)), self.f_from_s(f, self._keys(s))


class MultiScaleDilatedEnhance(nn.Module):
    """MSFE: multi-scale enhancement with dilated convolutions of receptive fields 3, 5 and 7.

    Each branch is a depthwise 3x3 convolution with dilation 1, 2 or 3 (receptive field 3, 5, 7
    -- the seed's "D-Conv, r = 3/5/7"), then a 1x1 convolution narrowing to ``channels / 4``
    and a 3x3 convolution; the branches are concatenated, merged back to ``channels`` by a 1x1
    convolution and added to the input (residual), so the block refines rather than replaces.
    The depthwise/narrowed layout keeps it at about ``3.2 C^2`` weights instead of ``27 C^2``
    for three full dilated convolutions.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = max(channels // 4, 4)
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, channels, 3, padding=d, dilation=d, groups=channels, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
                conv_bn_act(channels, inner, kernel=1),
                conv_bn_act(inner, inner, kernel=3),
            )
            for d in MSFE_DILATIONS
        )
        self.merge = nn.Sequential(nn.Conv2d(len(MSFE_DILATIONS) * inner, channels, 1, bias=False),
                                   nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.merge(torch.cat([branch(x) for branch in self.branches], dim=1)))


class RelationAwareAggregation(nn.Module):
    """RSIA: one level's fused feature ``f^l`` from the two SFIA outputs and the previous level.

    1. Both domains are narrowed by a 1x1 conv to the interaction ``width`` and enhanced by
       their own :class:`MultiScaleDilatedEnhance` (MSFE).
    2. FRM: the previous level's fused feature ``f^(l-1)`` (twice the resolution) is refined by
       a stride-2 conv -> BN -> ReLU to this level's shape and added to both enhanced domains, so
       the correlation below is computed on features that carry the coarser level's evidence.
    3. A second spatial-frequency interaction (:class:`SpatialFrequencyInteraction`) on the
       enhanced features: the "relation-aware" exchange.
    4. The two interacted domains are concatenated and fused by a 1x1 conv -> BN -> ReLU.

    Level 1 has no previous level (``prev_width=None``) and skips step 2.
    """

    def __init__(self, channels: int, width: int, prev_width: Optional[int], reduction: int, kv_size: int) -> None:
        super().__init__()
        self.reduce_s = conv_bn_act(channels, width, kernel=1)
        self.reduce_f = conv_bn_act(channels, width, kernel=1)
        self.msfe_s = MultiScaleDilatedEnhance(width)
        self.msfe_f = MultiScaleDilatedEnhance(width)
        self.refine = None if prev_width is None else conv_bn_act(prev_width, width, stride=2)
        self.interact = SpatialFrequencyInteraction(width, reduction, kv_size)
        self.fuse = conv_bn_act(2 * width, width, kernel=1)

    def forward(self, s: torch.Tensor, f: torch.Tensor, prev: Optional[torch.Tensor]) -> torch.Tensor:
        e_s = self.msfe_s(self.reduce_s(s))
        e_f = self.msfe_f(self.reduce_f(f))
        if (prev is None) != (self.refine is None):
            raise ValueError("the previous level is required exactly for levels after the first")
        if prev is not None:
            p = self.refine(prev)
            if p.shape[-2:] != e_s.shape[-2:]:
                raise ValueError(f"previous level refines to {tuple(p.shape[-2:])}, "
                                 f"this level is {tuple(e_s.shape[-2:])}")
            e_s, e_f = e_s + p, e_f + p
        i_s, i_f = self.interact(e_s, e_f)
        return self.fuse(torch.cat([i_s, i_f], dim=1))


class AdaptiveLevelFusion(nn.Module):
    """FAF: fuse all levels with input-dependent, per-position weights.

    Every level ``f^l`` is average-pooled to the grid of the last (coarsest) level and projected
    by a 1x1 conv -> BN -> ReLU to ``dim`` channels; a 1x1 conv over their concatenation predicts
    one score per level and position, softmax-normalised over the levels, so each region of the
    face picks the levels (fine texture vs. coarse structure) that carry its evidence. The
    weighted sum is globally average-pooled into the ``[B, dim]`` embedding.

    ``forward`` returns ``(embedding, weights)``, the weights ``[B, L, h, w]`` summing to 1
    over ``L``.
    """

    def __init__(self, in_channels: Sequence[int], dim: int) -> None:
        super().__init__()
        if not in_channels:
            raise ValueError("FAF needs at least one level")
        self.proj = nn.ModuleList(conv_bn_act(c, dim, kernel=1) for c in in_channels)
        self.score = nn.Conv2d(len(in_channels) * dim, len(in_channels), 1)

    def forward(self, levels: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if len(levels) != len(self.proj):
            raise ValueError(f"FAF expects {len(self.proj)} levels, got {len(levels)}")
        grid = levels[-1].shape[-2:]
        projected = [proj(F.adaptive_avg_pool2d(x, grid)) for proj, x in zip(self.proj, levels)]
        stacked = torch.stack(projected, dim=1)  # B L D h w
        weights = torch.softmax(self.score(torch.cat(projected, dim=1)), dim=1)  # B L h w
        fused = (weights.unsqueeze(2) * stacked).sum(dim=1)
        return fused.mean(dim=(2, 3)), weights
