"""DCR: a contrastive residual detector that compares every face with a memory of real faces.

Citation: the user's DeepfakeContrastiveResidual design (seed note ``shared/seeds/001_*``,
REFERENCE.md section 2); its memory is redone MoCo-style (He et al., CVPR 2020,
``facebookresearch/moco``), see :mod:`forgesweep.models.dcr_memory`.

Data flow (``D`` = ``embed_dim``)::

    image -> backbone -> projection -> h [B, D] ("feature")  -> z = normalize(h)
    partner p = a real prototype from the bank                  d = |z - p| * sqrt(D) ("difference")
    fused = h + DifferenceAttention(query=h, key/value=d)       ("fused", also the embedding)
    logit = classifier(fused)          anomaly = sigmoid(residual_head(d)) in [0, 1]

Backbones, both built only through :func:`load_hf_backbone` (random weights unless
``pretrained``): ``resnet`` -- a transformers ``ResNetModel`` trained end to end (the full preset is
ResNet-50); ``clip`` -- a frozen ``CLIPVisionModel`` whose post-layer-norm CLS feature (the
pooler output) feeds the projection, as in RINE. Images arrive in [-1, 1]; the model maps them
to the backbone's own statistics (ImageNet for ResNet, CLIP's for CLIP) and, for CLIP, resizes
them to the tower's image size when they differ.

Design choices where the seed was empty, garbled or could not work as written:

* Modes. ``forward`` receives images only (labels reach a model in :meth:`DCR.task_loss`), so a
  forward pass cannot tell which batch members are real. The partner of a *training* sample
  (pair mode) therefore comes from the bank, which holds only momentum-encoded reals: the
  nearest prototype (``pair_partner: nearest``, the same rule as inference, default) or a random
  one (``random``: the seed's arbitrary real/fake pairing, which shows the heads the natural
  spread of real-to-real differences). In eval mode (single mode) the partner is always the
  nearest prototype, per sample: nothing is paired across the batch. Update-memory mode is the
  step hook: ``task_loss`` marks the batch's real keys, ``after_optimizer_step`` moves the key
  encoder and enqueues them; :meth:`DCR.update_memory` enqueues given real images explicitly
  (e.g. to calibrate the bank on a new domain's reals before inference).
* Bank space. The bank stores L2-normalised *projections* from the momentum key encoder (a
  copy of backbone + projection whose weights are buffers, never trained by the optimiser; for
  CLIP only the projection, the tower being frozen and shared), so queries and prototypes live
  on the same unit sphere. The key encoder always runs in eval mode (its BatchNorm statistics
  follow the query encoder's by the same momentum average), so its keys match what the
  eval-mode query encoder computes at inference. An empty
  bank (an untrained model) retrieves the origin. Keep ``bank_size`` below the number of real
  training frames per epoch with ``nearest`` pairing: otherwise a sample meets its own key from
  the previous epoch, which makes training reals look closer to the bank than unseen reals.
* Difference scaling. ``|z - p|`` of unit vectors has entries of size ~1/sqrt(D); multiplying by
  sqrt(D) keeps them O(1) whatever ``embed_dim`` is.
* Difference attention. The seed attends with one query token to one key token, where the
  softmax is identically 1 and attention degenerates to a linear map. Here ``h`` and ``d`` are
  each cut into ``attention_tokens`` tokens of width D / tokens (with a learned position
  embedding), multi-head attention runs from the feature's tokens to the difference's tokens,
  and the result is added back to ``h`` (residual add).
* Contrastive term: supervised contrastive with a MoCo queue. Anchors are the batch's queries
  ``z``; the contrast set is the batch's own momentum keys (labelled) plus every bank entry
  (all real). A real anchor's positives are its own key, the batch's other real keys and the
  whole bank; a fake's are the fake keys of the batch (its own included). This pulls reals
  into the compact cluster the bank describes and pushes fakes away from it -- exactly the
  geometry single-mode retrieval relies on -- whereas plain MoCo InfoNCE would use the real
  bank as *negatives* and spread reals apart. Temperature ``temperature``.
* Loss = ``w_bce`` BCE(logit) + ``w_anomaly`` BCE(anomaly, is-fake) + ``w_contrastive`` SupCon;
  terms with weight 0 are left out.

Named features: ``stage1..stageN`` (ResNet stage maps) or ``clip`` (the frozen CLS feature),
then ``feature`` (h), ``difference`` (d), ``fused`` and ``anomaly_logit`` ([B, 1], the residual
head's pre-sigmoid score; :meth:`DCROutput.anomaly` gives the score in [0, 1]).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Optional

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from torch import nn

from forgesweep.errors import ConfigError
from forgesweep.losses import supervised_contrastive
from forgesweep.models.dcr_memory import RealFeatureQueue, gather_from_all_ranks, momentum_copy, momentum_update
from forgesweep.models.hf_backbones import load_hf_backbone
from forgesweep.models.output import DetectorOutput
from forgesweep.models.registry import Detector, register_model

# Per-channel statistics the pretrained backbones were trained with (inputs arrive in [-1, 1]).
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP_STATS = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


class DCRParams(BaseModel):
    """Hyperparameters of :class:`DCR` (defaults: the full preset, ResNet-50)."""

    model_config = ConfigDict(extra="forbid")

    backbone: Literal["resnet", "clip"] = Field("resnet", description="trainable ResNet or frozen CLIP vision tower")
    pretrained: bool = Field(False, description="load the backbone's weights from `source`")
    source: Optional[str] = Field(None, validate_default=True,
                                  description="hub name or local directory of the pretrained backbone")
    resnet_depths: list[int] = Field([3, 4, 6, 3], min_length=1, max_length=6, description="blocks per stage")
    resnet_widths: list[int] = Field([256, 512, 1024, 2048], min_length=1, max_length=6,
                                     description="output channels per stage")
    resnet_stem: int = Field(64, ge=4, le=512, description="channels of the ResNet stem")
    resnet_block: Literal["basic", "bottleneck"] = Field("bottleneck", description="ResNet block type")
    clip_width: int = Field(1024, ge=8, le=4096, description="CLIP tower width")
    clip_layers: int = Field(24, ge=1, le=64, description="CLIP transformer blocks")
    clip_heads: int = Field(16, ge=1, le=64, description="CLIP attention heads")
    clip_mlp: int = Field(4096, ge=8, le=16384, description="CLIP MLP hidden size")
    clip_patch: int = Field(14, ge=2, le=64, description="CLIP patch size")
    clip_image_size: int = Field(224, ge=8, le=1024, description="CLIP input size (images are resized to it)")
    embed_dim: int = Field(512, ge=8, le=4096, description="size of the projected feature, bank and embedding")
    attention_tokens: int = Field(16, ge=1, le=256, description="tokens the feature/difference are cut into")
    attention_heads: int = Field(4, ge=1, le=64, description="heads of the difference attention")
    anomaly_hidden: int = Field(512, ge=4, le=8192, description="hidden size of the residual (anomaly) head")
    dropout: float = Field(0.3, ge=0.0, lt=1.0, description="dropout in the classifier and anomaly head")
    bank_size: int = Field(16384, ge=1, le=1_000_000, description="K, real features kept in the queue")
    momentum: float = Field(0.999, ge=0.0, lt=1.0, description="m of the momentum key encoder")
    temperature: float = Field(0.07, gt=0.0, le=10.0, description="temperature of the contrastive term")
    pair_partner: Literal["nearest", "random"] = Field(
        "nearest", description="training partner from the bank: nearest prototype or a random one")
    w_bce: float = Field(1.0, gt=0.0, le=100.0, description="weight of BCE on the fake logit")
    w_anomaly: float = Field(1.0, ge=0.0, le=100.0, description="weight of BCE on the anomaly score")
    w_contrastive: float = Field(0.1, ge=0.0, le=100.0, description="weight of the contrastive term")

    @field_validator("source")
    @classmethod
    def _source_when_pretrained(cls, v: Optional[str], info: ValidationInfo) -> Optional[str]:
        if info.data.get("pretrained") and not v:
            raise ValueError("pretrained is true: name a hub model or a local directory")
        return v

    @field_validator("resnet_depths", "resnet_widths")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(x < 1 for x in v):
            raise ValueError(f"every entry must be >= 1, got {v}")
        return v

    @field_validator("resnet_widths")
    @classmethod
    def _one_width_per_stage(cls, v: list[int], info: ValidationInfo) -> list[int]:
        depths = info.data.get("resnet_depths")
        if depths is not None and len(depths) != len(v):
            raise ValueError(f"needs one width per stage ({len(depths)} in resnet_depths), got {len(v)}")
        return v

    @field_validator("clip_heads")
    @classmethod
    def _clip_heads_divide(cls, v: int, info: ValidationInfo) -> int:
        width = info.data.get("clip_width")
        if width is not None and width % v:
            raise ValueError(f"must divide clip_width {width}, got {v}")
        return v

    @field_validator("clip_image_size")
    @classmethod
    def _whole_patches(cls, v: int, info: ValidationInfo) -> int:
        patch = info.data.get("clip_patch")
        if patch is not None and v % patch:
            raise ValueError(f"must be a multiple of clip_patch {patch}, got {v}")
        return v

    @field_validator("attention_tokens")
    @classmethod
    def _tokens_divide(cls, v: int, info: ValidationInfo) -> int:
        dim = info.data.get("embed_dim")
        if dim is not None and dim % v:
            raise ValueError(f"must divide embed_dim {dim}, got {v}")
        return v

    @field_validator("attention_heads")
    @classmethod
    def _heads_divide(cls, v: int, info: ValidationInfo) -> int:
        dim, tokens = info.data.get("embed_dim"), info.data.get("attention_tokens")
        if dim is not None and tokens is not None and (dim // tokens) % v:
            raise ValueError(f"must divide the token width embed_dim/attention_tokens = {dim // tokens}, got {v}")
        return v


@dataclass
class DCROutput(DetectorOutput):
    """:class:`DetectorOutput` plus the momentum keys :meth:`DCR.task_loss` contrasts against.

    Attributes:
        keys: ``[B, D]``, the momentum encoder's L2-normalised keys (training only, else None).
            Everything else the loss needs is in ``features``, so a plain
            :class:`DetectorOutput` holding a subset of the rows still works (without keys).
    """

    keys: Optional[torch.Tensor] = None

    def anomaly(self) -> torch.Tensor:
        """Anomaly score in [0, 1] per sample, ``[B]``."""
        return torch.sigmoid(self.features["anomaly_logit"].squeeze(1))


class DifferenceAttention(nn.Module):
    """``h + MHA(query=tokens(h), key=value=tokens(d))``: the feature attends to the difference.

    Both vectors ``[B, D]`` are cut into ``tokens`` chunks of width ``D / tokens`` (plus a learned
    position embedding, so chunks are told apart), so each feature chunk chooses, by softmax,
    which chunks of the difference to read; the result is added back to ``h``.
    """

    def __init__(self, dim: int, tokens: int, heads: int) -> None:
        super().__init__()
        self.tokens, self.width = tokens, dim // tokens
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.position = nn.Parameter(torch.randn(tokens, self.width) * 0.02)
        self.attn = nn.MultiheadAttention(self.width, heads, batch_first=True)

    def forward(self, feature: torch.Tensor, difference: torch.Tensor) -> torch.Tensor:
        b = feature.shape[0]
        q = self.norm_q(feature).view(b, self.tokens, self.width) + self.position
        kv = self.norm_kv(difference).view(b, self.tokens, self.width) + self.position
        context, _ = self.attn(q, kv, kv, need_weights=False)
        return feature + context.reshape(b, -1)


class ResidualHead(nn.Module):
    """MLP on the difference feature -> one anomaly logit per sample (sigmoid gives [0, 1])."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, difference: torch.Tensor) -> torch.Tensor:
        return self.mlp(difference).squeeze(-1)


