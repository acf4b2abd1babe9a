"""RINE + SSCA: intermediate CLIP block features fused with a spatial/frequency attention branch.

Citation: RINE -- Koutlis & Papadopoulos, "Leveraging Representations from Intermediate Encoder-blocks
for Synthetic Image Detection", ECCV 2024 (``mever-team/rine``). The SSCA branch, the cross-attention
fusion and the gated head are the user's extension described in the seed note
``shared/seeds/000_*`` (REFERENCE.md section 1); their modules live in ``rine_ssca_blocks.py``.

Data flow (each choice that a sweep might vary is a :class:`RINESSCAParams` field):

* Input: images normalised to [-1, 1] at the dataset's size (64 px synthetic, 224 px real). The
  CLIP branch maps them back to [0, 1], resizes them to the CLIP config's ``image_size`` when they
  differ (antialiased bicubic, the resampling of CLIP's own preprocessing) and normalises them with
  CLIP's mean/std (``clip_mean``/``clip_std``). The SSCA branch sees the [-1, 1] images as they are,
  whose side must be a multiple of ``2 * dct_block``.
* CLIP: a Hugging Face ``CLIPVisionModel`` (ViT-L/14 in the ``full`` preset), frozen
  (``requires_grad=False``, eval mode, run under ``no_grad``), built through
  :func:`~forgesweep.models.hf_backbones.load_hf_backbone` only: random weights from the ``clip_*``
  fields when ``pretrained`` is false, else ``from_pretrained(backbone)`` (a hub name or a local
  directory), whose layer count and width must then match ``clip_num_layers``/``clip_hidden_size``
  (so feature names are known without loading it).
* Per block in ``use_layers`` (block indices, negative ones counted from the end; default all) the
  CLS token of either the post-attention ``layer_norm2`` activation (``clip_activation:
  layer_norm2``, what RINE hooks, taken with forward hooks) or the block output
  (``block_output``, from ``output_hidden_states``).
* RINE branch: proj1 = Dropout, then ``proj_layers`` x [Linear, ReLU, Dropout] to ``proj_dim``,
  one set of weights for all blocks as in RINE (``share_projection: false`` gives every block its
  own, as the seed does); :class:`LayerImportance` (softmax over blocks per dimension); Q2 =
  ``q2_layers`` x [Linear, ReLU, Dropout].
* SSCA branch: 7x7 stride-2 conv stem (conv-BN-GELU), :class:`DCTConvBlock`,
  :class:`SpatialChannelAttention`; its map's positions plus its global average form the context.
* Fusion: :class:`CrossAttentionCombination` (RINE vector as query, SSCA tokens as keys/values),
  :class:`GatedMLP`; a linear head gives the fake logit, another the ``embed_dim`` representation.
* Loss (:meth:`RINESSCA.task_loss`): BCE + ``supcon_weight`` (RINE's xi) x supervised contrastive
  loss (temperature ``supcon_temperature``) on the representation.

Design choices the seed left open:

* The seed pools the SSCA map to one vector before the cross-attention; attention over a single key
  is a constant softmax, i.e. no attention at all. Here the keys/values are the map's positions plus
  the pooled vector as a global token, so the RINE query really selects where to look.
* The seed weighs blocks with an unnormalised matrix A; RINE (and the issue) use a softmax over
  blocks, which is what :class:`LayerImportance` does, starting from the plain mean.
* Stem order conv-BN-GELU (the seed had conv-GELU-BN): normalising before the non-linearity keeps
  the GELU in its useful range whatever the input scale.
* DCTConvBlock: a conv path and a block-DCT path (squeezed channels, per-frequency BatchNorm) side by
  side, merged by a 1x1 conv; SSCA: CBAM-style channel then spatial gating; GatedMLP: the seed's
  sigmoid-gated tanh unit with a residual connection (details in ``rine_ssca_blocks.py``).
* The SupCon term is always computed (zero at ``supcon_weight: 0``) so the representation head is
  always in the graph, as DDP requires.
* Non-square inputs are resized to CLIP's square size (squashed, not cropped): the dataset already
  delivers square face crops.

Frozen-feature cache (``features.cache: true``, :mod:`forgesweep.features`): the CLIP tower is
frozen, so :meth:`RINESSCA.frozen_feature_spec` declares it and :meth:`RINESSCA.extract_frozen_features`
gives the CLS tokens of *every* block for both activations in one pass; a sweep computes them once
and every trial slices its ``use_layers``. ``forward`` then receives the packed heads-only input
(pixels plus cached tokens) and skips CLIP; the SSCA branch still needs the pixels, which is why
they travel with the tokens.

Named features (``DetectorOutput.features``): ``clip_layer{i}`` (block i's projected CLS token,
``[B, proj_dim]``), ``rine`` (Q2 output), ``ssca_stem``, ``ssca_dct``, ``ssca_attention`` (the SSCA
maps), ``fused`` (the representation after the gated MLP, ``[B, embed_dim]``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Literal, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from forgesweep.errors import ConfigError, DataError
from forgesweep.features.key import tower_digest, weights_digest
from forgesweep.features.packed import FrozenFeatureSpec, is_packed, unpack_inputs
from forgesweep.losses import supervised_contrastive
from forgesweep.models.hf_backbones import load_hf_backbone
from forgesweep.models.output import DetectorOutput
from forgesweep.models.registry import Detector, register_model
from forgesweep.models.rine_ssca_blocks import (
    CrossAttentionCombination,
    DCTConvBlock,
    GatedMLP,
    LayerImportance,
    SpatialChannelAttention,
)

# OpenAI CLIP's image statistics (its preprocessor config), for [0, 1] RGB.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SSCA_FEATURES = ("rine", "ssca_stem", "ssca_dct", "ssca_attention", "fused")
CLIP_ACTIVATIONS = ("layer_norm2", "block_output")
# CLIPVisionConfig fields that change what the tower computes in eval mode (its cache identity;
# the weights themselves are hashed separately).
_TOWER_CONFIG_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                        "num_channels", "image_size", "patch_size", "hidden_act", "layer_norm_eps")


class RINESSCAParams(BaseModel):
    """Hyperparameters of :class:`RINESSCA`; the defaults are the paper-size model (``full``)."""

    model_config = ConfigDict(extra="forbid")

    backbone: str = Field("openai/clip-vit-large-patch14", min_length=1,
                          description="hub name or local directory of the CLIP weights (used when pretrained)")
    pretrained: bool = Field(False, description="load the backbone's weights; false: random weights from clip_*")
    clip_hidden_size: int = Field(1024, ge=8, le=8192, description="CLIP width")
    clip_num_layers: int = Field(24, ge=1, le=128, description="CLIP encoder blocks")
    clip_num_heads: int = Field(16, ge=1, le=128, description="CLIP attention heads (random build)")
    clip_intermediate_size: int = Field(4096, ge=8, le=65536, description="CLIP MLP width (random build)")
    clip_patch_size: int = Field(14, ge=2, le=64, description="CLIP patch size (random build)")
    clip_image_size: int = Field(224, ge=8, le=1024, description="CLIP input size (random build)")
    clip_mean: list[float] = Field(list(CLIP_MEAN), min_length=3, max_length=3,
                                   description="per-channel mean of CLIP's [0, 1] inputs")
    clip_std: list[float] = Field(list(CLIP_STD), min_length=3, max_length=3,
                                  description="per-channel std of CLIP's [0, 1] inputs")
    clip_activation: Literal["layer_norm2", "block_output"] = Field(
        "layer_norm2", description="per-block activation: post-attention layer_norm2 (RINE) or block output")
    use_layers: Optional[list[int]] = Field(
        None, description="CLIP block indices to use (negative from the end; 'a+b' accepted); null = all")
    proj_dim: int = Field(1024, ge=4, le=8192, description="width d of the per-block projection (RINE proj1)")
    proj_layers: int = Field(1, ge=1, le=8, description="Linear-ReLU-Dropout layers of proj1 (RINE q)")
    q2_layers: int = Field(2, ge=1, le=8, description="Linear-ReLU-Dropout layers of Q2 (RINE proj2)")
    share_projection: bool = Field(True, description="one proj1 for all blocks (RINE) or one per block (seed)")
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="dropout of proj1 and Q2 (RINE: 0.5)")
    ssca_stem_channels: int = Field(64, ge=2, le=1024, description="channels of the SSCA conv stem")
    ssca_channels: int = Field(128, ge=2, le=2048, description="channels of the DCT block and attention")
    dct_block: Literal[2, 4, 8] = Field(2, description="DCT tile size of the DCT conv block")
    dct_channels: int = Field(16, ge=1, le=512, description="channels squeezed before the DCT (x dct_block^2 after)")
    ssca_reduction: int = Field(16, ge=1, le=512, description="channel-attention bottleneck reduction")
    embed_dim: int = Field(512, ge=4, le=8192, description="size of the fused representation (embedding)")
    fusion_heads: int = Field(8, ge=1, le=128, description="heads of the cross-attention fusion")
    gated_hidden_mult: int = Field(2, ge=1, le=16, description="hidden width of the gated MLP / embed_dim")
    fusion_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout in the fusion and gated MLP")
    supcon_weight: float = Field(0.1, ge=0.0, le=100.0, description="xi: weight of the SupCon term")
    supcon_temperature: float = Field(0.07, gt=0.0, le=10.0, description="temperature of the SupCon term")
    save_tower: bool = Field(True, description="keep the frozen CLIP weights in checkpoints; false (pretrained "
                                               "only): keep its SHA-256, re-read backbone when loading")

    @model_validator(mode="after")
    def _tower_source_when_not_saved(self) -> "RINESSCAParams":
        if not self.save_tower and not self.pretrained:
            raise ValueError("save_tower: false needs pretrained: true (random CLIP weights cannot be re-read "
                             "from backbone when a checkpoint is loaded)")
        return self

    @field_validator("clip_std")
    @classmethod
    def _positive_std(cls, value: list[float]) -> list[float]:
        if any(v <= 0 for v in value):
            raise ValueError(f"every std must be > 0, got {value}")
        return value

    @field_validator("clip_num_heads")
    @classmethod
    def _heads_divide_width(cls, value: int, info: ValidationInfo) -> int:
        width = info.data.get("clip_hidden_size")
        if width is not None and width % value:
            raise ValueError(f"clip_hidden_size {width} is not divisible by {value} heads")
        return value

    @field_validator("clip_image_size")
    @classmethod
    def _patches_tile_image(cls, value: int, info: ValidationInfo) -> int:
        patch = info.data.get("clip_patch_size")
        if patch is not None and value % patch:
            raise ValueError(f"image size {value} is not a multiple of clip_patch_size {patch}")
        return value

    @field_validator("use_layers", mode="before")
    @classmethod
    def _parse_layers(cls, value: Any) -> Any:
        # Sweeps pick layer subsets as categorical strings ("20+22+23"); a lone int is one block.
        if isinstance(value, str):
            try:
                return [int(v) for v in value.split("+") if v.strip()]
            except ValueError:
                raise ValueError(f"expected block indices joined by '+', got {value!r}") from None
        if isinstance(value, int) and not isinstance(value, bool):
            return [value]
        return value

    @field_validator("use_layers")
    @classmethod
    def _layers_in_range(cls, value: Optional[list[int]], info: ValidationInfo) -> Optional[list[int]]:
        if value is None:
            return None
        count = info.data.get("clip_num_layers")
        if count is None:  # clip_num_layers itself is invalid and already reported
            return value
        if not value:
            raise ValueError("must name at least one block (or be null for all)")
        bad = [i for i in value if not -count <= i < count]
        if bad:
            raise ValueError(f"block {bad[0]} out of range for {count} CLIP blocks (0..{count - 1} or negative)")
        resolved = sorted(i % count for i in value)
        if len(set(resolved)) != len(resolved):
            raise ValueError(f"repeated block in {value}")
        return resolved

    @field_validator("fusion_heads")
    @classmethod
    def _heads_divide_embedding(cls, value: int, info: ValidationInfo) -> int:
        dim = info.data.get("embed_dim")
        if dim is not None and dim % value:
            raise ValueError(f"embed_dim {dim} is not divisible by {value} heads")
        return value

    def layers(self) -> list[int]:
        """The used CLIP block indices, ascending and non-negative."""
        return list(self.use_layers) if self.use_layers is not None else list(range(self.clip_num_layers))

    def clip_config(self) -> dict[str, Any]:
        """``CLIPVisionConfig`` fields of the random-weight build."""
        return {"hidden_size": self.clip_hidden_size, "num_hidden_layers": self.clip_num_layers,
                "num_attention_heads": self.clip_num_heads, "intermediate_size": self.clip_intermediate_size,
                "patch_size": self.clip_patch_size, "image_size": self.clip_image_size}


def _mlp(in_dim: int, out_dim: int, depth: int, dropout: float, leading_dropout: bool) -> nn.Sequential:
    """``depth`` x [Linear, ReLU, Dropout], optionally after a Dropout on the input (RINE's proj1)."""
    layers: list[nn.Module] = [nn.Dropout(dropout)] if leading_dropout else []
    for k in range(depth):
        layers += [nn.Linear(in_dim if k == 0 else out_dim, out_dim), nn.ReLU(inplace=True), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


def _drop_tower_weights(module: "RINESSCA", state: dict, prefix: str, _meta: Any) -> None:
    """State-dict post-hook (``save_tower: false``): leave the frozen CLIP weights out."""
    for key in [k for k in state if k.startswith(prefix + "clip.")]:
        del state[key]


def _restore_tower_weights(module: "RINESSCA", state: dict, prefix: str, *_args: Any) -> None:
    """Load-state-dict pre-hook (``save_tower: false``): check the tower digest, fill in its weights.

    Raises:
        DataError: the checkpoint was trained on a tower whose weights differ from ``backbone``'s now.
    """
    tower = {k[len(prefix) + 5:]: v for k, v in state.items() if k.startswith(prefix + "clip.")}
    if tower:  # a checkpoint that carries the weights (saved with save_tower: true): they are the tower
        state[prefix + "tower_sha256"] = torch.tensor(list(bytes.fromhex(weights_digest(tower))), dtype=torch.uint8)
        return
    saved = state.get(prefix + "tower_sha256")
    if saved is not None and not torch.equal(saved.to(module.tower_sha256.device), module.tower_sha256):
        raise DataError(f"checkpoint: its CLIP tower (SHA-256 {bytes(saved.tolist()).hex()[:16]}...) differs from "
                        f"the weights in model.backbone {module.params.backbone!r} "
                        f"({bytes(module.tower_sha256.tolist()).hex()[:16]}...)")
    for key, value in module.clip.state_dict().items():
        state.setdefault(f"{prefix}clip.{key}", value)


@register_model("rine_ssca")
class RINESSCA(Detector):
    """Frozen-CLIP RINE branch + SSCA branch, fused by cross-attention; see the module docstring."""

    Params = RINESSCAParams
    PRESETS = {
        # Random tiny CLIP for tests: 32 px, 4x4 patches of 8 px, 3 blocks.
        "tiny": {"clip_hidden_size": 32, "clip_num_layers": 3, "clip_num_heads": 2, "clip_intermediate_size": 64,
                 "clip_patch_size": 8, "clip_image_size": 32, "proj_dim": 32, "proj_layers": 1, "q2_layers": 1,
                 "ssca_stem_channels": 8, "ssca_channels": 16, "dct_channels": 4, "ssca_reduction": 4,
                 "embed_dim": 32, "fusion_heads": 2, "dropout": 0.2},
        # CPU sweeps on the 64 px synthetic benchmark.
        "small": {"clip_hidden_size": 64, "clip_num_layers": 4, "clip_num_heads": 4, "clip_intermediate_size": 128,
                  "clip_patch_size": 8, "clip_image_size": 64, "proj_dim": 64, "proj_layers": 1, "q2_layers": 2,
                  "ssca_stem_channels": 16, "ssca_channels": 32, "dct_channels": 8, "ssca_reduction": 8,
                  "embed_dim": 64, "fusion_heads": 4, "dropout": 0.3},
        # The seed's model: CLIP ViT-L/14 (24 blocks, width 1024), d = 1024, representation 512.
        "full": {"clip_hidden_size": 1024, "clip_num_layers": 24, "clip_num_heads": 16,
                 "clip_intermediate_size": 4096, "clip_patch_size": 14, "clip_image_size": 224,
                 "proj_dim": 1024, "proj_layers": 1, "q2_layers": 2, "ssca_stem_channels": 64,
                 "ssca_channels": 128, "dct_channels": 16, "ssca_reduction": 16, "embed_dim": 512,
                 "fusion_heads": 8, "dropout": 0.5},
    }

    def __init__(self, params: RINESSCAParams) -> None:
        super().__init__()
        self.params = params
        p = params
        self.clip = load_hf_backbone(CLIPVisionModel, CLIPVisionConfig, source=p.backbone, pretrained=p.pretrained,
                                     config=p.clip_config(), what="model.backbone")
        self._check_backbone()
        self.clip.requires_grad_(False)
        self.clip.eval()
        self.layers = p.layers()
        if not p.save_tower:
            # Checkpoints then hold the trained parts and this digest instead of 300M frozen weights
            # (every stage of every trial of a sweep would copy them); loading checks the re-read tower.
            digest = bytes.fromhex(tower_digest(self.clip))
            self.register_buffer("tower_sha256", torch.tensor(list(digest), dtype=torch.uint8))
            self.register_state_dict_post_hook(_drop_tower_weights)
            self.register_load_state_dict_pre_hook(_restore_tower_weights)
        self.register_buffer("clip_mean", torch.tensor(p.clip_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("clip_std", torch.tensor(p.clip_std).view(1, 3, 1, 1), persistent=False)

        n = len(self.layers)
        if p.share_projection:
            self.proj1 = _mlp(p.clip_hidden_size, p.proj_dim, p.proj_layers, p.dropout, leading_dropout=True)
        else:
            self.proj1 = nn.ModuleList(_mlp(p.clip_hidden_size, p.proj_dim, p.proj_layers, p.dropout, True)
                                       for _ in range(n))
        self.importance = LayerImportance(n, p.proj_dim)
        self.q2 = _mlp(p.proj_dim, p.proj_dim, p.q2_layers, p.dropout, leading_dropout=False)

        self.ssca_stem = nn.Sequential(
            nn.Conv2d(3, p.ssca_stem_channels, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(p.ssca_stem_channels), nn.GELU())
        self.ssca_dct = DCTConvBlock(p.ssca_stem_channels, p.ssca_channels, p.dct_block, p.dct_channels)
        self.ssca_attention = SpatialChannelAttention(p.ssca_channels, p.ssca_reduction)

        self.fusion = CrossAttentionCombination(p.proj_dim, p.ssca_channels, p.embed_dim, p.fusion_heads,
                                                p.fusion_dropout)
        self.gated = GatedMLP(p.embed_dim, p.embed_dim * p.gated_hidden_mult, p.fusion_dropout)
        self.head = nn.Linear(p.embed_dim, 1)
        self.repr_out = nn.Linear(p.embed_dim, p.embed_dim)

    def _check_backbone(self) -> None:
        """A pretrained backbone must have the blocks and width the parameters announce."""
        cfg = self.clip.config
        for field, attr in (("clip_num_layers", "num_hidden_layers"), ("clip_hidden_size", "hidden_size")):
            expected, actual = getattr(self.params, field), getattr(cfg, attr)
            if expected != actual:
                raise ConfigError(f"model.{field}: backbone {self.params.backbone!r} has {attr} = {actual}, "
                                  f"but the config says {expected}; set model.{field}: {actual}")

    @classmethod
    def feature_names_for(cls, params: BaseModel) -> list[str]:
        return [f"clip_layer{i}" for i in params.layers()] + list(SSCA_FEATURES)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.clip]

    def _encoder_layers(self) -> nn.ModuleList:
        # transformers 5 puts the encoder on CLIPVisionModel itself; 4.x wrapped it in vision_model.
        return getattr(self.clip, "vision_model", self.clip).encoder.layers

    def clip_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images at any size -> CLIP's input: its ``image_size``, its mean/std."""
        x = (images + 1.0) / 2.0
        size = self.clip.config.image_size
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        return (x - self.clip_mean) / self.clip_std

    def clip_cls_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """CLS token of every used block's chosen activation, ``[B, len(layers), hidden]`` (no grad)."""
        activation = self.params.clip_activation
        return self._tower_tokens(pixels, (activation,), self.layers)[activation]

    def _tower_tokens(self, pixels: torch.Tensor, activations: Sequence[str],
                      layers: Sequence[int]) -> dict[str, torch.Tensor]:
        """One no-grad pass of the tower: ``{activation: [B, len(layers), hidden]}`` CLS tokens.

        The full forward and the feature cache both come through here, so a cached token is the
        very computation the full forward would make.
        """
        dtype = next(self.clip.parameters()).dtype
        out: dict[str, torch.Tensor] = {}
        blocks = self._encoder_layers()
        captured: dict[int, torch.Tensor] = {}
        handles = []
        if "layer_norm2" in activations:
            # Hooks live only for this call, so copies of the model (teachers) never share them.
            handles = [blocks[i].layer_norm2.register_forward_hook(
                lambda _m, _in, res, i=i: captured.__setitem__(i, res[:, 0])) for i in layers]
        with torch.no_grad():
            try:
                result = self.clip(pixel_values=pixels.to(dtype), output_hidden_states="block_output" in activations)
            finally:
                for handle in handles:
                    handle.remove()
            if "block_output" in activations:
                states = result.hidden_states
                # states[0] is the embedding output; states[i + 1] is block i's output.
                if len(states) != len(blocks) + 1:
                    raise RuntimeError(f"CLIP returned {len(states)} hidden states for {len(blocks)} blocks")
                out["block_output"] = torch.stack([states[i + 1][:, 0] for i in layers], dim=1).to(pixels.dtype)
            if "layer_norm2" in activations:
                out["layer_norm2"] = torch.stack([captured[i] for i in layers], dim=1).to(pixels.dtype)
        return out

    def frozen_feature_spec(self) -> FrozenFeatureSpec:
        """The CLIP tower: per-block CLS tokens of both activations, every block cached."""
        cfg = self.clip.config
        identity = {"tower": "transformers.CLIPVisionModel",
                    "dtype": str(next(self.clip.parameters()).dtype).removeprefix("torch."),
                    **{name: getattr(cfg, name) for name in _TOWER_CONFIG_FIELDS}}
        preprocessing = {"input": "images in [-1, 1]", "resize": "bicubic antialias to image_size when different",
                         "image_size": cfg.image_size, "mean": list(self.params.clip_mean),
                         "std": list(self.params.clip_std)}
        return FrozenFeatureSpec(tower=self.clip, identity=identity, preprocessing=preprocessing,
                                 variants=CLIP_ACTIVATIONS, variant=self.params.clip_activation,
                                 variant_field="clip_activation", num_layers=self.params.clip_num_layers,
                                 dim=self.params.clip_hidden_size, layers=tuple(self.layers),
                                 tower_fields=("backbone", "pretrained", "clip_hidden_size", "clip_num_layers",
                                               "clip_num_heads", "clip_intermediate_size", "clip_patch_size",
                                               "clip_image_size", "clip_mean", "clip_std"))

    def extract_frozen_features(self, images: torch.Tensor, variants: Sequence[str]) -> dict[str, torch.Tensor]:
        """CLS tokens of every CLIP block for each requested activation, ``[B, blocks, hidden]``."""
        unknown = [v for v in variants if v not in CLIP_ACTIVATIONS]
        if unknown or not variants:
            raise ValueError(f"rine_ssca: unknown feature variant(s) {unknown or list(variants)}; "
                             f"known: {', '.join(CLIP_ACTIVATIONS)}")
        return self._tower_tokens(self.clip_pixels(images), tuple(variants), range(self.params.clip_num_layers))

    def _project(self, cls_tokens: torch.Tensor) -> torch.Tensor:
        if isinstance(self.proj1, nn.ModuleList):
            return torch.stack([proj(cls_tokens[:, k]) for k, proj in enumerate(self.proj1)], dim=1)
        return self.proj1(cls_tokens)

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        """``images`` ``[B, 3, H, W]`` in [-1, 1], or a packed heads-only batch (images plus the cached
        CLS tokens of ``use_layers``, see :meth:`frozen_feature_spec`): then CLIP does not run."""
        cached = None
        if is_packed(images):
            images, cached = unpack_inputs(images, len(self.layers), self.params.clip_hidden_size)
        h, w = images.shape[-2:]
        step = 2 * self.params.dct_block
        if h % step or w % step:
            raise ValueError(f"rine_ssca: image size {h}x{w} is not a multiple of {step} (2 x dct_block)")
        features: "OrderedDict[str, torch.Tensor]" = OrderedDict()

        clip_tokens = self.clip_cls_tokens(self.clip_pixels(images)) if cached is None else cached
        tokens = self._project(clip_tokens)  # B L d
        for k, i in enumerate(self.layers):
            features[f"clip_layer{i}"] = tokens[:, k]
        rine = self.q2(self.importance(tokens))
        features["rine"] = rine

        stem = self.ssca_stem(images)
        dct = self.ssca_dct(stem)
        attended = self.ssca_attention(dct)
        features["ssca_stem"], features["ssca_dct"], features["ssca_attention"] = stem, dct, attended
        # Context tokens: the global average, then every position of the attended map.
        context = torch.cat([attended.mean(dim=(2, 3)).unsqueeze(1), attended.flatten(2).transpose(1, 2)], dim=1)

        fused = self.gated(self.fusion(rine, context))
        features["fused"] = fused
        return DetectorOutput(logits=self.head(fused).squeeze(-1), features=features,
                              embedding=self.repr_out(fused))

    def task_loss(self, out: DetectorOutput, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """BCE on the fake logit plus ``supcon_weight`` x SupCon on the representation.

        The SupCon term stays in the graph even at weight 0, so the representation head always
        takes part in the backward pass (DDP without ``find_unused_parameters`` requires it).
        """
        labels = batch["labels"]
        supcon = supervised_contrastive(out.embedding, labels, temperature=self.params.supcon_temperature)
        return {"bce": F.binary_cross_entropy_with_logits(out.logits, labels.float()),
                "supcon": self.params.supcon_weight * supcon}
