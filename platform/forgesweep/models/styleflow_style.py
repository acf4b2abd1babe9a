"""StyleFlow's style branch: per-frame style encoders, the StyleGRU and its triplet loss.

Citation: J. Choi et al., "Exploiting Style Latent Flows for Generalizing Deepfake Video
Detection", CVPR 2024 (``jongwook-Choi/StyleFlow``); REFERENCE.md section 4.

Style encoders map frames ``[N, 3, H, W]`` in [-1, 1] to style latents ``[N, n_latents,
latent_dim]`` (pSp: W+ codes, 18 x 512). Two are available:

* :class:`~forgesweep.models.styleflow_psp.PSPEncoder` -- the paper's frozen pSp encoder,
  loaded from a safetensors file (``style_encoder: psp``; the contract is in ``styleflow_psp``).
* :class:`PyramidStyleEncoder` -- a small built-in **stand-in** for pSp, used when no checkpoint
  is configured (tests, the synthetic benchmark). It has no GAN-inversion training behind it, so
  its latents are not StyleGAN codes; it keeps pSp's layout -- coarse latents read from the
  deepest feature map, middle and fine ones from shallower, higher-resolution maps (pSp's
  3 / 4 / 11 split of 18, scaled to ``n_latents``) -- and, unless frozen by configuration, it is
  trained with the StyleGRU in the style phase, so the latents it learns are the ones whose
  temporal changes separate real from fake. It normalises with GroupNorm: a frame's latents
  then never depend on running statistics, which lag behind a briefly trained encoder.

StyleGRU (:class:`StyleGRU`) follows the paper's code: latent dropout, a BatchNorm whose
channels are the flow's time steps (statistics of each step over the batch and the latent
features), a bidirectional multi-layer GRU, and the concatenated final hidden states of every
layer and direction as the style feature ``E_style``.

Design choices where the seed and the paper's code left a gap:

* Latent dropout drops whole style latents (one of the ``n_latents`` vectors) per sample, for
  every time step of the clip alike, scaled by ``1 / (1 - p)``; the paper's code draws one mask
  for the whole batch over half the feature positions, a layout tied to 18 x 512.
* The triplet loss forms its triplets inside the batch (positives: other clips with the same
  label; negatives: clips with the other label) instead of a separate triplet loader, so it
  works in the shared training loop; ``all`` averages every valid triplet (the expectation of
  the paper's random triplets), ``hard`` uses each anchor's hardest positive and negative.
  Distances are Euclidean, as in the paper's code (``MarginRankingLoss`` on
  ``pairwise_distance``); the seed writes squared distances, which with a margin is a different
  loss, not a rescaled one.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


LEVELS = ("coarse", "middle", "fine")


def latent_levels(n_latents: int) -> dict[str, list[int]]:
    """Indices of the coarse, middle and fine latents, pSp's 3/4/11 split of 18 scaled to ``n_latents``.

    Example:
        >>> latent_levels(18)["middle"]
        [3, 4, 5, 6]
    """
    if n_latents < 3:
        raise ValueError(f"need at least 3 latents (one per level), got {n_latents}")
    coarse = max(1, round(3 * n_latents / 18))
    middle = max(coarse + 1, round(7 * n_latents / 18))
    middle = min(middle, n_latents - 1)
    return {"coarse": list(range(coarse)), "middle": list(range(coarse, middle)),
            "fine": list(range(middle, n_latents))}


def _conv_gn_act(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    # GroupNorm, not BatchNorm: a frame's latents must not depend on running statistics that lag
    # behind an encoder trained for a few epochs (its style flows are small differences). Groups
    # of at least 4 channels: one channel per group (instance norm) erases each channel's mean,
    # i.e. colour casts, which a face swap's colour mismatch is made of.
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.GroupNorm(math.gcd(cout, max(1, cout // 4)), cout), nn.ReLU(inplace=True))


class PyramidStyleEncoder(nn.Module):
    """Built-in stand-in for pSp: a 3-level conv pyramid, one linear map to latents per level.

    Level 1 (stride 2, ``width`` channels) feeds the fine latents, level 2 (stride 4) the middle
    ones, level 3 (stride 8) the coarse ones, each from the globally pooled feature map.
    """

    def __init__(self, n_latents: int, latent_dim: int, width: int) -> None:
        super().__init__()
        self.n_latents, self.latent_dim = n_latents, latent_dim
        self.levels = latent_levels(n_latents)
        widths = [width, 2 * width, 4 * width]
        self.stages = nn.ModuleList([
            nn.Sequential(_conv_gn_act(3, widths[0], stride=2), _conv_gn_act(widths[0], widths[0])),
            nn.Sequential(_conv_gn_act(widths[0], widths[1], stride=2), _conv_gn_act(widths[1], widths[1])),
            nn.Sequential(_conv_gn_act(widths[1], widths[2], stride=2), _conv_gn_act(widths[2], widths[2])),
        ])
        # Stage k feeds level "fine", "middle", "coarse" for k = 0, 1, 2 (shallow -> fine detail).
        self.heads = nn.ModuleList(nn.Linear(c, len(self.levels[level]) * latent_dim)
                                   for c, level in zip(widths, ("fine", "middle", "coarse")))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        n = frames.shape[0]
        x = frames
        parts: dict[str, torch.Tensor] = {}
        for stage, head, level in zip(self.stages, self.heads, ("fine", "middle", "coarse")):
            x = stage(x)
            parts[level] = head(x.mean(dim=(2, 3))).view(n, -1, self.latent_dim)
        return torch.cat([parts[level] for level in LEVELS], dim=1)


class LatentDropout(nn.Module):
    """Drops whole style latents of a flow ``[B, S, L, D]`` (same latents at every step), training only."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, flow: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return flow
        b, _, n_latents, _ = flow.shape
        keep = torch.rand(b, 1, n_latents, 1, device=flow.device) >= self.p
        return flow * keep.to(flow.dtype) / (1.0 - self.p)


