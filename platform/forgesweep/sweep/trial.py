"""The Tune trial: a small driver that fits one ``TorchTrainer`` over the whole task sequence.

Tune samples the searched keys; the trial puts them into the base config, validates it, and
runs the continual loop on Ray Train, whose per-stage reports reach Tune through
``TuneReportCallback`` (so the scheduler can stop weak trials after an early stage).
"""

from __future__ import annotations

from typing import Any, Mapping

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from forgesweep.config import validate_config
from forgesweep.config import apply_params
from forgesweep.train.trainer import build_trainer


def run_trial(sampled: Mapping[str, Any], base_config: Mapping[str, Any], sweep_name: str, use_gpu: bool) -> None:
    """Tune trainable: ``sampled`` holds the dotted keys Optuna chose for this trial."""
    _fit(validate_config(apply_params(base_config, sampled)), sweep_name, use_gpu)


def run_cell_trial(sampled: Mapping[str, Any], cells: Mapping[str, Mapping[str, Any]], sweep_name: str,
                   use_gpu: bool) -> None:
    """Tune trainable of the comparison matrix: ``sampled["cell"]`` names one cell's full config."""
    _fit(validate_config(cells[sampled["cell"]]), sweep_name, use_gpu)


def _fit(cfg, sweep_name: str, use_gpu: bool) -> None:
    trial_id = tune.get_context().get_trial_id()
    trainer = build_trainer(cfg, name=f"{sweep_name}-{trial_id}", callbacks=[TuneReportCallback()], use_gpu=use_gpu)
    result = trainer.fit()
    _wait_for_forwarded_results()
    if result.error is not None:
        raise result.error


def _wait_for_forwarded_results(settle_s: float = 1.0, timeout_s: float = 120.0) -> None:
    """Return only once Tune has taken every stage result ``TuneReportCallback`` forwarded.

    Why: the callback hands results to the trial through a one-slot queue that the trial's main
    thread moves into a second one-slot queue which that same thread drains. If this function
    returned while a forwarded result was still in flight, Tune would put its end-of-trial
    marker into the second queue first and the main thread would block on it for ever (seen
    under load, when the driver's MLflow callback is slow). Both queues must stay empty for
    ``settle_s`` to cover the moment between taking a result from one and putting it into the
    other. Ray internals: if they change shape, nothing is waited for (the old behaviour).
    """
    import time

    from ray.train._internal import session as train_session

    session = train_session.get_session()
    forwarded = getattr(session, "_inter_actor_queue", None)
    results = getattr(session, "result_queue", None)
    if forwarded is None or results is None:
        return
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    while time.monotonic() < deadline:
        if forwarded.empty() and results.empty():
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= settle_s:
                return
        else:
            quiet_since = None
        time.sleep(0.05)
