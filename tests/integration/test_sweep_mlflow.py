"""A two-trial sweep through Ray Tune + Ray Train on the session's Ray head, checked in MLflow.

One sweep is run for the module; every test reads what it wrote: the MLflow run layout, the
per-stage metrics, the artifacts, and the ``stage-k`` aliases of the registered model.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from forgesweep.cli import resolve_config
from forgesweep.sweep.runner import format_summary, run_sweep
from forgesweep.train.checkpoint import load_model_from_checkpoint

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
MODEL_NAME = "it-sweep-model"
TASKS = ["Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"]


@pytest.fixture(scope="module")
def sweep(ray_session, tmp_path_factory, monkeypatch_module):
    root = tmp_path_factory.mktemp("sweep")
    monkeypatch_module.chdir(root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cfg = resolve_config(None, [
        "data.root=data", "sweep.num_samples=2", "sweep.name=it-sweep",
        f"tracking.tracking_uri={uri}", f"tracking.artifact_location={root / 'artifacts'}",
        f"tracking.registered_model={MODEL_NAME}",
    ], smoke=True, configs_dir=REPO / "jobs" / "configs")
    lines: list[str] = []
    outcome = run_sweep(cfg, echo=lines.append)
    return cfg, outcome, MlflowClient(uri), lines


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def _trial_runs(client, outcome):
    exp = client.get_run(outcome.parent_run_id).info.experiment_id
    return client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'")


def test_parent_and_nested_trial_runs(sweep):
    _, outcome, client, lines = sweep
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["forgesweep.sweep"] == "it-sweep"
    assert "best_avg_acc" in parent.data.metrics
    trials = _trial_runs(client, outcome)
    assert len(trials) == 2
    for run in trials:
        assert run.info.status == "FINISHED"
        assert run.data.params["strategy.name"] == "cffd"
        assert "strategy.kd_temperature" in run.data.params  # searched, flattened
        assert not [k for k in run.data.params if k.startswith("sweep.")]  # the parent run's section
        assert "strategy.kd_temperature" in run.data.tags["forgesweep.searched"].split(",")
    assert "sweep.space.strategy.kd_temperature.type" in parent.data.params
    assert any("stage 4/4" in line for line in lines), "progress lines are printed per stage"


def test_metrics_logged_per_stage(sweep):
    _, outcome, client, _ = sweep
    history = client.get_metric_history(outcome.best.run_id, "avg_acc")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
    assert all(0.0 <= m.value <= 1.0 for m in history)
    # Task k's accuracy appears from stage k on.
    steps = sorted(m.step for m in client.get_metric_history(outcome.best.run_id, "acc/FaceSwap"))
    assert steps == [3, 4]


def test_artifacts_matrix_config_and_checkpoints(sweep, tmp_path):
    _, outcome, client, _ = sweep
    run_id = outcome.best.run_id
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "accuracy_matrix.json", "accuracy_matrix.png", "checkpoints"} <= names
    matrix = json.loads(Path(client.download_artifacts(run_id, "accuracy_matrix.json", str(tmp_path))).read_text())
    assert matrix["tasks"] == TASKS
    values = matrix["acc"]["values"]
    assert all(values[i][j] is not None for i in range(4) for j in range(i + 1))
    assert values[0][1] is None
    stages = {a.path for a in client.list_artifacts(run_id, "checkpoints")}
    assert stages == {f"checkpoints/stage-{k}" for k in range(1, 5)}


def test_stage_aliases_registered_and_loadable(sweep, tmp_path):
    cfg, outcome, client, _ = sweep
    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    for k in range(1, 5):
        version = client.get_model_version_by_alias(MODEL_NAME, f"stage-{k}")
        assert version.run_id == outcome.best.run_id
        assert version.tags["forgesweep.stage"] == str(k)
        assert version.tags["forgesweep.task"] == TASKS[k - 1]
    local = mlflow.artifacts.download_artifacts(f"models:/{MODEL_NAME}@stage-2", dst_path=str(tmp_path))
    model, state = load_model_from_checkpoint(local)
    assert state["stage"] == 2 and state["task_names"] == TASKS
    assert type(model).__name__ == "RSIALite"


def test_summary_names_best_trial_and_mlflow_command(sweep):
    _, outcome, _, _ = sweep
    text = format_summary(outcome, TASKS)
    assert outcome.best.trial_id in text
    assert "mlflow ui --backend-store-uri" in text
    assert "stage-4=v" in text
