"""RSIA-Net lite: a compact spatial + frequency detector in the spirit of CFFD's RSIA-Net.

Citation: the CFFD framework with RSIA-Net and HSCL as described in the user's seed notes
(``shared/seeds/004_*``); the paper itself is not public (REFERENCE.md section 5).

Design (each choice is a parameter where it matters):

* Spatial branch on RGB: a stem of ``log2(dct_block)`` stride-2 convolutions brings the image to
  the resolution of the frequency branch, then four stages (stage 1 keeps the size, stages 2-4
  halve it).
* Frequency branch on block-DCT coefficients (``dct_block`` x ``dct_block`` tiles, the tile
  spectrum as channels), batch-normalised because DC and AC coefficients differ by orders of
  magnitude, then four stages of the same shape as the spatial ones.
* SFIA at every stage: each domain attends to the other (:class:`CrossDomainAttention`), the
  softmax-normalised correlation weights aggregating the other domain's features.
* RSIA at every stage: the two domains are fused (1x1 conv over the concatenation), enhanced at
  three receptive fields (3/5/7) and refined with the previous level's fused features
  (downsampled), so each level carries the coarser evidence forward.
* FAF: every level is pooled and projected to ``embed_dim``; input-dependent softmax weights
  fuse the levels into the embedding, and a linear head gives one fake logit.

Named features: ``spatial{k}``, ``frequency{k}`` (the two domains after SFIA) and ``stage{k}``
(the fused level), k = 1..4 -- feature distillation chooses among these names.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from forgesweep.models.blocks import BlockDCT, CrossDomainAttention, MultiScaleEnhance, conv_bn_act
from forgesweep.models.output import DetectorOutput
from forgesweep.models.registry import Detector, register_model

NUM_STAGES = 4


class RSIALiteParams(BaseModel):
    """Hyperparameters of :class:`RSIALite`."""

    model_config = ConfigDict(extra="forbid")

    width: int = Field(16, ge=4, le=512, description="channels of stage 1; stages 2-4 use 2x, 4x, 4x")
    dct_block: int = Field(4, ge=2, le=16, description="DCT tile size (power of two)")
    embed_dim: int = Field(64, ge=8, le=4096, description="size of the fused embedding")
    attention_reduction: int = Field(4, ge=1, le=64, description="channel reduction of SFIA queries/keys")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout before the classifier")

    @field_validator("dct_block")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError(f"must be a power of two, got {v}")
        return v


def _stage(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(conv_bn_act(in_ch, out_ch, stride), conv_bn_act(out_ch, out_ch))


@register_model("rsia_lite")
class RSIALite(Detector):
    """Two-domain detector; see the module docstring for the design."""

    Params = RSIALiteParams
    PRESETS = {
        "tiny": {"width": 4, "embed_dim": 16, "dct_block": 4},
        "small": {"width": 16, "embed_dim": 64, "dct_block": 4},
        "full": {"width": 64, "embed_dim": 512, "dct_block": 8},
    }

    def __init__(self, params: RSIALiteParams) -> None:
        super().__init__()
        self.params = params
        w = params.width
        widths = [w, 2 * w, 4 * w, 4 * w]
        stem_steps = int(math.log2(params.dct_block))
        stem: list[nn.Module] = []
        ch = 3
        for i in range(stem_steps):
            out = w if i == stem_steps - 1 else max(w // 2, 4)
            stem.append(conv_bn_act(ch, out, stride=2))
            ch = out
        self.spatial_stem = nn.Sequential(*stem)
        self.dct = BlockDCT(params.dct_block)
        freq_in = 3 * params.dct_block**2
        self.frequency_stem = nn.Sequential(nn.BatchNorm2d(freq_in), conv_bn_act(freq_in, w, kernel=1))

        self.spatial_stages = nn.ModuleList()
        self.frequency_stages = nn.ModuleList()
        self.s_from_f = nn.ModuleList()
        self.f_from_s = nn.ModuleList()
        self.fuse = nn.ModuleList()
        self.enhance = nn.ModuleList()
        self.refine = nn.ModuleList()
        prev = w
        for k, out in enumerate(widths):
            stride = 1 if k == 0 else 2
            self.spatial_stages.append(_stage(prev, out, stride))
            self.frequency_stages.append(_stage(prev, out, stride))
            self.s_from_f.append(CrossDomainAttention(out, params.attention_reduction))
            self.f_from_s.append(CrossDomainAttention(out, params.attention_reduction))
            self.fuse.append(conv_bn_act(2 * out, out, kernel=1))
            self.enhance.append(MultiScaleEnhance(out))
            # Previous fused level -> this level's shape (stage 1 has no previous level).
            self.refine.append(nn.Identity() if k == 0 else conv_bn_act(prev, out, stride=2))
            prev = out
        self.level_proj = nn.ModuleList(nn.Linear(c, params.embed_dim) for c in widths)
        self.level_gate = nn.Linear(NUM_STAGES * params.embed_dim, NUM_STAGES)
        self.dropout = nn.Dropout(params.dropout)
        self.head = nn.Linear(params.embed_dim, 1)

    @classmethod
    def feature_names_for(cls, params: BaseModel) -> list[str]:
        names = []
        for k in range(1, NUM_STAGES + 1):
            names += [f"spatial{k}", f"frequency{k}", f"stage{k}"]
        return names

    def example_input(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        # Smallest size whose last stage is still 2x2 (a 1x1 map makes attention trivially constant).
        size = max(32, 16 * self.params.dct_block)
        return torch.rand(batch, 3, size, size, generator=generator) * 2 - 1

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        features: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        s = self.spatial_stem(images)
        f = self.frequency_stem(self.dct(images))
        fused_prev = None
        pooled = []
        for k in range(NUM_STAGES):
            s = self.spatial_stages[k](s)
            f = self.frequency_stages[k](f)
            s, f = self.s_from_f[k](s, f), self.f_from_s[k](f, s)
            fused = self.fuse[k](torch.cat([s, f], dim=1))
            if fused_prev is not None:
                fused = fused + self.refine[k](fused_prev)
            fused = self.enhance[k](fused)
            features[f"spatial{k + 1}"] = s
            features[f"frequency{k + 1}"] = f
            features[f"stage{k + 1}"] = fused
            pooled.append(self.level_proj[k](F.adaptive_avg_pool2d(fused, 1).flatten(1)))
            fused_prev = fused
        levels = torch.stack(pooled, dim=1)  # B L D
        weights = torch.softmax(self.level_gate(levels.flatten(1)), dim=1).unsqueeze(-1)
        embedding = (weights * levels).sum(dim=1)
        logits = self.head(self.dropout(torch.relu(embedding))).squeeze(-1)
        return DetectorOutput(logits=logits, features=features, embedding=embedding)
