"""Training metrics reach Ray's Prometheus endpoint, and the dashboards query only what exists.

One real Ray Train run (the project's trainer and worker, two tasks x two epochs of a tiny
model) trains on the session's Ray head while this module scrapes the head node's metrics
export port every half second; everything seen while the run was alive (and shortly after)
is merged. The training and sweep dashboards' queries are then checked against that: every
metric they name must have been exported, with every label their matchers use. The serving
dashboard is checked the same way by ``tests/integration/test_serve.py`` after its requests.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from forgesweep.config import load_config
from forgesweep.data.prepare import prepare_data
from forgesweep.observability.dashboards import (all_queries, check_queries, load_dashboards, merge_expositions,
                                                 metrics_endpoints, parse_exposition, parse_samples, scrape)
from forgesweep.observability.metrics import CATALOGUE, WORKER_TAGS
from forgesweep.train.trainer import build_trainer

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "jobs" / "configs" / "smoke.yaml"
RUN = "metrics-export-run"
TASKS = ["Deepfakes", "Face2Face"]
TRAINING_METRICS = [m for m in CATALOGUE if not m.name.startswith("forgesweep_serve_")]
# After the run ends, keep scraping this long: a dead worker's gauges stay two export intervals.
LINGER_S = 5.0


@pytest.fixture(scope="module")
def scraped(ray_session, tmp_path_factory, one_torch_thread):
    """(merged exposition, forgesweep samples seen, fit result) of one short training run."""
    root = tmp_path_factory.mktemp("metrics")
    cfg = load_config(SMOKE, [
        f"data.root={root}/data", "data.synthetic.train_identities=4", "data.synthetic.test_identities=2",
        "data.synthetic.val_identities=1", "data.synthetic.write_videos=false",
        f"data.synthetic.methods=[{','.join(TASKS)}]", f"data.sequence=[{','.join(TASKS)}]", "data.batch_size=4",
        "model.name=rsia_lite", "model.preset=tiny", "strategy.name=finetune", "train.epochs_per_task=2",
        "train.use_gpu=false", f"train.storage_path={root}/runs",
    ]).with_absolute_paths()
    prepare_data(cfg, echo=lambda _: None)
    endpoints = metrics_endpoints()
    assert endpoints, "the Ray head exposes no metrics export port"
    url = endpoints[0]
    outcome: dict = {}

    def fit() -> None:
        try:
            outcome["result"] = build_trainer(cfg, name=RUN).fit()
        except BaseException as exc:  # surfaced by the test below, not lost in the thread
            outcome["error"] = exc

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    exported: dict[str, set[str]] = {}
    samples = []
    ended = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        text = scrape(url)
        merge_expositions(parse_exposition(text), into=exported)
        samples += [s for s in parse_samples(text) if s.name.startswith("ray_forgesweep_")]
        if not thread.is_alive():
            ended = ended or time.monotonic()
            if time.monotonic() - ended > LINGER_S:
                break
        time.sleep(0.5)
    thread.join(timeout=60)
    assert "error" not in outcome, outcome.get("error")
    return exported, samples, outcome.get("result")


def test_run_finished(scraped):
    _, _, result = scraped
    assert result is not None and result.error is None, result and result.error
    assert result.metrics["stage"] == 2


def test_every_training_metric_is_exported_with_its_tags(scraped):
    exported, _, _ = scraped
    for spec in TRAINING_METRICS:
        for name in spec.prometheus_names:
            assert name in exported, f"{name} never appeared on the metrics endpoint"
            assert set(spec.tags) <= exported[name], (name, exported[name])


def test_values_describe_the_run(scraped):
    _, samples, _ = scraped
    mine = [s for s in samples if s.labels.get("ray_train_run_name") == RUN]
    assert mine, "no forgesweep sample carries the run's name"
    assert {s.labels["model"] for s in mine} == {"rsia_lite"} and {s.labels["strategy"] for s in mine} == {"finetune"}

    def values(name, **labels):
        return [s.value for s in mine if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]

    assert 2.0 in values("ray_forgesweep_train_stage", ray_train_worker_world_rank="0")
    # A gauge is exported every 2 s, so a tiny model's short first epoch may never be seen: only the
    # last epoch of a stage is certain to be. Every value seen must still be a real epoch number.
    epochs = set(values("ray_forgesweep_train_epoch"))
    assert 2.0 in epochs and epochs <= {1.0, 2.0}, epochs
    assert max(values("ray_forgesweep_train_samples_total")) > 0
    assert max(values("ray_forgesweep_train_samples_per_second")) > 0
    stage1 = values("ray_forgesweep_task_accuracy", stage="1", task="Deepfakes")
    assert stage1 and all(0.0 <= v <= 1.0 for v in stage1)
    assert values("ray_forgesweep_task_auc", stage="1", task="Deepfakes")
    assert max(values("ray_forgesweep_stages_completed")) >= 1.0
    assert values("ray_forgesweep_replay_buffer_size") and values("ray_forgesweep_train_loss", term="loss")
    worker = [s for s in mine if s.name == "ray_forgesweep_train_stage"]
    assert all(set(WORKER_TAGS) <= set(s.labels) for s in worker)


def test_training_and_sweep_dashboards_query_only_exported_metrics(scraped):
    exported, _, _ = scraped
    dashboards = load_dashboards(REPO / "dashboards" / "grafana")
    queries = [q for q in all_queries(dashboards) if q.dashboard != "forgesweep_serving.json"]
    assert len(queries) > 30
    problems = check_queries(queries, exported)
    assert not problems, "\n".join(problems)
