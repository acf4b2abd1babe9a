"""Search spaces: dotted config keys -> Tune distributions that Optuna samples.

Every key is checked against the config before the sweep starts, by validating the config with
each bound (or each choice) put in, so a misspelled key or an impossible range fails at once,
naming ``sweep.space.<key>``, instead of in the middle of a sweep.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

from ray import tune

from forgesweep.config import ExperimentConfig, ParamSpace, set_dotted, validate_config
from forgesweep.errors import ConfigError


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


def apply_params(base: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the config dict ``base`` with ``params`` (dotted keys) set."""
    data = copy.deepcopy(dict(base))
    for key, value in params.items():
        set_dotted(data, key, value)
    return data


def check_space(cfg: ExperimentConfig) -> None:
    """Validate the config with every bound and choice of every dimension put in.

    Raises:
        ConfigError: ``config error: sweep.space.<key>: ...`` for the first bad dimension.
    """
    base = cfg.to_dict()
    for key, dim in cfg.sweep.space.items():
        values = dim.choices if dim.type == "categorical" else [dim.low, dim.high]
        if dim.type == "int":
            values = [int(v) for v in values]
        for value in values:
            try:
                trial = validate_config(apply_params(base, {key: value}))
            except ConfigError as exc:
                raise ConfigError(f"config error: sweep.space.{key} = {value!r}: "
                                  f"{str(exc).removeprefix('config error: ')}") from None
            if _get_dotted(trial.to_dict(), key) is _MISSING:
                raise ConfigError(f"config error: sweep.space.{key}: no such config key")


_MISSING = object()


def _get_dotted(data: Mapping[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node
