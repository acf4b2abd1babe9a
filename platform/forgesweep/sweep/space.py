"""Search spaces: dotted config keys -> Tune distributions that Optuna samples.

The keys themselves are checked when the config is validated (``ExperimentConfig``), by
validating the config with each bound or choice put in.
"""

from __future__ import annotations

from typing import Any, Mapping

from ray import tune

from forgesweep.config import ParamSpace


def tune_space(space: Mapping[str, ParamSpace]) -> dict[str, Any]:
    """Tune search-space dict with one flat entry per dotted config key."""
    out: dict[str, Any] = {}
    for key, dim in space.items():
        if dim.type == "uniform":
            out[key] = tune.uniform(dim.low, dim.high)
        elif dim.type == "loguniform":
            out[key] = tune.loguniform(dim.low, dim.high)
        elif dim.type == "int":
            out[key] = tune.randint(int(dim.low), int(dim.high) + 1)  # upper bound inclusive
        else:
            out[key] = tune.choice(list(dim.choices))
    return out
