"""The strategy interface the training loop calls, and the strategy registry.

A strategy is architecture-agnostic. The loop calls, for each task in order:

1. :meth:`Strategy.before_task` -- e.g. freeze a copy of the current model as the teacher;
2. :meth:`Strategy.replay_keys` -- sample ids mixed into this task's training set;
3. :meth:`Strategy.compute_loss` for every batch -- returns the named loss terms (``loss`` is
   the total the optimiser minimises); strategies return values, they never mutate the loop;
4. :meth:`Strategy.after_task` -- e.g. choose the samples the replay buffer keeps;
5. :meth:`Strategy.state_dict` -- JSON-safe state saved in every stage checkpoint.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from forgesweep.continual.replay_buffer import Candidate
from forgesweep.errors import ConfigError, describe_validation_error
from forgesweep.models.output import DetectorOutput
from forgesweep.models.registry import unwrap_model
from forgesweep.registry import Registry

Batch = Mapping[str, Any]
# Given candidates, returns what selection policies may need (e.g. {"probs": [...]}).
CandidateScorer = Callable[[Sequence[Candidate]], dict[str, Any]]


class NoParams(BaseModel):
    """Parameters of a strategy that has none."""

    model_config = ConfigDict(extra="forbid")


class Strategy:
    """Base class: plain supervised training on the current task (fine-tuning)."""

    Params: type[BaseModel] = NoParams

    def __init__(self, params: BaseModel, seed: int = 0) -> None:
        self.params = params
        self.seed = seed

    @classmethod
    def required_features(cls, params: BaseModel) -> list[str]:
        """Names of model features the strategy reads (checked against the model in the config)."""
        return []

    def before_task(self, task_index: int, model: nn.Module) -> None:
        """Called before training task ``task_index`` (0-based) starts."""

    def replay_keys(self) -> list[str]:
        """Sample ids to mix into the current task's training set."""
        return []

    def compute_loss(self, model: nn.Module, batch: Batch) -> tuple[DetectorOutput, dict[str, torch.Tensor]]:
        """Forward ``batch["images"]`` and return the output and the loss terms (``loss`` = total)."""
        out = model(batch["images"])
        terms = unwrap_model(model).task_loss(out, batch)
        terms["loss"] = sum(terms.values())
        return out, terms

    def after_task(self, task_index: int, model: nn.Module, candidates: Sequence[Candidate],
                   scorer: Optional[CandidateScorer] = None) -> None:
        """Called after task ``task_index`` finished training, with its training samples."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state for checkpoints."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


STRATEGIES: Registry[type[Strategy]] = Registry("strategy")


def register_strategy(name: str):
    """Class decorator registering a :class:`Strategy` subclass under ``name``."""
    return STRATEGIES.register(name)


def resolve_strategy_params(name: str, params: Mapping[str, Any]) -> BaseModel:
    """Validate the parameters of strategy ``name``.

    Raises:
        ConfigError: naming ``strategy.<field>`` and the problem.
    """
    cls = STRATEGIES.get(name)
    try:
        return cls.Params.model_validate(dict(params))
    except ValidationError as exc:
        hint = ""
        if exc.errors()[0]["type"] == "extra_forbidden":
            keys = ", ".join(cls.Params.model_fields) or "none"
            hint = (f" (strategy {name!r} takes: {keys}; to switch strategy replace the whole section, "
                    f"e.g. --set 'strategy={{name: {name}}}')")
        raise ConfigError(describe_validation_error(exc, "strategy.") + hint) from None


def build_strategy(name: str, params: Mapping[str, Any] | BaseModel | None = None, seed: int = 0) -> Strategy:
    """Build the strategy registered as ``name``."""
    cls = STRATEGIES.get(name)
    if not isinstance(params, BaseModel):
        params = resolve_strategy_params(name, params or {})
    return cls(params, seed=seed)
