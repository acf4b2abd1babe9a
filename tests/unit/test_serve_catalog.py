"""Serving without Ray: config validation, the stage catalog, model loading, ``forgesweep serve`` errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from forgesweep.cli import main
from forgesweep.config import load_config
from forgesweep.continual import STRATEGIES, build_strategy
from forgesweep.data.datasets import FrameCache
from forgesweep.data.manifest import Manifest, ManifestRow
from forgesweep.errors import ConfigError
from forgesweep.models import build_model
from forgesweep.serve.catalog import StageCatalog, metrics_from_tags, parse_model_id, read_stages
from forgesweep.serve.config import load_serve_config, validate_serve_config
from forgesweep.serve.errors import RequestError
from forgesweep.serve.register import register_checkpoints
from forgesweep.serve.stage_models import load_stage_model
from forgesweep.tracking.runs import open_client
from forgesweep.train.checkpoint import load_model_from_checkpoint, save_stage_checkpoint
from forgesweep.train.loop import predict_probs

REPO = Path(__file__).resolve().parents[2]
TASKS = ["Deepfakes", "Face2Face"]


def _checkpoint(root: Path, name: str, stage: int, seed: int, overrides=(), strategy_state=None) -> Path:
    cfg = load_config(REPO / "jobs" / "configs" / "default.yaml",
                      ["model.name=rsia_lite", "model.preset=tiny", "data.image_size=32",
                       f"data.sequence={TASKS}", *overrides])
    torch.manual_seed(seed)
    model = build_model(cfg.model.name, cfg.model.params)
    state = {"stage": stage, "task_names": TASKS, "config": cfg.to_dict(), "seed": seed,
             "metrics": {"avg_acc": 0.75, "acc/Deepfakes": 0.8, "auc/Deepfakes": 0.9, "train/loss": 0.3}}
    if strategy_state is not None:
        state["strategy"] = strategy_state
    return save_stage_checkpoint(root / name, model, state)


@pytest.fixture(scope="module")
def registry(tmp_path_factory, one_torch_thread):
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = open_client(uri)
    checkpoints = [_checkpoint(root, "s1", 1, 1), _checkpoint(root, "s2", 2, 2)]
    register_checkpoints(client, "m", checkpoints, artifact_location=str(root / "artifacts"))
    return {"root": root, "uri": uri, "client": client, "checkpoints": checkpoints}


def _offline(checkpoint: Path, image: Path, strategy=None) -> float:
    model, state = load_model_from_checkpoint(checkpoint)
    row = ManifestRow(path=str(image), label=0, method="real", dataset="x", split="test", video_id="v")
    cache = FrameCache(Manifest([row], image.parent), state["config"]["data"]["image_size"])
    return predict_probs(model, [row], cache, 4, torch.device("cpu"), strategy)[row.key]


# -- config ---------------------------------------------------------------------------------------
def test_repository_serve_config_loads_with_overrides(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = load_serve_config(REPO / "jobs" / "configs" / "serve.yaml", ["batching.max_batch_size=8", "http.port=8123"])
    assert cfg.batching.max_batch_size == 8 and cfg.http.port == 8123
    assert cfg.tracking_uri == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"  # resolved where it was read
    assert cfg.model.num_gpus == 0 and cfg.registered_model == "cffd-synthetic"


@pytest.mark.parametrize("data, field", [
    ({"batching": {"max_batch_sise": 4}}, "batching.max_batch_sise"),
    ({"model": {"autoscaling": {"min_replicas": 3, "max_replicas": 2}}}, "model.autoscaling"),
    ({"batching": {"max_batch_size": 64}, "ingress": {"max_ongoing_requests": 8}}, "max_ongoing_requests"),
    ({"threshold": 1.5}, "threshold"),
    ({"http": {"port": 0}}, "http.port"),
])
def test_bad_serve_config_names_the_field(data, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        validate_serve_config(data)


# -- catalog -------------------------------------------------------------------------------------
def test_read_stages_gives_versions_tasks_and_metrics(registry):
    entries = read_stages(registry["client"], "m")
    assert [(e.stage, e.version, e.task) for e in entries] == [(1, "1", "Deepfakes"), (2, "2", "Face2Face")]
    assert entries[0].metrics == {"avg_acc": 0.75, "acc": {"Deepfakes": 0.8}, "auc": {"Deepfakes": 0.9}}
    assert entries[1].model_id == "stage-2:v2" and parse_model_id("stage-2:v2") == (2, "2")
    with pytest.raises(ValueError):
        parse_model_id("stage-2")


def test_metrics_from_tags_skips_foreign_tags():
    assert metrics_from_tags({"metric.acc/A": "0.5", "metric.note": "n/a", "forgesweep.task": "A"}) == {"acc": {"A": 0.5}}


def test_catalog_resolves_stages_and_lists_valid_ones(registry):
    catalog = StageCatalog(registry["client"], "m")
    catalog.refresh()
    assert catalog.resolve(None).stage == 2  # the newest
    assert catalog.resolve("1").stage == 1 and catalog.resolve(" Stage-1 ").stage == 1
    missing = pytest.raises(RequestError)
    with missing as info:
        catalog.resolve("5")
    assert info.value.status == 404 and info.value.details["valid_stages"] == [1, 2]
    with pytest.raises(RequestError) as info:
        catalog.resolve("two")
    assert info.value.status == 400
    pinned = StageCatalog(registry["client"], "m", default_stage=1)
    pinned.refresh()
    assert pinned.resolve(None).stage == 1


def test_catalog_refresh_reports_moved_aliases_and_staleness(registry, tmp_path):
    now = [100.0]
    catalog = StageCatalog(registry["client"], "m", refresh_s=10, clock=lambda: now[0])
    assert catalog.stale()
    catalog.refresh()
    assert not catalog.stale()
    now[0] += 10
    assert catalog.stale()
    old = catalog.resolve("2").version
    [new] = register_checkpoints(registry["client"], "m", [_checkpoint(tmp_path, "s2b", 2, 22)], run_name="again")
    assert catalog.resolve("2").version == old  # the snapshot does not move by itself
    assert catalog.refresh() == [{"stage": 2, "from_version": old, "to_version": str(new.version)}]
    assert catalog.resolve("2").model_id == f"stage-2:v{new.version}"
    assert catalog.refresh() == []


def test_catalog_errors_when_the_registry_has_no_stages(registry):
    catalog = StageCatalog(registry["client"], "no-such-model")
    with pytest.raises(RequestError) as info:
        catalog.refresh()
    assert info.value.status == 503 and "no-such-model" in info.value.message
    with pytest.raises(RequestError) as info:
        catalog.resolve(None)
    assert info.value.code == "registry_unavailable"
    registry["client"].create_registered_model("empty")
    empty = StageCatalog(registry["client"], "empty")
    empty.refresh()
    with pytest.raises(RequestError) as info:
        empty.resolve("1")
    assert (info.value.status, info.value.code) == (503, "no_stages")


# -- model loading -------------------------------------------------------------------------------
def test_loaded_stage_model_scores_like_offline_evaluation(registry, tmp_path):
    image = tmp_path / "face.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (45, 37, 3), dtype=np.uint8)).save(image)
    loaded = load_stage_model(registry["uri"], "m", "stage-1:v1", "cpu")
    assert (loaded.spec.architecture, loaded.spec.preset, loaded.spec.image_size) == ("rsia_lite", "tiny", 32)
    assert loaded.spec.strategy == "cffd" and loaded.spec.task_names == tuple(TASKS)
    from forgesweep.data.preprocess import load_image

    [[served]] = loaded.score([load_image(image.read_bytes(), 32)[None]])
    assert served == pytest.approx(_offline(registry["checkpoints"][0], image), abs=1e-6)


@pytest.mark.skipif("icarl" not in STRATEGIES, reason="iCaRL is not registered in this installation")
def test_strategy_prediction_is_applied_like_evaluation(registry, tmp_path):
    """iCaRL scores by nearest exemplar mean: serving must rebuild the strategy, not use the logit."""
    strategy = build_strategy("icarl", {})
    strategy.class_means = torch.nn.functional.normalize(torch.randn(2, 16, generator=torch.Generator().manual_seed(0)),
                                                         dim=1)
    checkpoint = _checkpoint(tmp_path, "icarl", 1, 5, ["strategy={name: icarl}"], strategy.state_dict())
    uri = registry["uri"]
    register_checkpoints(registry["client"], "icarl-model", [checkpoint], run_name="icarl")
    image = tmp_path / "face.png"
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image)
    from forgesweep.data.preprocess import load_image

    loaded = load_stage_model(uri, "icarl-model", "stage-1:v1", "cpu")
    [[served]] = loaded.score([load_image(image.read_bytes(), 32)[None]])
    assert served == pytest.approx(_offline(checkpoint, image, strategy), abs=1e-6)
    assert abs(served - _offline(checkpoint, image)) > 1e-4, "the nearest-mean score differs from the logit's"


# -- command line --------------------------------------------------------------------------------
def test_serve_command_fails_clearly_before_starting_ray(registry, capsys):
    assert main(["serve", "--set", f"tracking_uri={registry['uri']}", "--set", "registered_model=nope"]) == 2
    assert "'nope'" in capsys.readouterr().err
    assert main(["serve", "--set", "batching.max_batch_sise=4"]) == 2
    assert "batching.max_batch_sise" in capsys.readouterr().err
    assert main(["serve", "--set", f"tracking_uri={registry['uri']}", "--set", "registered_model=m",
                 "--set", "default_stage=7"]) == 2
    assert "default_stage" in capsys.readouterr().err


def test_app_builder_applies_overrides(tmp_path):
    from ray import serve

    from forgesweep.serve.app import app_builder

    app = app_builder({"config": str(REPO / "jobs" / "configs" / "serve.yaml"), "batching.max_batch_size": "4"})
    assert isinstance(app, serve.Application)
    with pytest.raises(ConfigError, match="batching.max_batch_size"):
        app_builder({"batching.max_batch_size": "0"})


def test_build_app_sizes_the_deployments_from_config():
    from forgesweep.serve.app import build_app

    cfg = validate_serve_config({"access_log": False, "ingress": {"num_cpus": 0.5, "num_replicas": 2},
                                 "model": {"num_cpus": 2, "num_gpus": 0.5, "max_ongoing_requests": 48,
                                           "autoscaling": {"min_replicas": 1, "max_replicas": 4,
                                                           "target_ongoing_requests": 6}}})
    # Serve exposes the bound graph only through these attributes: ingress -> (models, config).
    ingress = build_app(cfg)._bound_deployment
    models = ingress.init_args[0]._bound_deployment
    assert (ingress.name, ingress.num_replicas, ingress.ray_actor_options) == ("DetectorIngress", 2, {"num_cpus": 0.5})
    assert models.name == "StageModels" and models.ray_actor_options == {"num_cpus": 2.0, "num_gpus": 0.5}
    assert models.max_ongoing_requests == 48
    scaling = models._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas, scaling.target_ongoing_requests) == (1, 4, 6.0)
    assert ingress.logging_config["enable_access_log"] is False
    fixed = build_app(validate_serve_config({}))._bound_deployment.init_args[0]._bound_deployment
    assert fixed.num_replicas == 1 and fixed._deployment_config.autoscaling_config is None
    assert fixed.ray_actor_options == {"num_cpus": 1.0, "num_gpus": 0.0}
