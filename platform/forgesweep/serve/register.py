"""Registering stage checkpoints that did not come from a sweep (a ``train`` run, a benchmark).

A sweep registers its best trial's stages itself (:mod:`forgesweep.sweep.runner`). Checkpoints
made any other way go through the same path here: they are logged as artifacts of one MLflow
run (``checkpoints/stage-<k>``) and registered with
:func:`forgesweep.tracking.model_registry.register_stage_models`, so they get the same version
tags (task, metrics) and ``stage-k`` aliases a sweep gives, and the serving app cannot tell
the difference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from forgesweep.errors import DataError
from forgesweep.tracking.model_registry import StageChoice, register_stage_models
from forgesweep.tracking.runs import ensure_experiment
from forgesweep.train.checkpoint import read_state


def register_checkpoints(client: MlflowClient, registered_model: str, checkpoint_dirs: Sequence[str | Path],
                         experiment: str = "forgesweep-serve", run_name: str = "registered-checkpoints",
                         artifact_location: Optional[str] = None) -> list[ModelVersion]:
    """Log stage checkpoints to a new run and register them as versions with ``stage-k`` aliases.

    Each checkpoint's ``state.json`` supplies its stage, the task that stage added
    (``task_names[stage - 1]``) and its metrics.

    Args:
        client: MLflow client on the tracking/registry URI.
        registered_model: the model to add versions to (created if missing).
        checkpoint_dirs: stage checkpoint folders (``model.safetensors`` + ``state.json``).
        experiment: experiment of the run that holds the artifacts (created if missing).
        run_name: that run's name.
        artifact_location: artifact root of a newly created experiment.

    Returns:
        The new versions, in stage order.

    Raises:
        DataError: a folder is not a checkpoint, or two checkpoints claim the same stage.
    """
    states = [(read_state(d), Path(d)) for d in checkpoint_dirs]
    stages = [int(state["stage"]) for state, _ in states]
    if len(set(stages)) != len(stages):
        raise DataError(f"two checkpoints claim the same stage: stages {sorted(stages)}")
    experiment_id = ensure_experiment(client, experiment, artifact_location)
    run_id = client.create_run(experiment_id, run_name=run_name,
                               tags={"forgesweep.kind": "registered-checkpoints"}).info.run_id
    choices = []
    for state, directory in states:
        stage = int(state["stage"])
        client.log_artifacts(run_id, str(directory), f"checkpoints/stage-{stage}")
        tasks = state.get("task_names") or []
        task = tasks[stage - 1] if len(tasks) >= stage else f"stage-{stage}"
        choices.append(StageChoice(stage, run_id, run_name, task, dict(state.get("metrics", {}))))
    client.set_terminated(run_id)
    return register_stage_models(client, registered_model, choices, description=f"checkpoints of run {run_name}")
