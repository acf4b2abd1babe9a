"""LwF -- Learning without Forgetting (Li & Hoiem, ECCV 2016 / TPAMI 2018).

Before each task after the first, the current model is frozen as the teacher; while learning the
new task the student's outputs on the new data are distilled towards the teacher's (soft-label
KD at temperature T, T = 2 in the paper). No memory of old data. For a single fake logit the
"old task head" and the new one coincide, so the distillation acts on the shared binary output.
"""

from __future__ import annotations

from typing import Optional

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from forgesweep.continual.base import Strategy, frozen_teacher, register_strategy
from forgesweep.continual.distillation import soft_label_kd


class LwFParams(BaseModel):
    """Hyperparameters of :class:`LwF`."""

    model_config = ConfigDict(extra="forbid")

    w_kd: float = Field(1.0, ge=0, le=1000, description="weight of the distillation term (lambda_o)")
    kd_temperature: float = Field(2.0, gt=0, le=100, description="softening temperature T")


@register_strategy("lwf")
class LwF(Strategy):
    """Task loss plus soft-label distillation from the previous stage's frozen model."""

    Params = LwFParams

    def __init__(self, params: LwFParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        self.teacher: Optional[nn.Module] = None

    def before_task(self, task_index, model, candidates=(), samples=None) -> None:
        self.teacher = frozen_teacher(model) if task_index > 0 else None

    def compute_loss(self, model, batch):
        out, terms = super().compute_loss(model, batch)
        if self.teacher is not None:
            with torch.no_grad():
                t_logits = self.teacher(batch["images"]).logits
            terms["lwf"] = self.params.w_kd * soft_label_kd(out.logits, t_logits, self.params.kd_temperature)
            terms["loss"] = terms["loss"] + terms["lwf"]
        return out, terms
