"""A 2x2 comparison matrix (strategies x sequences) through Ray Tune + Ray Train, checked in MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from forgesweep.cli import resolve_config
from forgesweep.sweep.matrix import format_matrix_summary, run_matrix

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def matrix(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("matrix")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cfg = resolve_config(str(REPO / "jobs" / "configs" / "matrix.yaml"), [
        f"data.root={root / 'data'}", f"train.storage_path={root / 'runs'}",
        f"tracking.tracking_uri={uri}", f"tracking.artifact_location={root / 'artifacts'}",
        "matrix.name=it-matrix", "matrix.seeds=[0]",
        "matrix.strategies={FT: {name: finetune}, CFFD: {name: cffd, replay_size: 16}}",
        "matrix.sequences={fwd: [Deepfakes, Face2Face], rev: [Face2Face, Deepfakes]}",
    ], smoke=True, configs_dir=REPO / "jobs" / "configs")
    lines: list[str] = []
    outcome = run_matrix(cfg, echo=lines.append)
    return outcome, MlflowClient(uri), lines, root


def test_every_cell_ran_as_a_tagged_nested_run(matrix):
    outcome, client, lines, _ = matrix
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["forgesweep.kind"] == "matrix"
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'")
    cells = {(r.data.tags["forgesweep.matrix.sequence"], r.data.tags["forgesweep.matrix.strategy"]): r for r in runs}
    assert set(cells) == {("fwd", "FT"), ("fwd", "CFFD"), ("rev", "FT"), ("rev", "CFFD")}
    rev = cells[("rev", "FT")]
    assert rev.data.params["strategy.name"] == "finetune"
    # The reversed sequence's first task is Face2Face: its accuracy is logged from stage 1.
    steps = sorted(m.step for m in client.get_metric_history(rev.info.run_id, "acc/Face2Face"))
    assert steps == [1, 2]
    assert not outcome.failed
    assert any("[sweep] trial" in line and "stage 2/2" in line for line in lines)


def test_comparison_table_printed_and_saved(matrix, tmp_path):
    outcome, client, _, _ = matrix
    assert sorted((r["sequence"], r["strategy"]) for r in outcome.rows) == [
        ("fwd", "CFFD"), ("fwd", "FT"), ("rev", "CFFD"), ("rev", "FT")]
    for row in outcome.rows:
        assert 0.0 <= row["avg_acc"] <= 1.0 and row["seeds"] == 1
    text = format_matrix_summary(outcome)
    assert "**rsia_lite** on **fwd** (Deepfakes → Face2Face)" in text
    assert "**rsia_lite** on **rev** (Face2Face → Deepfakes)" in text
    names = {a.path for a in client.list_artifacts(outcome.parent_run_id)}
    assert {"comparison.csv", "comparison.md", "avg_acc_per_stage.png"} <= names
    local = Path(client.download_artifacts(outcome.parent_run_id, "comparison.md", str(tmp_path)))
    assert local.read_text() == outcome.markdown
