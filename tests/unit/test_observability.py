"""What the training worker and the Serve ingress record, checked against a fake metric backend.

The real backend (``ray.util.metrics``) is exercised end to end by
``tests/integration/test_metrics_export.py`` and ``test_serve.py``; here every value and tag is
checked exactly, and so is the promise that a metrics failure is logged once and never raised.
"""

from __future__ import annotations

import inspect
import logging
import math

import numpy as np
import pytest

from forgesweep.observability.metrics import CATALOGUE, METRICS, MetricRecorder, RayMetricFactory
from forgesweep.observability.serving import ServingMetrics, observe_stage, observed
from forgesweep.observability.training import MeteredLoader, TrainingMetrics, batch_size
from forgesweep.serve.errors import RequestError


class FakeMetric:
    def __init__(self, log, name):
        self.log, self.name = log, name

    def set(self, value, tags):
        self.log.append((self.name, "set", value, tags))

    def inc(self, value, tags):
        self.log.append((self.name, "inc", value, tags))

    def observe(self, value, tags):
        self.log.append((self.name, "observe", value, tags))


class FakeFactory:
    def __init__(self, fail: bool = False):
        self.log: list = []
        self.fail = fail

    def create(self, spec):
        if self.fail:
            raise RuntimeError("metrics backend is down")
        return FakeMetric(self.log, spec.name)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _values(log, name, **tags):
    return [v for n, _, v, t in log if n == name and all(t.get(k) == str(x) for k, x in tags.items())]


def test_catalogue_names_are_unique_prefixed_and_documented():
    assert len(METRICS) == len(CATALOGUE)
    for m in CATALOGUE:
        assert m.name.startswith("forgesweep_") and m.description and m.recorded
        assert (m.kind == "histogram") == bool(m.boundaries)
        assert (m.kind == "counter") == m.name.endswith("_total")


def test_ray_factory_builds_one_object_per_name_without_a_running_ray():
    factory = RayMetricFactory()
    spec = METRICS["forgesweep_train_stage"]
    assert factory.create(spec) is factory.create(spec)
    MetricRecorder(factory).set("forgesweep_train_stage", 1, {t: "x" for t in spec.tags})  # no Ray: a no-op


def test_recording_failures_are_logged_once_and_never_raised(caplog):
    rec = MetricRecorder(FakeFactory(fail=True), enabled=True)
    tags = {t: "x" for t in METRICS["forgesweep_train_stage"].tags}
    with caplog.at_level(logging.WARNING, logger="forgesweep.observability"):
        for _ in range(3):
            rec.set("forgesweep_train_stage", 1, tags)
    warnings = [r for r in caplog.records if "forgesweep_train_stage" in r.getMessage()]
    assert len(warnings) == 1 and "backend is down" in warnings[0].getMessage()
    assert rec.failed == {"forgesweep_train_stage"}


def test_wrong_tags_kind_or_name_are_caught_by_the_recorder(caplog):
    fake = FakeFactory()
    rec = MetricRecorder(fake, enabled=True)
    with caplog.at_level(logging.WARNING, logger="forgesweep.observability"):
        rec.set("forgesweep_train_stage", 1, {"ray_train_run_name": "r"})
        rec.inc("forgesweep_train_stage", 1, {t: "x" for t in METRICS["forgesweep_train_stage"].tags})
        rec.set("forgesweep_nope", 1, {})
    assert fake.log == [] and rec.failed == {"forgesweep_train_stage", "forgesweep_nope"}
    assert "takes tags" in caplog.text and "not in the forgesweep metric catalogue" in caplog.text


def test_env_switch_turns_recording_off(monkeypatch):
    monkeypatch.setenv("FORGESWEEP_METRICS", "off")
    fake = FakeFactory()
    MetricRecorder(fake).set("forgesweep_train_stage", 1, {t: "x" for t in METRICS["forgesweep_train_stage"].tags})
    assert fake.log == []


