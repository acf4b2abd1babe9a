"""Registering the best trial's stage checkpoints as versions of one model, with ``stage-k`` aliases.

MLflow 3 deprecates registry stages; ``models:/<name>@stage-<k>`` aliases name the model of
each task stage instead. A version's source is the trial run's ``checkpoints/stage-<k>``
artifact folder (safetensors + JSON state), so serving downloads weights without unpickling.

All versions are created first and the aliases are moved only once every version exists, so a
failure part-way leaves the previous aliases untouched rather than a half-updated set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient


@dataclass(frozen=True)
class StageChoice:
    """The checkpoint chosen for one stage."""

    stage: int
    run_id: str
    trial_id: str
    task: str
    metrics: Mapping[str, float]


def stage_alias(stage: int) -> str:
    """Alias of the model of task stage ``stage`` (1-based)."""
    return f"stage-{stage}"


def register_stage_models(client: MlflowClient, name: str, choices: Sequence[StageChoice],
                          description: str = "") -> list[ModelVersion]:
    """Create one model version per choice and point alias ``stage-k`` at it.

    Returns:
        The created versions, in stage order.
    """
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, tags={"forgesweep.kind": "stage-models"}, description=description)
    versions = []
    for choice in sorted(choices, key=lambda c: c.stage):
        source = f"{client.get_run(choice.run_id).info.artifact_uri}/checkpoints/stage-{choice.stage}"
        tags = {"forgesweep.stage": str(choice.stage), "forgesweep.task": choice.task,
                "forgesweep.trial_id": choice.trial_id}
        tags.update({f"metric.{k}": f"{v:.6g}" for k, v in choice.metrics.items()
                     if k.startswith(("avg_", "acc/", "auc/", "forgetting", "bwt"))})
        versions.append(client.create_model_version(name, source, run_id=choice.run_id, tags=tags,
                                                    description=f"stage {choice.stage}: after task {choice.task}"))
    for choice, version in zip(sorted(choices, key=lambda c: c.stage), versions):
        client.set_registered_model_alias(name, stage_alias(choice.stage), version.version)
    return versions
