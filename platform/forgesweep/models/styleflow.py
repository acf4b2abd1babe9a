"""StyleFlow: deepfake video detection from the temporal flow of style latents.

Citation: J. Choi, T. Kim, Y. Jeong, S. Baek, J. Choi, "Exploiting Style Latent Flows for
Generalizing Deepfake Video Detection", CVPR 2024 (``jongwook-Choi/StyleFlow``); the content
branch and temporal transformer follow FTCN (Zheng et al., ICCV 2021). REFERENCE.md section 4,
seed ``shared/seeds/003_*``.

Input: clips ``[B, T, 3, H, W]`` in [-1, 1] (``input_kind = "clip"``, ``T = clip_length``).

1. A per-frame style encoder gives latents ``[B, T, n_latents, latent_dim]`` (pSp: 18 x 512):
   pSp's encoder, frozen, from a safetensors file (``styleflow_psp``), or a small built-in
   stand-in (``styleflow_style``).
2. The style flow is the difference of consecutive frames' latents, ``[B, T-1, L, D]``,
   optionally restricted to the coarse / middle / fine latent groups (the paper's ablation).
3. StyleGRU: latent dropout, BatchNorm over time, bidirectional GRU -> ``E_style``.
4. A 3D ResNet (FTCN's temporal-only convolutions by default) gives temporal content tokens.
5. Style attention: queries from content tokens, keys/values from ``E_style`` cut into
   ``style_tokens`` tokens, zero-initialised output projection, residual.
6. A temporal transformer encoder over the fused tokens; its class token -> 1 logit.

Training has two phases per task (``training_phases`` / ``begin_phase``): ``style`` trains the
StyleGRU (with the built-in encoder, unless frozen) and its stage-1 head on BCE + triplet loss
(margin ``triplet_margin``); ``detector`` then trains the content branch, style attention,
transformer and head with the style branch frozen (``requires_grad=False``, eval mode). The
first ``style_phase_fraction`` of a task's epochs is the style phase. A model that was never
given a phase -- and every task trained in a single epoch, or with ``two_stage: false`` -- is in
the ``joint`` phase: every part trains on the sum of all the losses.

Named features (in order): ``style`` (``E_style`` ``[B, 2*layers*hidden]``), ``style_logits``
(the stage-1 head's logit, ``[B, 1]``: the style-phase loss reads it from here, so strategies
that select rows of an output keep it), ``content`` (``[B, T', C]``), ``fused`` (content after
style attention), ``temporal`` (transformer tokens ``[B, T'+1, embed_dim]``). The embedding is
the class token ``[B, embed_dim]``.

Design choices beyond the paper (the seed leaves these open):

* ``frozen_modules()`` lists only what never trains (the pSp encoder, or a built-in one
  with ``style_encoder_trainable: false``). The StyleGRU is frozen only for the detector phase
  of a task and trains again in the next task's style phase, so it is not listed: a strategy
  that shared frozen modules with its teacher would otherwise see the teacher change. The
  model's own :meth:`train` keeps whatever the current phase freezes in eval mode.
* Parts a phase does not train are also kept in eval mode (the detector during the style
  phase), so their BatchNorm statistics only move while they learn.
* The loop gives each phase a fresh optimiser of the configured kind (``train.optimizer``);
  the paper trains stage 1 with Adam and stage 2 with SGD.
* ``bn_momentum`` sets every BatchNorm's momentum: short schedules (the tiny preset's few
  dozen steps) need running statistics that catch up with the weights before evaluation.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal, Mapping, Optional

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from torch import nn

from forgesweep.models.output import DetectorOutput
from forgesweep.models.registry import Detector, register_model
from forgesweep.models.styleflow_content import Content3DResNet, StyleAttention, TemporalTransformer
from forgesweep.models.styleflow_psp import PSP_BLOCKS, PSP_WIDTHS, PSPEncoder, load_psp_weights
from forgesweep.models.styleflow_style import (
    LEVELS,
    PyramidStyleEncoder,
    StyleGRU,
    StyleHead,
    batch_triplet_loss,
    latent_levels,
)

PHASES = ("style", "detector", "joint")
Level = Literal["coarse", "middle", "fine"]


class StyleFlowParams(BaseModel):
    """Hyperparameters of :class:`StyleFlow` (defaults: a small CPU-friendly size; see PRESETS)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    clip_length: int = Field(8, ge=2, le=256, description="frames per clip l (paper: 32)")
    # Style encoder.
    style_encoder: Literal["builtin", "psp"] = Field(
        "builtin", description="builtin stand-in encoder, or pSp's encoder (frozen) from style_encoder_path")
    style_encoder_path: Optional[str] = Field(None, description="safetensors file of the pSp encoder")
    style_encoder_trainable: Optional[bool] = Field(
        None, description="train the builtin encoder in the style phase (default: yes; pSp never)")
    style_input_size: Optional[int] = Field(
        None, ge=16, le=1024, description="frames are resized to this size for the encoder (pSp: 256); null = as given")
    n_latents: int = Field(18, ge=3, le=64, description="style latents per frame (pSp W+: 18)")
    latent_dim: int = Field(64, ge=2, le=2048, description="width of a style latent (pSp: 512)")
    encoder_width: int = Field(16, ge=2, le=512, description="channels of the builtin encoder's first level")
    psp_blocks: Optional[list[int]] = Field(
        None, description="style_encoder psp: IR-SE units per stage (null = pSp's IR-SE-50: 3,4,14,3)")
    psp_widths: Optional[list[int]] = Field(
        None, description="style_encoder psp: channels per stage (null = 64,128,256,512; the last = latent_dim)")
    style_levels: list[Level] = Field(
        default_factory=lambda: list(LEVELS), min_length=1,
        description="latent groups whose flow the StyleGRU reads (the paper's ablation); 'a+b' is accepted")
    # StyleGRU.
    gru_hidden: int = Field(128, ge=2, le=8192, description="GRU hidden size (paper: 4096)")
    gru_layers: int = Field(2, ge=1, le=8, description="stacked bidirectional GRU layers (paper: 2)")
    latent_dropout: float = Field(0.2, ge=0.0, lt=1.0, description="probability of dropping a style latent")
    gru_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout between GRU layers")
    style_head_hidden: int = Field(256, ge=2, le=16384, description="hidden width of the stage-1 head")
    style_head_dropout: float = Field(0.5, ge=0.0, lt=1.0, description="dropout of the stage-1 head")
    style_tokens: int = Field(8, ge=1, le=1024, description="E_style is cut into this many attention tokens")
    # Content branch.
    content_width: int = Field(16, ge=2, le=256, description="3D ResNet stem width (ResNet-50: 64)")
    content_blocks: list[int] = Field(default_factory=lambda: [2, 2, 2], min_length=1, max_length=4,
                                      description="bottleneck blocks per stage (ResNet-50 to res4: 3,4,6)")
    content_temporal_only: bool = Field(True, description="FTCN: 1x1 spatial kernels everywhere")
    content_temporal_kernel: int = Field(3, ge=1, le=9, description="temporal kernel of the blocks (odd)")
    content_stem_temporal_kernel: int = Field(5, ge=1, le=9, description="temporal kernel of the stem (odd)")
    content_temporal_pool: bool = Field(True, description="halve the time axis after the first stage")
    # Style attention and temporal transformer.
    attention_dim: int = Field(128, ge=2, le=4096, description="query/key/value width of style attention")
    attention_heads: int = Field(1, ge=1, le=64, description="heads of style attention")
    embed_dim: int = Field(128, ge=2, le=4096, description="temporal transformer width = embedding size")
    transformer_depth: int = Field(1, ge=1, le=12, description="temporal transformer layers")
    transformer_heads: int = Field(4, ge=1, le=64, description="temporal transformer heads")
    transformer_mlp_dim: int = Field(256, ge=2, le=16384, description="temporal transformer MLP width")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="transformer and head dropout")
    bn_momentum: float = Field(0.1, gt=0.0, le=1.0,
                               description="momentum of every BatchNorm's running statistics (PyTorch: 0.1)")
    # Training.
    two_stage: bool = Field(True, description="style phase then detector phase per task; false = joint")
    style_phase_fraction: float = Field(0.5, gt=0.0, lt=1.0, description="share of a task's epochs in the style phase")
    triplet_margin: float = Field(1.0, gt=0.0, le=100.0, description="triplet margin alpha")
    triplet_weight: float = Field(1.0, ge=0.0, le=100.0, description="weight of the triplet loss")
    style_bce_weight: float = Field(1.0, ge=0.0, le=100.0, description="weight lambda of the stage-1 BCE")
    triplet_mining: Literal["all", "hard"] = Field("all", description="triplets inside a batch: all or hardest")

    @field_validator("content_temporal_kernel", "content_stem_temporal_kernel")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"must be odd (same-length temporal padding), got {value}")
        return value

    @field_validator("content_blocks")
    @classmethod
    def _blocks(cls, value: list[int]) -> list[int]:
        if any(not 1 <= v <= 64 for v in value):
            raise ValueError(f"every stage needs 1 to 64 blocks, got {value}")
        return value

    @field_validator("style_levels", mode="before")
    @classmethod
    def _split_plus(cls, value: object) -> object:
        # Sweeps pick level subsets as categorical strings ("middle+fine").
        if isinstance(value, str):
            return [v.strip() for v in value.split("+") if v.strip()]
        return value

    @field_validator("style_levels")
    @classmethod
    def _distinct_levels(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"lists a level twice: {value}")
        return [level for level in LEVELS if level in value]

    # Cross-field checks sit on the later field (pydantic fills ``info.data`` in declaration
    # order), so the error names the field to change; defaults are validated too.

    @field_validator("style_encoder_path")
    @classmethod
    def _path_for_psp(cls, value: Optional[str], info: ValidationInfo) -> Optional[str]:
        encoder = info.data.get("style_encoder")
        if encoder == "psp" and not value:
            raise ValueError("required when style_encoder is psp")
        if encoder == "builtin" and value is not None:
            raise ValueError("only read when style_encoder is psp")
        return value

    @field_validator("style_encoder_trainable")
    @classmethod
    def _psp_is_frozen(cls, value: Optional[bool], info: ValidationInfo) -> Optional[bool]:
        if value and info.data.get("style_encoder") == "psp":
            raise ValueError("the pSp style encoder is always frozen")
        return value

    @field_validator("style_input_size")
    @classmethod
    def _size_for_psp(cls, value: Optional[int], info: ValidationInfo) -> Optional[int]:
        if info.data.get("style_encoder") == "psp":
            if value is None:
                raise ValueError("required when style_encoder is psp (pSp: 256)")
            if value % 16 or (value // 16) & (value // 16 - 1):
                raise ValueError(f"the pSp encoder needs 16 x a power of two (pSp: 256), got {value}")
        return value

    @field_validator("psp_blocks")
    @classmethod
    def _psp_blocks(cls, value: Optional[list[int]], info: ValidationInfo) -> Optional[list[int]]:
        if value is None:
            return value
        if info.data.get("style_encoder") != "psp":
            raise ValueError("only read when style_encoder is psp")
        if len(value) != 4 or any(not 1 <= v <= 64 for v in value):
            raise ValueError(f"must be 4 unit counts in 1..64, got {value}")
        return value

    @field_validator("psp_widths")
    @classmethod
    def _psp_widths(cls, value: Optional[list[int]], info: ValidationInfo) -> Optional[list[int]]:
        encoder = info.data.get("style_encoder")
        if value is not None and encoder != "psp":
            raise ValueError("only read when style_encoder is psp")
        widths = value if value is not None else list(PSP_WIDTHS)
        if encoder == "psp":
            if len(widths) != 4 or any(not 16 <= w <= 4096 or w % 16 for w in widths):
                raise ValueError(f"must be 4 channel counts, multiples of 16 in 16..4096, got {widths}")
            if info.data.get("latent_dim") not in (None, widths[-1]):
                raise ValueError(f"the last width {widths[-1]} is the latent width: set latent_dim to it "
                                 f"(latent_dim is {info.data.get('latent_dim')})")
        return value

    @field_validator("style_tokens")
    @classmethod
    def _tokens_divide_style(cls, value: int, info: ValidationInfo) -> int:
        layers, hidden = info.data.get("gru_layers"), info.data.get("gru_hidden")
        if layers and hidden and (2 * layers * hidden) % value:
            raise ValueError(f"{value} does not divide the style feature (2 x gru_layers x gru_hidden = "
                             f"{2 * layers * hidden})")
        return value

    @field_validator("attention_heads")
    @classmethod
    def _attention_heads_divide(cls, value: int, info: ValidationInfo) -> int:
        dim = info.data.get("attention_dim")
        if dim and dim % value:
            raise ValueError(f"{value} heads do not divide attention_dim {dim}")
        return value

    @field_validator("transformer_heads")
    @classmethod
    def _transformer_heads_divide(cls, value: int, info: ValidationInfo) -> int:
        dim = info.data.get("embed_dim")
        if dim and dim % value:
            raise ValueError(f"{value} heads do not divide embed_dim {dim}")
        return value

    def encoder_trains(self) -> bool:
        """Whether the style encoder learns (in the style and joint phases)."""
        if self.style_encoder == "psp":
            return False
        return self.style_encoder_trainable is not False


# Tests: a few thousand parameters. Its schedules are a few dozen steps, so BatchNorm statistics
# follow faster (a momentum of 0.1 leaves most of the initial running variance of 1 in place,
# while the builtin encoder's flows have a variance near 1e-3).
_TINY = {
    "clip_length": 4, "style_input_size": 32, "n_latents": 6, "latent_dim": 8, "encoder_width": 8,
    "gru_hidden": 16, "gru_layers": 1, "style_head_hidden": 16, "style_tokens": 4, "content_width": 8,
    "content_blocks": [1, 1], "attention_dim": 16, "attention_heads": 2, "embed_dim": 16, "transformer_heads": 2,
    "transformer_mlp_dim": 32, "dropout": 0.0, "latent_dropout": 0.0, "style_head_dropout": 0.0,
    "bn_momentum": 0.5, "style_phase_fraction": 0.34,
}
# The paper: pSp W+ latents 18 x 512, StyleGRU 2 x 4096 bidirectional (E_style 16384 = 16 x 1024
# tokens), FTCN's temporal-only 3D ResNet-50 to res4 (1024 x 16 tokens from 32 frames), TTE
# 1024 wide, 16 heads, MLP 2048.
_FULL = {
    "clip_length": 32, "n_latents": 18, "latent_dim": 512, "encoder_width": 64,
    "gru_hidden": 4096, "gru_layers": 2, "latent_dropout": 0.2, "gru_dropout": 0.1, "style_head_hidden": 4096,
    "style_head_dropout": 0.5, "style_tokens": 16, "content_width": 64, "content_blocks": [3, 4, 6],
    "content_temporal_only": True, "content_temporal_kernel": 3, "content_stem_temporal_kernel": 5,
    "content_temporal_pool": True, "attention_dim": 1024, "attention_heads": 1, "embed_dim": 1024,
    "transformer_depth": 1, "transformer_heads": 16, "transformer_mlp_dim": 2048, "dropout": 0.1,
}


@register_model("styleflow")
class StyleFlow(Detector):
    """Style-latent-flow video detector; see the module docstring for the design."""

    Params = StyleFlowParams
    PRESETS = {"tiny": _TINY, "small": {}, "full": _FULL}
    input_kind = "clip"

    def __init__(self, params: StyleFlowParams) -> None:
        super().__init__()
        self.params = p = params
        groups = latent_levels(p.n_latents)
        if p.style_encoder == "psp":
            self.style_encoder: nn.Module = PSPEncoder(
                p.n_latents, len(groups["coarse"]), len(groups["coarse"]) + len(groups["middle"]),
                p.style_input_size, p.psp_blocks or PSP_BLOCKS, p.psp_widths or PSP_WIDTHS)
            load_psp_weights(self.style_encoder, p.style_encoder_path)
            self.style_encoder.requires_grad_(False)
        else:
            self.style_encoder = PyramidStyleEncoder(p.n_latents, p.latent_dim, p.encoder_width)
            if not p.encoder_trains():
                for q in self.style_encoder.parameters():
                    q.requires_grad_(False)
        self.register_buffer("flow_latents", torch.tensor([i for lv in p.style_levels for i in groups[lv]]),
                             persistent=False)
        self.style_gru = StyleGRU(p.clip_length - 1, len(self.flow_latents), p.latent_dim, p.gru_hidden,
                                  p.gru_layers, p.latent_dropout, p.gru_dropout)
        self.style_head = StyleHead(self.style_gru.out_dim, p.style_head_hidden, p.style_head_dropout)
        self.content = Content3DResNet(p.content_width, p.content_blocks, p.content_temporal_kernel,
                                       p.content_stem_temporal_kernel, p.content_temporal_only,
                                       p.content_temporal_pool)
        tokens = p.clip_length // 2 if p.content_temporal_pool else p.clip_length
        self.attention = StyleAttention(self.content.out_dim, self.style_gru.out_dim // p.style_tokens,
                                        p.attention_dim, p.attention_heads)
        self.temporal = TemporalTransformer(self.content.out_dim, p.embed_dim, tokens, p.transformer_depth,
                                            p.transformer_heads, p.transformer_mlp_dim, p.dropout)
        self.head = nn.Sequential(nn.Dropout(p.dropout), nn.Linear(p.embed_dim, 1))
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = p.bn_momentum
        self.phase = "joint"

    # ----------------------------------------------------------------------- Detector hooks

    @classmethod
    def feature_names_for(cls, params: BaseModel) -> list[str]:
        return ["style", "style_logits", "content", "fused", "temporal"]

    def clip_length(self) -> int:
        return self.params.clip_length

    def example_input(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        # 32 px: the content branch (16x down with 3 stages) and the builtin encoder (8x) still
        # end on maps of at least 2x2 pixels.
        size = 32
        return torch.rand(batch, self.params.clip_length, 3, size, size, generator=generator) * 2 - 1

    def frozen_modules(self) -> list[nn.Module]:
        return [] if self.params.encoder_trains() else [self.style_encoder]

    def _style_modules(self) -> list[nn.Module]:
        parts: list[nn.Module] = [self.style_gru, self.style_head]
        return parts + ([self.style_encoder] if self.params.encoder_trains() else [])

    def _detector_modules(self) -> list[nn.Module]:
        return [self.content, self.attention, self.temporal, self.head]

    def training_phases(self, epochs: int) -> list[tuple[str, int]]:
        if not self.params.two_stage or epochs < 2:
            return [("joint", epochs)]
        style = min(max(round(epochs * self.params.style_phase_fraction), 1), epochs - 1)
        return [("style", style), ("detector", epochs - style)]

    def begin_phase(self, name: str) -> None:
        if name not in PHASES:
            raise ValueError(f"unknown StyleFlow phase {name!r}; known: {', '.join(PHASES)}")
        self.phase = name
        for module in self._style_modules():
            module.requires_grad_(name != "detector")
        for module in self._detector_modules():
            module.requires_grad_(name != "style")
        self.train(self.training)

    def train(self, mode: bool = True) -> "StyleFlow":
        super().train(mode)
        if mode and self.phase != "joint":
            idle = self._detector_modules() if self.phase == "style" else self._style_modules()
            for module in idle:
                module.eval()
        return self

    def task_loss(self, out: DetectorOutput, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``style``: stage-1 BCE + triplet; ``detector``: BCE on the logit; ``joint``: all three."""
        labels = batch["labels"]
        terms: dict[str, torch.Tensor] = {}
        if self.phase != "detector":
            p = self.params
            terms["style_bce"] = p.style_bce_weight * F.binary_cross_entropy_with_logits(
                out.features["style_logits"].squeeze(1), labels.float())
            terms["triplet"] = p.triplet_weight * batch_triplet_loss(
                out.features["style"], labels, p.triplet_margin, p.triplet_mining)
        if self.phase != "style":
            terms["bce"] = F.binary_cross_entropy_with_logits(out.logits, labels.float())
        return terms

    # ----------------------------------------------------------------------- forward

    def forward(self, clips: torch.Tensor) -> DetectorOutput:
        p = self.params
        if clips.ndim != 5 or clips.shape[1] != p.clip_length or clips.shape[2] != 3:
            raise ValueError(f"StyleFlow takes clips [B, {p.clip_length}, 3, H, W], got {list(clips.shape)}")
        b, t = clips.shape[:2]
        frames = clips.flatten(0, 1)
        if p.style_input_size is not None and frames.shape[-1] != p.style_input_size:
            frames = F.interpolate(frames, size=(p.style_input_size,) * 2, mode="bilinear", align_corners=False)
        latents = self.style_encoder(frames).view(b, t, p.n_latents, p.latent_dim)
        latents = latents.index_select(2, self.flow_latents)
        flow = latents[:, 1:] - latents[:, :-1]
        style = self.style_gru(flow)
        style_logits = self.style_head(style)

        content = self.content(clips.transpose(1, 2))  # B T' C
        fused = self.attention(content, style.view(b, p.style_tokens, -1))
        embedding, tokens = self.temporal(fused)
        logits = self.head(embedding).squeeze(-1)
        features = OrderedDict([("style", style), ("style_logits", style_logits.unsqueeze(1)), ("content", content),
                                ("fused", fused), ("temporal", tokens)])
        return DetectorOutput(logits=logits, features=features, embedding=embedding)
