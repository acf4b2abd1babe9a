"""Optuna parameter importances of a finished sweep, computed from its MLflow runs.

The sweep's Optuna study lives inside Ray Tune (or in an optional database), so the report
rebuilds one in memory: every trial that completed its whole task sequence becomes a finished
Optuna trial whose params are its searched config values (read back from the run's params)
and whose value is its objective after the last stage. Optuna's fANOVA evaluator
(``FanovaImportanceEvaluator``, a random forest over the trials, seed fixed so the report is
reproducible) then says how much of the objective's variance each parameter explains.

Distributions come from the sweep's ``search_space.yaml``: ``uniform``/``loguniform`` become
float distributions and ``int`` an integer one over the declared bounds; categorical
parameters use the values actually observed (a choice such as ``stage3+stage4`` is stored
in the run's config as the list it expands to). For a comparison matrix the axes that vary
(model, sequence, strategy, seed) are the categorical parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

EVALUATOR = "fANOVA (optuna.importance.FanovaImportanceEvaluator, seed 0)"


@dataclass
class Importances:
    """Importance per parameter (they sum to 1), or why there are none."""

    values: dict[str, float] = field(default_factory=dict)
    trials_used: int = 0
    evaluator: str = EVALUATOR
    reason: Optional[str] = None  # why nothing was computed
    skipped: list[str] = field(default_factory=list)  # trials left out, and why


def _distribution(spec: Mapping[str, Any], observed: Sequence[str]):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    kind = spec.get("type")
    if kind in ("uniform", "loguniform", "int"):
        values = [float(v) for v in observed]
        low, high = min([float(spec["low"]), *values]), max([float(spec["high"]), *values])
        if kind == "int":
            return IntDistribution(int(math.floor(low)), int(math.ceil(high)))
        return FloatDistribution(low, high, log=kind == "loguniform")
    return CategoricalDistribution(sorted(set(observed)))


def _value(distribution: Any, text: str) -> Any:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        return text
    return int(float(text)) if isinstance(distribution, IntDistribution) else float(text)


def parameter_importances(trials: Sequence[tuple[Mapping[str, str], float]], space: Mapping[str, Mapping[str, Any]],
                          direction: str = "maximize") -> Importances:
    """fANOVA importances of ``space``'s parameters for the objective.

    Args:
        trials: per finished trial, its params (``{dotted key: value as text}``) and objective.
        space: ``{dotted key: {"type": ..., "low"/"high" or "choices"}}``; a key with no spec
            (or ``{}``) is treated as categorical over the observed values.
        direction: ``maximize`` or ``minimize`` (the ranking does not depend on it; kept so
            the in-memory study matches the sweep).
    """
    import optuna

    usable, skipped = [], []
    for i, (params, value) in enumerate(trials):
        missing = [k for k in space if k not in params]
        if missing or value is None or not math.isfinite(value):
            skipped.append(f"trial {i + 1}: " + (f"no param {', '.join(missing)}" if missing else "no objective"))
            continue
        usable.append((params, value))
    varying = [k for k in space if len({p[k] for p, _ in usable}) > 1]
    if len(usable) < 2:
        return Importances(reason=f"{len(usable)} finished trial(s) with an objective; importances need at least 2",
                           trials_used=len(usable), skipped=skipped)
    if not varying:
        return Importances(reason="no searched parameter took more than one value", trials_used=len(usable),
                           skipped=skipped)
    if len({value for _, value in usable}) == 1:
        return Importances(reason=f"every trial reached the same objective ({usable[0][1]:.4g}): there is no "
                           f"variance to attribute", trials_used=len(usable), skipped=skipped)
    try:
        distributions = {k: _distribution(space.get(k) or {}, [p[k] for p, _ in usable]) for k in varying}
    except (ValueError, TypeError, KeyError) as exc:
        return Importances(reason=f"cannot build the search space: {type(exc).__name__}: {exc}", skipped=skipped)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction)
    for params, value in usable:
        study.add_trial(optuna.trial.create_trial(
            params={k: _value(distributions[k], params[k]) for k in varying}, distributions=distributions,
            value=float(value)))
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        values = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except RuntimeError as exc:  # e.g. fANOVA's trees found no variance: shown in the report as the reason
        return Importances(reason=f"the evaluator failed: {exc}", trials_used=len(usable), skipped=skipped)
    return Importances(values={k: float(v) for k, v in values.items()}, trials_used=len(usable), skipped=skipped)
