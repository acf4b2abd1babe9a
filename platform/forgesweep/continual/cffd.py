"""CFFD: continual face-forgery detection by multi-perspective distillation and hybrid replay.

Citation: CFFD with RSIA-Net and HSCL, as specified by the user's seed notes
(``shared/seeds/004_*``, REFERENCE.md section 5); nearest public analogue DFIL
(``DeepFakeIL/DFIL``).

What this file implements now (the hybrid uncertainty/entropy replay selection and the HSCL
terms come with issue 4 and plug in here as a policy name and extra loss terms):

* the previous stage's model, frozen, is the teacher for the next task;
* SLKD: soft-label distillation, KL at temperature ``kd_temperature``, weight ``w_slkd``;
* MFKD: multi-level feature distillation over the layer subset ``feature_layers`` (names of the
  model's ``DetectorOutput.features``), weight ``w_mfkd``;
* replay: a buffer of ``replay_size`` sample ids chosen by ``replay_policy``.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Optional, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from forgesweep.continual.base import Batch, CandidateScorer, Strategy, register_strategy
from forgesweep.continual.distillation import feature_kd, soft_label_kd
from forgesweep.continual.replay_buffer import POLICIES, Candidate, ReplayBuffer
from forgesweep.models.output import DetectorOutput
from forgesweep.models.registry import unwrap_model


class CFFDParams(BaseModel):
    """Hyperparameters of :class:`CFFD` (each one searchable by the sweep)."""

    model_config = ConfigDict(extra="forbid")

    kd_temperature: float = Field(2.0, gt=0, le=100, description="softening temperature T of SLKD")
    w_slkd: float = Field(1.0, ge=0, le=1000, description="weight of soft-label distillation")
    w_mfkd: float = Field(1.0, ge=0, le=1000, description="weight of multi-level feature distillation")
    feature_layers: list[str] = Field(
        default_factory=lambda: ["stage3", "stage4"], min_length=1,
        description="feature names distilled by MFKD; 'a+b' is accepted as a list")
    replay_size: int = Field(200, ge=0, le=10_000_000, description="replay buffer capacity (samples)")
    replay_policy: str = Field("random", description="registered replay selection policy")

    @field_validator("feature_layers", mode="before")
    @classmethod
    def _split_plus(cls, value: Any) -> Any:
        # Sweeps pick layer subsets as categorical strings ("stage2+stage3").
        if isinstance(value, str):
            return [v.strip() for v in value.split("+") if v.strip()]
        return value

    @field_validator("replay_policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        if value not in POLICIES:
            raise ValueError(f"unknown replay policy {value!r}; known: {', '.join(POLICIES.names())}")
        return value


@register_strategy("cffd")
class CFFD(Strategy):
    """Frozen-teacher distillation (SLKD + MFKD) plus a replay buffer."""

    Params = CFFDParams

    def __init__(self, params: CFFDParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        self.buffer = ReplayBuffer(params.replay_size, params.replay_policy, seed=seed)
        self.teacher: Optional[nn.Module] = None

    @classmethod
    def required_features(cls, params: CFFDParams) -> list[str]:
        return list(params.feature_layers)

    def before_task(self, task_index: int, model: nn.Module) -> None:
        if task_index == 0:
            self.teacher = None
            return
        teacher = copy.deepcopy(unwrap_model(model))
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher = teacher

    def replay_keys(self) -> list[str]:
        return self.buffer.keys()

    def compute_loss(self, model: nn.Module, batch: Batch) -> tuple[DetectorOutput, dict[str, torch.Tensor]]:
        out, terms = super().compute_loss(model, batch)
        if self.teacher is not None:
            with torch.no_grad():
                t_out = self.teacher(batch["images"])
            p = self.params
            terms["slkd"] = p.w_slkd * soft_label_kd(out.logits, t_out.logits, p.kd_temperature)
            terms["mfkd"] = p.w_mfkd * feature_kd(out.features, t_out.features, p.feature_layers)
            terms["loss"] = terms["loss"] + terms["slkd"] + terms["mfkd"]
        return out, terms

    def after_task(self, task_index: int, model: nn.Module, candidates: Sequence[Candidate],
                   scorer: Optional[CandidateScorer] = None) -> None:
        self.buffer.add_task(candidates)

    def state_dict(self) -> dict[str, Any]:
        return {"replay": self.buffer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.buffer.load_state_dict(state["replay"])
