"""Building blocks shared by the architectures: conv units, block DCT, cross-domain attention."""

from __future__ import annotations

import math

import torch
from torch import nn


def conv_bn_act(in_ch: int, out_ch: int, stride: int = 1, kernel: int = 3, groups: int = 1) -> nn.Sequential:
    """Conv -> BatchNorm -> ReLU, padded so stride 1 keeps the size and stride 2 halves it."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


def dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II basis of size ``n x n`` (row k = k-th cosine basis vector)."""
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    basis = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    basis[0] /= math.sqrt(2.0)
    return basis.float()


class BlockDCT(nn.Module):
    """2-D DCT of non-overlapping ``block x block`` tiles, laid out as channels.

    ``[B, C, H, W] -> [B, C * block * block, H / block, W / block]``: each output pixel holds the
    full spectrum of one tile, the layout used for learning in the frequency domain (JPEG-style
    8x8 tiles; smaller tiles keep more spatial resolution on small images). Fixed, not learned.
    """

    def __init__(self, block: int) -> None:
        super().__init__()
        if block < 2 or block & (block - 1):
            raise ValueError(f"DCT block size must be a power of two >= 2, got {block}")
        self.block = block
        self.register_buffer("basis", dct_matrix(block), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.block
        if h % n or w % n:
            raise ValueError(f"image size {h}x{w} is not a multiple of the DCT block size {n}")
        tiles = x.reshape(b, c, h // n, n, w // n, n).permute(0, 1, 2, 4, 3, 5)  # B C h w n n
        coeffs = self.basis @ tiles @ self.basis.T
        # B C h w n n -> B (C n n) h w
        return coeffs.permute(0, 1, 4, 5, 2, 3).reshape(b, c * n * n, h // n, w // n)


class CrossDomainAttention(nn.Module):
    """Position attention from one domain's features onto the other's.

    Queries come from ``x``, keys and values from ``other``; the softmax-normalised correlation
    weights aggregate ``other`` at every position of ``x`` and the result is added to ``x``
    through a learned gate initialised at zero, so the block starts as an identity and the two
    branches first learn on their own.
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        inner = max(channels // reduction, 4)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gate = nn.Parameter(torch.zeros(1))
        self.scale = inner**-0.5

    def forward(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # B N d
        k = self.key(other).flatten(2)  # B d N
        v = self.value(other).flatten(2).transpose(1, 2)  # B N C
        attn = torch.softmax(q @ k * self.scale, dim=-1)
        mixed = (attn @ v).transpose(1, 2).reshape(b, c, h, w)
        return x + self.gate * mixed


class MultiScaleEnhance(nn.Module):
    """Parallel depthwise convolutions with receptive fields 3, 5 and 7, merged by a 1x1 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels, bias=False) for k in (3, 5, 7)
        )
        self.merge = nn.Sequential(nn.Conv2d(3 * channels, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.merge(torch.cat([branch(x) for branch in self.branches], dim=1)))
