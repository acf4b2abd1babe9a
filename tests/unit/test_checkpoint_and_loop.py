"""Stage checkpoints and the Ray-free continual loop on a tiny generated benchmark."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from forgesweep.config import validate_config
from forgesweep.data.synthetic.generate import SyntheticSpec, generate_synthetic
from forgesweep.errors import DataError
from forgesweep.metrics import AccuracyMatrix
from forgesweep.models import build_model
from forgesweep.train.checkpoint import (
    STATE_FILE,
    WEIGHTS_FILE,
    load_model_from_checkpoint,
    load_weights,
    read_state,
    save_stage_checkpoint,
)
from forgesweep.train.loop import LocalContext, run_continual

TASKS = ["Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(root: Path | None = None, **model):
    data = {"image_size": 32, "batch_size": 8, "eval_batch_size": 64}
    if root is not None:
        data["root"] = str(root)
    return validate_config({
        "seed": 0,
        "data": data,
        "model": {"name": "rsia_lite", "preset": "tiny", **model},
        "strategy": {"name": "cffd", "replay_size": 8},
        "train": {"epochs_per_task": 1},
    })


# --------------------------------------------------------------------------- checkpoints


def _trained_tiny(**params):
    torch.manual_seed(0)
    model = build_model("rsia_lite", {"preset": "tiny", **params})
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))  # moves the BatchNorm running statistics off their defaults
    return model


def test_stage_checkpoint_round_trip(tmp_path):
    model = _trained_tiny()
    acc = AccuracyMatrix(2)
    acc.set(0, 0, 0.75)
    state = {"stage": 1, "task_names": ["A", "B"], "config": _config().to_dict(),
             "strategy": {"replay": {"capacity": 8, "policy": "random", "seed": 0, "tasks": [[["k", 1]]]}},
             "acc_matrix": acc.to_dict(), "seed": 0}
    out = save_stage_checkpoint(tmp_path / "stage-1", model, state)
    assert out == tmp_path / "stage-1"
    assert sorted(p.name for p in out.iterdir()) == [WEIGHTS_FILE, STATE_FILE]  # no *.tmp left

    loaded_state = read_state(out)
    assert loaded_state == {"format_version": 1, **state}
    assert AccuracyMatrix.from_dict(loaded_state["acc_matrix"]) == acc

    weights = load_weights(out)
    expected = model.state_dict()
    assert set(weights) == set(expected)
    for key, value in expected.items():
        assert torch.equal(weights[key], value), key
    assert any("running_mean" in k and weights[k].abs().sum() > 0 for k in weights)

    # Saving again into the same directory replaces the checkpoint.
    save_stage_checkpoint(out, model, {**state, "stage": 2})
    assert read_state(out)["stage"] == 2
    assert sorted(p.name for p in out.iterdir()) == [WEIGHTS_FILE, STATE_FILE]


def test_load_model_from_checkpoint_rebuilds_the_recorded_architecture(tmp_path):
    model = _trained_tiny(embed_dim=24)
    cfg = _config(embed_dim=24)
    save_stage_checkpoint(tmp_path / "ck", model, {"stage": 1, "config": cfg.to_dict()})
    rebuilt, state = load_model_from_checkpoint(tmp_path / "ck")
    assert state["stage"] == 1
    assert type(rebuilt) is type(model)
    assert rebuilt.params == model.params
    assert rebuilt.params.width == 4 and rebuilt.params.embed_dim == 24
    assert not rebuilt.training
    images = torch.randn(3, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        a, b = model(images), rebuilt(images)
    assert b.embedding.shape == (3, 24)
    assert torch.allclose(a.logits, b.logits, atol=1e-6)


@pytest.mark.parametrize("missing", [WEIGHTS_FILE, STATE_FILE])
def test_read_state_on_an_incomplete_checkpoint_is_a_data_error(tmp_path, missing):
    save_stage_checkpoint(tmp_path, _trained_tiny(), {"stage": 1})
    (tmp_path / missing).unlink()
    with pytest.raises(DataError) as info:
        read_state(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_read_state_rejects_corrupt_or_foreign_state(tmp_path):
    save_stage_checkpoint(tmp_path, _trained_tiny(), {"stage": 1})
    (tmp_path / STATE_FILE).write_text("{not json")
    with pytest.raises(DataError, match="corrupt"):
        read_state(tmp_path)
    (tmp_path / STATE_FILE).write_text(json.dumps({"format_version": 99, "stage": 1}))
    with pytest.raises(DataError, match="99"):
        read_state(tmp_path)


def test_local_context_latest_checkpoint_sorts_stages_numerically(tmp_path):
    ctx = LocalContext(tmp_path)
    assert ctx.latest_checkpoint() is None
    for k in (1, 2, 10):
        (tmp_path / f"stage-{k}").mkdir()
    assert ctx.latest_checkpoint() == tmp_path / "stage-10"


def _other_filesystem_dir(than: Path) -> Path | None:
    for base in ("/dev/shm", "/run/user/%d" % os.getuid(), "/var/tmp", "/tmp"):
        if os.path.isdir(base) and os.access(base, os.W_OK) and os.stat(base).st_dev != os.stat(than).st_dev:
            return Path(base)
    return None


def test_local_context_report_moves_a_checkpoint_across_filesystems(tmp_path):
    # run_continual writes each stage checkpoint into tempfile.mkdtemp() ($TMPDIR) and hands it to
    # ctx.report, which must move it to output_dir, wherever that lives.
    base = _other_filesystem_dir(tmp_path)
    if base is None:
        pytest.skip("no writable directory on a second filesystem")
    source = Path(tempfile.mkdtemp(prefix="forgesweep-test-", dir=base))
    try:
        save_stage_checkpoint(source, _trained_tiny(), {"stage": 1})
        ctx = LocalContext(tmp_path / "out")
        ctx.report({"stage": 1, "avg_acc": 0.5}, source)
        target = tmp_path / "out" / "stage-1"
        assert read_state(target)["stage"] == 1
        assert ctx.reports == [{"stage": 1, "avg_acc": 0.5, "checkpoint_path": str(target)}]
    finally:
        shutil.rmtree(source, ignore_errors=True)


# --------------------------------------------------------------------------- the loop


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench") / "synthetic"
    spec = SyntheticSpec(image_size=32, train_identities=4, val_identities=1, test_identities=4,
                         frames_per_video=1, write_videos=False)
    generate_synthetic(root, spec, workers=1)
    return root


@pytest.fixture(scope="module")
def full_run(benchmark, tmp_path_factory):
    out = tmp_path_factory.mktemp("full-run")
    scratch = tmp_path_factory.mktemp("scratch")
    cfg = _config(benchmark)
    ctx = LocalContext(out / "run")
    saved = tempfile.tempdir
    tempfile.tempdir = str(scratch)  # where the loop stages its checkpoints before reporting them
    try:
        acc = run_continual(cfg, ctx)
    finally:
        tempfile.tempdir = saved
    return cfg, ctx, acc, scratch


def test_run_reports_every_stage(full_run):
    cfg, ctx, acc, _ = full_run
    reports = ctx.reports
    assert [r["stage"] for r in reports] == [1, 2, 3, 4]
    assert [r["task"] for r in reports] == TASKS
    for r in reports:
        assert 0.0 <= r["avg_acc"] <= 1.0
        assert 0.0 <= r["avg_auc"] <= 1.0
        assert math.isfinite(r["forgetting"]) and math.isfinite(r["bwt"])
        assert math.isfinite(r["train/loss"]) and math.isfinite(r["train/bce"])
        k = r["stage"]
        assert {f"acc/{t}" for t in TASKS[:k]} <= set(r)
        assert not {f"acc/{t}" for t in TASKS[k:]} & set(r)
    # Distillation starts with the second task; replay with the second task too.
    assert "train/slkd" not in reports[0] and "train/mfkd" not in reports[0]
    assert all("train/slkd" in r and "train/mfkd" in r for r in reports[1:])
    assert [r["replay_size"] for r in reports] == [0, 8, 8, 8]
    assert [r["train_samples"] for r in reports] == [8, 16, 16, 16]  # 4 reals + 4 fakes per task


def test_run_fills_the_lower_triangle_of_the_accuracy_matrix(full_run):
    _, ctx, acc, _ = full_run
    values = acc.as_array()
    assert values.shape == (4, 4)
    lower = np.tril_indices(4)
    upper = np.triu_indices(4, k=1)
    assert np.all(np.isfinite(values[lower]))
    assert np.all((values[lower] >= 0) & (values[lower] <= 1))
    assert np.all(np.isnan(values[upper]))
    for k, r in enumerate(ctx.reports):
        assert r["avg_acc"] == pytest.approx(float(np.mean(values[k, : k + 1])))
        for j, task in enumerate(TASKS[: k + 1]):
            assert r[f"acc/{task}"] == pytest.approx(values[k, j])


def test_run_writes_one_checkpoint_per_stage(full_run):
    cfg, ctx, acc, scratch = full_run
    out = Path(ctx.output_dir)
    assert sorted(p.name for p in out.iterdir()) == ["stage-1", "stage-2", "stage-3", "stage-4"]
    # Staged checkpoints were moved into place, not copied.
    assert [p.name for p in scratch.iterdir() if p.name.startswith("forgesweep-stage")] == []
    for k, r in enumerate(ctx.reports, start=1):
        assert r["checkpoint_path"] == str(out / f"stage-{k}")
        state = read_state(out / f"stage-{k}")
        assert state["stage"] == k
        assert state["task_names"] == TASKS
        assert state["config"] == cfg.to_dict()
        assert len(state["strategy"]["replay"]["tasks"]) == k
        matrix = AccuracyMatrix.from_dict(state["acc_matrix"])
        assert all(not math.isnan(matrix.get(k - 1, j)) for j in range(k))
        assert state["metrics"]["avg_acc"] == pytest.approx(r["avg_acc"])
    assert AccuracyMatrix.from_dict(read_state(out / "stage-4")["acc_matrix"]) == acc
    model, _ = load_model_from_checkpoint(out / "stage-4")
    assert model.params.width == 4


def test_resume_runs_only_the_remaining_stages_with_the_replay_state(full_run, tmp_path):
    cfg, full_ctx, full_acc, _ = full_run
    full_out = Path(full_ctx.output_dir)
    resumed_out = tmp_path / "resumed"
    for k in (1, 2):
        shutil.copytree(full_out / f"stage-{k}", resumed_out / f"stage-{k}")

    ctx = LocalContext(resumed_out)
    acc = run_continual(cfg, ctx)

    assert [r["stage"] for r in ctx.reports] == [3, 4]
    assert sorted(p.name for p in resumed_out.iterdir()) == ["stage-1", "stage-2", "stage-3", "stage-4"]
    # The buffer came back from stage-2: stage 3 already replays old samples.
    assert ctx.reports[0]["replay_size"] == full_ctx.reports[2]["replay_size"] == 8
    full_state = read_state(full_out / "stage-4")
    resumed_state = read_state(resumed_out / "stage-4")
    assert resumed_state["strategy"]["replay"] == full_state["strategy"]["replay"]
    assert read_state(resumed_out / "stage-3")["strategy"] == read_state(full_out / "stage-3")["strategy"]
    # Rows of the stages run before the restart are restored, not recomputed.
    values, full_values = acc.as_array(), full_acc.as_array()
    assert np.array_equal(values[:2], full_values[:2], equal_nan=True)
    assert np.all(np.isfinite(values[np.tril_indices(4)]))


def test_resume_from_a_finished_run_reports_nothing(full_run, tmp_path):
    cfg, full_ctx, full_acc, _ = full_run
    shutil.copytree(full_ctx.output_dir, tmp_path / "done")
    ctx = LocalContext(tmp_path / "done")
    acc = run_continual(cfg, ctx)
    assert ctx.reports == []
    assert acc == full_acc
