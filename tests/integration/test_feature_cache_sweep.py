"""The feature cache, early stopping and resource requests on the session's Ray head.

* the extraction job: Ray tasks over shards fill every variant a sweep can pick, once;
* ASHA (the sweep's own scheduler wiring) stops a weak trial after its grace period, and a
  trial's resource request (``trial_resources``) is what Ray assigns to it;
* a real sweep with ``features.cache``: trials run in their own process, train heads only,
  and their stage checkpoints reach MLflow and load.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from forgesweep.config import validate_config
from forgesweep.data.manifest import read_manifest
from forgesweep.data.tasks import build_task_sequence

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("one_torch_thread")]


def _config(root: Path, workdir: Path, **extra) -> dict:
    data = {"seed": 0, "name": "fc-it",
            "data": {"root": str(root), "image_size": 32, "batch_size": 6, "eval_batch_size": 18,
                     "sequence": ["Deepfakes", "Face2Face"]},
            "model": {"name": "rine_ssca", "preset": "tiny", "use_layers": [0, 2]},
            "strategy": {"name": "cffd", "replay_size": 4, "feature_layers": ["rine", "fused"]},
            "train": {"epochs_per_task": 1, "cpus_per_worker": 0.5, "storage_path": str(workdir / "runs")},
            "features": {"cache": True, "root": str(workdir / "features"), "shard_size": 5},
            "sweep": {"space": {"model.clip_activation": {"type": "categorical",
                                                          "choices": ["layer_norm2", "block_output"]}}},
            "tracking": {"tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}",
                         "artifact_location": str(workdir / "artifacts"), "registered_model": "fc-it"}}
    for section, values in extra.items():
        data[section] = {**data.get(section, {}), **values}
    return data


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, random_frame_manifest):
    root = tmp_path_factory.mktemp("fc-data")
    random_frame_manifest(root)
    return root, tmp_path_factory.mktemp("fc-work")


def test_extraction_job_fills_every_variant_once(ray_session, tiny, monkeypatch):
    from forgesweep.features.ray_job import prepare_sweep_cache
    from forgesweep.models.rine_ssca import RINESSCA
    from forgesweep.train.loop import frozen_features

    root, work = tiny
    cfg = validate_config(_config(root, work / "job"))
    manifest = read_manifest(root / "manifest.jsonl")
    tasks = build_task_sequence(manifest, cfg.data.sequence)
    report = prepare_sweep_cache(cfg, manifest, tasks, use_gpu=False)
    assert (report.samples, report.extracted, report.tasks) == (18, 18, 4), report.line  # 4 shards of <= 5
    assert set(report.keys) == {"layer_norm2", "block_output"}
    for digest in report.keys.values():
        index = json.loads((work / "job" / "features" / digest / "index.json").read_text())
        assert index["samples"] == 18 and len(index["shards"]) == 4

    again = prepare_sweep_cache(cfg, manifest, tasks, use_gpu=False)
    assert again.extracted == 0 and again.tasks == 0 and "already cached" in again.line

    # A trial of either variant reads its features without running the tower, and they are the
    # tower's (the job built the same seeded tower as the trial does).
    def no_tower(*args, **kwargs):
        raise AssertionError("a trial ran the tower although the sweep cached its features")

    for variant in ("layer_norm2", "block_output"):
        trial = validate_config(_config(root, work / "job", model={"clip_activation": variant}))
        torch.manual_seed(0)
        model = RINESSCA(trial.model.params)
        frames = torch.stack([torch.from_numpy(np.array(Image.open(root / r.path))).permute(2, 0, 1)
                              for r in manifest.rows[:4]])
        expected = model.extract_frozen_features((frames.float() / 255 - 0.5) / 0.5, [variant])[variant][:, [0, 2]]
        with monkeypatch.context() as patch:
            patch.setattr(RINESSCA, "extract_frozen_features", no_tower)
            table = frozen_features(trial, manifest, tasks, model, torch.device("cpu"))
        for i, row in enumerate(manifest.rows[:4]):
            assert torch.allclose(table.get(row.key), expected[i], atol=1e-5), (variant, row.key)


def test_asha_stops_a_weak_trial_and_trials_get_the_resources_they_request(ray_session, tiny):
    import ray
    from ray import tune

    from forgesweep.sweep.runner import make_scheduler, trial_in_process, trial_resources
    from forgesweep.train.trainer import build_trainer

    root, work = tiny
    cfg = validate_config(_config(root, work / "asha", sweep={"scheduler": {"grace_period": 1,
                                                                          "reduction_factor": 2}}))
    assert trial_in_process(cfg) and trial_resources(cfg, use_gpu=True) == {"CPU": 0.5, "GPU": 1.0}
    # TorchTrainer trials: their workers carry the per-worker request instead.
    trainer_cfg = validate_config(_config(root, work / "asha", sweep={"trial_executor": "torch_trainer"},
                                          train={"gpus_per_worker": 0.25}))
    assert trial_resources(trainer_cfg)["CPU"] == 0
    scaling = build_trainer(trainer_cfg, "resources-check", use_gpu=True).scaling_config
    assert scaling.num_workers == 1 and scaling.resources_per_worker == {"CPU": 0.5, "GPU": 0.25}

    def stages(config):
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        for stage in range(1, 5):
            tune.report({"avg_acc": config["quality"] + 0.01 * stage, "stage": stage, "cpus": cpus})

    tuner = tune.Tuner(
        tune.with_resources(stages, trial_resources(cfg)),
        param_space={"quality": tune.grid_search([0.9, 0.1, 0.8])},
        tune_config=tune.TuneConfig(metric="avg_acc", mode="max", scheduler=make_scheduler(cfg, 4),
                                    max_concurrent_trials=1, reuse_actors=True),
        run_config=tune.RunConfig(name="asha-check", storage_path=str(work / "asha-runs"), verbose=0))
    results = {r.config["quality"]: r.metrics for r in tuner.fit()}
    assert results[0.9]["stage"] == 4  # the best runs every stage
    assert results[0.1]["stage"] == 1  # the weak one stops at the first rung (grace period 1)
    assert results[0.8]["stage"] == 2  # continues at rung 1, stops at rung 2 (below 0.9's)
    assert {m["cpus"] for m in results.values()} == {0.5}


@pytest.mark.slow
def test_sweep_with_the_cache_trains_heads_only_in_trial_processes(ray_session, tiny):
    from mlflow import MlflowClient

    from forgesweep.sweep.runner import run_sweep
    from forgesweep.train.checkpoint import load_model_from_checkpoint

    root, work = tiny
    # The features root of the extraction test: what it cached is reused (the sweep extracts
    # whatever is missing when this test runs alone).
    cfg = validate_config(_config(root, work / "sweep", sweep={
        "name": "fc-sweep", "num_samples": 2, "max_concurrent_trials": 2, "scheduler": {"type": "none"}},
        tracking={"register_models": False}, features={"root": str(work / "job" / "features")}))
    lines: list[str] = []
    outcome = run_sweep(cfg, echo=lines.append)
    assert outcome.features is not None and outcome.features.samples == 18, lines
    assert any(line.startswith("[features]") for line in lines)
    assert any("trials train in their own process" in line and "'CPU': 0.5" in line for line in lines), lines
    client = MlflowClient(cfg.tracking.tracking_uri)
    parent = client.get_run(outcome.parent_run_id)
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'")
    assert len(runs) == 2
    for run in runs:
        assert [m.value for m in client.get_metric_history(run.info.run_id, "heads_only")] == [1.0, 1.0]
    stage2 = client.download_artifacts(outcome.best.run_id, "checkpoints/stage-2", str(work / "sweep" / "dl"))
    model, state = load_model_from_checkpoint(stage2)
    assert state["stage"] == 2 and type(model).__name__ == "RINESSCA"
