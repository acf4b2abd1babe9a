"""Reading a sweep or a comparison matrix back from the MLflow store, for the report.

What a sweep or matrix wrote (see :mod:`forgesweep.tracking.runs`): a parent run tagged
``forgesweep.kind`` = ``sweep`` / ``matrix`` and ``forgesweep.sweep`` = its name, with the base
config flattened into params; one nested run per trial with its config (but the sweep section) as params,
per-stage metrics (``step`` = stage) and, for matrix cells, ``forgesweep.matrix.*`` tags; and the
registered model versions (aliases ``stage-k``) made from the best trial's checkpoints.

Only reads: nothing is written to the store, and a sqlite store that does not exist is an
error rather than a new empty database.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from forgesweep.errors import UserError
from forgesweep.metrics import AccuracyMatrix

KINDS = ("sweep", "matrix")
MATRIX_AXES = ("model", "sequence", "strategy", "seed")
STAGE_KEYS = ("avg_acc", "avg_auc", "forgetting", "bwt")
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class TrialData:
    """One trial (sweep) or cell (matrix) run."""

    run_id: str
    run_name: str
    trial_id: str
    status: str
    params: dict[str, str]
    tags: dict[str, str]
    task_names: list[str]
    stages: dict[int, dict[str, float]]  # stage (1-based) -> metric -> value
    labels: dict[str, str] = field(default_factory=dict)  # matrix axes of a cell

    @property
    def last_stage(self) -> int:
        return max(self.stages, default=0)

    @property
    def complete(self) -> bool:
        return bool(self.task_names) and self.last_stage == len(self.task_names)

    def final(self, key: str) -> float:
        """``key`` after the last stage the trial reached (NaN when absent)."""
        return self.stages.get(self.last_stage, {}).get(key, math.nan)

    def matrix(self, prefix: str = "acc") -> AccuracyMatrix:
        """The accuracy (``acc``) or AUC (``auc``) matrix rebuilt from the per-stage metrics."""
        m = AccuracyMatrix(max(len(self.task_names), 1))
        for stage, values in self.stages.items():
            for j, task in enumerate(self.task_names[:stage]):
                value = values.get(f"{prefix}/{task}")
                if value is not None and math.isfinite(value) and 0 < stage <= len(self.task_names):
                    m.set(stage - 1, j, value)
        return m


@dataclass(frozen=True)
class RegisteredVersion:
    """A registered model version made from one of the study's runs."""

    name: str
    version: str
    run_id: str
    stage: Optional[int]
    task: Optional[str]
    aliases: tuple[str, ...]

    @property
    def uri(self) -> str:
        """``models:/<name>@stage-k`` while an alias points at it, else ``models:/<name>/<version>``."""
        return f"models:/{self.name}@{self.aliases[0]}" if self.aliases else f"models:/{self.name}/{self.version}"


@dataclass
class StudyData:
    """A sweep or a comparison matrix: the parent run and everything under it."""

    kind: str
    name: str
    parent_run_id: str
    experiment_id: str
    experiment_name: str
    status: str
    start_time: Optional[int]
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]
    search_space: dict[str, Any]
    trials: list[TrialData]
    registered: list[RegisteredVersion]

    @property
    def objective(self) -> tuple[str, str]:
        """``(metric, mode)`` trials are ranked by (the sweep's ``sweep.metric`` / ``sweep.mode``)."""
        if self.kind == "matrix":
            return "avg_acc", "max"
        return self.params.get("sweep.metric", "avg_acc"), self.params.get("sweep.mode", "max")

    def best(self) -> Optional[TrialData]:
        """The sweep's recorded best trial, else the best complete trial by the objective."""
        recorded = self.tags.get("forgesweep.best_run_id")
        for trial in self.trials:
            if trial.run_id == recorded:
                return trial
        metric, mode = self.objective
        ranked = [t for t in self.trials if t.complete and not math.isnan(t.final(metric))]
        if not ranked:
            return None
        sign = 1.0 if mode == "max" else -1.0
        return max(ranked, key=lambda t: sign * t.final(metric))


def open_store(tracking_uri: str) -> MlflowClient:
    """A client on an existing store.

    Raises:
        UserError: a sqlite store whose file does not exist.
    """
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri[len("sqlite:///"):])
        if not path.is_file():
            raise UserError(f"no MLflow store at {path} (tracking URI {tracking_uri}); run a sweep first or pass "
                            f"--tracking-uri / set MLFLOW_TRACKING_URI")
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _paged(fetch) -> list:
    items, token = [], None
    while True:
        page = fetch(token)
        items.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return items


def _experiment_ids(client: MlflowClient) -> list[str]:
    experiments = _paged(lambda t: client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                                                             page_token=t))
    return [e.experiment_id for e in experiments]


