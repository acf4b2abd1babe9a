"""Detection metrics and continual-learning metrics, in pure NumPy.

Binary detection metrics
------------------------
Labels are 0 (real) and 1 (fake); scores are "how fake" (a probability or any monotone
score such as a logit). Higher score means more likely fake.

* :func:`accuracy` -- fraction of samples whose thresholded prediction
  (``prob >= threshold`` means fake) equals the label.
* :func:`roc_auc` -- area under the ROC curve, computed from ranks (Mann-Whitney U):
  ``AUC = (sum of positive ranks - P(P+1)/2) / (P*N)`` with tied scores given their
  average rank, so a tie between a positive and a negative counts one half.
* :func:`equal_error_rate` -- the error rate at which the false-positive rate equals the
  false-negative rate, found on the piecewise-linear ROC curve (linear interpolation
  between the two operating points where ``FNR - FPR`` changes sign).
* :func:`average_precision` -- step-wise average precision as scikit-learn defines it,
  ``AP = sum_k (R_k - R_{k-1}) * P_k`` over the distinct score thresholds taken in
  decreasing order (no interpolation of the precision-recall curve).

Continual metrics (:class:`AccuracyMatrix`)
-------------------------------------------
``R[i][j]`` is the metric (accuracy or AUC) on task ``j``'s test set after finishing
training stage ``i`` (both 0-based). With ``k`` the current stage:

* average accuracy ``A_k = mean_{j<=k} R[k][j]`` (Lopez-Paz & Ranzato 2017; Chaudhry et
  al. 2018);
* backward transfer ``BWT_k = mean_{j<k} (R[k][j] - R[j][j])`` -- negative means
  forgetting (Lopez-Paz & Ranzato 2017);
* average forgetting ``F_k = mean_{j<k} (max_{l in [j, k-1]} R[l][j] - R[k][j])``
  (Chaudhry et al. 2018). Chaudhry et al. take the maximum over every earlier stage; here
  only stages ``l >= j`` are used because the training loop evaluates the tasks seen so
  far (the lower triangle), and before task ``j`` is trained its score is at chance anyway;
* forward transfer ``FWT_k = mean_{1<=j<=k} (R[j-1][j] - b_j)`` where ``b_j`` is the
  score of a randomly initialised model on task ``j`` (Lopez-Paz & Ranzato 2017). This
  needs the upper-diagonal entries ``R[j-1][j]``, i.e. the training loop must also
  evaluate the *next* task after each stage.

References:
    D. Lopez-Paz and M. Ranzato, "Gradient Episodic Memory for Continual Learning",
    NeurIPS 2017.
    A. Chaudhry, P. K. Dokania, T. Ajanthan and P. H. S. Torr, "Riemannian Walk for
    Incremental Learning: Understanding Forgetting and Intransigence", ECCV 2018.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "accuracy",
    "roc_auc",
    "equal_error_rate",
    "average_precision",
    "binary_metrics",
    "AccuracyMatrix",
]


# --------------------------------------------------------------------------------------
# Binary detection metrics
# --------------------------------------------------------------------------------------


def _validate(scores: Any, labels: Any, scores_name: str = "scores") -> tuple[np.ndarray, np.ndarray]:
    """Return ``(scores, labels)`` as 1-D float64 / int64 arrays or raise ``ValueError``."""
    s = np.asarray(scores)
    y = np.asarray(labels)
    if s.ndim != 1:
        raise ValueError(f"{scores_name} must be 1-D, got shape {s.shape}")
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    if s.shape[0] != y.shape[0]:
        raise ValueError(
            f"length mismatch: {s.shape[0]} {scores_name} but {y.shape[0]} labels"
        )
    if s.shape[0] == 0:
        raise ValueError(f"empty input: no {scores_name} and no labels")
    if s.dtype.kind not in "biuf":
        raise ValueError(f"{scores_name} must be numeric, got dtype {s.dtype}")
    s = s.astype(np.float64)
    if not np.all(np.isfinite(s)):
        bad = int(np.flatnonzero(~np.isfinite(s))[0])
        raise ValueError(f"{scores_name} must be finite; index {bad} is {s[bad]}")
    if y.dtype.kind not in "biuf":
        raise ValueError(f"labels must be 0 or 1, got values of dtype {y.dtype}")
    yf = y.astype(np.float64)
    ok = (yf == 0.0) | (yf == 1.0)
    if not np.all(ok):
        bad_values = sorted({repr(v) for v in y[~ok].tolist()})[:5]
        raise ValueError(f"labels must be 0 or 1, found {', '.join(bad_values)}")
    return s, yf.astype(np.int64)


def accuracy(probs: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray,
             threshold: float = 0.5) -> float:
    """Fraction of correct predictions, predicting fake when ``prob >= threshold``.

    Args:
        probs: fake probabilities, 1-D, each in ``[0, 1]``.
        labels: true labels, 1-D, each 0 (real) or 1 (fake), same length as ``probs``.
        threshold: decision threshold in ``[0, 1]``; a probability equal to it counts as fake.

    Returns:
        Accuracy in ``[0, 1]``.

    Raises:
        ValueError: empty input, length mismatch, non-finite probabilities, probabilities
            outside ``[0, 1]``, labels not in ``{0, 1}`` or a threshold outside ``[0, 1]``.
    """
    p, y = _validate(probs, labels, "probs")
    if np.any((p < 0.0) | (p > 1.0)):
        bad = int(np.flatnonzero((p < 0.0) | (p > 1.0))[0])
        raise ValueError(f"probs must lie in [0, 1]; index {bad} is {p[bad]}")
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    pred = (p >= threshold).astype(np.int64)
    return float(np.mean(pred == y))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` with ties given the mean of the ranks they span."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    n = xs.shape[0]
    # Start index of each run of equal values in sorted order.
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], n]  # exclusive
    run_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    sorted_ranks = np.repeat(run_rank, ends - starts)
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = sorted_ranks
    return ranks


def roc_auc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Area under the ROC curve from ranks (Mann-Whitney U); ties count one half.

    Args:
        scores: 1-D fake scores (any real values; higher means more likely fake).
        labels: 1-D labels in ``{0, 1}``, same length as ``scores``.

    Returns:
        AUC in ``[0, 1]``, or ``float("nan")`` when only one class is present (the AUC is
        undefined then; this is not an error so that a tiny evaluation shard does not
        crash a run).

    Raises:
        ValueError: empty input, length mismatch, non-finite scores or labels not in ``{0, 1}``.
    """
    s, y = _validate(scores, labels)
    n_pos = int(y.sum())
    n_neg = int(y.shape[0] - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _roc_points(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (tp, fp) at each distinct threshold, highest first, plus the thresholds."""
    order = np.argsort(-s, kind="mergesort")
    ss = s[order]
    ys = y[order]
    # Last index of each run of equal scores in decreasing order.
    last = np.r_[np.flatnonzero(ss[1:] != ss[:-1]), ss.shape[0] - 1]
    tp = np.cumsum(ys)[last].astype(np.float64)
    fp = (last + 1 - tp).astype(np.float64)
    return tp, fp, ss[last]


def equal_error_rate(scores: Sequence[float] | np.ndarray,
                     labels: Sequence[int] | np.ndarray) -> float:
    """Equal error rate: where the false-positive rate equals the false-negative rate.

    The ROC operating points (one per distinct score, plus the "accept nothing" point
    ``FPR=0, FNR=1``) are joined by straight lines; the EER is where ``FNR - FPR``
    crosses zero on that polyline, found by linear interpolation between the two
    neighbouring points (exact when an operating point has ``FPR == FNR``).

    Args:
        scores: 1-D fake scores (higher means more likely fake).
        labels: 1-D labels in ``{0, 1}``, same length as ``scores``.

    Returns:
        EER in ``[0, 1]``, or ``float("nan")`` when only one class is present.

    Raises:
        ValueError: empty input, length mismatch, non-finite scores or labels not in ``{0, 1}``.
    """
    s, y = _validate(scores, labels)
    n_pos = int(y.sum())
    n_neg = int(y.shape[0] - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    tp, fp, _ = _roc_points(s, y)
    fpr = np.r_[0.0, fp / n_neg]
    fnr = np.r_[1.0, 1.0 - tp / n_pos]
    d = fnr - fpr  # starts at +1, ends at -1 (fpr=1, fnr=0)
    k = int(np.flatnonzero(d <= 0.0)[0])
    if d[k] == 0.0:
        return float(fpr[k])
    t = d[k - 1] / (d[k - 1] - d[k])
    return float(fpr[k - 1] + t * (fpr[k] - fpr[k - 1]))


def average_precision(scores: Sequence[float] | np.ndarray,
                      labels: Sequence[int] | np.ndarray) -> float:
    """Step-wise average precision, ``sum_k (R_k - R_{k-1}) * P_k``, as scikit-learn defines it.

    Thresholds are the distinct scores in decreasing order; tied scores enter together.

    Args:
        scores: 1-D fake scores (higher means more likely fake).
        labels: 1-D labels in ``{0, 1}``, same length as ``scores``.

    Returns:
        AP in ``[0, 1]``; ``float("nan")`` when there is no positive (fake) label, since
        recall is undefined then. With positives only, AP is 1.0.

    Raises:
        ValueError: empty input, length mismatch, non-finite scores or labels not in ``{0, 1}``.
    """
    s, y = _validate(scores, labels)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    tp, fp, _ = _roc_points(s, y)
    precision = tp / (tp + fp)
    recall = tp / n_pos
    delta_recall = np.diff(np.r_[0.0, recall])
    return float(np.sum(delta_recall * precision))


def binary_metrics(probs: Sequence[float] | np.ndarray,
                   labels: Sequence[int] | np.ndarray) -> dict[str, float]:
    """All detection metrics at once.

    Args:
        probs: 1-D fake probabilities in ``[0, 1]``.
        labels: 1-D labels in ``{0, 1}``, same length as ``probs``.

    Returns:
        ``{"acc", "auc", "eer", "ap"}``: accuracy at threshold 0.5, ROC AUC, equal error
        rate and average precision. ``auc`` and ``eer`` are NaN with a single class,
        ``ap`` is NaN without positives (see the individual functions).

    Raises:
        ValueError: as :func:`accuracy`.
    """
    return {
        "acc": accuracy(probs, labels),
        "auc": roc_auc(probs, labels),
        "eer": equal_error_rate(probs, labels),
        "ap": average_precision(probs, labels),
    }


# --------------------------------------------------------------------------------------
# Continual metrics
# --------------------------------------------------------------------------------------


def _as_index(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {value!r}")
    return int(value)


class AccuracyMatrix:
    """The ``T x T`` matrix ``R[stage][task]`` of a continual run; NaN where not evaluated.

    ``stage`` is the 0-based index of the training stage just finished (stage ``i`` is
    "after training task ``i``") and ``task`` the 0-based index of the evaluated task. The
    training loop evaluates the tasks seen so far, filling the lower triangle
    (``task <= stage``); :meth:`average`, :meth:`forgetting`, :meth:`backward_transfer` and
    :meth:`summary` read only those entries. :meth:`forward_transfer` additionally needs
    ``R[j-1][j]``, which the training loop must write with ``set(..., allow_future=True)``
    by evaluating the next task after each stage.

    The same class holds accuracies or AUCs; the method names say "accuracy" by tradition.
    """

    __hash__ = None  # mutable

    def __init__(self, num_tasks: int) -> None:
        """Create an all-NaN matrix.

        Args:
            num_tasks: number of tasks ``T`` (>= 1).

        Raises:
            ValueError: ``num_tasks`` is not a positive int.
        """
        n = _as_index(num_tasks, "num_tasks")
        if n < 1:
            raise ValueError(f"num_tasks must be >= 1, got {n}")
        self._r = np.full((n, n), np.nan, dtype=np.float64)

    # ---- access -------------------------------------------------------------------

    @property
    def num_tasks(self) -> int:
        """Number of tasks ``T``."""
        return int(self._r.shape[0])

    def _check_stage(self, stage: Any) -> int:
        s = _as_index(stage, "stage")
        if not 0 <= s < self.num_tasks:
            raise ValueError(f"stage {s} out of range [0, {self.num_tasks - 1}]")
        return s

    def _check_task(self, task: Any) -> int:
        t = _as_index(task, "task")
        if not 0 <= t < self.num_tasks:
            raise ValueError(f"task {t} out of range [0, {self.num_tasks - 1}]")
        return t

    def set(self, stage: int, task: int, value: float, *, allow_future: bool = False) -> None:
        """Record ``R[stage][task] = value``.

        Args:
            stage: 0-based index of the training stage just finished.
            task: 0-based index of the evaluated task.
            value: the finite metric value.
            allow_future: permit ``task > stage`` (a task not trained yet); only needed for
                :meth:`forward_transfer`.

        Raises:
            ValueError: stage or task out of range, ``task > stage`` without
                ``allow_future``, or a non-finite value.
        """
        s = self._check_stage(stage)
        t = self._check_task(task)
        if t > s and not allow_future:
            raise ValueError(
                f"task {t} > stage {s}: task {t} has not been trained yet after stage {s} "
                "(pass allow_future=True to record a forward-transfer evaluation)"
            )
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"value for R[{s}][{t}] must be a number, got {value!r}") from None
        if not math.isfinite(v):
            raise ValueError(f"value for R[{s}][{t}] must be finite, got {v}")
        self._r[s, t] = v

    def get(self, stage: int, task: int) -> float:
        """``R[stage][task]``, NaN if not evaluated.

        Raises:
            ValueError: stage or task out of range.
        """
        return float(self._r[self._check_stage(stage), self._check_task(task)])

    def row(self, stage: int) -> list[float]:
        """Row ``R[stage]`` as a list of ``T`` floats (NaN where not evaluated).

        Raises:
            ValueError: stage out of range.
        """
        return [float(v) for v in self._r[self._check_stage(stage)]]

    def as_array(self) -> np.ndarray:
        """A copy of the matrix as a ``(T, T)`` float64 array with NaN where not evaluated."""
        return self._r.copy()

    def _need(self, entries: list[tuple[int, int]], what: str) -> None:
        missing = [(i, j) for i, j in entries if np.isnan(self._r[i, j])]
        if missing:
            shown = ", ".join(f"R[{i}][{j}]" for i, j in missing[:6])
            more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
            raise ValueError(f"{what} needs entries that were not evaluated: {shown}{more}")

    # ---- continual metrics ------------------------------------------------------------

    def average(self, stage: int) -> float:
        """Average accuracy after ``stage``: mean of ``R[stage][0..stage]``.

        Raises:
            ValueError: stage out of range, or an entry of that row prefix not evaluated.
        """
        s = self._check_stage(stage)
        self._need([(s, j) for j in range(s + 1)], f"average({s})")
        return float(np.mean(self._r[s, : s + 1]))

    def forgetting(self, stage: int) -> float:
        """Average forgetting: ``mean_{j<stage} (max_{l in [j, stage-1]} R[l][j] - R[stage][j])``.

        Returns:
            The forgetting (>= 0 up to the best-so-far definition; larger is worse);
            ``0.0`` at stage 0.

        Raises:
            ValueError: stage out of range, or a needed lower-triangle entry not evaluated.
        """
        s = self._check_stage(stage)
        if s == 0:
            return 0.0
        self._need([(l, j) for j in range(s) for l in range(j, s + 1)], f"forgetting({s})")
        drops = [np.max(self._r[j:s, j]) - self._r[s, j] for j in range(s)]
        return float(np.mean(drops))

    def backward_transfer(self, stage: int) -> float:
        """Backward transfer: ``mean_{j<stage} (R[stage][j] - R[j][j])``; negative = forgetting.

        Returns:
            BWT; ``0.0`` at stage 0.

        Raises:
            ValueError: stage out of range, or a needed lower-triangle entry not evaluated.
        """
        s = self._check_stage(stage)
        if s == 0:
            return 0.0
        self._need([(s, j) for j in range(s)] + [(j, j) for j in range(s)],
                   f"backward_transfer({s})")
        return float(np.mean([self._r[s, j] - self._r[j, j] for j in range(s)]))

    def forward_transfer(self, stage: int, baseline: Sequence[float]) -> float:
        """Forward transfer: ``mean_{1<=j<=stage} (R[j-1][j] - baseline[j])``.

        ``R[j-1][j]`` is task ``j`` evaluated *before* it is trained, so the training loop
        must evaluate the next task after each stage and record it with
        ``set(j - 1, j, value, allow_future=True)``; ``baseline[j]`` is the score of a
        randomly initialised model on task ``j``.

        Args:
            stage: the current stage.
            baseline: ``T`` finite baseline scores, one per task (``baseline[0]`` unused).

        Returns:
            FWT; ``0.0`` at stage 0.

        Raises:
            ValueError: stage out of range, ``baseline`` of the wrong length or not finite,
                or an entry ``R[j-1][j]`` not evaluated.
        """
        s = self._check_stage(stage)
        b = np.asarray(baseline, dtype=np.float64)
        if b.ndim != 1 or b.shape[0] != self.num_tasks:
            raise ValueError(
                f"baseline must hold one score per task ({self.num_tasks}), got shape {b.shape}"
            )
        if not np.all(np.isfinite(b[1 : s + 1])):
            raise ValueError("baseline scores must be finite")
        if s == 0:
            return 0.0
        self._need(
            [(j - 1, j) for j in range(1, s + 1)],
            f"forward_transfer({s}) (evaluate task j after stage j-1, set(..., allow_future=True))",
        )
        return float(np.mean([self._r[j - 1, j] - b[j] for j in range(1, s + 1)]))

    def summary(self, stage: int) -> dict[str, float]:
        """``{"avg_acc", "forgetting", "bwt"}`` after ``stage``.

        Raises:
            ValueError: as :meth:`average`, :meth:`forgetting` and :meth:`backward_transfer`.
        """
        return {
            "avg_acc": self.average(stage),
            "forgetting": self.forgetting(stage),
            "bwt": self.backward_transfer(stage),
        }

    # ---- serialisation ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form: ``{"num_tasks": T, "values": T lists of T floats or None}``."""
        return {
            "num_tasks": self.num_tasks,
            "values": [[None if np.isnan(v) else float(v) for v in row] for row in self._r],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AccuracyMatrix":
        """Inverse of :meth:`to_dict` (``None`` or NaN -> not evaluated).

        Raises:
            ValueError: missing keys, wrong shape, or values that are not numbers/None.
        """
        if not isinstance(data, Mapping) or "num_tasks" not in data or "values" not in data:
            raise ValueError("AccuracyMatrix dict needs keys 'num_tasks' and 'values'")
        m = cls(data["num_tasks"])
        values = data["values"]
        n = m.num_tasks
        if not isinstance(values, Sequence) or len(values) != n:
            raise ValueError(f"'values' must be a list of {n} rows")
        for i, row in enumerate(values):
            if not isinstance(row, Sequence) or isinstance(row, str) or len(row) != n:
                raise ValueError(f"'values' row {i} must be a list of {n} entries")
            for j, v in enumerate(row):
                if v is None:
                    continue
                if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
                    raise ValueError(f"'values'[{i}][{j}] must be a number or None, got {v!r}")
                fv = float(v)
                if math.isnan(fv):
                    continue
                if not math.isfinite(fv):
                    raise ValueError(f"'values'[{i}][{j}] must be finite, got {fv}")
                m._r[i, j] = fv
        return m

    # ---- dunder -----------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AccuracyMatrix):
            return NotImplemented
        return self.num_tasks == other.num_tasks and bool(
            np.array_equal(self._r, other._r, equal_nan=True)
        )

    def __repr__(self) -> str:
        evaluated = int(np.count_nonzero(~np.isnan(self._r)))
        return f"AccuracyMatrix(num_tasks={self.num_tasks}, evaluated={evaluated})"
