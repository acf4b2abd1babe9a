"""The pSp style encoder (GradualStyleEncoder, IR-SE-50) for StyleFlow, loaded from safetensors.

Citation: E. Richardson et al., "Encoding in Style: a StyleGAN Encoder for Image-to-Image
Translation" (pSp), CVPR 2021 (``eladrich/pixel2style2pixel``); StyleFlow (Choi et al., CVPR
2024) encodes every frame with pSp's FFHQ encoder and keeps it frozen.

**Loading contract** (``style_encoder: psp``): a ``.safetensors`` file holding the state_dict of
pSp's encoder -- the architecture below, whose parameter names are pSp's (``input_layer.*``,
``body.<i>.res_layer.*``, ``styles.<i>.convs.*``, ``latlayer1.*`` ...); a leading ``encoder.``
(as in a full pSp checkpoint) is stripped. Convert a pSp checkpoint once, where it is trusted::

    state = torch.load("psp_ffhq_encode.pt", map_location="cpu", weights_only=True)["state_dict"]
    safetensors.torch.save_file({k: v for k, v in state.items() if k.startswith("encoder.")},
                                "psp_encoder.safetensors")

Loading never unpickles: safetensors holds tensors only. The encoder takes RGB in [-1, 1] at
``style_input_size`` (pSp: 256, FFHQ-aligned crops) and returns ``[N, 18, 512]`` W+ codes
without pSp's ``latent_avg`` -- a constant offset that style flows (differences of consecutive
frames) cancel. Every name, key and shape is checked; a mismatch is a ConfigError naming the field.

Architecture (pSp's defaults in brackets; ``blocks`` / ``widths`` are parameters so tests can use
a small copy): an input conv (3x3, BatchNorm, PReLU) at full resolution, four stages of IR-SE
bottlenecks ([3, 4, 14, 3] units, [64, 128, 256, 512] channels, the first unit of each stage
with stride 2) giving maps at 1/2, 1/4, 1/8, 1/16; a feature pyramid -- the 1/16 map ``c3``, then
``p2 = up(c3) + lateral(1/8 map)`` and ``p1 = up(p2) + lateral(1/4 map)`` (bilinear,
corners aligned); one GradualStyleBlock per latent (stride-2 convs with LeakyReLU down to 1x1,
then an equalised linear layer): coarse latents read ``c3``, middle ones ``p2``, fine ones ``p1``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from forgesweep.errors import ConfigError

PSP_BLOCKS = (3, 4, 14, 3)  # IR-SE-50
PSP_WIDTHS = (64, 128, 256, 512)


class SqueezeExcite(nn.Module):
    """Channel gates from the globally pooled map (reduction 16), multiplied onto the map."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True)))))
        return x * gate


class IRSEBlock(nn.Module):
    """Improved-residual bottleneck with squeeze-excitation (ArcFace's IR-SE unit)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        if cin == cout:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)  # identity, subsampled
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), SqueezeExcite(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class EqualLinear(nn.Module):
    """StyleGAN2's linear layer with the He scale applied at run time (``weight / sqrt(in)``)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(dim_out, dim_in))
        self.bias = nn.Parameter(torch.zeros(dim_out))
        self.scale = 1.0 / math.sqrt(dim_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class GradualStyleBlock(nn.Module):
    """A ``spatial x spatial`` map -> one latent: log2(spatial) stride-2 convs, then EqualLinear."""

    def __init__(self, channels: int, spatial: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(x).flatten(1))


class PSPEncoder(nn.Module):
    """pSp's GradualStyleEncoder: frames ``[N, 3, S, S]`` -> latents ``[N, n_latents, widths[-1]]``.

    Args:
        n_latents: latents produced; the first ``coarse`` read the 1/16 map, up to ``middle`` the
            1/8 pyramid level, the rest the 1/4 level (pSp: 18, 3, 7).
        input_size: ``S``; ``S / 16`` must be a power of two (pSp: 256).
        blocks, widths: units and channels of the four IR-SE stages (pSp: IR-SE-50).
    """

    def __init__(self, n_latents: int, coarse: int, middle: int, input_size: int,
                 blocks: Sequence[int] = PSP_BLOCKS, widths: Sequence[int] = PSP_WIDTHS) -> None:
        super().__init__()
        if len(blocks) != 4 or len(widths) != 4:
            raise ValueError(f"pSp has four stages, got blocks {list(blocks)} and widths {list(widths)}")
        if input_size % 16 or (input_size // 16) & (input_size // 16 - 1):
            raise ValueError(f"input size {input_size} is not 16 x a power of two")
        self.coarse, self.middle = coarse, middle
        self.input_layer = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                         nn.PReLU(widths[0]))
        units, cin = [], widths[0]
        for count, cout in zip(blocks, widths):
            for u in range(count):
                units.append(IRSEBlock(cin, cout, 2 if u == 0 else 1))
                cin = cout
        self.body = nn.Sequential(*units)
        # Indices of the last unit of stages 2, 3 and 4: the 1/4, 1/8 and 1/16 maps.
        self.taps = (blocks[0] + blocks[1] - 1, sum(blocks[:3]) - 1, sum(blocks) - 1)
        width = widths[3]
        self.styles = nn.ModuleList(
            GradualStyleBlock(width, input_size // (16 if i < coarse else 8 if i < middle else 4))
            for i in range(n_latents))
        self.latlayer1 = nn.Conv2d(widths[2], width, 1)
        self.latlayer2 = nn.Conv2d(widths[1], width, 1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.input_layer(frames)
        maps = []
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in self.taps:
                maps.append(x)
        c1, c2, c3 = maps
        p2 = F.interpolate(c3, size=c2.shape[-2:], mode="bilinear", align_corners=True) + self.latlayer1(c2)
        p1 = F.interpolate(p2, size=c1.shape[-2:], mode="bilinear", align_corners=True) + self.latlayer2(c1)
        levels = [c3 if i < self.coarse else p2 if i < self.middle else p1 for i in range(len(self.styles))]
        return torch.stack([style(level) for style, level in zip(self.styles, levels)], dim=1)


def load_psp_weights(encoder: PSPEncoder, path: str, what: str = "model.style_encoder_path") -> None:
    """Load a safetensors state_dict into ``encoder`` (strict: every key and shape must match).

    Raises:
        ConfigError: naming ``what`` when the file is missing, not safetensors, or its keys or
            shapes differ from the configured architecture.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"{what}: pSp encoder file {path!r} does not exist")
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{what}: {path!r} is not a safetensors file: {first}") from None
    if tensors and all(k.startswith("encoder.") for k in tensors):
        tensors = {k[len("encoder."):]: v for k, v in tensors.items()}
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ConfigError(f"{what}: {path!r} does not match the configured pSp encoder (n_latents, psp_blocks, "
                          f"psp_widths): {len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected "
                          f"keys {unexpected[:3]}")
    wrong = [k for k, v in expected.items() if tuple(tensors[k].shape) != tuple(v.shape)]
    if wrong:
        k = wrong[0]
        raise ConfigError(f"{what}: {path!r}: {k} has shape {tuple(tensors[k].shape)}, the configured pSp encoder "
                          f"expects {tuple(expected[k].shape)} ({len(wrong)} tensors differ)")
    encoder.load_state_dict(tensors)