def _training(rank=0):
    fake, clock = FakeFactory(), Clock()
    meter = TrainingMetrics("sweep-abc_00001", "rsia_lite", "cffd", rank, MetricRecorder(fake, enabled=True), clock)
    return meter, fake, clock


class _Loader:
    """A stand-in for a prepared DataLoader: batches of 4 images, a sampler with set_epoch."""

    def __init__(self, clock, batches=3, step_s=0.6):
        self.clock, self.batches, self.step_s = clock, batches, step_s
        self.sampler = type("S", (), {"epochs": [], "set_epoch": lambda self, e: self.epochs.append(e)})()

    def __len__(self):
        return self.batches

    def __iter__(self):
        for _ in range(self.batches):
            self.clock.now += self.step_s
            yield {"images": np.zeros((4, 3, 8, 8)), "keys": ["a", "b", "c", "d"]}


def test_metered_loader_counts_epochs_samples_and_throughput():
    meter, fake, clock = _training()
    inner = _Loader(clock)
    loader = meter.wrap_loader(inner)
    assert isinstance(loader, MeteredLoader) and len(loader) == 3
    loader.sampler.set_epoch(5)  # passes through to the wrapped loader
    assert inner.sampler.epochs == [5]
    for _ in range(2):
        assert sum(batch_size(b) for b in loader) == 12
    worker = {"ray_train_run_name": "sweep-abc_00001", "ray_train_worker_world_rank": 0}
    assert _values(fake.log, "forgesweep_train_stage", **worker) == [1, 1]
    assert _values(fake.log, "forgesweep_train_epoch", **worker) == [1, 2]
    assert sum(_values(fake.log, "forgesweep_train_samples_total", **worker)) == 24
    rates = _values(fake.log, "forgesweep_train_samples_per_second", **worker)
    # 4 samples every 0.6 s: a window closes after 2 batches (1.2 s), then the epoch's mean.
    assert rates and all(r == pytest.approx(4 / 0.6) for r in rates)
    tags = [t for n, _, _, t in fake.log if n == "forgesweep_train_stage"][0]
    assert tags == {"ray_train_run_name": "sweep-abc_00001", "model": "rsia_lite", "strategy": "cffd",
                    "ray_train_worker_world_rank": "0"}


def test_stage_report_sets_the_matrix_cells_and_summaries_on_rank_0():
    meter, fake, _ = _training()
    meter.stage_reported({"stage": 2, "task": "Face2Face", "avg_acc": 0.9, "avg_auc": 0.95, "forgetting": 0.05,
                          "bwt": -0.05, "replay_size": 40, "train_samples": 140, "stage_seconds": 12.5,
                          "acc/Deepfakes": 0.88, "acc/Face2Face": 0.92, "auc/Deepfakes": 0.9, "auc/Face2Face": 1.0,
                          "eer/Deepfakes": 0.1, "train/loss": 0.4, "train/slkd": math.nan})
    assert _values(fake.log, "forgesweep_task_accuracy", stage=2, task="Deepfakes") == [0.88]
    assert _values(fake.log, "forgesweep_task_auc", stage=2, task="Face2Face") == [1.0]
    assert _values(fake.log, "forgesweep_avg_accuracy") == [0.9]
    assert _values(fake.log, "forgesweep_forgetting") == [0.05]
    assert _values(fake.log, "forgesweep_replay_buffer_size") == [40]
    assert _values(fake.log, "forgesweep_stage_seconds") == [12.5]
    assert _values(fake.log, "forgesweep_stages_completed") == [2]
    assert _values(fake.log, "forgesweep_train_loss", term="loss") == [0.4]
    assert not _values(fake.log, "forgesweep_train_loss", term="slkd"), "NaN values are not exported"
    assert meter.completed_stages == 2
    loader = meter.wrap_loader(_Loader(Clock(), batches=1))
    list(loader)
    assert _values(fake.log, "forgesweep_train_stage") == [3], "the next loader trains stage 3"