def _search(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> list[Run]:
    if not experiment_ids:
        return []
    return _paged(lambda t: client.search_runs(experiment_ids, filter_string, max_results=1000, page_token=t,
                                               order_by=["attributes.start_time DESC"]))


def find_parent_runs(client: MlflowClient, target: str) -> list[Run]:
    """The parent runs ``target`` names: a parent run id, a sweep/matrix name, or an experiment name
    (all its sweeps and matrices, newest first). A name used by several runs gives all of them.

    Raises:
        UserError: nothing matches; the message lists the sweeps and experiments that exist.
    """
    if "'" in target or "\\" in target:
        raise UserError(f"report target {target!r}: quotes and backslashes are not allowed in a sweep name")
    if _RUN_ID.match(target):
        try:
            run = client.get_run(target)
        except MlflowException:
            run = None
        if run is not None:
            if run.data.tags.get("forgesweep.kind") not in KINDS:
                raise UserError(f"run {target} is not a sweep or matrix parent run (tag forgesweep.kind is "
                                f"{run.data.tags.get('forgesweep.kind')!r})")
            return [run]
    ids = _experiment_ids(client)
    runs = [r for r in _search(client, ids, f"tags.`forgesweep.sweep` = '{target}'")
            if r.data.tags.get("forgesweep.kind") in KINDS]
    if runs:
        return runs
    experiment = client.get_experiment_by_name(target)
    if experiment is not None:
        runs = [r for r in _search(client, [experiment.experiment_id], "tags.`forgesweep.kind` != 'trial'")
                if r.data.tags.get("forgesweep.kind") in KINDS]
        if runs:
            return runs
        raise UserError(f"experiment {target!r} holds no sweep or matrix runs")
    known = [r.data.tags.get("forgesweep.sweep") for r in _search(client, ids, "tags.`forgesweep.kind` != 'trial'")
             if r.data.tags.get("forgesweep.kind") in KINDS]
    names = ", ".join(dict.fromkeys(n for n in known if n)) or "none"
    experiments = ", ".join(e.name for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)) or "none"
    raise UserError(f"no sweep, matrix or experiment named {target!r} in {client.tracking_uri}; sweeps and "
                    f"matrices: {names}; experiments: {experiments}")


def task_names_of(params: dict[str, str], stages: dict[int, dict[str, float]]) -> list[str]:
    """The trial's task sequence: its ``data.sequence`` param, else the order ``acc/<task>`` first appears."""
    text = params.get("data.sequence")
    if text:
        try:
            sequence = json.loads(text)
            names = [t["name"] if isinstance(t, dict) else str(t) for t in sequence]
            if names:
                return names
        except (ValueError, TypeError, KeyError):
            pass  # an older or hand-made run: fall back on the metrics
    first_seen: dict[str, int] = {}
    for stage in sorted(stages):
        for key in stages[stage]:
            if key.startswith("acc/"):
                first_seen.setdefault(key[4:], stage)
    return sorted(first_seen, key=lambda t: (first_seen[t], t))


def load_trial(client: MlflowClient, run: Run) -> TrialData:
    """A trial's params, tags and per-stage metric histories."""
    keys = [k for k in run.data.metrics if k in STAGE_KEYS or k.startswith(("acc/", "auc/"))]
    stages: dict[int, dict[str, float]] = {}
    for key in keys:
        for m in client.get_metric_history(run.info.run_id, key):
            if m.step >= 1:
                stages.setdefault(int(m.step), {})[key] = float(m.value)
    tags = dict(run.data.tags)
    labels = {axis: tags[f"forgesweep.matrix.{axis}"] for axis in MATRIX_AXES if f"forgesweep.matrix.{axis}" in tags}
    return TrialData(run_id=run.info.run_id, run_name=run.info.run_name or run.info.run_id,
                     trial_id=tags.get("forgesweep.trial_id", run.info.run_id[:8]), status=run.info.status,
                     params=dict(run.data.params), tags=tags, task_names=task_names_of(run.data.params, stages),
                     stages=dict(sorted(stages.items())), labels=labels)


def _search_space(client: MlflowClient, parent: Run) -> dict[str, Any]:
    try:
        text = client.download_artifacts(parent.info.run_id, "search_space.yaml")
    except (MlflowException, OSError):
        return {}  # a matrix, or a sweep logged without one: importances fall back on observed values
    data = yaml.safe_load(Path(text).read_text()) or {}
    return data if isinstance(data, dict) else {}


def _registered(client: MlflowClient, params: dict[str, str], run_ids: set[str]) -> list[RegisteredVersion]:
    name = params.get("tracking.registered_model")
    if not name or "'" in name:
        return []
    try:
        versions = _paged(lambda t: client.search_model_versions(f"name = '{name}'", page_token=t))
        aliases = client.get_registered_model(name).aliases or {}
    except MlflowException:
        return []  # nothing registered under that name (register_models off, or the sweep failed)
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    out = []
    for v in versions:
        if v.run_id in run_ids:
            stage = v.tags.get("forgesweep.stage")
            out.append(RegisteredVersion(name, str(v.version), v.run_id, int(stage) if stage and stage.isdigit()
                                         else None, v.tags.get("forgesweep.task"),
                                         tuple(sorted(by_version.get(str(v.version), [])))))
    return sorted(out, key=lambda v: (v.stage or 0, int(v.version) if v.version.isdigit() else 0))


def load_study(client: MlflowClient, parent: Run) -> StudyData:
    """Everything the report shows about one sweep or matrix."""
    experiment = client.get_experiment(parent.info.experiment_id)
    children = _search(client, [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    trials = sorted((load_trial(client, r) for r in children), key=lambda t: t.trial_id)
    tags = dict(parent.data.tags)
    kind = tags.get("forgesweep.kind", "sweep")
    return StudyData(kind=kind, name=tags.get("forgesweep.sweep", parent.info.run_name or parent.info.run_id),
                     parent_run_id=parent.info.run_id, experiment_id=parent.info.experiment_id,
                     experiment_name=experiment.name, status=parent.info.status, start_time=parent.info.start_time,
                     params=dict(parent.data.params), tags=tags, metrics=dict(parent.data.metrics),
                     search_space=_search_space(client, parent) if kind == "sweep" else {}, trials=trials,
                     registered=_registered(client, dict(parent.data.params), {t.run_id for t in trials}))