class StyleGRU(nn.Module):
    """Style flow ``[B, S, L, D]`` -> style feature ``E_style`` ``[B, 2 * layers * hidden]``.

    Latent dropout, BatchNorm over time (one channel per flow step, statistics over the batch
    and the features), a bidirectional GRU, and the final hidden state of every layer and
    direction concatenated (layer-major, forward before backward).
    """

    def __init__(self, steps: int, n_latents: int, latent_dim: int, hidden: int, layers: int,
                 latent_dropout: float, gru_dropout: float) -> None:
        super().__init__()
        self.dropout = LatentDropout(latent_dropout)
        self.norm = nn.BatchNorm1d(steps)
        self.gru = nn.GRU(n_latents * latent_dim, hidden, num_layers=layers, batch_first=True,
                          bidirectional=True, dropout=gru_dropout if layers > 1 else 0.0)
        self.out_dim = 2 * layers * hidden

    def forward(self, flow: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.dropout(flow).flatten(2))  # B S (L D)
        _, hidden = self.gru(x)  # (layers * 2) B H
        return hidden.transpose(0, 1).flatten(1)


class StyleHead(nn.Module):
    """Stage-1 classifier on ``E_style``: dropout, a residual MLP, dropout, one logit."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim))
        self.out = nn.Linear(dim, 1)

    def forward(self, style: torch.Tensor) -> torch.Tensor:
        x = self.dropout(style)
        x = x + self.mlp(x)
        return self.out(self.dropout(x)).squeeze(-1)


def batch_triplet_loss(embedding: torch.Tensor, labels: torch.Tensor, margin: float,
                       mining: Literal["all", "hard"] = "all") -> torch.Tensor:
    """Triplet loss ``max(d(a, p) - d(a, n) + margin, 0)`` over triplets formed inside the batch.

    Args:
        embedding: ``[B, D]``.
        labels: ``[B]``; positives share the anchor's label (another sample), negatives do not.
        margin: the margin ``alpha``.
        mining: ``all`` -- mean over every valid (anchor, positive, negative); ``hard`` -- per
            anchor its farthest positive and nearest negative, mean over anchors.

    Returns:
        A scalar; zero (still attached to the graph) when the batch has no valid triplet.
    """
    sq = embedding.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * embedding @ embedding.T).clamp_min(0.0)
    # sqrt has an infinite slope at 0 (the diagonal and duplicates): keep it finite.
    dist = (d2 + 1e-12).sqrt()
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos, neg = same & ~eye, ~same
    if mining == "hard":
        valid = pos.any(1) & neg.any(1)
        if not valid.any():
            return embedding.sum() * 0.0
        hardest_pos = dist.masked_fill(~pos, float("-inf")).amax(1)
        hardest_neg = dist.masked_fill(~neg, float("inf")).amin(1)
        return F.relu(hardest_pos - hardest_neg + margin)[valid].mean()
    if mining != "all":
        raise ValueError(f"mining must be 'all' or 'hard', got {mining!r}")
    triplets = pos[:, :, None] & neg[:, None, :]  # a p n
    if not triplets.any():
        return embedding.sum() * 0.0
    losses = F.relu(dist[:, :, None] - dist[:, None, :] + margin)
    return losses[triplets].mean()
