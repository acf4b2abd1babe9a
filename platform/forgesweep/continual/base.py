"""The strategy interface the training loop calls, the strategy registry and shared helpers.

A strategy is architecture-agnostic. The loop calls, for each task in order:

1. :meth:`Strategy.before_task` -- e.g. freeze a copy of the current model as the teacher;
2. :meth:`Strategy.replay_keys` -- sample ids mixed into this task's training set;
3. :meth:`Strategy.compute_loss` for every batch -- returns the named loss terms (``loss`` is
   the total the optimiser minimises); strategies return values, they never mutate the loop;
4. :meth:`Strategy.after_task` -- e.g. choose the samples the replay buffer keeps;
5. :meth:`Strategy.predict_logits` when evaluating -- default: the model's own logits;
6. :meth:`Strategy.state_dict` (JSON-safe) and :meth:`Strategy.tensor_state` (tensors, saved as
   safetensors) -- saved in every stage checkpoint.

``before_task`` and ``after_task`` receive the task's training samples (``candidates``) and a
:class:`~forgesweep.continual.samples.SampleAccess`, through which a strategy batches or scores
any sample by id (the loop provides one; tests use ``TensorSamples``).

A run resumed from stage ``k``'s checkpoint calls ``before_task(k, model)`` with the model loaded
from that checkpoint, i.e. the model that finished task ``k - 1``: teachers and anything else
derived from "the previous model" are rebuilt there and need no saving.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from typing import Any, Mapping, Optional, Sequence

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from forgesweep.continual.samples import SampleAccess
from forgesweep.continual.selection import Candidate
from forgesweep.errors import ConfigError, describe_validation_error
from forgesweep.models.output import DetectorOutput
from forgesweep.models.registry import Detector, unwrap_model
from forgesweep.registry import Registry

Batch = Mapping[str, Any]


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

    def reads_samples(self) -> bool:
        """Whether the hooks read samples through their ``SampleAccess`` (scores, gradient passes)."""
        return False

    def before_task(self, task_index: int, model: nn.Module, candidates: Sequence[Candidate] = (),
                    samples: Optional[SampleAccess] = None) -> None:
        """Called before training task ``task_index`` (0-based) on ``candidates`` starts."""

    def replay_keys(self) -> list[str]:
        """Sample ids to mix into the current task's training set."""
        return []

    def compute_loss(self, model: nn.Module, batch: Batch) -> tuple[DetectorOutput, dict[str, torch.Tensor]]:
        """Forward ``batch["images"]`` and return the output and the loss terms (``loss`` = total)."""
        out = model(batch["images"])
        terms = unwrap_model(model).task_loss(out, batch)
        terms["loss"] = sum(terms.values())
        return out, terms

    def predict_logits(self, out: DetectorOutput) -> torch.Tensor:
        """The ``[B]`` fake logits evaluation uses for a model output (default: the model's)."""
        return out.logits

    def after_task(self, task_index: int, model: nn.Module, candidates: Sequence[Candidate],
                   samples: Optional[SampleAccess] = None) -> None:
        """Called after task ``task_index`` finished training, with its training samples."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state for checkpoints."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    def tensor_state(self) -> dict[str, torch.Tensor]:
        """Tensors for checkpoints (e.g. EWC's Fisher information); saved as safetensors."""
        return {}

    def load_tensor_state(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Restore :meth:`tensor_state`."""


# --------------------------------------------------------------------------- helpers


def frozen_teacher(model: nn.Module) -> Detector:
    """A frozen, eval-mode copy of ``model`` that shares the model's frozen parts.

    The modules in ``model.frozen_modules()`` (e.g. a 303M-parameter CLIP tower) never change,
    so the teacher reuses them -- the same objects, parameters and buffers -- instead of
    copying them: distillation costs one tower in memory, not two. Everything else is an
    independent copy with ``requires_grad=False``.

    Forward hooks registered on a shared module are shared too: a model capturing activations
    with hooks on its frozen tower must keep them per forward call, not in an attribute.

    Raises:
        ValueError: a parameter of a frozen module still requires grad (it would change).
    """
    detector = unwrap_model(model)
    memo: dict[int, Any] = {}
    for module in detector.frozen_modules():
        for sub in module.modules():
            memo[id(sub)] = sub
        for name, tensor in itertools.chain(module.named_parameters(), module.named_buffers()):
            if isinstance(tensor, nn.Parameter) and tensor.requires_grad:
                raise ValueError(f"frozen module parameter {name!r} of {type(detector).__name__} requires grad; "
                                 "frozen_modules() must list modules that never train")
            memo[id(tensor)] = tensor
    teacher = copy.deepcopy(detector, memo)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
        p.grad = None
    return teacher


def require_samples(samples: Optional[SampleAccess], strategy: str, purpose: str) -> SampleAccess:
    """``samples``, or a TypeError saying which strategy needs it and why."""
    if samples is None:
        raise TypeError(f"strategy {strategy!r} needs sample access (the training loop passes one) {purpose}")
    return samples


def zero_term(out: DetectorOutput) -> torch.Tensor:
    """A zero loss attached to the graph (so a term can always be added and logged)."""
    return out.logits.sum() * 0.0


def select_rows(out: DetectorOutput, batch: Batch, rows: torch.Tensor) -> tuple[DetectorOutput, dict[str, Any]]:
    """The rows ``rows`` (bool ``[B]``) of an output and its batch: tensors with a leading batch
    axis and per-sample lists are indexed, everything else is kept."""
    size = len(out.logits)
    index = torch.nonzero(rows.to(out.logits.device), as_tuple=False).flatten()

    def take(value: Any) -> Any:
        if torch.is_tensor(value) and value.ndim and value.shape[0] == size:
            return value[index.to(value.device)]
        if isinstance(value, (list, tuple)) and len(value) == size:
            return [value[i] for i in index.tolist()]
        return value

    # Every field, so subclasses keep theirs (e.g. DCR's momentum keys, which its task_loss enqueues).
    values = {}
    for f in dataclasses.fields(out):
        value = getattr(out, f.name)
        if f.name == "features":
            values[f.name] = type(value)((k, take(v)) for k, v in value.items())
        else:
            values[f.name] = take(value)
    return dataclasses.replace(out, **values), {k: take(v) for k, v in batch.items()}


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
