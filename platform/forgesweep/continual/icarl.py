"""iCaRL -- incremental Classifier and Representation Learning (Rebuffi et al., CVPR 2017).

* Exemplars: a fixed memory split equally between tasks and classes, filled by herding on the
  L2-normalised embeddings (each step adds the sample that keeps the exemplar mean closest to the
  class mean), shrunk by keeping the front of the herding order.
* Representation learning: the label loss on new data plus exemplars, and distillation of the
  previous model's outputs. iCaRL's distillation is a sigmoid cross-entropy towards the old
  model's probabilities; with the project's single fake logit that is, up to a constant, the
  KL divergence :func:`soft_label_kd` computes (same gradient), used here at ``kd_temperature``
  (1 = the paper).
* Nearest-mean-of-exemplars classification (``nme``): after each task the class means of the
  normalised exemplar embeddings are recomputed with the current model, and evaluation scores a
  sample by ``|e - mu_real|^2 - |e - mu_fake|^2`` (positive = nearer the fake mean), through the
  loop's ``predict_logits`` hook. Before the first means exist the model's logits are used.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from forgesweep.continual.base import Strategy, frozen_teacher, register_strategy, require_samples
from forgesweep.continual.distillation import soft_label_kd
from forgesweep.continual.replay_buffer import ReplayBuffer


class ICaRLParams(BaseModel):
    """Hyperparameters of :class:`ICaRL`."""

    model_config = ConfigDict(extra="forbid")

    replay_size: int = Field(200, ge=0, le=10_000_000, description="exemplar memory capacity (samples)")
    w_kd: float = Field(1.0, ge=0, le=1000, description="weight of the distillation term")
    kd_temperature: float = Field(1.0, gt=0, le=100, description="distillation temperature (1 in the paper)")
    nme: bool = Field(True, description="evaluate with the nearest-mean-of-exemplars classifier")


@register_strategy("icarl")
class ICaRL(Strategy):
    """Herding exemplars, output distillation and an optional nearest-mean classifier."""

    Params = ICaRLParams

    def __init__(self, params: ICaRLParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        self.buffer = ReplayBuffer(params.replay_size, "herding", seed=seed)
        self.teacher: Optional[nn.Module] = None
        self.class_means: Optional[torch.Tensor] = None  # [2, D]: real, fake

    def reads_samples(self) -> bool:
        return True

    def before_task(self, task_index, model, candidates=(), samples=None) -> None:
        self.teacher = frozen_teacher(model) if task_index > 0 else None

    def replay_keys(self) -> list[str]:
        return self.buffer.keys()

    def compute_loss(self, model, batch):
        out, terms = super().compute_loss(model, batch)
        if self.teacher is not None:
            with torch.no_grad():
                t_logits = self.teacher(batch["images"]).logits
            terms["icarl_kd"] = self.params.w_kd * soft_label_kd(out.logits, t_logits, self.params.kd_temperature)
            terms["loss"] = terms["loss"] + terms["icarl_kd"]
        return out, terms

    def predict_logits(self, out):
        if not self.params.nme or self.class_means is None:
            return out.logits
        if out.embedding is None:
            raise ValueError("iCaRL's nearest-mean classifier needs a model that outputs an embedding")
        e = F.normalize(out.embedding.float(), dim=1)
        means = self.class_means.to(e.device)
        distances = (e[:, None, :] - means[None]).pow(2).sum(-1)  # [B, 2]
        return distances[:, 0] - distances[:, 1]

    def after_task(self, task_index, model, candidates, samples=None) -> None:
        samples = require_samples(samples, "icarl", "to herd exemplars by their embeddings")
        scores = samples.score(model, [c.key for c in candidates]) if self.params.replay_size else None
        if scores is not None and scores.embeddings is None:
            raise ValueError("iCaRL's herding needs a model that outputs an embedding")
        self.buffer.add_task(candidates, scores)
        if self.params.nme:
            self.class_means = self._exemplar_means(model, samples)

    def _exemplar_means(self, model, samples) -> Optional[torch.Tensor]:
        state = self.buffer.state_dict()["tasks"]
        labels = {k: lbl for task in state for k, lbl in task}
        if len(set(labels.values())) < 2:
            return None  # a class without exemplars: keep the model's own classifier
        scores = samples.score(model, list(labels))
        e = F.normalize(torch.from_numpy(scores.embeddings).float(), dim=1)
        y = torch.tensor([labels[k] for k in scores.keys])
        return torch.stack([F.normalize(e[y == c].mean(0), dim=0) for c in (0, 1)])

    def state_dict(self) -> dict[str, Any]:
        means = None if self.class_means is None else self.class_means.tolist()
        return {"replay": self.buffer.state_dict(), "class_means": means}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.buffer.load_state_dict(state["replay"])
        means = state["class_means"]
        self.class_means = None if means is None else torch.tensor(means, dtype=torch.float32)
