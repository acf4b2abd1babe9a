"""Joint training: every task trains on the union of all tasks' training data seen so far.

The upper bound of a continual comparison (no forgetting by construction, at the cost of
keeping and re-training on all past data). Implemented as unbounded replay: after each task its
training ids are remembered, and the next task's training set adds every remembered id that it
does not already contain (tasks of a sequence share their real faces).
"""

from __future__ import annotations

from typing import Any, Mapping

from forgesweep.continual.base import Strategy, register_strategy


@register_strategy("joint")
class Joint(Strategy):
    """Train on the current task plus every earlier task's training samples."""

    def __init__(self, params, seed: int = 0) -> None:
        super().__init__(params, seed)
        self.seen: list[list[str]] = []  # training ids per finished task
        self._current: set[str] = set()

    def before_task(self, task_index, model, candidates=(), samples=None) -> None:
        self._current = {c.key for c in candidates}

    def replay_keys(self) -> list[str]:
        keys = dict.fromkeys(k for task in self.seen for k in task)  # ordered, without repeats
        return [k for k in keys if k not in self._current]

    def after_task(self, task_index, model, candidates, samples=None) -> None:
        self.seen.append([c.key for c in candidates])

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self.seen}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.seen = [list(task) for task in state["seen"]]
