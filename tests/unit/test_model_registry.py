"""Stage-model registration: aliases move only when every stage's version exists."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from forgesweep.tracking.model_registry import StageChoice, register_stage_models
from forgesweep.tracking.runs import ensure_experiment, open_client


@pytest.fixture()
def client(tmp_path) -> MlflowClient:
    return open_client(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _run_with_checkpoints(client, tmp_path, stages=3) -> str:
    exp = ensure_experiment(client, "reg", str(tmp_path / "artifacts"))
    run_id = client.create_run(exp).info.run_id
    for k in range(1, stages + 1):
        client.log_text(run_id, f"stage {k}", f"checkpoints/stage-{k}/state.json")
    client.set_terminated(run_id)
    return run_id


def _choices(run_id, stages=3):
    return [StageChoice(k, run_id, "t1", f"task{k}", {"avg_acc": 0.9, "train/loss": 1.0}) for k in range(1, stages + 1)]


def test_each_stage_gets_a_version_and_alias(client, tmp_path):
    run_id = _run_with_checkpoints(client, tmp_path)
    versions = register_stage_models(client, "m", _choices(run_id))
    assert [str(v.version) for v in versions] == ["1", "2", "3"]
    for k in (1, 2, 3):
        mv = client.get_model_version_by_alias("m", f"stage-{k}")
        assert str(mv.version) == str(k)
        assert mv.source.endswith(f"checkpoints/stage-{k}")
        assert mv.tags["forgesweep.task"] == f"task{k}"
        assert mv.tags["metric.avg_acc"] == "0.9"
        assert "metric.train/loss" not in mv.tags


def test_failure_midway_leaves_previous_aliases_untouched(client, tmp_path, monkeypatch):
    first = _run_with_checkpoints(client, tmp_path)
    register_stage_models(client, "m", _choices(first))
    second = _run_with_checkpoints(client, tmp_path)
    real = client.create_model_version
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("registry went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(client, "create_model_version", flaky)
    with pytest.raises(RuntimeError, match="registry went away"):
        register_stage_models(client, "m", _choices(second))
    for k in (1, 2, 3):
        assert client.get_model_version_by_alias("m", f"stage-{k}").run_id == first
