"""DER and DER++ -- Dark Experience Replay (Buzzega et al., NeurIPS 2020).

The memory keeps, with each replayed sample, the logit the model gave it; later tasks pull the
model's logit on that sample back towards the stored one (``alpha`` * MSE), which distils the old
model's "dark knowledge" without keeping the old model. DER++ also keeps the label loss on the
replayed samples (``beta``).

Differences from the paper, forced by this project's loop (documented, not hidden):

* samples are chosen after each task (per task ``random`` and class-balanced, or ``reservoir``
  over the stream) and their logits are recorded by the model that just finished the task,
  rather than during training: the memory is then identical on every distributed rank and
  stored as ids + logits in the JSON checkpoint state;
* replayed samples are mixed into the task's training set instead of a separate replay batch, so
  a batch's replayed rows are found by sample id (``batch["keys"]``). A row with a stored logit
  gets the logit term; DER trains the label loss on the other rows only, DER++ on all rows
  (``beta`` weighting the replayed ones). Real faces that every task shares and that sit in the
  memory are therefore treated as replayed when they come back with a later task.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from forgesweep.continual.base import Strategy, register_strategy, require_samples, select_rows, zero_term
from forgesweep.continual.replay_buffer import make_buffer
from forgesweep.models.registry import unwrap_model


class DERParams(BaseModel):
    """Hyperparameters of :class:`DER`."""

    model_config = ConfigDict(extra="forbid")

    replay_size: int = Field(200, ge=0, le=10_000_000, description="memory capacity (samples)")
    selection: Literal["random", "reservoir"] = Field("reservoir", description="how the memory is filled")
    real_fraction: float = Field(0.5, gt=0, lt=1, description="random: share of each task's quota kept for reals")
    alpha: float = Field(0.3, ge=0, le=1000, description="weight of the logit-matching (MSE) term")


class DERPPParams(DERParams):
    """Hyperparameters of :class:`DERPP`."""

    beta: float = Field(0.5, ge=0, le=1000, description="weight of the label loss on replayed samples")


@register_strategy("der")
class DER(Strategy):
    """Replay with stored logits: MSE towards the logits recorded when the sample was stored."""

    Params = DERParams

    def __init__(self, params: DERParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        self.buffer = make_buffer(params.replay_size, params.selection, seed, params.real_fraction)
        self.logits: dict[str, float] = {}

    def reads_samples(self) -> bool:
        return True

    def replay_keys(self) -> list[str]:
        return self.buffer.keys()

    def _replay_weight(self) -> float:
        return 0.0  # DER: no label loss on replayed rows

    def compute_loss(self, model, batch):
        if not self.logits:
            return super().compute_loss(model, batch)
        out = model(batch["images"])
        detector = unwrap_model(model)
        stored = [self.logits.get(k) for k in batch["keys"]]
        replayed = torch.tensor([s is not None for s in stored], device=out.logits.device)
        terms: dict[str, torch.Tensor] = {}
        for name, rows, weight in (("new", ~replayed, 1.0), ("replay", replayed, self._replay_weight())):
            if weight == 0.0:
                continue
            for k, v in (detector.task_loss(*select_rows(out, batch, rows)) if rows.any() else {}).items():
                terms[f"{k}_{name}" if name == "replay" else k] = weight * v
        if replayed.any():
            target = torch.tensor([s for s in stored if s is not None], device=out.logits.device)
            terms["der"] = self.params.alpha * F.mse_loss(out.logits[replayed].float(), target)
        else:
            terms["der"] = zero_term(out)
        terms["loss"] = sum(terms.values())
        return out, terms

    def after_task(self, task_index, model, candidates, samples=None) -> None:
        samples = require_samples(samples, "der", "to record the logits of the stored samples")
        self.buffer.add_task(candidates)
        kept = set(self.buffer.keys())
        self.logits = {k: v for k, v in self.logits.items() if k in kept}
        new = [k for k in self.buffer.keys() if k not in self.logits]
        if new:
            scores = samples.score(model, new)
            self.logits.update(zip(new, scores.logits.tolist()))

    def state_dict(self) -> dict[str, Any]:
        return {"replay": self.buffer.state_dict(), "logits": dict(self.logits)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.buffer.load_state_dict(state["replay"])
        self.logits = {str(k): float(v) for k, v in state["logits"].items()}


@register_strategy("derpp")
class DERPP(DER):
    """DER plus the label loss on replayed samples (weight ``beta``)."""

    Params = DERPPParams

    def _replay_weight(self) -> float:
        return self.params.beta
