"""Fixed-size replay memories of sample ids, with injectable selection policies.

A memory stores manifest sample ids (not images), so checkpoints stay small and replayed samples
go through the same dataset code as everything else. Two kinds:

* :class:`ReplayBuffer` -- the capacity is shared equally by the tasks seen so far; within a task
  a fraction ``real_fraction`` of the quota goes to real faces and the rest to fakes (0.5: class
  balanced), and a selection policy (``forgesweep.continual.selection``) decides which candidates
  fill each class's share. When a new task arrives, older tasks shrink to their new quota by
  keeping the front of their policy ordering, so the samples a policy preferred most are kept
  longest. A class with too few candidates leaves its share to the other class.
* :class:`ReservoirBuffer` -- reservoir sampling (Vitter 1985) over the stream of every training
  sample seen: each of the ``n`` samples seen so far is in the memory with probability
  ``capacity / n``, whatever task it came from (no per-task or per-class quotas).

Both expose ``add_task(candidates, scores) -> newly stored candidates``, ``keys()``,
``keys_per_task()`` and a JSON-safe ``state_dict()``; :func:`make_buffer` builds either by name.
"""

from __future__ import annotations

import random
from typing import Any, Optional, Sequence, Union

from forgesweep.continual.selection import POLICIES, Candidate, Scores, SelectionPolicy

__all__ = ["POLICIES", "Candidate", "ReplayBuffer", "ReservoirBuffer", "Scores", "make_buffer"]


class ReplayBuffer:
    """Sample ids per task, shrinking old tasks as new ones arrive.

    Args:
        capacity: total number of stored ids (0 disables replay).
        policy: a registered policy name, or a policy object (e.g. a configured
            :class:`~forgesweep.continual.selection.HybridPolicy`).
        seed: seed of the policy's random generator (same seed -> same choices on every rank).
        real_fraction: share of each task's quota kept for real faces (0.5 = class balanced).
    """

    kind = "per_task"

    def __init__(self, capacity: int, policy: Union[str, SelectionPolicy] = "random", seed: int = 0,
                 real_fraction: float = 0.5) -> None:
        if capacity < 0:
            raise ValueError(f"replay capacity must be >= 0, got {capacity}")
        if not 0.0 <= real_fraction <= 1.0:
            raise ValueError(f"real_fraction must be in [0, 1], got {real_fraction}")
        self.capacity = capacity
        self.policy: SelectionPolicy = POLICIES.get(policy)() if isinstance(policy, str) else policy
        self.seed = seed
        self.real_fraction = real_fraction
        self._per_task: list[list[Candidate]] = []

    @property
    def needs(self) -> frozenset[str]:
        """What the policy reads from :class:`Scores` (empty: no scoring needed)."""
        return self.policy.needs if self.capacity else frozenset()

    def __len__(self) -> int:
        return sum(len(t) for t in self._per_task)

    def keys(self) -> list[str]:
        """All stored ids, oldest task first."""
        return [c.key for task in self._per_task for c in task]

    def keys_per_task(self) -> list[list[str]]:
        """Stored ids grouped by task."""
        return [[c.key for c in task] for task in self._per_task]

    def add_task(self, candidates: Sequence[Candidate], scores: Optional[Scores] = None) -> list[Candidate]:
        """Select the new task's samples and shrink the older tasks to the new equal share.

        Returns:
            The candidates stored for the new task, most wanted first.
        """
        if self.capacity == 0:
            self._per_task.append([])
            return []
        num_tasks = len(self._per_task) + 1
        quotas = _split(self.capacity, num_tasks)
        for i, task in enumerate(self._per_task):
            self._per_task[i] = _shrink(task, quotas[i], self.real_fraction)
        rng = random.Random(f"{self.seed}:{num_tasks}")
        by_label = _by_label(candidates)
        label_quota = _class_quota(quotas[-1], by_label, self.real_fraction)
        chosen: list[Candidate] = []
        for label in (0, 1):
            chosen += self.policy(by_label[label], scores, label_quota[label], rng)
        self._per_task.append(chosen)
        return list(chosen)

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state for checkpoints."""
        return {
            "capacity": self.capacity,
            "policy": self.policy.name,
            "seed": self.seed,
            "real_fraction": self.real_fraction,
            "tasks": [[[c.key, c.label] for c in task] for task in self._per_task],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (capacity, seed and policy come from the state).

        A configured policy object of the same name is kept (its weights are config, not state).
        """
        self.capacity = int(state["capacity"])
        if state["policy"] != self.policy.name:
            self.policy = POLICIES.get(state["policy"])()
        self.seed = state["seed"]
        self.real_fraction = float(state.get("real_fraction", 0.5))
        self._per_task = [[Candidate(str(k), int(lbl)) for k, lbl in task] for task in state["tasks"]]


