"""Replay selection policies: which of a task's samples a memory keeps, testable without a model.

A policy is called as ``policy(candidates, scores, k, rng)`` and returns at most ``k`` of the
candidates, **most wanted first**: the replay buffer shrinks an old task by keeping the front of
this ordering, so a prefix of it must be a good selection on its own. ``scores`` holds what the
strategy measured on the candidates with the model (:class:`Scores`); a policy lists what it
reads in ``needs`` so that nothing is computed for the policies that read nothing.

Policies (the criteria of CFFD's hybrid sampling replay, seed note 004, and the classic ones):

* ``random`` -- uniform choice;
* ``margin`` -- margin uncertainty: top-1 minus top-2 class probability, smallest first;
* ``entropy`` -- entropy maximisation: predictive entropy, highest first;
* ``centre`` -- representativeness: embedding closest to its class centre first (DFIL's
  "closest to the class-mean feature");
* ``diversity`` -- greedy farthest-point (k-centre) coverage of the embedding space;
* ``herding`` -- iCaRL's herding: each step adds the sample that brings the chosen set's mean
  closest to the class mean (Rebuffi et al., CVPR 2017);
* ``hybrid`` -- a configurable mix of the criteria above (:class:`HybridPolicy`).

For the project's binary detectors (one fake logit) margin and entropy rank the samples the same
way: both are monotone in ``|p - 0.5|``. They differ for ``C > 2`` classes, which the functions
support; in a binary hybrid mix their shares simply both go to the hardest samples.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, Sequence

import numpy as np

from forgesweep.registry import Registry


@dataclass(frozen=True)
class Candidate:
    """A sample that may enter the buffer."""

    key: str
    label: int


@dataclass
class Scores:
    """What a model said about samples; row ``i`` of every array belongs to ``keys[i]``.

    Attributes:
        keys: sample ids.
        probs: ``[N, C]`` class probabilities (binary detectors: ``[1 - p_fake, p_fake]``).
        logits: ``[N]`` fake logits of a binary detector.
        embeddings: ``[N, D]`` the model's ``DetectorOutput.embedding``.
        features: pooled ``[N, C_f]`` named features that were asked for.
    """

    keys: list[str]
    probs: Optional[np.ndarray] = None
    logits: Optional[np.ndarray] = None
    embeddings: Optional[np.ndarray] = None
    features: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_fake_probs(cls, keys: Sequence[str], fake_probs: Sequence[float],
                        embeddings: Optional[np.ndarray] = None) -> "Scores":
        """Scores of a binary detector from its fake probabilities."""
        p = np.asarray(fake_probs, dtype=np.float64)
        return cls(list(keys), probs=np.stack([1 - p, p], axis=1), embeddings=embeddings)

    def take(self, keys: Sequence[str]) -> "Scores":
        """The rows of ``keys``, in that order (KeyError naming a key that was not scored)."""
        index = {k: i for i, k in enumerate(self.keys)}
        missing = [k for k in keys if k not in index]
        if missing:
            raise KeyError(f"no scores for sample {missing[0]!r} ({len(missing)} missing)")
        rows = np.asarray([index[k] for k in keys], dtype=np.int64)

        def pick(a: Optional[np.ndarray]) -> Optional[np.ndarray]:
            return None if a is None else a[rows]

        return Scores(list(keys), pick(self.probs), pick(self.logits), pick(self.embeddings),
                      {n: a[rows] for n, a in self.features.items()})


class SelectionPolicy(Protocol):
    """``policy(candidates, scores, k, rng)`` -> at most ``k`` candidates, most wanted first."""

    name: str
    needs: frozenset[str]

    def __call__(self, candidates: Sequence[Candidate], scores: Optional[Scores], k: int,
                 rng: random.Random) -> list[Candidate]: ...


POLICIES: Registry[Callable[[], SelectionPolicy]] = Registry("replay selection policy")


# --------------------------------------------------------------------------- criteria (pure NumPy)


def margins(probs: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability per row of ``[N, C]`` probabilities (small = uncertain)."""
    top2 = np.sort(probs, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def entropies(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) per row of ``[N, C]`` probabilities (high = uncertain)."""
    p = np.clip(probs, 1e-12, 1.0)
    return -(probs * np.log(p)).sum(axis=1)


def _normalised(embeddings: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.maximum(norms, 1e-12)


def centre_distances(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Distance of each (L2-normalised) embedding to the mean of its own class."""
    e = _normalised(embeddings)
    out = np.empty(len(e))
    for label in np.unique(labels):
        rows = labels == label
        out[rows] = np.linalg.norm(e[rows] - e[rows].mean(axis=0), axis=1)
    return out


def farthest_point_order(embeddings: np.ndarray, k: int, chosen: Sequence[int] = (),
                         start: Optional[int] = None) -> list[int]:
    """Greedy k-centre: repeatedly take the row farthest from everything chosen so far.

    Args:
        embeddings: ``[N, D]`` (L2-normalised here).
        k: rows to add.
        chosen: rows already in the selection (they count as covered, are not returned).
        start: first row when nothing is chosen yet (default: the row nearest the mean).
    """
    e = _normalised(embeddings)
    n = len(e)
    taken = list(chosen)
    picked: list[int] = []
    if not taken and k > 0 and n:
        first = start if start is not None else int(np.argmin(np.linalg.norm(e - e.mean(0), axis=1)))
        taken, picked = [first], [first]
    dist = np.full(n, np.inf)
    for row in taken:
        dist = np.minimum(dist, np.linalg.norm(e - e[row], axis=1))
    dist[taken] = -np.inf
    while len(picked) < k and dist.max() > -np.inf:  # -inf marks what is already covered
        row = int(np.argmax(dist))
        picked.append(row)
        dist = np.minimum(dist, np.linalg.norm(e - e[row], axis=1))
        dist[row] = -np.inf
    return picked


def herding_order(embeddings: np.ndarray, k: int) -> list[int]:
    """iCaRL herding: each step adds the row that brings the running mean closest to the mean."""
    e = _normalised(embeddings)
    target = e.mean(axis=0)
    total = np.zeros_like(target)
    available = np.ones(len(e), dtype=bool)
    order: list[int] = []
    for step in range(1, min(k, len(e)) + 1):
        gaps = np.linalg.norm(target - (total + e) / step, axis=1)
        gaps[~available] = np.inf
        row = int(np.argmin(gaps))
        order.append(row)
        available[row] = False
        total += e[row]
    return order


# --------------------------------------------------------------------------- policies


def _require(scores: Optional[Scores], what: str, policy: str, candidates: Sequence[Candidate]) -> np.ndarray:
    if scores is None or getattr(scores, what) is None:
        raise ValueError(f"replay policy {policy!r} needs the model's {what} for the candidates; "
                         "the strategy must score them before selecting")
    return getattr(scores.take([c.key for c in candidates]), what)


def _labels(candidates: Sequence[Candidate]) -> np.ndarray:
    return np.asarray([c.label for c in candidates])


class _RankingPolicy:
    """Takes the ``k`` first candidates of :meth:`order`."""

    name = ""
    needs: frozenset[str] = frozenset()

    def order(self, candidates: Sequence[Candidate], scores: Optional[Scores], rng: random.Random,
              k: Optional[int] = None) -> list[int]:
        """Candidate indices, most wanted first: all of them, or at least the first ``k``."""
        raise NotImplementedError

    def __call__(self, candidates, scores, k, rng):
        if not candidates:
            return []
        k = max(k, 0)
        return [candidates[i] for i in self.order(candidates, scores, rng, k)[:k]]


def _sorted(values: np.ndarray, rng: random.Random, descending: bool = False) -> list[int]:
    # A random permutation first, then a stable sort: equal values come out in random order.
    perm = list(range(len(values)))
    rng.shuffle(perm)
    keys = -values[perm] if descending else values[perm]
    return [perm[i] for i in np.argsort(keys, kind="stable")]


@POLICIES.register("random")
class RandomPolicy(_RankingPolicy):
    """Uniformly random choice (reservoir-equivalent for a finished task)."""

    name = "random"

    def order(self, candidates, scores, rng, k=None):
        perm = list(range(len(candidates)))
        rng.shuffle(perm)
        return perm


@POLICIES.register("margin")
class MarginPolicy(_RankingPolicy):
    """Smallest top-1 minus top-2 probability first (the samples the model is least sure of)."""

    name, needs = "margin", frozenset({"probs"})

    def order(self, candidates, scores, rng, k=None):
        return _sorted(margins(_require(scores, "probs", self.name, candidates)), rng)


@POLICIES.register("entropy")
class EntropyPolicy(_RankingPolicy):
    """Highest predictive entropy first."""

    name, needs = "entropy", frozenset({"probs"})

    def order(self, candidates, scores, rng, k=None):
        return _sorted(entropies(_require(scores, "probs", self.name, candidates)), rng, descending=True)


@POLICIES.register("centre")
class CentrePolicy(_RankingPolicy):
    """Embeddings closest to their class centre first (representative samples)."""

    name, needs = "centre", frozenset({"embeddings"})

    def order(self, candidates, scores, rng, k=None):
        e = _require(scores, "embeddings", self.name, candidates)
        return _sorted(centre_distances(e, _labels(candidates)), rng)


@POLICIES.register("diversity")
class DiversityPolicy(_RankingPolicy):
    """Greedy farthest-point coverage of the embedding space, per class."""

    name, needs = "diversity", frozenset({"embeddings"})

    def order(self, candidates, scores, rng, k=None):
        e = _require(scores, "embeddings", self.name, candidates)
        # Greedy steps cost O(n) each: compute only as many as can be taken (k per class at most).
        return _per_class(candidates, lambda rows: [rows[i] for i in farthest_point_order(e[rows], _upto(k, rows))])


@POLICIES.register("herding")
class HerdingPolicy(_RankingPolicy):
    """iCaRL herding per class: the chosen set's mean tracks the class mean."""

    name, needs = "herding", frozenset({"embeddings"})

    def order(self, candidates, scores, rng, k=None):
        e = _require(scores, "embeddings", self.name, candidates)
        return _per_class(candidates, lambda rows: [rows[i] for i in herding_order(e[rows], _upto(k, rows))])


def _upto(k: Optional[int], rows: Sequence[int]) -> int:
    return len(rows) if k is None else min(k, len(rows))


def _per_class(candidates: Sequence[Candidate], order_rows: Callable[[list[int]], list[int]]) -> list[int]:
    """Order each class on its own, then interleave the classes in proportion to their size."""
    labels = _labels(candidates)
    classes = [[int(i) for i in np.flatnonzero(labels == lbl)] for lbl in np.unique(labels)]
    return _interleave([order_rows(rows) for rows in classes], [len(rows) / len(candidates) for rows in classes])


def _interleave(groups: Sequence[Sequence[int]], shares: Sequence[float]) -> list[int]:
    """Merge ordered groups so that every prefix holds each group close to its share."""
    out: list[int] = []
    taken = [0] * len(groups)
    total = sum(len(g) for g in groups)
    while len(out) < total:
        # The group furthest behind its schedule goes next.
        behind = [shares[i] * (len(out) + 1) - taken[i] if taken[i] < len(groups[i]) else -math.inf
                  for i in range(len(groups))]
        i = int(np.argmax(behind))
        out.append(groups[i][taken[i]])
        taken[i] += 1
    return out


HYBRID_CRITERIA = ("margin", "entropy", "centre", "diversity", "random")


class HybridPolicy:
    """CFFD's hybrid sampling: a fixed mix of margin, entropy, centre, diversity and random picks.

    The quota ``k`` is split between the criteria in proportion to their weights (largest
    remainder). The criteria fill their shares in the order margin, entropy, centre, random,
    then diversity last, whose farthest-point picks start from everything already chosen so they
    cover what the others missed. The result interleaves the criteria by share, so any prefix
    (what an old task keeps when the buffer shrinks) keeps the same mix, best picks first.

    Args:
        weights: criterion name -> non-negative weight (missing criteria weigh 0).
    """

    name = "hybrid"

    def __init__(self, weights: Optional[dict[str, float]] = None) -> None:
        weights = dict(weights or {"margin": 0.3, "entropy": 0.2, "centre": 0.3, "diversity": 0.2})
        unknown = set(weights) - set(HYBRID_CRITERIA)
        if unknown:
            raise ValueError(f"unknown hybrid criteria {sorted(unknown)}; known: {', '.join(HYBRID_CRITERIA)}")
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"hybrid weights must be >= 0 with a positive sum, got {weights}")
        total = sum(weights.values())
        self.shares = {c: weights.get(c, 0.0) / total for c in HYBRID_CRITERIA}
        self.needs = frozenset().union(*(POLICIES.get(c).needs for c, s in self.shares.items() if s > 0))

    def quotas(self, k: int) -> dict[str, int]:
        """How many of ``k`` picks each criterion gets (largest-remainder rounding)."""
        exact = {c: s * k for c, s in self.shares.items()}
        counts = {c: int(math.floor(v)) for c, v in exact.items()}
        for c in sorted(exact, key=lambda c: exact[c] - counts[c], reverse=True)[: k - sum(counts.values())]:
            counts[c] += 1
        return counts

    def __call__(self, candidates, scores, k, rng):
        k = min(k, len(candidates))
        if k <= 0:
            return []
        for what in sorted(self.needs):
            _require(scores, what, self.name, candidates)
        quotas = self.quotas(k)
        chosen: set[int] = set()
        picks: dict[str, list[int]] = {}
        for criterion in ("margin", "entropy", "centre", "random"):
            if quotas[criterion] == 0:
                continue
            ranked = POLICIES.get(criterion)().order(candidates, scores, rng)
            picks[criterion] = [i for i in ranked if i not in chosen][: quotas[criterion]]
            chosen.update(picks[criterion])
        if quotas["diversity"]:
            e = _require(scores, "embeddings", self.name, candidates)
            picks["diversity"] = farthest_point_order(e, quotas["diversity"], chosen=sorted(chosen))
        names = [c for c in HYBRID_CRITERIA if picks.get(c)]
        order = _interleave([picks[c] for c in names], [quotas[c] / k for c in names])
        return [candidates[i] for i in order]


POLICIES.register("hybrid")(HybridPolicy)
