"""StyleFlow's content branch and fusion: a 3D ResNet, style attention, a temporal transformer.

Citation: J. Choi et al., "Exploiting Style Latent Flows for Generalizing Deepfake Video
Detection", CVPR 2024; the content branch and temporal transformer follow FTCN (Y. Zheng et al.,
"Exploring Temporal Coherence for More General Video Face Forgery Detection", ICCV 2021,
``yinglinzheng/FTCN``); REFERENCE.md section 4.

* :class:`Content3DResNet` -- an I3D-style 3D ResNet-50 (bottleneck blocks; temporal kernel
  ``k x 1 x 1`` in the first conv of every block of the first stage and of every other block
  after it; stem ``k_stem x 7 x 7``; a temporal max-pool by 2 after the first stage) truncated
  after ``len(blocks)`` stages -- the paper stops after res4: 1024 channels, 32 frames -> 16
  temporal tokens. With ``temporal_only`` (FTCN) every spatial kernel becomes 1 x 1 so the
  branch can only model temporal coherence, and each spatial stride becomes a 1 x 2 x 2
  max-pool after the conv (FTCN's replacement, which keeps downsampling without aliasing). The
  map is averaged over space: tokens ``[B, T', C]``. The last BatchNorm of each residual branch
  starts at zero (as FTCN's config), so every block starts as its shortcut.
* :class:`StyleAttention` -- queries from the content tokens, keys and values from the style
  tokens (the StyleGRU feature cut into ``style_tokens`` pieces), scaled dot-product
  attention, an output projection initialised to zero and a residual: at the start of stage 2
  the detector sees the content tokens unchanged and learns how much style evidence to mix in.
* :class:`TemporalTransformer` -- FTCN's time transformer: a linear map to the model width when
  it differs, a class token, learned positions, pre-norm encoder layers (GELU MLP), a final
  LayerNorm; the class token is the embedding.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn(cin: int, cout: int, kernel: tuple[int, int, int], stride: tuple[int, int, int] = (1, 1, 1),
             relu: bool = True, zero_bn: bool = False) -> nn.Sequential:
    padding = tuple(k // 2 for k in kernel)
    bn = nn.BatchNorm3d(cout)
    if zero_bn:
        nn.init.zeros_(bn.weight)
    layers: list[nn.Module] = [nn.Conv3d(cin, cout, kernel, stride=stride, padding=padding, bias=False), bn]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class SpatialMaxPool(nn.Module):
    """Max-pooling over H and W of ``[B, C, T, H, W]`` (a ``1 x k x k`` pool), frame by frame.

    Runs as a 2-D pool over ``B*C*T`` maps: the same result as ``MaxPool3d((1, k, k))``, several
    times faster on the CPU.
    """

    def __init__(self, kernel: int, stride: int, padding: int = 0, ceil_mode: bool = False) -> None:
        super().__init__()
        self.kernel, self.stride, self.padding, self.ceil_mode = kernel, stride, padding, ceil_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = F.max_pool2d(x.reshape(b, c * t, h, w), self.kernel, self.stride, self.padding, ceil_mode=self.ceil_mode)
        return y.view(b, c, t, *y.shape[-2:])


def _downsample(stride: int, temporal_only: bool) -> tuple[tuple[int, int, int], nn.Module]:
    """(conv stride, module after the conv) for a spatial downsampling by ``stride``."""
    if stride == 1:
        return (1, 1, 1), nn.Identity()
    if temporal_only:
        return (1, 1, 1), SpatialMaxPool(stride, stride, ceil_mode=True)
    return (1, stride, stride), nn.Identity()


class Bottleneck3d(nn.Module):
    """ResNet bottleneck in 3D: ``kt x 1 x 1`` -> ``1 x ks x ks`` (strided) -> ``1 x 1 x 1``, plus shortcut."""

    def __init__(self, cin: int, width: int, cout: int, temporal_kernel: int, spatial_kernel: int,
                 stride: int, temporal_only: bool) -> None:
        super().__init__()
        conv_stride, pool = _downsample(stride, temporal_only)
        self.branch = nn.Sequential(
            _conv_bn(cin, width, (temporal_kernel, 1, 1)),
            _conv_bn(width, width, (1, spatial_kernel, spatial_kernel), conv_stride),
            pool,
            _conv_bn(width, cout, (1, 1, 1), relu=False, zero_bn=True),
        )
        self.shortcut: nn.Module = nn.Identity()
        if cin != cout or stride != 1:
            sc_stride, sc_pool = _downsample(stride, temporal_only)
            self.shortcut = nn.Sequential(_conv_bn(cin, cout, (1, 1, 1), sc_stride, relu=False), sc_pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.branch(x) + self.shortcut(x))


class Content3DResNet(nn.Module):
    """Clips ``[B, 3, T, H, W]`` -> temporal content tokens ``[B, T', 4 * width * 2^(stages-1)]``.

    Args:
        width: channels of the stem and inner width of the first stage (ResNet-50: 64).
        blocks: bottleneck blocks per stage (ResNet-50 up to res4: ``[3, 4, 6]``).
        temporal_kernel: ``kt`` of the blocks' temporal convs (I3D: 3).
        stem_temporal_kernel: temporal extent of the stem conv (I3D: 5).
        temporal_only: FTCN -- all spatial kernels 1 x 1 (see the module docstring).
        temporal_pool: halve the time axis after the first stage (I3D's pool1).
    """

    def __init__(self, width: int, blocks: Sequence[int], temporal_kernel: int, stem_temporal_kernel: int,
                 temporal_only: bool, temporal_pool: bool) -> None:
        super().__init__()
        spatial = 1 if temporal_only else 3
        stem_spatial = 1 if temporal_only else 7
        conv_stride, stem_pool = _downsample(2, temporal_only)
        self.stem = nn.Sequential(
            _conv_bn(3, width, (stem_temporal_kernel, stem_spatial, stem_spatial), conv_stride),
            stem_pool,
            SpatialMaxPool(3, 2, padding=1),
        )
        self.stages = nn.ModuleList()
        cin = width
        for s, count in enumerate(blocks):
            inner, cout = width * 2**s, 4 * width * 2**s
            layers = []
            for b in range(count):
                # I3D: every block of res2 has a temporal conv, later stages alternate (3, 1, 3, ...).
                kt = temporal_kernel if (s == 0 or b % 2 == 0) else 1
                stride = 2 if (s > 0 and b == 0) else 1
                layers.append(Bottleneck3d(cin, inner, cout, kt, spatial, stride, temporal_only))
                cin = cout
            self.stages.append(nn.Sequential(*layers))
        self.time_pool = nn.MaxPool3d((2, 1, 1), stride=(2, 1, 1)) if temporal_pool else nn.Identity()
        self.out_dim = cin

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        x = self.stem(clips)
        for s, stage in enumerate(self.stages):
            x = stage(x)
            if s == 0:
                x = self.time_pool(x)
        return x.mean(dim=(3, 4)).transpose(1, 2)  # B T' C


class StyleAttention(nn.Module):
    """Content tokens attend to style tokens; zero-initialised output projection, residual add."""

    def __init__(self, content_dim: int, style_dim: int, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not a multiple of its {heads} heads")
        self.heads = heads
        self.query = nn.Linear(content_dim, dim)
        self.key = nn.Linear(style_dim, dim)
        self.value = nn.Linear(style_dim, dim)
        self.out = nn.Linear(dim, content_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        b = content.shape[0]

        def split(x: torch.Tensor) -> torch.Tensor:  # B N (h d) -> B h N d
            return x.view(b, x.shape[1], self.heads, -1).transpose(1, 2)

        q, k, v = split(self.query(content)), split(self.key(style)), split(self.value(style))
        mixed = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return content + self.out(mixed)


class TemporalTransformer(nn.Module):
    """Tokens ``[B, N, in_dim]`` -> (class-token embedding ``[B, dim]``, all tokens ``[B, N+1, dim]``)."""

    def __init__(self, in_dim: int, dim: int, tokens: int, depth: int, heads: int, mlp_dim: int,
                 dropout: float) -> None:
        super().__init__()
        self.proj: nn.Module = nn.Linear(in_dim, dim) if in_dim != dim else nn.Identity()
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(dim, heads, mlp_dim, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.proj(tokens)
        if x.shape[1] + 1 != self.pos.shape[1]:
            raise ValueError(f"expected {self.pos.shape[1] - 1} temporal tokens, got {x.shape[1]}")
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = self.norm(self.encoder(self.dropout(x)))
        return x[:, 0], x
