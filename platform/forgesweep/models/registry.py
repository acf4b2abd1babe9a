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

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ValidationError
from torch import nn

from forgesweep.errors import ConfigError, describe_validation_error
from forgesweep.models.output import DetectorOutput
from forgesweep.registry import Registry

MODELS: Registry[type["Detector"]] = Registry("model")


class Detector(nn.Module):
    """Base class of every registered detector.

    Subclasses set ``Params`` (a pydantic model) and may set ``PRESETS`` (name -> params dict),
    implement ``forward(images) -> DetectorOutput`` and may override :meth:`task_loss`.
    """

    Params: type[BaseModel]
    PRESETS: dict[str, dict[str, Any]] = {}

    def task_loss(self, out: DetectorOutput, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The architecture's own supervised loss terms (default: BCE on the fake logit)."""
        return {"bce": F.binary_cross_entropy_with_logits(out.logits, labels.float())}

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
