"""Locate-and-Verify: a two-stream (RGB + SRM noise) detector with patch-level localisation.

Citation: Shuai, C. et al., "Locate and Verify: A Two-Stream Network for Improved Deepfake
Detection", ACM Multimedia 2023 (code ``sccsok/Locate-and-Verify``); the user's seed note
``shared/seeds/002_*``; facts in REFERENCE.md section 3. Modules: ``locate_verify_blocks.py``.

Backbone: EfficientNet from transformers (``EfficientNetModel``), one per stream, not the paper's
Xception. transformers ships no Xception, so an Xception built here could never start from
ImageNet weights, which the paper relies on; an EfficientNet loads pretrained from a hub name or
a local directory through :func:`load_hf_backbone`, and its compound scaling gives the presets
(``full`` = B4, 17.5M parameters a stream, against Xception's 20.8M; ``small`` = B0). Each
stream runs block by block (``embeddings``, ``encoder.blocks``, ``encoder.top_*``) so that the
cross-stream modules sit *between* stages, as in the paper; the EfficientNet's seven base
stages are grouped into six levels by output stride::

    level   1     2     3     4     5     6
    stride  /2    /4    /8    /16   /16   /32      (B0 at 299 px: 149, 74, 37, 18, 18, 9)
    after   CMCE  CMCE  CMCE  LFGA  LFGA  --

which mirrors Xception's 64/128/256 entry stages (CMCE), its 728-channel /16 stages (LFGA; two
here, three in the paper) and its exit flow.

Forward pass:

* SRM stream input: three fixed 5x5 SRM kernels, Hardtanh(-3, 3) (a buffer, never trained).
  RGB stream input: the frame, re-normalised to the EfficientNet checkpoints' statistics when
  the backbone is pretrained (``input_norm``).
* Levels 1-3 end with CMCE (``cmce``: the paper's cosine form or the seed's learned comparison
  network). With ``merge_streams`` (the paper's code) both streams enter level 4 from the sum of
  their level-3 maps. Levels 4-5 end with LFGA on the SRM stream (attention from RGB).
* Locate head (after the paper's MPFF): each RGB level 1-5 is scored by a 1x1 conv-BN-ReLU to
  ``locate_dim`` channels; levels 1-4 are compared patch by patch with level 5 (the patch grid,
  stride 16: 4x4 at 64 px, 19x19 at 304 px), each patch receiving its ``ratio**2`` fine-pixel
  agreements as channels (64 + 16 + 4 + 1); with level 5's own features, BN-ReLU-1x1 conv give
  one fake logit per patch: ``features["locate"]``, ``[B, 1, G, G]``.
* Verify head: SRM levels 1-5, max-pooled to the stride-32 grid and concatenated, are fused with
  both streams' level 6 (concatenated; the paper uses the SRM stream's only, which would leave the
  RGB exit stage unused) by a Hadamard-product bilinear fusion to ``embed_dim`` channels, then
  BN-ReLU (``features["verify"]``) and global average pooling: the embedding. Dropout and a
  linear layer give the fake logit.
* ``verify_uses_locate`` adds the locate evidence to the verdict -- the mean of the top
  ``evidence_fraction`` patch logits times a learned weight initialised at 0. A fake needs only
  some fake patches, and without it the locate head would get no gradient in batches that carry
  no masks.

Loss (:meth:`LocateVerify.task_loss`): BCE on the fake logit, plus ``locate_weight`` x BCE of
the patch logits against the patch labels (the mask max-pooled to the patch grid) over the
samples whose mask is known; the paper weighs its two cross-entropies 1:1.

Other choices: HF's EfficientNet configs carry TensorFlow's batch-norm decay (0.99) as PyTorch's
momentum, which makes the running statistics those of the last batch; ``bn_momentum`` (PyTorch's
0.1 by default) replaces it in every backbone batch norm. transformers also draws BatchNorm
scales from N(0, 0.02), which starves a random-weight build of signal, so such a build is
re-initialised as the EfficientNet reference does (:func:`_init_from_scratch`). With
``pretrained`` the backbone's shape (width, depth, expansion) comes from the checkpoint and those
fields are ignored. The ``tiny`` preset (width 0.25, one block per base stage, expansion 2) is
for tests; ``small`` is B0-shaped with moderate heads, for CPU sweeps on 64 px frames.

Named features: ``rgb1``, ``srm1``, ... ``rgb6``, ``srm6`` (the streams after the cross-stream
modules), ``locate`` (patch logits) and ``verify`` (the fused verify map).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Literal, Mapping, Optional

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from torch import nn

from forgesweep.errors import ConfigError
from forgesweep.models.blocks import conv_bn_act
from forgesweep.models.hf_backbones import load_hf_backbone
from forgesweep.models.locate_verify_blocks import CMCE, LFGA, HadamardFusion, SRMFilter, patch_similarity
from forgesweep.models.output import DetectorOutput
from forgesweep.models.registry import Detector, register_model

NUM_LEVELS = 6
# EfficientNet's seven base stages: their strides, and which of them make each of our levels.
EFFICIENTNET_STRIDES = (1, 2, 2, 2, 1, 2, 1)
LEVEL_STAGES = ((0,), (1,), (2,), (3,), (4,), (5, 6))
# Stride of levels 1-4 relative to the patch grid (level 5, stride 16).
PATCH_RATIOS = (8, 4, 2, 1)
# Input statistics of Google's EfficientNet checkpoints (their preprocessor config).
EFFICIENTNET_MEAN = (0.485, 0.456, 0.406)
EFFICIENTNET_STD = (0.47853944, 0.4732864, 0.47434163)


class LocateVerifyParams(BaseModel):
    """Hyperparameters of :class:`LocateVerify`."""

    model_config = ConfigDict(extra="forbid")

    pretrained: bool = Field(False, description="load both streams' EfficientNet weights from `backbone`")
    backbone: Optional[str] = Field(None, validate_default=True,
                                    description="hub name or local directory of a pretrained EfficientNet")
    width_coefficient: float = Field(1.0, gt=0, le=4, description="EfficientNet width multiplier (B0 1.0, B4 1.4)")
    depth_coefficient: float = Field(1.0, gt=0, le=4, description="EfficientNet depth multiplier (B0 1.0, B4 1.8)")
    depth_divisor: int = Field(8, ge=1, le=64, description="channel counts are rounded to multiples of this")
    expand_ratio: int = Field(6, ge=1, le=8, description="MBConv expansion of base stages 2-7 (stage 1 keeps 1)")
    drop_connect_rate: float = Field(0.2, ge=0, lt=1,
                                     description="residual-block dropout of the deepest block (rises with depth)")
    bn_momentum: float = Field(0.1, gt=0, le=1, description="PyTorch momentum of every backbone batch norm")
    input_norm: Literal["auto", "none", "efficientnet"] = Field(
        "auto", description="RGB stream input: [-1,1] as given, or EfficientNet checkpoint statistics; "
                            "auto = efficientnet when pretrained")
    cmce: Literal["cosine", "learned"] = Field("cosine", description="CMCE similarity: paper's cosine or seed's net")
    cmce_relu: bool = Field(True, description="ReLU after the CMCE exchange (the paper's)")
    merge_streams: bool = Field(True, description="both streams enter level 4 from the sum of their level 3")
    lfga_reduction: int = Field(4, ge=1, le=64, description="LFGA query/key channels = C / this")
    locate_dim: int = Field(128, ge=1, le=4096, description="channels of the locate head's level scores")
    locate_weight: float = Field(1.0, ge=0, le=100, description="weight of the patch BCE (lambda)")
    verify_uses_locate: bool = Field(True, description="add gated top-patch evidence to the fake logit")
    evidence_fraction: float = Field(0.25, gt=0, le=1, description="share of patches whose top logits are averaged")
    fusion_hidden: int = Field(256, ge=1, le=16384, description="rank of the verify head's bilinear fusion")
    embed_dim: int = Field(256, ge=1, le=16384, description="verify embedding size")
    dropout: float = Field(0.5, ge=0, lt=1, description="dropout in the fusion and before the classifier")

    @field_validator("backbone")
    @classmethod
    def _source_when_pretrained(cls, value: Optional[str], info: ValidationInfo) -> Optional[str]:
        if info.data.get("pretrained") and not value:
            raise ValueError("pretrained is true but no backbone (hub name or local directory) is given")
        return value


def _random_backbone_config(p: LocateVerifyParams) -> dict[str, Any]:
    """``EfficientNetConfig`` fields of a random-weight stream shaped by ``p``."""
    from transformers import EfficientNetConfig
    from transformers.models.efficientnet.modeling_efficientnet import round_filters

    config = {
        "width_coefficient": p.width_coefficient,
        "depth_coefficient": p.depth_coefficient,
        "depth_divisor": p.depth_divisor,
        "expand_ratios": [1] + [p.expand_ratio] * 6,
        "drop_connect_rate": p.drop_connect_rate,
    }
    # The top batch norm is sized by `hidden_dim`, which transformers does not derive itself.
    config["hidden_dim"] = round_filters(EfficientNetConfig(**config), 1280)
    return config


def _init_from_scratch(net: nn.Module) -> None:
    """Re-initialise a random-weight EfficientNet so that it trains from scratch.

    transformers' generic initialiser draws BatchNorm scales from N(0, 0.02), which shrinks the
    activations about fifty-fold per layer (1e-37 after the last stage). Convolutions get
    He-normal weights over their fan-out per group (the EfficientNet reference initialisation),
    batch norms unit scale and zero shift.
    """
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class EfficientNetStream(nn.Module):
    """A transformers ``EfficientNetModel`` run level by level (see the module docstring).

    Attributes:
        channels: output channels of the six levels (level 6 after the top 1x1 conv).
    """

    def __init__(self, net: nn.Module, bn_momentum: float) -> None:
        super().__init__()
        config = net.config
        if tuple(config.strides) != EFFICIENTNET_STRIDES:
            raise ConfigError(f"model.backbone: expected an EfficientNet with base-stage strides "
                              f"{list(EFFICIENTNET_STRIDES)}, got {list(config.strides)}")
        self.net = net
        repeats = [int(math.ceil(config.depth_coefficient * n)) for n in config.num_block_repeats]
        starts = [sum(repeats[:i]) for i in range(len(repeats) + 1)]
        self.block_ranges = [(starts[group[0]], starts[group[-1] + 1]) for group in LEVEL_STAGES]
        if starts[-1] != len(net.encoder.blocks):
            raise ConfigError(f"model.backbone: config describes {starts[-1]} blocks, model has "
                              f"{len(net.encoder.blocks)}")
        self.channels = [net.encoder.blocks[end - 1].projection.project_bn.num_features
                         for _, end in self.block_ranges[:-1]] + [net.encoder.top_conv.out_channels]
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = bn_momentum

    def level(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Run level ``index`` (0-based) on ``x``: the stem first, the top conv last."""
        encoder = self.net.encoder
        if index == 0:
            x = self.net.embeddings(x)
        start, end = self.block_ranges[index]
        for block in encoder.blocks[start:end]:
            x = block(x)
        if index == NUM_LEVELS - 1:
            x = encoder.top_activation(encoder.top_bn(encoder.top_conv(x)))
        return x


