"""Tune callback that mirrors trials into MLflow through :class:`SweepRunLogger`.

It runs in the sweep driver, so a single process writes the tracking store (a sqlite file
handles one writer well) while trials run anywhere in the cluster.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Optional

from ray.train import Checkpoint
from ray.tune import Callback

from forgesweep.tracking.runs import SweepRunLogger

log = logging.getLogger(__name__)
CHECKPOINT_KEY = "checkpoint_path"  # where TuneReportCallback puts the stage checkpoint


class MLflowTrialCallback(Callback):
    """Creates a nested MLflow run per trial, logs every stage and prints progress.

    Args:
        logger: the sweep's run logger.
        trial_config: maps a trial's sampled params to its full config dict.
        echo: where progress lines go (stdout by default).
        trial_tags: maps a trial's sampled params to extra MLflow tags (optional).
    """

    def __init__(self, logger: SweepRunLogger, trial_config: Callable[[Mapping[str, Any]], dict],
                 echo: Callable[[str], None] = None,
                 trial_tags: Optional[Callable[[Mapping[str, Any]], dict]] = None) -> None:
        self.logger = logger
        self.trial_config = trial_config
        self.echo = echo or echo_stdout
        self.trial_tags = trial_tags

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        config = self.trial_config(trial.config)
        # A trial runs the sequence of its own config (matrix cells may differ from the base).
        tasks = [t["name"] if isinstance(t, Mapping) else str(t) for t in config["data"]["sequence"]]
        tags = self.trial_tags(trial.config) if self.trial_tags else None
        self.logger.start_trial(trial.trial_id, config, trial.config, tasks, tags)
        params = ", ".join(f"{k}={_short(v)}" for k, v in trial.config.items())
        self.echo(f"[sweep] trial {trial.trial_id} started: {params}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if "stage" not in result:
            return
        path: Optional[str] = result.get(CHECKPOINT_KEY)
        if path:
            # TuneReportCallback gives a path on the run's storage filesystem (``bucket/prefix/...``
            # on S3, no scheme), which the trial's storage context holds (trials and their
            # trainers share one storage_path); a full URI names its filesystem itself.
            filesystem = None if "://" in path else getattr(getattr(trial, "storage", None),
                                                            "storage_filesystem", None)
            with Checkpoint(path, filesystem=filesystem).as_directory() as local:
                self.logger.log_stage(trial.trial_id, result, local)
        else:
            self.logger.log_stage(trial.trial_id, result, None)
        n = len(self.logger.trials[trial.trial_id].task_names)
        self.echo(f"[sweep] trial {trial.trial_id} stage {result['stage']}/{n} ({result.get('task')}): "
                  f"avg_acc={result.get('avg_acc', float('nan')):.3f} "
                  f"forgetting={result.get('forgetting', float('nan')):.3f} "
                  f"({result.get('stage_seconds', 0):.1f}s)")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.logger.end_trial(trial.trial_id, "FINISHED")
        record = self.logger.trials.get(trial.trial_id)
        done = record.last_stage if record else 0
        note = "" if record and done == len(record.task_names) else f" (stopped early after stage {done})"
        self.echo(f"[sweep] trial {trial.trial_id} finished{note}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.logger.end_trial(trial.trial_id, "FAILED")
        self.echo(f"[sweep] trial {trial.trial_id} FAILED: {trial.error_file or ''}")


def echo_stdout(message: str) -> None:
    """Print a progress line immediately (a Ray job's log shows it while the sweep runs)."""
    print(message, flush=True)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
