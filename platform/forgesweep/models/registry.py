"""Model registry: ``@register_model("name", params=ParamsModel)`` and ``build_model``.

Each architecture declares a pydantic parameter model (``extra="forbid"``) so a misspelled
hyperparameter fails when the config is loaded, and optional named presets (``tiny`` for tests,
``full`` for the paper's size) kept as data, not as near-identical functions.

Example:
    >>> from forgesweep.models import build_model
    >>> model = build_model("rsia_lite", {"preset": "tiny"})
    >>> out = model(torch.zeros(2, 3, 64, 64))
    >>> out.logits.shape
    torch.Size([2])
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ValidationError
from torch import nn

from forgesweep.errors import ConfigError, describe_validation_error
from forgesweep.features.packed import FrozenFeatureSpec
from forgesweep.models.output import DetectorOutput
from forgesweep.registry import Registry

MODELS: Registry[type["Detector"]] = Registry("model")


class Detector(nn.Module):
    """Base class of every registered detector.

    Subclasses set ``Params`` (a pydantic model) and may set ``PRESETS`` (name -> params dict),
    implement ``forward(inputs) -> DetectorOutput`` and may override the hooks below. The
    training loop and every strategy reach a model only through this interface, so any strategy
    works with any architecture.

    Class attributes:
        input_kind: ``"image"`` -- ``forward`` takes ``[B, 3, H, W]`` frames; ``"clip"`` -- it
            takes ``[B, T, 3, H, W]`` clips of ``T`` consecutive frames (``clip_length()``), and
            evaluation is per video (mean logit over the video's clips).
        uses_masks: the batch should carry manipulation masks (see :meth:`task_loss`).
    """

    Params: type[BaseModel]
    PRESETS: dict[str, dict[str, Any]] = {}
    input_kind: ClassVar[str] = "image"
    uses_masks: ClassVar[bool] = False

    def task_loss(self, out: DetectorOutput, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The architecture's own supervised loss terms (default: BCE on the fake logit).

        Args:
            out: this model's output for ``batch``.
            batch: ``labels`` (long ``[B]``, 1 = fake) always; when the model sets
                ``uses_masks``, also ``masks`` (float ``[B, 1, H, W]`` in {0, 1}, all zero for
                reals) and ``mask_valid`` (bool ``[B]``: False for a fake without a mask).

        Returns:
            Named loss terms; the strategy adds them up (and adds its own).
        """
        return {"bce": F.binary_cross_entropy_with_logits(out.logits, batch["labels"].float())}

    def frozen_modules(self) -> list[nn.Module]:
        """Sub-modules that never train (e.g. a frozen CLIP tower).

        Their parameters must have ``requires_grad=False`` (so they stay out of the optimiser
        and of DDP's gradient sync); :meth:`train` keeps them in eval mode. Strategies that
        copy the model as a teacher may share these instead of copying them.
        """
        return []

    def train(self, mode: bool = True) -> "Detector":
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def clip_length(self) -> int:
        """Frames per clip for ``input_kind == "clip"`` models."""
        raise NotImplementedError(f"{type(self).__name__} takes images, not clips")

    def training_phases(self, epochs: int) -> list[tuple[str, int]]:
        """The phases of one task's training as ``(name, epochs)``, run in order.

        Each phase gets a fresh optimiser over the parameters that require grad after
        :meth:`begin_phase` (e.g. StyleFlow trains its StyleGRU first, then the detector with
        the StyleGRU frozen). Default: one phase, ``main``.
        """
        return [("main", epochs)]

    def begin_phase(self, name: str) -> None:
        """Switch to training phase ``name`` (set ``requires_grad``, loss mode)."""

    def example_input(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """A random input batch of the smallest size this model handles well (used by tests).

        Default: ``[batch, 3, 32, 32]`` images in [-1, 1]; clip models return
        ``[batch, T, 3, H, W]``.
        """
        return torch.rand(batch, 3, 32, 32, generator=generator) * 2 - 1

    def after_optimizer_step(self) -> None:
        """Called after every optimiser step (e.g. momentum encoders, memory queues)."""

    def frozen_feature_spec(self) -> Optional[FrozenFeatureSpec]:
        """The frozen tower whose features can be computed once and cached, or None (default).

        A model that returns a spec also implements :meth:`extract_frozen_features`, and its
        ``forward`` then accepts, in place of images, the packed heads-only input
        ``forgesweep.features.packed.pack_inputs(images, cached)`` where ``cached`` holds the
        features of ``spec.layers`` for ``spec.variant``: the frozen tower does not run, the
        rest of the model (branches that need pixels included) runs as usual and gives the same
        output within float tolerance.
        """
        return None

    def extract_frozen_features(self, images: torch.Tensor, variants: Sequence[str]) -> dict[str, torch.Tensor]:
        """The frozen tower's features of ``images`` (the model's input format), no grad.

        Returns:
            ``{variant: [B, spec.num_layers, spec.dim]}`` for each requested variant, from one
            pass of the tower: every layer, so any layer subset is a slice.
        """
        raise NotImplementedError(f"{type(self).__name__} has no frozen features to cache")

    @classmethod
    def feature_names_for(cls, params: BaseModel) -> list[str]:
        """Names of ``DetectorOutput.features`` a model with ``params`` produces, in order.

        A classmethod, so configs are checked against it without building the model.
        """
        raise NotImplementedError

    def feature_names(self) -> list[str]:
        """Names of ``DetectorOutput.features`` this model produces, in order."""
        return self.feature_names_for(self.params)


def register_model(name: str):
    """Class decorator registering a :class:`Detector` subclass under ``name``."""
    return MODELS.register(name)


def model_params_class(name: str) -> type[BaseModel]:
    """The pydantic parameter model of architecture ``name`` (UserError if unknown)."""
    return MODELS.get(name).Params


def resolve_model_params(name: str, params: Mapping[str, Any]) -> BaseModel:
    """Validate ``params`` (optionally with a ``preset`` key) for architecture ``name``.

    Explicit keys override the preset's values.

    Raises:
        ConfigError: unknown preset, unknown key, wrong type or out-of-range value.
    """
    cls = MODELS.get(name)
    params = dict(params)
    preset = params.pop("preset", None)
    merged: dict[str, Any] = {}
    if preset is not None and not isinstance(preset, str):
        raise ConfigError(f"model.preset: must be the name of a preset, got {preset!r}")
    if preset is not None:
        if preset not in cls.PRESETS:
            known = ", ".join(sorted(cls.PRESETS)) or "(none)"
            raise ConfigError(f"model.preset: unknown preset {preset!r} for {name!r}; known: {known}")
        merged.update(cls.PRESETS[preset])
    merged.update(params)
    try:
        return cls.Params.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, "model.") + _known_keys_hint(exc, name, cls.Params)) from None


def _known_keys_hint(exc: ValidationError, name: str, params_cls: type[BaseModel]) -> str:
    if exc.errors()[0]["type"] != "extra_forbidden":
        return ""
    keys = ", ".join(["preset", *params_cls.model_fields]) or "none"
    return f" (model {name!r} takes: {keys})"


def build_model(name: str, params: Mapping[str, Any] | BaseModel | None = None) -> Detector:
    """Build architecture ``name`` from its parameters (a dict, a validated model, or None).

    No weights are downloaded here: pretrained backbones load from a hub name or a local
    directory named in the parameters.
    """
    cls = MODELS.get(name)
    if not isinstance(params, BaseModel):
        params = resolve_model_params(name, params or {})
    return cls(params)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside a DistributedDataParallel (or similar) wrapper."""
    return getattr(model, "module", model)
