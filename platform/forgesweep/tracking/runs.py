"""MLflow run layout of a sweep: one parent run, one nested run per trial.

Per trial run:

* params: the trial's experiment config flattened to dotted keys (``strategy.kd_temperature``),
  so MLflow's compare view lines trials up parameter by parameter; the ``sweep`` section (search
  space, scheduler, concurrency) is the same for every trial and lives on the parent run only;
* tags: ``forgesweep.searched`` lists the keys the sampler chose for this trial (the columns
  worth comparing), next to ``forgesweep.sweep`` / ``forgesweep.trial_id`` / ``forgesweep.kind``;
* metrics: every per-stage metric with ``step = stage`` (1-based): ``avg_acc``, ``forgetting``,
  ``bwt``, ``acc/<task>``, ``auc/<task>``, ``train/<loss term>`` ...;
* artifacts: ``config.yaml``, ``accuracy_matrix.json`` and ``accuracy_matrix.png`` (rewritten
  after every stage), and ``checkpoints/stage-<k>/`` (safetensors weights + JSON state).

Only the MLflow client API is used (explicit run ids, no global active run), so one logger can
follow many concurrent trials from the sweep driver.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from forgesweep.metrics import AccuracyMatrix
from forgesweep.tracking.plots import accuracy_heatmap
from forgesweep.train.checkpoint import read_state

MAX_PARAM_LENGTH = 6000


def open_client(tracking_uri: str) -> MlflowClient:
    """An MLflow client on ``tracking_uri`` (a sqlite file's folder is created if needed)."""
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=tracking_uri)


