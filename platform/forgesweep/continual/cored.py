"""CoReD -- Continual Representation using Distillation (Kim, Tariq & Woo, ACM MM 2021,
"CoReD: Generalizing Fake Media Detection with Continual Representation using Distillation";
public code ``alsgkals2/CoReD``).

What is implemented, read from the paper's description and its public code:

* Teacher-student: the previous stage's model is frozen as the teacher.
* Output distillation: soft-label KD at temperature T (their code: T = 20, weight 0.5) on every
  training batch, added to the label loss.
* Representation distillation: before the task, the teacher scores the new task's training
  samples; those it classifies correctly are grouped by class (real/fake) and by confidence band
  of the true-class probability ((0.5, 0.6], ..., (0.9, 1.0] for ``num_bands = 5``), and the
  teacher's mean representation of each group is kept. During training the student's batch is
  grouped the same way by the student's own (detached) probabilities, and each group's mean
  student representation is pulled towards the teacher's mean for that group (squared L2,
  averaged over dimensions and groups). The student thus keeps the teacher's class- and
  confidence-conditional feature structure while it adapts to the new data.

Choices and differences: the representation is the model's ``embedding`` or a named feature
(``representation``), pooled to ``[B, D]`` -- the original max-pools the backbone's last feature
map and averages over channels, which only fits CNN backbones. CoReD's CutMix augmentation
(patches from the opposite class, p = 0.2) belongs to the data pipeline and is not part of this
strategy. CoReD itself keeps no old data; ``replay_size > 0`` adds a random, class-balanced
memory (the seed's comparison table runs CoReD with 500 replayed samples).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from forgesweep.continual.base import Strategy, frozen_teacher, register_strategy, require_samples, zero_term
from forgesweep.continual.distillation import pool_feature, soft_label_kd
from forgesweep.continual.replay_buffer import ReplayBuffer


class CoReDParams(BaseModel):
    """Hyperparameters of :class:`CoReD`."""

    model_config = ConfigDict(extra="forbid")

    w_kd: float = Field(0.5, ge=0, le=1000, description="weight of the output distillation")
    kd_temperature: float = Field(20.0, gt=0, le=100, description="output distillation temperature")
    w_rep: float = Field(1.0, ge=0, le=1000, description="weight of the representation distillation")
    num_bands: int = Field(5, ge=1, le=50, description="confidence bands splitting (0.5, 1]")
    representation: str = Field("embedding", min_length=1,
                                description="'embedding' or the name of a model feature (pooled)")
    replay_size: int = Field(0, ge=0, le=10_000_000, description="optional random replay memory (0: none)")


@register_strategy("cored")
class CoReD(Strategy):
    """Output KD plus band-wise representation distillation from the previous stage's model."""

    Params = CoReDParams

    def __init__(self, params: CoReDParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        self.buffer = ReplayBuffer(params.replay_size, "random", seed=seed)
        self.teacher: Optional[nn.Module] = None
        self.centroids: Optional[torch.Tensor] = None  # [num_bands, 2, D]
        self.has_centroid: Optional[torch.Tensor] = None  # bool [num_bands, 2]

    @classmethod
    def required_features(cls, params: CoReDParams) -> list[str]:
        return [] if params.representation == "embedding" else [params.representation]

    def reads_samples(self) -> bool:
        return True

    def band(self, true_class_prob: torch.Tensor) -> torch.Tensor:
        """Band index per sample, -1 where the sample is misclassified (probability <= 0.5)."""
        width = 0.5 / self.params.num_bands
        # Bands are right-closed; the tolerance keeps float32 boundaries (0.6 -> 0.6000000238) inside.
        index = torch.ceil((true_class_prob.double() - 0.5) / width - 1e-5).long() - 1
        return torch.where(true_class_prob > 0.5, index.clamp(0, self.params.num_bands - 1), -1)

    def _representation(self, out) -> torch.Tensor:
        if self.params.representation == "embedding":
            if out.embedding is None:
                raise ValueError("CoReD with representation 'embedding' needs a model that outputs one")
            return out.embedding
        return pool_feature(out.features[self.params.representation])

    def before_task(self, task_index, model, candidates=(), samples=None) -> None:
        self.teacher = self.centroids = self.has_centroid = None
        if task_index == 0:
            return
        samples = require_samples(samples, "cored", "to summarise the teacher's representations of the new task")
        self.teacher = frozen_teacher(model)
        sums: Optional[torch.Tensor] = None
        counts = torch.zeros(self.params.num_bands, 2)
        with torch.no_grad():
            for batch in samples.batches([c.key for c in candidates]):
                out = self.teacher(batch["images"])
                rep = self._representation(out).float().cpu()
                labels = batch["labels"].cpu()
                bands = self.band(_true_class_prob(out.logits.float().cpu(), labels))
                if sums is None:
                    sums = torch.zeros(self.params.num_bands, 2, rep.shape[1])
                for i in torch.nonzero(bands >= 0).flatten().tolist():
                    sums[bands[i], labels[i]] += rep[i]
                    counts[bands[i], labels[i]] += 1
        if sums is not None:
            self.has_centroid = counts > 0
            self.centroids = sums / counts.clamp(min=1).unsqueeze(-1)

    def replay_keys(self) -> list[str]:
        return self.buffer.keys()

    def compute_loss(self, model, batch):
        out, terms = super().compute_loss(model, batch)
        if self.teacher is None:
            return out, terms
        with torch.no_grad():
            t_logits = self.teacher(batch["images"]).logits
        p = self.params
        terms["cored_kd"] = p.w_kd * soft_label_kd(out.logits, t_logits, p.kd_temperature)
        terms["cored_rep"] = p.w_rep * self.representation_loss(out, batch["labels"])
        terms["loss"] = terms["loss"] + terms["cored_kd"] + terms["cored_rep"]
        return out, terms

    def representation_loss(self, out, labels: torch.Tensor) -> torch.Tensor:
        """Mean over (band, class) groups of the squared distance between the student's group
        mean and the teacher's (groups absent from the batch or the teacher's summary skipped)."""
        if self.centroids is None:
            return zero_term(out)
        rep = self._representation(out).float()
        bands = self.band(_true_class_prob(out.logits.detach().float(), labels))
        centroids = self.centroids.to(rep.device)
        losses = []
        for b in range(self.params.num_bands):
            for c in (0, 1):
                rows = (bands == b) & (labels == c)
                if rows.any() and bool(self.has_centroid[b, c]):
                    losses.append((rep[rows].mean(0) - centroids[b, c]).pow(2).mean())
        return torch.stack(losses).mean() if losses else zero_term(out)

    def after_task(self, task_index, model, candidates, samples=None) -> None:
        self.buffer.add_task(candidates)

    def state_dict(self) -> dict[str, Any]:
        return {"replay": self.buffer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.buffer.load_state_dict(state["replay"])


def _true_class_prob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    p_fake = torch.sigmoid(logits)
    return torch.where(labels.to(p_fake.device) == 1, p_fake, 1 - p_fake)