@register_model("locate_verify")
class LocateVerify(Detector):
    """Two-stream Locate-and-Verify detector; see the module docstring for the design."""

    Params = LocateVerifyParams
    PRESETS = {
        "tiny": {"width_coefficient": 0.25, "depth_coefficient": 0.1, "depth_divisor": 4, "expand_ratio": 2,
                 "drop_connect_rate": 0.0, "locate_dim": 8, "fusion_hidden": 16, "embed_dim": 16,
                 "dropout": 0.1},
        "small": {"width_coefficient": 1.0, "depth_coefficient": 1.0, "locate_dim": 128, "fusion_hidden": 256,
                  "embed_dim": 256},
        # EfficientNet-B4 streams; the paper's head sizes (locate 512, fusion 2048 -> 4096).
        "full": {"width_coefficient": 1.4, "depth_coefficient": 1.8, "locate_dim": 512, "fusion_hidden": 2048,
                 "embed_dim": 4096, "drop_connect_rate": 0.2, "dropout": 0.5},
    }
    uses_masks = True

    def __init__(self, params: LocateVerifyParams) -> None:
        super().__init__()
        self.params = params
        self.srm = SRMFilter()
        self.rgb_stream = EfficientNetStream(self._backbone(params), params.bn_momentum)
        self.srm_stream = EfficientNetStream(self._backbone(params), params.bn_momentum)
        ch = self.rgb_stream.channels
        if self.srm_stream.channels != ch:
            raise ConfigError(f"model.backbone: the two streams differ in shape ({ch} vs {self.srm_stream.channels})")
        norm = params.input_norm if params.input_norm != "auto" else ("efficientnet" if params.pretrained else "none")
        self.renormalise = norm == "efficientnet"
        # From [-1, 1] to the checkpoint's statistics: ((x + 1) / 2 - mean) / std = x * scale + shift.
        std = torch.tensor(EFFICIENTNET_STD).view(1, 3, 1, 1)
        self.register_buffer("norm_scale", 0.5 / std, persistent=False)
        self.register_buffer("norm_shift", (0.5 - torch.tensor(EFFICIENTNET_MEAN).view(1, 3, 1, 1)) / std,
                             persistent=False)

        self.cmce = nn.ModuleList(CMCE(ch[k], params.cmce, params.cmce_relu) for k in range(3))
        self.lfga = nn.ModuleList(LFGA(ch[k], params.lfga_reduction) for k in (3, 4))
        self.locate_scores = nn.ModuleList(conv_bn_act(ch[k], params.locate_dim, kernel=1) for k in range(5))
        locate_in = sum(r * r for r in PATCH_RATIOS) + ch[4]
        self.locate_head = nn.Sequential(nn.BatchNorm2d(locate_in), nn.ReLU(inplace=True), nn.Conv2d(locate_in, 1, 1))
        self.fusion = HadamardFusion(sum(ch[:5]), 2 * ch[5], params.fusion_hidden, params.embed_dim, params.dropout)
        self.verify_norm = nn.Sequential(nn.BatchNorm2d(params.embed_dim), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(params.dropout)
        self.classifier = nn.Linear(params.embed_dim, 1)
        self.evidence_gate = nn.Parameter(torch.zeros(1)) if params.verify_uses_locate else None

    @staticmethod
    def _backbone(params: LocateVerifyParams) -> nn.Module:
        from transformers import EfficientNetConfig, EfficientNetModel

        net = load_hf_backbone(EfficientNetModel, EfficientNetConfig, source=params.backbone,
                               pretrained=params.pretrained, config=_random_backbone_config(params),
                               what="model.backbone")
        if not params.pretrained:
            _init_from_scratch(net)
        return net

    @classmethod
    def feature_names_for(cls, params: BaseModel) -> list[str]:
        names = []
        for k in range(1, NUM_LEVELS + 1):
            names += [f"rgb{k}", f"srm{k}"]
        return names + ["locate", "verify"]

    def locate(self, rgb_levels: list[torch.Tensor]) -> torch.Tensor:
        """Patch logits ``[B, 1, G, G]`` from RGB levels 1-5 (level 5 is the patch grid)."""
        scores = [score(x) for score, x in zip(self.locate_scores, rgb_levels)]
        maps = [patch_similarity(s, scores[4], r) for s, r in zip(scores[:4], PATCH_RATIOS)]
        return self.locate_head(torch.cat(maps + [rgb_levels[4]], dim=1))

    def evidence(self, patch_logits: torch.Tensor) -> torch.Tensor:
        """Mean of the top ``evidence_fraction`` patch logits of each sample, ``[B]``."""
        flat = patch_logits.flatten(1)
        k = max(1, math.ceil(self.params.evidence_fraction * flat.shape[1]))
        return flat.topk(k, dim=1).values.mean(dim=1)

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        features: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        r = images * self.norm_scale + self.norm_shift if self.renormalise else images
        s = self.srm(images)
        rgb_levels, srm_levels = [], []
        for k in range(NUM_LEVELS):
            if k == 3 and self.params.merge_streams:
                r = s = r + s
            r, s = self.rgb_stream.level(k, r), self.srm_stream.level(k, s)
            if k < 3:
                r, s = self.cmce[k](r, s)
            elif k < 5:
                s = self.lfga[k - 3](s, r)
            features[f"rgb{k + 1}"], features[f"srm{k + 1}"] = r, s
            rgb_levels.append(r)
            srm_levels.append(s)

        patch_logits = self.locate(rgb_levels[:5])
        grid = s.shape[-2:]
        multi = torch.cat([F.adaptive_max_pool2d(x, grid) for x in srm_levels[:5]], dim=1)
        verify = self.verify_norm(self.fusion(multi, torch.cat([r, s], dim=1)))
        embedding = verify.mean(dim=(2, 3))
        logits = self.classifier(self.dropout(embedding)).squeeze(-1)
        if self.evidence_gate is not None:
            logits = logits + self.evidence_gate * self.evidence(patch_logits)
        features["locate"] = patch_logits
        features["verify"] = verify
        return DetectorOutput(logits=logits, features=features, embedding=embedding)

    def task_loss(self, out: DetectorOutput, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """BCE on the fake logit; with ``masks`` in the batch, plus the weighted patch BCE.

        The patch term averages over the samples whose ``mask_valid`` is true (all, when the
        batch has masks but no ``mask_valid``); with none valid it is an exact 0 that stays on
        the graph, so every rank of a distributed run differentiates the same terms.
        """
        terms = {"bce": F.binary_cross_entropy_with_logits(out.logits, batch["labels"].float())}
        masks = batch.get("masks")
        if masks is None:
            return terms
        patch_logits = out.features["locate"]
        target = patch_labels(masks, patch_logits.shape[-2:]).to(patch_logits.dtype)
        per_sample = F.binary_cross_entropy_with_logits(patch_logits, target, reduction="none").flatten(1).mean(1)
        valid = batch.get("mask_valid")
        weight = torch.ones_like(per_sample) if valid is None else valid.to(per_sample.dtype)
        terms["locate"] = self.params.locate_weight * (per_sample * weight).sum() / weight.sum().clamp_min(1.0)
        return terms


def patch_labels(masks: torch.Tensor, grid: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Patch labels ``[B, 1, *grid]``: the manipulation mask max-pooled to the patch grid.

    A patch is fake when any of its pixels is (a soft mask gives its largest value).
    """
    if masks.ndim != 4 or masks.shape[1] != 1:
        raise ValueError(f"masks must be [B, 1, H, W], got {tuple(masks.shape)}")
    return F.adaptive_max_pool2d(masks.float(), tuple(grid))
