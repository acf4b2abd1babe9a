"""The one exception type that means "the user gave bad input".

Command-line entry points catch :class:`UserError`, print its one-line message and exit
with status 2; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user (config, data, names); reported as one line, exit status 2."""


class ConfigError(UserError):
    """The experiment config is invalid: unknown key, wrong type or value out of range."""


class DataError(UserError):
    """The data is missing or invalid: manifest rows, frames, videos."""


class SweepFailed(Exception):
    """A sweep ran but produced nothing usable (e.g. every trial failed); exit status 1."""