def test_other_ranks_record_only_their_own_throughput():
    meter, fake, _ = _training(rank=1)
    meter.stage_reported({"stage": 1, "avg_acc": 0.9, "acc/Deepfakes": 0.9})
    assert fake.log == [] and meter.completed_stages == 1
    meter.resumed_after(3)
    list(meter.wrap_loader(_Loader(Clock(), batches=1)))
    assert _values(fake.log, "forgesweep_train_stage", ray_train_worker_world_rank=1) == [4]


def _serving(fail=False):
    fake, clock = FakeFactory(fail=fail), Clock()
    return ServingMetrics("it-app", MetricRecorder(fake, enabled=True), clock), fake, clock


def test_request_outcomes_are_counted_by_stage_status_and_code():
    metrics, fake, clock = _serving()
    with metrics.request("/v1/detect") as obs:
        obs.stage = 3
        clock.now += 0.025
        obs.verdict(0.8, "fake")
    with pytest.raises(RequestError):
        with metrics.request("/v1/detect"):
            raise RequestError(404, "unknown_stage", "no stage 7")
    with pytest.raises(ZeroDivisionError):
        with metrics.request("/v1/detect/video") as obs:
            obs.stage = 1
            1 / 0
    assert _values(fake.log, "forgesweep_serve_requests_total", stage=3, status=200, route="/v1/detect") == [1]
    assert _values(fake.log, "forgesweep_serve_request_latency_ms", stage=3) == [pytest.approx(25.0)]
    assert _values(fake.log, "forgesweep_serve_predictions_total", stage=3, label="fake") == [1]
    assert _values(fake.log, "forgesweep_serve_fake_probability", stage=3) == [0.8]
    assert _values(fake.log, "forgesweep_serve_errors_total", stage="unresolved", code="unknown_stage") == [1]
    assert _values(fake.log, "forgesweep_serve_requests_total", stage="unresolved", status=404) == [1]
    assert _values(fake.log, "forgesweep_serve_errors_total", stage=1, code="internal_error",
                   route="/v1/detect/video") == [1]
    assert len(_values(fake.log, "forgesweep_serve_predictions_total")) == 1, "no verdict, no prediction"


class _Ingress:
    def __init__(self, metrics):
        self.metrics = metrics

    @observed("/v1/detect")
    async def detect(self, request: str, stage: int = 2) -> dict:
        """Route docstring."""
        observe_stage(stage)
        if request == "bad":
            raise RequestError(503, "model_unavailable", "stage 2 failed to load")
        return {"fake_probability": 0.3, "label": "real", "stage": stage}


def test_observed_routes_keep_their_signature_and_report_stage_and_verdict():
    import asyncio

    metrics, fake, _ = _serving()
    ingress = _Ingress(metrics)
    assert _Ingress.detect.__qualname__ == "_Ingress.detect" and _Ingress.detect.__doc__ == "Route docstring."
    assert list(inspect.signature(_Ingress.detect).parameters) == ["self", "request", "stage"]
    assert asyncio.run(ingress.detect("ok", stage=4)) == {"fake_probability": 0.3, "label": "real", "stage": 4}
    with pytest.raises(RequestError):
        asyncio.run(ingress.detect("bad"))
    observe_stage(9)  # outside a request: nothing to tell, nothing happens
    assert _values(fake.log, "forgesweep_serve_predictions_total", stage=4, label="real") == [1]
    assert _values(fake.log, "forgesweep_serve_errors_total", stage=2, code="model_unavailable") == [1]


def test_a_broken_metrics_backend_never_fails_a_request(caplog):
    import asyncio

    metrics, _, _ = _serving(fail=True)
    with caplog.at_level(logging.WARNING, logger="forgesweep.observability"):
        assert asyncio.run(_Ingress(metrics).detect("ok"))["label"] == "real"
    assert "forgesweep_serve_requests_total" in caplog.text