def ensure_experiment(client: MlflowClient, name: str, artifact_location: Optional[str] = None) -> str:
    """Id of experiment ``name``, created (with ``artifact_location``) if it does not exist."""
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> ``{"a.b": "value"}`` with values rendered as strings MLflow accepts."""
    out: dict[str, str] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, dotted + "."))
        else:
            text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
            out[dotted] = text[:MAX_PARAM_LENGTH]
    return out


def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numeric entries of a result dict (booleans and strings dropped)."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


@dataclass
class TrialRecord:
    """What the logger knows about one trial."""

    trial_id: str
    run_id: str
    params: dict[str, Any]
    task_names: list[str]
    acc: AccuracyMatrix
    auc: AccuracyMatrix
    stages: dict[int, dict[str, float]] = field(default_factory=dict)
    status: str = "RUNNING"

    @property
    def last_stage(self) -> int:
        return max(self.stages, default=0)


class SweepRunLogger:
    """Writes a sweep's parent run and its trials' nested runs.

    Picklable (Tune stores its callbacks with the experiment state): the client is rebuilt from
    the tracking URI after unpickling.

    Args:
        client: the MLflow client.
        experiment_id: where the runs go.
        sweep_name: the sweep's unique name (parent run name and tag).
        config: the sweep's base config (plain dict).
        task_names: task names in sequence order (rows/columns of the accuracy matrix); a
            trial may run its own sequence (see :meth:`start_trial`).
        kind: ``sweep`` or ``matrix``, tagged on the parent run as ``forgesweep.kind``.
    """

    def __init__(self, client: MlflowClient, experiment_id: str, sweep_name: str, config: Mapping[str, Any],
                 task_names: Sequence[str], kind: str = "sweep") -> None:
        self.client = client
        self.kind = kind
        self.experiment_id = experiment_id
        self.sweep_name = sweep_name
        self.config = dict(config)
        self.task_names = list(task_names)
        self.parent_run_id: Optional[str] = None
        self.trials: dict[str, TrialRecord] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["client"] = None
        state["_tracking_uri"] = self.client.tracking_uri if self.client is not None else None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        uri = state.pop("_tracking_uri", None)
        self.__dict__.update(state)
        self.client = MlflowClient(tracking_uri=uri) if uri else None

    # -- parent -------------------------------------------------------------------------------
    def start_parent(self, space: Mapping[str, Any]) -> str:
        """Create the sweep's parent run with the base config and the search space."""
        run = self.client.create_run(self.experiment_id, run_name=self.sweep_name, tags={
            "forgesweep.kind": self.kind, "forgesweep.sweep": self.sweep_name})
        self.parent_run_id = run.info.run_id
        self._log_params(self.parent_run_id, flatten(self.config))
        self._log_text(self.parent_run_id, yaml.safe_dump(self.config, sort_keys=False), "config.yaml")
        self._log_text(self.parent_run_id, yaml.safe_dump(dict(space), sort_keys=False), "search_space.yaml")
        return self.parent_run_id

    def end_parent(self, status: str, summary: Optional[Mapping[str, Any]] = None) -> None:
        """Close the parent run (``FINISHED`` / ``FAILED`` / ``KILLED``) with summary metrics/tags."""
        if self.parent_run_id is None:
            return
        if summary:
            for key, value in summary.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self.client.log_metric(self.parent_run_id, key, float(value))
                else:
                    self.client.set_tag(self.parent_run_id, f"forgesweep.{key}", str(value)[:5000])
        self.client.set_terminated(self.parent_run_id, status=status)

    # -- trials -------------------------------------------------------------------------------
    def start_trial(self, trial_id: str, trial_config: Mapping[str, Any], sampled: Mapping[str, Any],
                    task_names: Optional[Sequence[str]] = None, tags: Optional[Mapping[str, str]] = None) -> str:
        """Create the nested run of a trial; params are its flattened config but the ``sweep`` section.

        Args:
            task_names: the trial's own task sequence (default: the sweep's).
            tags: extra run tags (e.g. a matrix cell's labels).
        """
        tags = {"mlflow.parentRunId": self.parent_run_id or "", "forgesweep.kind": "trial",
                "forgesweep.sweep": self.sweep_name, "forgesweep.trial_id": trial_id,
                "forgesweep.searched": ",".join(sorted(sampled))[:5000], **(tags or {})}
        run = self.client.create_run(self.experiment_id, run_name=f"{self.sweep_name}/{trial_id}", tags=tags)
        run_id = run.info.run_id
        self._log_params(run_id, flatten({k: v for k, v in trial_config.items() if k != "sweep"}))
        self._log_text(run_id, yaml.safe_dump(dict(trial_config), sort_keys=False), "config.yaml")
        names = list(task_names) if task_names is not None else list(self.task_names)
        self.trials[trial_id] = TrialRecord(trial_id, run_id, dict(sampled), names,
                                            AccuracyMatrix(len(names)), AccuracyMatrix(len(names)))
        return run_id

    def log_stage(self, trial_id: str, result: Mapping[str, Any], checkpoint_dir: Optional[Path]) -> None:
        """Log one stage's metrics (``step = stage``), the accuracy matrix and the checkpoint."""
        record = self.trials[trial_id]
        stage = int(result["stage"])
        metrics = numeric_metrics(result)
        record.stages[stage] = metrics
        self.client.log_batch(record.run_id, metrics=[
            Metric(key, value, int(_now_ms()), stage) for key, value in metrics.items()])
        for j, name in enumerate(record.task_names[:stage]):
            for matrix, prefix in ((record.acc, "acc"), (record.auc, "auc")):
                value = metrics.get(f"{prefix}/{name}")
                if value is not None:
                    matrix.set(stage - 1, j, value)
        with tempfile.TemporaryDirectory() as tmp:
            matrix_json = Path(tmp) / "accuracy_matrix.json"
            matrix_json.write_text(json.dumps({"tasks": record.task_names, "acc": record.acc.to_dict(),
                                               "auc": record.auc.to_dict()}, indent=1))
            accuracy_heatmap(record.acc, record.task_names, f"{self.sweep_name} / {trial_id}: accuracy",
                             Path(tmp) / "accuracy_matrix.png")
            self.client.log_artifacts(record.run_id, tmp)
        if checkpoint_dir is not None:
            # Only a complete checkpoint becomes a run artifact (and so a registrable model).
            read_state(checkpoint_dir, verify_sizes=True)
            self.client.log_artifacts(record.run_id, str(checkpoint_dir), f"checkpoints/stage-{stage}")

    def end_trial(self, trial_id: str, status: str) -> None:
        """Close a trial's run; ``early_stopped`` tags trials that did not reach the last task."""
        record = self.trials.get(trial_id)
        if record is None:
            return
        record.status = status
        complete = record.last_stage == len(record.task_names)
        self.client.set_tag(record.run_id, "forgesweep.stages_completed", str(record.last_stage))
        self.client.set_tag(record.run_id, "forgesweep.early_stopped", str(status == "FINISHED" and not complete))
        self.client.set_terminated(record.run_id, status=status)

    # -- helpers ------------------------------------------------------------------------------
    def _log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow's per-batch parameter limit
            self.client.log_batch(run_id, params=items[start:start + 100])

    def _log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)


def _now_ms() -> float:
    import time

    return time.time() * 1000