class ReservoirBuffer:
    """Reservoir sampling over every training sample seen, in task order.

    Args:
        capacity: number of stored ids.
        seed: seeds the stream order within a task and the replacement draws.
    """

    kind = "reservoir"
    needs: frozenset[str] = frozenset()

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if capacity < 0:
            raise ValueError(f"replay capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.seed = seed
        self.seen = 0
        self.num_tasks = 0
        self._slots: list[tuple[int, Candidate]] = []  # (task index, sample)

    def __len__(self) -> int:
        return len(self._slots)

    def keys(self) -> list[str]:
        """All stored ids, oldest task first (slot order within a task)."""
        return [c.key for _, c in sorted(self._slots, key=lambda s: s[0])]

    def keys_per_task(self) -> list[list[str]]:
        """Stored ids grouped by the task they came from."""
        return [[c.key for t, c in self._slots if t == task] for task in range(self.num_tasks)]

    def add_task(self, candidates: Sequence[Candidate], scores: Optional[Scores] = None) -> list[Candidate]:
        """Stream the task's samples (in a seeded random order) through the reservoir."""
        rng = random.Random(f"reservoir:{self.seed}:{self.num_tasks}")
        stream = list(candidates)
        rng.shuffle(stream)  # the order a shuffled training epoch would present them
        task = self.num_tasks
        for sample in stream:
            self.seen += 1
            if len(self._slots) < self.capacity:
                self._slots.append((task, sample))
            else:
                j = rng.randrange(self.seen)
                if j < self.capacity:
                    self._slots[j] = (task, sample)
        self.num_tasks += 1
        return [c for t, c in self._slots if t == task]

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state for checkpoints (slot order kept, so a restored buffer continues alike)."""
        return {"kind": self.kind, "capacity": self.capacity, "seed": self.seed, "seen": self.seen,
                "num_tasks": self.num_tasks, "slots": [[t, c.key, c.label] for t, c in self._slots]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self.capacity, self.seed = int(state["capacity"]), state["seed"]
        self.seen, self.num_tasks = int(state["seen"]), int(state["num_tasks"])
        self._slots = [(int(t), Candidate(str(k), int(lbl))) for t, k, lbl in state["slots"]]


AnyBuffer = Union[ReplayBuffer, ReservoirBuffer]


def make_buffer(capacity: int, selection: Union[str, SelectionPolicy] = "random", seed: int = 0,
                real_fraction: float = 0.5) -> AnyBuffer:
    """A :class:`ReservoirBuffer` for ``selection="reservoir"``, else a :class:`ReplayBuffer`."""
    if selection == "reservoir":
        return ReservoirBuffer(capacity, seed=seed)
    return ReplayBuffer(capacity, selection, seed=seed, real_fraction=real_fraction)


def _split(total: int, parts: int) -> list[int]:
    base, rest = divmod(total, parts)
    return [base + (1 if i < rest else 0) for i in range(parts)]


def _by_label(items: Sequence[Candidate]) -> dict[int, list[Candidate]]:
    return {label: [c for c in items if c.label == label] for label in (0, 1)}


def _class_quota(quota: int, by_label: dict[int, list[Candidate]], real_fraction: float) -> list[int]:
    """``real_fraction`` of the quota for reals, the rest for fakes (each class keeps at least one
    slot of a quota of two or more when its fraction is positive); a short class gives its
    unused share to the other."""
    reals = int(quota * real_fraction + 0.5)  # half up: an odd quota's extra slot goes to reals
    if quota >= 2:
        reals = min(max(reals, 1 if real_fraction > 0 else 0), quota - 1 if real_fraction < 1 else quota)
    want = [reals, quota - reals]
    short = [max(want[i] - len(by_label[i]), 0) for i in (0, 1)]
    return [min(want[0] + short[1], len(by_label[0])), min(want[1] + short[0], len(by_label[1]))]


def _shrink(task: list[Candidate], quota: int, real_fraction: float) -> list[Candidate]:
    """Keep ``quota`` items: the front of each class's ordering, class shares as on entry."""
    if len(task) <= quota:
        return task
    by_label = _by_label(task)
    label_quota = _class_quota(quota, by_label, real_fraction)
    keep = set()
    for label in (0, 1):
        keep.update(id(c) for c in by_label[label][: label_quota[label]])
    return [c for c in task if id(c) in keep]