def _projection(in_dim: int, dim: int) -> nn.Sequential:
    # A two-layer head as in MoCo v2: the bank lives in this space, not the backbone's.
    return nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU(), nn.Linear(dim, dim))


class _ResNetEncoder(nn.Module):
    """Trainable ResNet + projection: image -> (stage maps, h)."""

    def __init__(self, backbone: nn.Module, dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection = _projection(backbone.config.hidden_sizes[-1], dim)

    def forward(self, x: torch.Tensor) -> tuple["OrderedDict[str, torch.Tensor]", torch.Tensor]:
        out = self.backbone(pixel_values=x, output_hidden_states=True)
        stages = OrderedDict((f"stage{i}", t) for i, t in enumerate(out.hidden_states[1:], start=1))
        return stages, self.projection(out.pooler_output.flatten(1))


class _ProjectionEncoder(nn.Module):
    """Projection alone, over a frozen trunk's feature: feature -> ({}, h)."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.projection = _projection(in_dim, dim)

    def forward(self, x: torch.Tensor) -> tuple["OrderedDict[str, torch.Tensor]", torch.Tensor]:
        return OrderedDict(), self.projection(x)


@register_model("dcr")
class DCR(Detector):
    """Contrastive residual detector with a MoCo-style real-feature bank (module docstring)."""

    Params = DCRParams
    PRESETS = {
        "tiny": {"resnet_depths": [1, 1, 1, 1], "resnet_widths": [8, 16, 32, 64], "resnet_stem": 8,
                 "resnet_block": "basic", "embed_dim": 32, "attention_tokens": 4, "attention_heads": 2,
                 "anomaly_hidden": 32, "dropout": 0.1, "bank_size": 128, "momentum": 0.99, "temperature": 0.1},
        "small": {"resnet_depths": [1, 1, 1, 1], "resnet_widths": [32, 64, 128, 256], "resnet_stem": 32,
                  "resnet_block": "basic", "embed_dim": 128, "attention_tokens": 8, "attention_heads": 2,
                  "anomaly_hidden": 128, "dropout": 0.1, "bank_size": 128, "momentum": 0.99, "temperature": 0.1},
        "full": {},  # the Params defaults: ResNet-50, as in the seed
        "clip_tiny": {"backbone": "clip", "clip_width": 32, "clip_layers": 2, "clip_heads": 2, "clip_mlp": 64,
                      "clip_patch": 8, "clip_image_size": 32, "embed_dim": 32, "attention_tokens": 4,
                      "attention_heads": 2, "anomaly_hidden": 32, "dropout": 0.1, "bank_size": 128,
                      "momentum": 0.99, "temperature": 0.1},
    }

    def __init__(self, params: DCRParams) -> None:
        super().__init__()
        self.params = params
        p = params
        self.clip: Optional[nn.Module] = None
        if p.backbone == "resnet":
            from transformers import ResNetConfig, ResNetModel

            backbone = load_hf_backbone(ResNetModel, ResNetConfig, source=p.source, pretrained=p.pretrained, config={
                "embedding_size": p.resnet_stem, "hidden_sizes": list(p.resnet_widths),
                "depths": list(p.resnet_depths), "layer_type": p.resnet_block}, what="model.source")
            if len(backbone.config.depths) != len(p.resnet_depths):
                raise ConfigError(f"model.resnet_depths: the backbone at {p.source!r} has "
                                  f"{len(backbone.config.depths)} stages; set resnet_depths/resnet_widths to match")
            self.encoder: nn.Module = _ResNetEncoder(backbone, p.embed_dim)
            stats = IMAGENET_STATS
        else:
            from transformers import CLIPVisionConfig, CLIPVisionModel

            self.clip = load_hf_backbone(CLIPVisionModel, CLIPVisionConfig, source=p.source, pretrained=p.pretrained,
                                         config={"hidden_size": p.clip_width, "num_hidden_layers": p.clip_layers,
                                                 "num_attention_heads": p.clip_heads, "intermediate_size": p.clip_mlp,
                                                 "patch_size": p.clip_patch, "image_size": p.clip_image_size},
                                         what="model.source")
            self.clip.requires_grad_(False)
            self.clip.eval()
            self.encoder = _ProjectionEncoder(self.clip.config.hidden_size, p.embed_dim)
            stats = CLIP_STATS
        self.register_buffer("input_mean", torch.tensor(stats[0]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(stats[1]).view(1, 3, 1, 1), persistent=False)
        # Momentum key encoder: starts as an exact copy, then follows the encoder's moving average.
        self.key_encoder = momentum_copy(self.encoder)
        self.bank = RealFeatureQueue(p.bank_size, p.embed_dim)
        self.attention = DifferenceAttention(p.embed_dim, p.attention_tokens, p.attention_heads)
        self.residual_head = ResidualHead(p.embed_dim, p.anomaly_hidden, p.dropout)
        self.classifier = nn.Sequential(nn.LayerNorm(p.embed_dim), nn.Dropout(p.dropout), nn.Linear(p.embed_dim, 1))
        # Real keys seen by task_loss, enqueued after the optimiser step (training-step state only).
        self._pending_real_keys: list[torch.Tensor] = []

    @classmethod
    def feature_names_for(cls, params: BaseModel) -> list[str]:
        stages = [f"stage{i}" for i in range(1, len(params.resnet_depths) + 1)]
        trunk = ["clip"] if params.backbone == "clip" else stages
        return [*trunk, "feature", "difference", "fused", "anomaly_logit"]

    def frozen_modules(self) -> list[nn.Module]:
        return [self.clip] if self.clip is not None else []

    def train(self, mode: bool = True) -> "DCR":
        super().train(mode)
        self.key_encoder.eval()  # always: see the module docstring (bank space)
        return self

    def _trunk(self, images: torch.Tensor) -> torch.Tensor:
        """The encoders' input: re-normalised images (ResNet) or the frozen CLIP CLS feature."""
        x = ((images + 1.0) * 0.5 - self.input_mean) / self.input_std
        if self.clip is None:
            return x
        size = self.clip.config.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        with torch.no_grad():
            return self.clip(pixel_values=x).pooler_output

    def _partners(self, z: torch.Tensor) -> torch.Tensor:
        if self.training and self.params.pair_partner == "random":
            return self.bank.sample(len(z)).to(z)
        return self.bank.nearest(z)

    def forward(self, images: torch.Tensor) -> DCROutput:
        trunk = self._trunk(images)
        stages, h = self.encoder(trunk)
        z = F.normalize(h, dim=1)
        keys = None
        if self.training:
            with torch.no_grad():
                keys = F.normalize(self.key_encoder(trunk)[1], dim=1)
        difference = (z - self._partners(z)).abs() * math.sqrt(self.params.embed_dim)
        fused = self.attention(h, difference)
        logits = self.classifier(fused).squeeze(-1)
        features: "OrderedDict[str, torch.Tensor]" = OrderedDict(stages)
        if self.clip is not None:
            features["clip"] = trunk
        features["feature"] = h
        features["difference"] = difference
        features["fused"] = fused
        features["anomaly_logit"] = self.residual_head(difference).unsqueeze(1)
        return DCROutput(logits=logits, features=features, embedding=fused, keys=keys)

    def task_loss(self, out: DetectorOutput, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """BCE on the logit, BCE on the anomaly score, SupCon against the bank (weighted).

        In training mode the batch's real keys are also set aside for the queue, which
        receives them in :meth:`after_optimizer_step`.
        """
        p = self.params
        keys = getattr(out, "keys", None)
        labels = batch["labels"].to(out.logits.device)
        target = labels.float()
        terms = {"bce": p.w_bce * F.binary_cross_entropy_with_logits(out.logits, target)}
        if p.w_anomaly > 0:
            terms["anomaly"] = p.w_anomaly * F.binary_cross_entropy_with_logits(
                out.features["anomaly_logit"].squeeze(1), target)
        if p.w_contrastive > 0:
            # Cloned: the queue is written in place after the step, the graph must not see it.
            query = F.normalize(out.features["feature"], dim=1)
            contrast = self.bank.valid().clone().to(query)
            contrast_labels = torch.zeros(len(contrast), dtype=labels.dtype, device=labels.device)
            if keys is not None:
                contrast = torch.cat([keys, contrast])
                contrast_labels = torch.cat([labels, contrast_labels])
            if len(contrast) == 0:
                terms["contrastive"] = query.sum() * 0.0
            else:
                terms["contrastive"] = p.w_contrastive * supervised_contrastive(
                    query, labels, p.temperature, contrast=contrast, contrast_labels=contrast_labels)
        if self.training and keys is not None:
            self._pending_real_keys.append(keys[labels == 0].detach())
        return terms

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Move the key encoder towards the encoder, then enqueue the step's real keys."""
        momentum_update(self.key_encoder, self.encoder, self.params.momentum)
        pending = self._pending_real_keys
        self._pending_real_keys = []
        keys = torch.cat(pending) if pending else self.bank.features.new_zeros(0, self.params.embed_dim)
        self.bank.enqueue(gather_from_all_ranks(keys.to(self.bank.features)))

    @torch.no_grad()
    def update_memory(self, real_images: torch.Tensor) -> torch.Tensor:
        """Encode ``real_images`` with the key encoder and enqueue them (this process only).

        Returns:
            The enqueued normalised keys ``[N, D]``.
        """
        keys = F.normalize(self.key_encoder(self._trunk(real_images))[1], dim=1)
        self.bank.enqueue(keys)
        return keys
