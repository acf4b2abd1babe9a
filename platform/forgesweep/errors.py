"""The one exception type that means "the user gave bad input".

Command-line entry points catch :class:`UserError`, print its one-line message and exit
with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Any


def describe_validation_error(exc: Any, prefix: str = "") -> str:
    """One line naming the first invalid field of a pydantic ``ValidationError`` and the problem.

    ``prefix`` is prepended to the field's dotted location (e.g. ``"strategy."``).
    """
    errors = exc.errors()
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"] if not str(p).startswith("function-"))
    msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
    value = first.get("input")
    shown = ""
    if first["type"] not in ("extra_forbidden", "missing") and not isinstance(value, (dict, list)):
        shown = f" (got {value!r})"
    more = f" [and {len(errors) - 1} more]" if len(errors) > 1 else ""
    return f"{prefix}{loc or 'value'}: {msg}{shown}{more}"


class UserError(Exception):
    """Bad input from the user (config, data, names); reported as one line, exit status 2."""


class ConfigError(UserError):
    """The experiment config is invalid: unknown key, wrong type or value out of range."""


class DataError(UserError):
    """The data is missing or invalid: manifest rows, frames, videos."""


class SweepFailed(Exception):
    """A sweep ran but produced nothing usable (e.g. every trial failed); exit status 1."""
