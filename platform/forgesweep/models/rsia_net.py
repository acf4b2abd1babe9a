"""RSIA-Net: the full two-domain backbone of CFFD (relation-aware spatial-frequency interaction).

Citation: "Continual face forgery detection based on relation-aware spatial-frequency interaction
aggregation and contrastive learning" (CFFD, RSIA-Net, HSCL), as specified by the user's seed
notes (``shared/seeds/004_*``); the paper is not public (REFERENCE.md section 5), so where the
seed is silent the choices below are ours, each stated with its reason.

Architecture (``rsia_lite`` is the compact sibling; this is the full network):

* Spatial branch: a ResNet (Hugging Face ``ResNetModel`` through ``load_hf_backbone``, so it
  loads ImageNet weights from a hub name or local directory, or is built from its config with
  random weights). Its four stages give ``F_s^1..F_s^4``. Inputs in [-1, 1] are re-normalised
  with the ImageNet statistics the pretrained stem expects.
* Frequency branch: block DCT (``dct_block`` x ``dct_block`` tiles, spectrum as channels),
  BatchNorm over the coefficients (DC and AC differ by orders of magnitude), a 3x3 conv stem of
  stride ``4 / dct_block`` -- the ResNet stem reduces by 4, so both domains are on the same grid
  at every stage, which SFIA and RSIA need to relate them position by position; hence
  ``dct_block`` is 2 or 4 -- then four ResNet stages of the same configuration as the spatial
  ones (random by default; ``frequency_pretrained`` starts them from the same checkpoint, as
  dual-stream detectors often do). Outputs ``F_f^1..F_f^4``.
* SFIA at every stage (:class:`~forgesweep.models.rsia_net_blocks.SpatialFrequencyInteraction`):
  softmax-normalised cross-domain correlation weights aggregate the other domain, summed back
  through a zero-initialised gate (a pretrained spatial branch starts unchanged). With
  ``sfia_feedback`` the interacted features feed the next stage of both branches (the exchange
  compounds with depth); without it the branches stay independent and SFIA only feeds RSIA.
* RSIA at every stage (:class:`~forgesweep.models.rsia_net_blocks.RelationAwareAggregation`):
  narrows both domains to ``C_l / rsia_reduction`` channels, multi-scale enhancement by dilated
  depthwise convs with receptive fields 3/5/7 (the seed's "D-Conv r = 3/5/7", read as dilated
  rather than deformable: a 3x3 kernel at dilation 1/2/3 has exactly those receptive fields),
  refinement of the previous level (FRM: conv-BN-ReLU, stride 2), a second interaction on the
  enhanced features and a 1x1 fusion -> ``f^l``.
* FAF (:class:`~forgesweep.models.rsia_net_blocks.AdaptiveLevelFusion`): per-position softmax
  weights over the four levels on the coarsest grid -> pooled ``[B, embed_dim]`` embedding ->
  dropout -> linear -> one fake logit.

Fine-tuning a pretrained spatial branch: ``frozen_spatial_stages`` freezes its stem and first N
stages (``frozen_modules``), the usual way to keep ImageNet's low-level filters.

Presets: ``tiny`` (tests, 50 k weights), ``small`` (the CPU sweep: ResNet-10-style basic blocks,
one per stage, widths 16/32/64/128, 0.8 M weights), ``full``: two ResNet-50s
(bottleneck, depths 3/4/6/3, widths 256/512/1024/2048, stem 64; 23.5 M weights each) -- the
standard four-stage ImageNet backbone whose stages map one-to-one onto the seed's four levels,
with public ImageNet weights (``microsoft/resnet-50``) for the spatial branch; 224 px inputs.

Features (``feature_names_for``), for each level k = 1..4 in this order:
``spatial{k}`` / ``frequency{k}`` -- the branch outputs ``F_s^k`` / ``F_f^k`` ``[B, C_k, H_k, W_k]``
before that level's SFIA (the figure's inputs to SFIA); ``spatial_emb{k}`` /
``frequency_emb{k}`` -- the same maps globally average-pooled, ``[B, C_k]``, for HSCL (its intra-
and cross-domain contrast per level; both domains have ``C_k`` channels so cross-domain pairs
are comparable; HSCL L2-normalises them; no projection head, so the contrast shapes the very
features SFIA/RSIA consume); ``stage{k}`` -- the fused level ``f^k``
``[B, C_k / rsia_reduction, H_k, W_k]``. ``embedding`` is FAF's output ``[B, embed_dim]``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from torch import nn

from forgesweep.errors import ConfigError
from forgesweep.models.blocks import BlockDCT, conv_bn_act
from forgesweep.models.hf_backbones import load_hf_backbone
from forgesweep.models.output import DetectorOutput
from forgesweep.models.registry import Detector, register_model
from forgesweep.models.rsia_net_blocks import AdaptiveLevelFusion, RelationAwareAggregation, SpatialFrequencyInteraction

NUM_STAGES = 4
STEM_STRIDE = 4  # the ResNet stem: 7x7 conv stride 2, then 3x3 max-pool stride 2
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RSIANetParams(BaseModel):
    """Hyperparameters of :class:`RSIANet`."""

    model_config = ConfigDict(extra="forbid")

    layer_type: Literal["basic", "bottleneck"] = Field(
        "basic", description="ResNet block of both branches: basic (ResNet-18/34) or bottleneck (ResNet-50+)")
    depths: list[int] = Field([1, 1, 1, 1], description="ResNet blocks per stage (4 stages)")
    widths: list[int] = Field([16, 32, 64, 128], description="output channels of the 4 stages")
    stem_width: int = Field(16, ge=4, le=1024, description="channels of the stems (ResNet embedding size)")
    pretrained: bool = Field(False, description="load the spatial branch's weights from `backbone`")
    backbone: Optional[str] = Field(
        None, validate_default=True,
        description="hub name or local directory of a transformers ResNet (used when pretrained)")
    frequency_pretrained: bool = Field(
        False, description="also start the frequency branch's 4 stages from `backbone` (needs pretrained)")
    frozen_spatial_stages: int = Field(
        0, ge=0, le=NUM_STAGES, description="freeze the spatial stem and its first N stages (0: none)")
    dct_block: int = Field(4, description="DCT tile size of the frequency branch: 2 or 4")
    sfia_reduction: int = Field(4, ge=1, le=64, description="channel reduction of SFIA queries/keys")
    sfia_kv_size: int = Field(8, ge=1, le=64, description="SFIA keys/values pooled to at most NxN positions")
    sfia_feedback: bool = Field(True, description="feed SFIA's outputs to the next stage of both branches")
    rsia_reduction: int = Field(2, ge=1, le=64, description="RSIA works on C_l / rsia_reduction channels")
    embed_dim: int = Field(64, ge=8, le=4096, description="size of FAF's fused embedding")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout before the classifier")

    @field_validator("depths")
    @classmethod
    def _depths(cls, v: list[int]) -> list[int]:
        if len(v) != NUM_STAGES or not all(1 <= d <= 64 for d in v):
            raise ValueError(f"must be {NUM_STAGES} block counts in 1..64, got {v}")
        return v

    @field_validator("widths")
    @classmethod
    def _widths(cls, v: list[int]) -> list[int]:
        if len(v) != NUM_STAGES or not all(4 <= w <= 8192 for w in v):
            raise ValueError(f"must be {NUM_STAGES} channel counts in 4..8192, got {v}")
        return v

    @field_validator("backbone")
    @classmethod
    def _backbone_when_pretrained(cls, v: Optional[str], info: ValidationInfo) -> Optional[str]:
        if info.data.get("pretrained") and not v:
            raise ValueError("pretrained is true: name a hub model or local directory of a transformers ResNet")
        return v

    @field_validator("frequency_pretrained")
    @classmethod
    def _frequency_needs_pretrained(cls, v: bool, info: ValidationInfo) -> bool:
        if v and not info.data.get("pretrained"):
            raise ValueError("needs pretrained: true (and a backbone) to have weights to start from")
        return v

    @field_validator("dct_block")
    @classmethod
    def _dct_block(cls, v: int) -> int:
        if v not in (2, 4):
            raise ValueError(f"must be 2 or 4 (the frequency grid must not be coarser than the ResNet stem's "
                             f"1/{STEM_STRIDE}), got {v}")
        return v


def _resnet_config(p: RSIANetParams, like=None) -> dict:
    """The transformers ``ResNetConfig`` fields of a branch; ``like`` (a loaded config) supplies
    the details the params do not cover, so both branches have the same blocks."""
    return {"num_channels": 3, "embedding_size": p.stem_width, "hidden_sizes": list(p.widths),
            "depths": list(p.depths), "layer_type": p.layer_type,
            "hidden_act": getattr(like, "hidden_act", "relu"), "downsample_in_first_stage": False,
            "downsample_in_bottleneck": getattr(like, "downsample_in_bottleneck", False)}


def _check_loaded_matches(p: RSIANetParams, config) -> None:
    """A pretrained checkpoint's architecture must be the one the config describes (the rest
    of the network is sized from the config; silently following the checkpoint would make the
    logged hyperparameters lie)."""
    loaded = {"layer_type": config.layer_type, "depths": list(config.depths), "widths": list(config.hidden_sizes),
              "stem_width": config.embedding_size}
    for field, value in loaded.items():
        if getattr(p, field) != value:
            raise ConfigError(f"model.{field}: is {getattr(p, field)!r} but the pretrained backbone "
                              f"{p.backbone!r} has {value!r}; set model.{field} to match it")
    if config.downsample_in_first_stage:
        raise ConfigError(f"model.backbone: {p.backbone!r} downsamples in its first stage; RSIA-Net needs "
                          "stage 1 at the stem's resolution (1/4) to align it with the DCT branch")


@register_model("rsia_net")
class RSIANet(Detector):
    """The full RSIA-Net; see the module docstring for the design and the feature names."""

    Params = RSIANetParams
    PRESETS = {
        "tiny": {"layer_type": "basic", "depths": [1, 1, 1, 1], "widths": [8, 8, 16, 16], "stem_width": 8,
                 "sfia_reduction": 2, "sfia_kv_size": 8, "rsia_reduction": 1, "embed_dim": 16, "dropout": 0.0},
        "small": {"layer_type": "basic", "depths": [1, 1, 1, 1], "widths": [16, 32, 64, 128], "stem_width": 16,
                  "sfia_reduction": 4, "sfia_kv_size": 8, "rsia_reduction": 2, "embed_dim": 64, "dropout": 0.1},
        "full": {"layer_type": "bottleneck", "depths": [3, 4, 6, 3], "widths": [256, 512, 1024, 2048],
                 "stem_width": 64, "sfia_reduction": 8, "sfia_kv_size": 14, "rsia_reduction": 4,
                 "embed_dim": 512, "dropout": 0.5},
    }

    def __init__(self, params: RSIANetParams) -> None:
        from transformers import ResNetConfig, ResNetModel

        super().__init__()
        self.params = p = params
        self.spatial = load_hf_backbone(ResNetModel, ResNetConfig, source=p.backbone, pretrained=p.pretrained,
                                        config=_resnet_config(p), what="model.backbone")
        loaded = self.spatial.config if p.pretrained else None
        if loaded is not None:
            _check_loaded_matches(p, loaded)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

        self.dct = BlockDCT(p.dct_block)
        coeffs = 3 * p.dct_block**2
        self.frequency_stem = nn.Sequential(
            nn.BatchNorm2d(coeffs), conv_bn_act(coeffs, p.stem_width, stride=STEM_STRIDE // p.dct_block))
        # Only the stages: the ResNet embedder expects RGB and is replaced by the DCT stem above.
        self.frequency = load_hf_backbone(ResNetModel, ResNetConfig, source=p.backbone,
                                          pretrained=p.frequency_pretrained, config=_resnet_config(p, loaded),
                                          what="model.backbone").encoder

        widths = list(p.widths)
        inner = [max(c // p.rsia_reduction, 4) for c in widths]
        self.sfia = nn.ModuleList(SpatialFrequencyInteraction(c, p.sfia_reduction, p.sfia_kv_size) for c in widths)
        self.rsia = nn.ModuleList(
            RelationAwareAggregation(c, d, inner[k - 1] if k else None, p.sfia_reduction, p.sfia_kv_size)
            for k, (c, d) in enumerate(zip(widths, inner)))
        self.faf = AdaptiveLevelFusion(inner, p.embed_dim)
        self.dropout = nn.Dropout(p.dropout)
        self.head = nn.Linear(p.embed_dim, 1)

        for module in self.frozen_modules():
            module.requires_grad_(False)

    @classmethod
    def feature_names_for(cls, params: BaseModel) -> list[str]:
        names = []
        for k in range(1, NUM_STAGES + 1):
            names += [f"spatial{k}", f"frequency{k}", f"spatial_emb{k}", f"frequency_emb{k}", f"stage{k}"]
        return names

    def frozen_modules(self) -> list[nn.Module]:
        n = self.params.frozen_spatial_stages
        if n == 0:
            return []
        return [self.spatial.embedder, *self.spatial.encoder.stages[:n]]

    def example_input(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        # 64 px: the smallest input whose last stage (stride 32) is still 2x2, so attention and
        # the per-position FAF weights are not trivially constant.
        return torch.rand(batch, 3, 64, 64, generator=generator) * 2 - 1

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        h, w = images.shape[-2:]
        if h % STEM_STRIDE or w % STEM_STRIDE:
            raise ValueError(f"image size {h}x{w} is not a multiple of {STEM_STRIDE} (the stems' stride), "
                             "so the spatial and frequency grids would not align")
        rgb = ((images + 1) / 2 - self.mean) / self.std
        s = self.spatial.embedder(rgb)
        f = self.frequency_stem(self.dct(images))
        features: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        levels: list[torch.Tensor] = []
        for k in range(NUM_STAGES):
            s = self.spatial.encoder.stages[k](s)
            f = self.frequency.stages[k](f)
            a_s, a_f = self.sfia[k](s, f)
            fused = self.rsia[k](a_s, a_f, levels[-1] if levels else None)
            features[f"spatial{k + 1}"] = s
            features[f"frequency{k + 1}"] = f
            features[f"spatial_emb{k + 1}"] = s.mean(dim=(2, 3))
            features[f"frequency_emb{k + 1}"] = f.mean(dim=(2, 3))
            features[f"stage{k + 1}"] = fused
            levels.append(fused)
            if self.params.sfia_feedback:
                s, f = a_s, a_f
        embedding, _ = self.faf(levels)
        logits = self.head(self.dropout(embedding)).squeeze(-1)
        return DetectorOutput(logits=logits, features=features, embedding=embedding)
