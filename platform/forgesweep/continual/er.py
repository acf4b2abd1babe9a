"""ER -- experience replay with a small episodic memory (Chaudhry et al., 2019, "On Tiny Episodic
Memories in Continual Learning"; Rolnick et al., NeurIPS 2019).

A fixed-size memory of past training samples is mixed into each new task's training set. The
memory is filled either per task with a uniformly random, class-balanced choice (``random``:
equal shares per task, ``real_fraction`` of each share real) or by reservoir sampling over the
whole stream (``reservoir``). Unlike the papers' separate replay mini-batch per step, the loop
concatenates the memory with the task's data and shuffles, so replayed samples appear in
proportion to their number.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field

from forgesweep.continual.base import Strategy, register_strategy
from forgesweep.continual.replay_buffer import make_buffer


class ERParams(BaseModel):
    """Hyperparameters of :class:`ExperienceReplay`."""

    model_config = ConfigDict(extra="forbid")

    replay_size: int = Field(200, ge=0, le=10_000_000, description="memory capacity (samples)")
    selection: Literal["random", "reservoir"] = Field("random", description="how the memory is filled")
    real_fraction: float = Field(0.5, gt=0, lt=1, description="random: share of each task's quota kept for reals")


@register_strategy("er")
class ExperienceReplay(Strategy):
    """Plain training on the current task plus a replayed memory of earlier samples."""

    Params = ERParams

    def __init__(self, params: ERParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        self.buffer = make_buffer(params.replay_size, params.selection, seed, params.real_fraction)

    def replay_keys(self) -> list[str]:
        return self.buffer.keys()

    def after_task(self, task_index, model, candidates, samples=None) -> None:
        self.buffer.add_task(candidates)

    def state_dict(self) -> dict[str, Any]:
        return {"replay": self.buffer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.buffer.load_state_dict(state["replay"])
