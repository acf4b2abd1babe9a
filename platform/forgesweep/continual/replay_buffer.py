"""A fixed-size replay memory of sample ids, with injectable selection policies.

The buffer stores manifest sample ids (not images), so checkpoints stay small and replayed
samples go through the same dataset code as everything else. Its capacity is shared equally by
the tasks seen so far; within a task the quota is split equally between real and fake samples
(class balance), and a policy decides which candidates fill it. When a new task arrives, older
tasks shrink to their new quota by keeping the front of their policy ordering, so the samples
a policy preferred most are kept longest.

A policy is ``policy(candidates, scores, k, rng) -> ordered list of at most k candidates``;
``scores`` carries what the strategy measured on the candidates (probabilities, embeddings)
for the policies that need them (hybrid uncertainty/entropy selection comes with issue 4).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from forgesweep.registry import Registry


@dataclass(frozen=True)
class Candidate:
    """A sample that may enter the buffer."""

    key: str
    label: int


SelectionPolicy = Callable[[Sequence[Candidate], Optional[dict[str, Any]], int, random.Random], list[Candidate]]
POLICIES: Registry[SelectionPolicy] = Registry("replay selection policy")


@POLICIES.register("random")
def random_policy(candidates: Sequence[Candidate], scores: Optional[dict[str, Any]], k: int,
                  rng: random.Random) -> list[Candidate]:
    """Uniformly random choice of ``k`` candidates (reservoir-equivalent for a finished task)."""
    pool = list(candidates)
    rng.shuffle(pool)
    return pool[:k]


class ReplayBuffer:
    """Sample ids per task, shrinking old tasks as new ones arrive.

    Args:
        capacity: total number of stored ids (0 disables replay).
        policy: name of a registered selection policy.
        seed: seed of the policy's random generator (same seed -> same choices on every rank).
    """

    def __init__(self, capacity: int, policy: str = "random", seed: int = 0) -> None:
        if capacity < 0:
            raise ValueError(f"replay capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.policy_name = policy
        self.policy = POLICIES.get(policy)
        self.seed = seed
        self._per_task: list[list[Candidate]] = []

    def __len__(self) -> int:
        return sum(len(t) for t in self._per_task)

    def keys(self) -> list[str]:
        """All stored ids, oldest task first."""
        return [c.key for task in self._per_task for c in task]

    def keys_per_task(self) -> list[list[str]]:
        """Stored ids grouped by task."""
        return [[c.key for c in task] for task in self._per_task]

    def add_task(self, candidates: Sequence[Candidate], scores: Optional[dict[str, Any]] = None) -> None:
        """Select the new task's samples and shrink the older tasks to the new equal share."""
        if self.capacity == 0:
            self._per_task.append([])
            return
        num_tasks = len(self._per_task) + 1
        quotas = _split(self.capacity, num_tasks)
        for i, task in enumerate(self._per_task):
            self._per_task[i] = _shrink_balanced(task, quotas[i])
        rng = random.Random(f"{self.seed}:{num_tasks}")
        chosen: list[Candidate] = []
        by_label = _by_label(candidates)
        label_quota = _balanced_quota(quotas[-1], by_label)
        for label in (0, 1):
            chosen += self.policy(by_label[label], scores, label_quota[label], rng)
        self._per_task.append(chosen)

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state for checkpoints."""
        return {
            "capacity": self.capacity,
            "policy": self.policy_name,
            "seed": self.seed,
            "tasks": [[[c.key, c.label] for c in task] for task in self._per_task],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (capacity and policy come from the state)."""
        self.capacity = int(state["capacity"])
        self.policy_name = state["policy"]
        self.policy = POLICIES.get(self.policy_name)
        self.seed = state["seed"]
        self._per_task = [[Candidate(str(k), int(lbl)) for k, lbl in task] for task in state["tasks"]]


def _split(total: int, parts: int) -> list[int]:
    base, rest = divmod(total, parts)
    return [base + (1 if i < rest else 0) for i in range(parts)]


def _by_label(items: Sequence[Candidate]) -> dict[int, list[Candidate]]:
    return {label: [c for c in items if c.label == label] for label in (0, 1)}


def _balanced_quota(quota: int, by_label: dict[int, list[Candidate]]) -> list[int]:
    """Half the quota per class; a class with too few items leaves its share to the other."""
    half = _split(quota, 2)
    short = [max(half[i] - len(by_label[i]), 0) for i in (0, 1)]
    return [min(half[0] + short[1], len(by_label[0])), min(half[1] + short[0], len(by_label[1]))]


def _shrink_balanced(task: list[Candidate], quota: int) -> list[Candidate]:
    """Keep ``quota`` items, alternating classes from the front of each class's ordering."""
    if len(task) <= quota:
        return task
    by_label = _by_label(task)
    label_quota = _balanced_quota(quota, by_label)
    keep = set()
    for label in (0, 1):
        keep.update(id(c) for c in by_label[label][: label_quota[label]])
    return [c for c in task if id(c) in keep]
