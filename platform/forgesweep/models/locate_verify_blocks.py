"""The modules of the Locate-and-Verify two-stream detector (see ``locate_verify.py``).

Citation: Shuai, C. et al., "Locate and Verify: A Two-Stream Network for Improved Deepfake
Detection", ACM Multimedia 2023 (public code ``sccsok/Locate-and-Verify``); the seed note
``shared/seeds/002_*`` describes the user's variant of the cross-stream module.

* :class:`SRMFilter` -- three fixed steganalysis-rich-model high-pass kernels, truncated.
* :class:`CMCE` -- cross-stream enhancement of the early stages, by per-pixel similarity.
* :class:`LFGA` -- position attention whose attention map comes from the RGB stream and whose
  values come from the SRM stream.
* :func:`patch_similarity` -- per-patch agreement of a fine feature map with the patch grid.
* :class:`HadamardFusion` -- low-rank bilinear fusion of two feature maps, position by position.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# The three SRM residual kernels (Fridrich & Kodovsky 2012, as used for manipulation detection by
# Zhou et al. 2018 and by Locate-and-Verify), each scaled so its largest magnitude weight is 1:
# the 3x3 "square" second-order residual, the 5x5 "square" residual, and the horizontal
# second-order difference. Each sums to zero, so a flat region gives no response.
_SRM_KERNELS = (
    ([0, 0, 0, 0, 0],
     [0, -1, 2, -1, 0],
     [0, 2, -4, 2, 0],
     [0, -1, 2, -1, 0],
     [0, 0, 0, 0, 0], 4.0),
    ([-1, 2, -2, 2, -1],
     [2, -6, 8, -6, 2],
     [-2, 8, -12, 8, -2],
     [2, -6, 8, -6, 2],
     [-1, 2, -2, 2, -1], 12.0),
    ([0, 0, 0, 0, 0],
     [0, 0, 0, 0, 0],
     [0, 1, -2, 1, 0],
     [0, 0, 0, 0, 0],
     [0, 0, 0, 0, 0], 2.0),
)


def srm_kernels(in_channels: int = 3) -> torch.Tensor:
    """The ``[3, in_channels, 5, 5]`` SRM weight: output ``c`` applies kernel ``c`` to every input
    channel and sums them (the colour channels share one residual, as in the paper)."""
    rows = [torch.tensor(k[:5], dtype=torch.float32) / k[5] for k in _SRM_KERNELS]
    return torch.stack(rows).unsqueeze(1).repeat(1, in_channels, 1, 1)


class SRMFilter(nn.Module):
    """Fixed SRM high-pass filtering, ``[B, 3, H, W] -> [B, 3, H, W]``, then Hardtanh(-3, 3).

    The kernels are a buffer, not a parameter: no optimiser or gradient sync ever sees them, and
    they are rebuilt from the constants rather than stored in checkpoints. Truncation bounds the
    residuals of hard edges so that they do not dominate the faint forgery noise.
    """

    def __init__(self, limit: float = 3.0) -> None:
        super().__init__()
        self.limit = limit
        self.register_buffer("kernel", srm_kernels(3), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        residual = F.conv2d(images, self.kernel.to(images.dtype), padding=2)
        return F.hardtanh(residual, -self.limit, self.limit)


class CMCE(nn.Module):
    """Cross-modality consistency enhancement between the RGB and SRM streams.

    With a per-pixel similarity ``s`` (``[B, 1, H, W]``, in [-1, 1]) the streams exchange
    information where they agree: ``rgb' = rgb + srm * s``; ``srm' = srm + rgb' * s``; then a
    ReLU on both (optional: ``relu=False`` keeps the exchange linear, which suits backbones whose
    stages do not begin with an activation).

    ``mode`` chooses ``s``:

    * ``"cosine"`` (the paper): cosine similarity of the two feature vectors at each pixel; no
      parameters.
    * ``"learned"`` (the seed's idea, made consistent): a small comparison network -- a 3x3
      conv over the concatenated streams to ``max(C // 2, 4)`` channels, ReLU, a 1x1 conv to one
      map -- gives a score ``z``, and ``s = tanh(z / t)`` with a learned temperature ``t > 0``
      (kept as ``log t``, initialised to ``t = 1``). The seed's per-channel loop fed single
      channels to a network built for ``C`` channels; comparing the full feature vectors is
      what its description asks for. tanh keeps ``s`` in the cosine's range, so the two modes
      differ only in how similarity is measured.
    """

    def __init__(self, channels: int, mode: str = "cosine", relu: bool = True) -> None:
        super().__init__()
        if mode not in ("cosine", "learned"):
            raise ValueError(f"CMCE mode must be 'cosine' or 'learned', got {mode!r}")
        self.mode = mode
        self.relu = relu
        if mode == "learned":
            hidden = max(channels // 2, 4)
            self.compare = nn.Sequential(
                nn.Conv2d(2 * channels, hidden, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(hidden, 1, 1))
            self.log_temperature = nn.Parameter(torch.zeros(1))

    def similarity(self, rgb: torch.Tensor, srm: torch.Tensor) -> torch.Tensor:
        """Per-pixel similarity ``[B, 1, H, W]`` in [-1, 1]."""
        if self.mode == "cosine":
            return F.cosine_similarity(rgb, srm, dim=1, eps=1e-6).unsqueeze(1)
        score = self.compare(torch.cat([rgb, srm], dim=1))
        return torch.tanh(score / self.log_temperature.exp())

    def forward(self, rgb: torch.Tensor, srm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if rgb.shape != srm.shape:
            raise ValueError(f"CMCE needs streams of one shape, got {tuple(rgb.shape)} and {tuple(srm.shape)}")
        s = self.similarity(rgb, srm)
        rgb = rgb + srm * s
        srm = srm + rgb * s
        if self.relu:
            rgb, srm = F.relu(rgb), F.relu(srm)
        return rgb, srm


class LFGA(nn.Module):
    """Local-feature-guided attention: RGB decides where to look, SRM supplies what is gathered.

    Queries and keys are 1x1 projections of the RGB features to ``C // reduction`` channels
    (at least 1); values a 1x1 projection of the SRM features to ``C``. Every position of the SRM
    map gathers the values of the positions whose RGB content resembles its own:
    ``out = gamma * (attention @ values) + srm``, with ``gamma`` a learned scalar initialised at
    0, so the block starts as the identity on the SRM stream. Energies are scaled by
    ``1 / sqrt(C // reduction)`` (the paper leaves them unscaled; with hundreds of channels that
    saturates the softmax at initialisation).
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        inner = max(channels // reduction, 1)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.scale = 1.0 / math.sqrt(inner)

    def attention(self, rgb: torch.Tensor) -> torch.Tensor:
        """``[B, N, N]`` attention of every position over all positions (rows sum to 1)."""
        q = self.query(rgb).flatten(2).transpose(1, 2)  # B N d
        k = self.key(rgb).flatten(2)  # B d N
        return torch.softmax(q @ k * self.scale, dim=-1)

    def forward(self, srm: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        if rgb.shape != srm.shape:
            raise ValueError(f"LFGA needs streams of one shape, got {tuple(rgb.shape)} and {tuple(srm.shape)}")
        b, c, h, w = srm.shape
        values = self.value(srm).flatten(2)  # B C N
        gathered = (values @ self.attention(rgb).transpose(1, 2)).reshape(b, c, h, w)
        return self.gamma * gathered + srm


def patch_similarity(fine: torch.Tensor, reference: torch.Tensor, ratio: int) -> torch.Tensor:
    """Agreement of a fine feature map with the patch-grid map, laid out per patch.

    ``fine`` is ``[B, C, ~G*ratio, ~G*ratio]``, ``reference`` ``[B, C, G, G]`` (same ``C``).
    Each fine pixel is compared with the reference vector of the patch it falls in:
    ``mean_c tanh(fine * reference)`` (the paper sums over channels; the mean keeps the value in
    [-1, 1] whatever ``C``). The ``ratio x ratio`` fine pixels of each patch then become that
    patch's channels: the result is ``[B, ratio**2, G, G]`` with channel ``dy * ratio + dx``
    holding fine pixel ``(i * ratio + dy, j * ratio + dx)`` of patch ``(i, j)``. A fine map
    whose size is not exactly ``G * ratio`` (odd image sizes round differently per stage) is
    resized bilinearly first.
    """
    gh, gw = reference.shape[-2:]
    target = (gh * ratio, gw * ratio)
    if tuple(fine.shape[-2:]) != target:
        fine = F.interpolate(fine, size=target, mode="bilinear", align_corners=False)
    if ratio > 1:
        reference = reference.repeat_interleave(ratio, dim=2).repeat_interleave(ratio, dim=3)
    agreement = torch.tanh(fine * reference).mean(dim=1, keepdim=True)
    return F.pixel_unshuffle(agreement, ratio) if ratio > 1 else agreement


class HadamardFusion(nn.Module):
    """Low-rank bilinear fusion of two maps on one grid, position by position.

    ``out = W_o dropout(tanh(W_a a * W_b b))`` with 1x1 projections ``W_a``, ``W_b`` to
    ``hidden`` channels and ``W_o`` to ``out_channels``: a factorised bilinear form, so the
    output depends on products of the two inputs' features rather than on their sum.
    """

    def __init__(self, a_channels: int, b_channels: int, hidden: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.proj_a = nn.Conv2d(a_channels, hidden, 1)
        self.proj_b = nn.Conv2d(b_channels, hidden, 1)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Conv2d(hidden, out_channels, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape[-2:] != b.shape[-2:]:
            raise ValueError(f"HadamardFusion needs maps on one grid, got {tuple(a.shape)} and {tuple(b.shape)}")
        return self.out(self.dropout(torch.tanh(self.proj_a(a) * self.proj_b(b))))
