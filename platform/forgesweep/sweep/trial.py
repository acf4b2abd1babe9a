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
    if result.error is not None:
        raise result.error
