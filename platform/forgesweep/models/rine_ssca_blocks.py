"""Modules of the ``rine_ssca`` detector that the seed note names but leaves empty.

Citation: RINE -- Koutlis & Papadopoulos, "Leveraging Representations from Intermediate Encoder-blocks
for Synthetic Image Detection", ECCV 2024 (``mever-team/rine``); the SSCA/DCT branch, the fusion and
the gated head are the user's own extension (seed ``shared/seeds/000_*``, REFERENCE.md section 1).
The attention of :class:`SpatialChannelAttention` follows CBAM (Woo et al., ECCV 2018).

* :class:`LayerImportance` -- RINE's trainable importance estimator: a softmax over the encoder
  blocks, separately for every feature dimension.
* :class:`DCTConvBlock` -- a convolutional path and a block-DCT path side by side, merged.
* :class:`SpatialChannelAttention` -- channel gating, then spatial gating.
* :class:`CrossAttentionCombination` -- the RINE vector queries the SSCA map's positions.
* :class:`GatedMLP` -- a residual MLP whose hidden units are sigmoid-gated tanh units.
"""

from __future__ import annotations

import torch
from torch import nn

from forgesweep.models.blocks import BlockDCT, conv_bn_act


class LayerImportance(nn.Module):
    """Weighted sum over encoder blocks with trainable, softmax-normalised weights.

    ``[B, L, D] -> [B, D]``: output[:, d] = sum_l softmax(alpha[:, d])[l] * x[:, l, d], so for each
    dimension the block weights are positive and sum to 1 (RINE's "TIE"). ``alpha`` starts at zero,
    i.e. at the plain mean over blocks. With a single block there is nothing to weigh: the module
    has no parameter and returns that block.
    """

    def __init__(self, num_layers: int, dim: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(num_layers, dim)) if num_layers > 1 else None

    def weights(self) -> torch.Tensor:
        """The ``[L, D]`` block weights (each column sums to 1)."""
        if self.alpha is None:
            return torch.ones(1, 1)
        return torch.softmax(self.alpha, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.alpha is None:
            return x[:, 0]
        return (torch.softmax(self.alpha, dim=0) * x).sum(dim=1)


class DCTConvBlock(nn.Module):
    """Spatial and frequency evidence at 1/``block`` resolution, merged into ``out_ch`` channels.

    ``[B, in_ch, H, W] -> [B, out_ch, H / block, W / block]`` (H and W multiples of ``block``).

    * Spatial path: 3x3 conv-BN-ReLU, then ``block`` x ``block`` average pooling.
    * Frequency path: a 1x1 conv squeezes to ``dct_channels`` (so the spectrum stays small: the DCT
      turns C channels into C * block^2), the fixed block DCT lays each tile's spectrum out as
      channels, BatchNorm puts every frequency on one scale (high-frequency coefficients, where
      resampling and blending traces live, are orders of magnitude smaller than DC), and a 1x1
      conv-BN-ReLU mixes them.
    * Merge: 1x1 conv-BN-ReLU over the concatenation, so the block learns how much each domain
      contributes.
    """

    def __init__(self, in_ch: int, out_ch: int, block: int = 2, dct_channels: int = 16) -> None:
        super().__init__()
        self.block = block
        self.spatial = nn.Sequential(conv_bn_act(in_ch, out_ch), nn.AvgPool2d(block))
        self.squeeze = nn.Conv2d(in_ch, dct_channels, 1, bias=False)
        self.dct = BlockDCT(block)
        spectrum = dct_channels * block * block
        self.frequency = nn.Sequential(nn.BatchNorm2d(spectrum), conv_bn_act(spectrum, out_ch, kernel=1))
        self.merge = conv_bn_act(2 * out_ch, out_ch, kernel=1)

    def spectrum(self, x: torch.Tensor) -> torch.Tensor:
        """The raw tile spectra of the squeezed input, ``[B, dct_channels * block^2, H/block, W/block]``.

        Channel ``c * block^2 + u * block + v`` holds frequency (u, v) of squeezed channel c.
        """
        return self.dct(self.squeeze(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.block or w % self.block:
            raise ValueError(f"DCTConvBlock: feature map {h}x{w} is not a multiple of the DCT block {self.block}")
        return self.merge(torch.cat([self.spatial(x), self.frequency(self.spectrum(x))], dim=1))


class SpatialChannelAttention(nn.Module):
    """Channel attention, then spatial attention, each a sigmoid gate on the features (CBAM order).

    * Channel gate ``[B, C, 1, 1]``: a shared bottleneck MLP (``C -> C / reduction -> C``) on the
      average- and the max-pooled descriptor, summed, sigmoid.
    * Spatial gate ``[B, 1, H, W]``: a ``kernel`` x ``kernel`` conv over the channel-wise mean and
      max of the channel-gated map, sigmoid.

    The output is ``x * channel_gate * spatial_gate``: same shape and sign as ``x``, never larger
    in magnitude.
    """

    def __init__(self, channels: int, reduction: int = 16, kernel: int = 7) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.channel_mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1))
        self.spatial_conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2)

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(channel_gate [B, C, 1, 1], spatial_gate [B, 1, H, W])``, both in (0, 1)."""
        avg = x.mean(dim=(2, 3), keepdim=True)
        peak = x.amax(dim=(2, 3), keepdim=True)
        channel = torch.sigmoid(self.channel_mlp(avg) + self.channel_mlp(peak))
        y = x * channel
        stats = torch.cat([y.mean(dim=1, keepdim=True), y.amax(dim=1, keepdim=True)], dim=1)
        return channel, torch.sigmoid(self.spatial_conv(stats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channel, spatial = self.gates(x)
        return x * channel * spatial


class CrossAttentionCombination(nn.Module):
    """Fuse a query vector with a set of context tokens by multi-head cross-attention.

    ``query [B, query_dim]`` (the RINE vector), ``context [B, N, context_dim]`` (the SSCA tokens)
    ``-> [B, out_dim]``. Both are projected to ``out_dim`` (the context also layer-normed, so CLIP-
    and CNN-scale inputs meet on one scale); the projected query attends over the N tokens and the
    result is added to it residually, then layer-normed. The query therefore always carries the RINE
    evidence, and the attention adds the part of the SSCA map the query selects. The tokens carry no
    position code: the output does not depend on their order (forgery traces can be anywhere).
    """

    def __init__(self, query_dim: int, context_dim: int, out_dim: int, heads: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        if out_dim % heads:
            raise ValueError(f"out_dim {out_dim} is not divisible by heads {heads}")
        self.query_proj = nn.Linear(query_dim, out_dim)
        self.context_proj = nn.Linear(context_dim, out_dim)
        self.context_norm = nn.LayerNorm(out_dim)
        self.attention = nn.MultiheadAttention(out_dim, heads, dropout=dropout, batch_first=True)
        self.out_norm = nn.LayerNorm(out_dim)

    def forward(self, query: torch.Tensor, context: torch.Tensor,
                return_weights: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Fused ``[B, out_dim]``; with ``return_weights`` also the head-averaged ``[B, N]`` weights."""
        q = self.query_proj(query).unsqueeze(1)  # B 1 D
        kv = self.context_norm(self.context_proj(context))  # B N D
        attended, weights = self.attention(q, kv, kv, need_weights=return_weights)
        fused = self.out_norm(q + attended).squeeze(1)
        if return_weights:
            return fused, weights.squeeze(1)
        return fused


class GatedMLP(nn.Module):
    """Residual gated MLP: ``x + W_out(dropout(sigmoid(W_gate x) * tanh(W_value x)))``.

    The sigmoid gate decides, per hidden unit and per sample, how much of the tanh unit passes
    (the seed's ``sigma(W1 x) * tanh(W2 x)``); the residual keeps the fused representation intact
    when the gate closes, so the block cannot make the head worse than its input.
    """

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, hidden_dim)
        self.value = nn.Linear(dim, hidden_dim)
        self.out = nn.Linear(hidden_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.sigmoid(self.gate(x)) * torch.tanh(self.value(x))
        return x + self.out(self.dropout(hidden))
