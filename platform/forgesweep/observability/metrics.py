"""The project's custom metrics: one catalogue, exported through Ray's metrics API.

Every metric is a ``ray.util.metrics`` Gauge, Counter or Histogram, so it reaches Ray's
Prometheus endpoint (each node's metrics export port, the one ``ray metrics
launch-prometheus`` scrapes) without a second exporter. Ray prefixes application metrics with
``ray_``: ``forgesweep_train_stage`` is scraped as ``ray_forgesweep_train_stage`` (a histogram
``h`` as ``ray_h_bucket``/``_count``/``_sum``), and Ray adds its own labels (``SessionName``,
``NodeAddress``, ``WorkerId``, ...). :data:`CATALOGUE` lists each metric with its type, tags
and where it is recorded; ``dashboards/README.md`` prints the same table.

Recording never breaks the caller: :class:`MetricRecorder` turns a failure (Ray's metrics
unavailable, a bad tag) into one warning per metric and carries on, so a metrics problem
cannot kill a training run or fail an HTTP request. ``FORGESWEEP_METRICS=0`` in a process's
environment turns recording off there.

Example::

    recorder = MetricRecorder()
    recorder.set("forgesweep_train_stage", 2, {"ray_train_run_name": "r", "model": "rsia_lite",
                                               "strategy": "cffd", "ray_train_worker_world_rank": "0"})
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Optional, Protocol

log = logging.getLogger("forgesweep.observability")

# Ray's exporter puts this in front of every application metric name.
PROMETHEUS_PREFIX = "ray_"
DISABLE_ENV = "FORGESWEEP_METRICS"

Kind = Literal["gauge", "counter", "histogram"]

# Tags of training metrics: Ray Train's own label names, so its metrics and ours share
# Grafana variables ($TrainRunName) and join on the same labels.
RUN_TAGS = ("ray_train_run_name", "model", "strategy")
WORKER_TAGS = RUN_TAGS + ("ray_train_worker_world_rank",)
SERVE_TAGS = ("app", "route", "stage")

LATENCY_MS_BOUNDARIES = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)
PROBABILITY_BOUNDARIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class MetricSpec:
    """One custom metric: its name (without Ray's prefix), type, tag keys, meaning and origin."""

    name: str
    kind: Kind
    tags: tuple[str, ...]
    description: str
    recorded: str
    boundaries: tuple[float, ...] = ()

    @property
    def prometheus_names(self) -> tuple[str, ...]:
        """The series names a Prometheus scrape shows for this metric."""
        base = PROMETHEUS_PREFIX + self.name
        if self.kind == "histogram":
            return (f"{base}_bucket", f"{base}_count", f"{base}_sum")
        return (base,)


_WORKER = "train/ray_worker.py, every Ray Train worker"
_RANK0 = "train/ray_worker.py, rank 0, when a stage reports"
_INGRESS = "serve/app.py, the DetectorIngress replica, per detection request"

CATALOGUE: tuple[MetricSpec, ...] = (
    MetricSpec("forgesweep_train_samples_per_second", "gauge", WORKER_TAGS,
               "training samples per second of this worker (batches drawn, forward, backward, step)",
               f"{_WORKER}: at most once a second while training, and at the end of each epoch"),
    MetricSpec("forgesweep_train_samples_total", "counter", WORKER_TAGS,
               "training samples this worker has processed (rate() gives samples/s)",
               f"{_WORKER}: every batch"),
    MetricSpec("forgesweep_train_stage", "gauge", WORKER_TAGS,
               "task stage (1-based) the worker is training", f"{_WORKER}: when an epoch starts"),
    MetricSpec("forgesweep_train_epoch", "gauge", WORKER_TAGS,
               "epoch (1-based, counted within the current stage) the worker is training",
               f"{_WORKER}: when an epoch starts"),
    MetricSpec("forgesweep_task_accuracy", "gauge", RUN_TAGS + ("stage", "task"),
               "ACC on task `task` after training stage `stage`: one cell R[stage][task] of the accuracy matrix",
               _RANK0),
    MetricSpec("forgesweep_task_auc", "gauge", RUN_TAGS + ("stage", "task"),
               "AUC on task `task` after training stage `stage`", _RANK0),
    MetricSpec("forgesweep_avg_accuracy", "gauge", RUN_TAGS,
               "average ACC over the tasks seen, after the latest reported stage", _RANK0),
    MetricSpec("forgesweep_avg_auc", "gauge", RUN_TAGS,
               "average AUC over the tasks seen, after the latest reported stage", _RANK0),
    MetricSpec("forgesweep_forgetting", "gauge", RUN_TAGS,
               "average forgetting after the latest reported stage (lower is better)", _RANK0),
    MetricSpec("forgesweep_stages_completed", "gauge", RUN_TAGS,
               "task stages this run has finished and reported", _RANK0),
    MetricSpec("forgesweep_stage_seconds", "gauge", RUN_TAGS,
               "wall-clock seconds the latest reported stage took (training and evaluation)", _RANK0),
    MetricSpec("forgesweep_replay_buffer_size", "gauge", RUN_TAGS,
               "replayed samples mixed into the latest reported stage's training set (the replay "
               "buffer's size when that stage began; 0 for strategies without replay)", _RANK0),
    MetricSpec("forgesweep_train_loss", "gauge", RUN_TAGS + ("term",),
               "mean of a loss term (`term`: loss, bce, slkd, ...) over the last epoch of the latest stage", _RANK0),
    MetricSpec("forgesweep_serve_requests_total", "counter", SERVE_TAGS + ("status",),
               "detection requests answered, by HTTP status (rate() gives requests/s)", _INGRESS),
    MetricSpec("forgesweep_serve_request_latency_ms", "histogram", SERVE_TAGS,
               "time from a detection request's arrival in the ingress to its answer, in ms", _INGRESS,
               LATENCY_MS_BOUNDARIES),
    MetricSpec("forgesweep_serve_errors_total", "counter", SERVE_TAGS + ("code",),
               "detection requests answered with an error, by error code (`unknown_stage`, ...); stage "
               "`unresolved` when the request failed before its stage was known", _INGRESS),
    MetricSpec("forgesweep_serve_predictions_total", "counter", ("app", "stage", "label"),
               "answered detections by verdict (`label`: fake or real); fake / all gives the fake rate", _INGRESS),
    MetricSpec("forgesweep_serve_fake_probability", "histogram", ("app", "stage"),
               "distribution of the fake probabilities returned (score drift per stage)", _INGRESS,
               PROBABILITY_BOUNDARIES),
)
METRICS: dict[str, MetricSpec] = {m.name: m for m in CATALOGUE}


def catalogue_markdown() -> str:
    """The catalogue as a Markdown table (name as scraped, type, tags, meaning, where recorded)."""
    lines = ["| metric (as scraped) | type | tags | meaning | recorded in |", "|---|---|---|---|---|"]
    for m in CATALOGUE:
        lines.append(f"| `{PROMETHEUS_PREFIX}{m.name}` | {m.kind} | {', '.join(f'`{t}`' for t in m.tags)} | "
                     f"{m.description} | {m.recorded} |")
    return "\n".join(lines)


class MetricFactory(Protocol):
    """Builds the metric object that records ``spec`` (``set``/``inc``/``observe`` with ``tags=``)."""

    def create(self, spec: MetricSpec) -> Any: ...


class RayMetricFactory:
    """``ray.util.metrics`` objects, one per metric name in this process."""

    def __init__(self) -> None:
        self._made: dict[str, Any] = {}
        self._lock = threading.Lock()

    def create(self, spec: MetricSpec) -> Any:
        from ray.util import metrics

        with self._lock:
            metric = self._made.get(spec.name)
            if metric is None:
                if spec.kind == "gauge":
                    metric = metrics.Gauge(spec.name, spec.description, tag_keys=spec.tags)
                elif spec.kind == "counter":
                    metric = metrics.Counter(spec.name, spec.description, tag_keys=spec.tags)
                else:
                    metric = metrics.Histogram(spec.name, spec.description, boundaries=list(spec.boundaries),
                                               tag_keys=spec.tags)
                self._made[spec.name] = metric
            return metric


RAY_METRICS = RayMetricFactory()


def metrics_enabled() -> bool:
    """False when ``FORGESWEEP_METRICS`` is ``0``, ``false``, ``off`` or ``no``."""
    return os.environ.get(DISABLE_ENV, "1").strip().lower() not in {"0", "false", "off", "no"}


class MetricRecorder:
    """Records catalogue metrics; a failure is logged once per metric, never raised.

    Args:
        factory: where metric objects come from (default: ``ray.util.metrics``); tests pass a fake.
        enabled: default :func:`metrics_enabled`.
    """

    _OPS = {"gauge": "set", "counter": "inc", "histogram": "observe"}

    def __init__(self, factory: Optional[MetricFactory] = None, enabled: Optional[bool] = None) -> None:
        self._factory = factory or RAY_METRICS
        self.enabled = metrics_enabled() if enabled is None else enabled
        self._failed: set[str] = set()

    @property
    def failed(self) -> frozenset[str]:
        """Names of metrics whose recording failed at least once (logged once each)."""
        return frozenset(self._failed)

    def set(self, name: str, value: float, tags: Mapping[str, Any]) -> None:
        """Set gauge ``name``."""
        self._record(name, "gauge", value, tags)

    def inc(self, name: str, value: float, tags: Mapping[str, Any]) -> None:
        """Add ``value`` to counter ``name``."""
        self._record(name, "counter", value, tags)

    def observe(self, name: str, value: float, tags: Mapping[str, Any]) -> None:
        """Add one observation to histogram ``name``."""
        self._record(name, "histogram", value, tags)

    def _record(self, name: str, kind: Kind, value: float, tags: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        try:
            spec = METRICS.get(name)
            if spec is None:
                raise KeyError(f"{name!r} is not in the forgesweep metric catalogue")
            if spec.kind != kind:
                raise TypeError(f"{name} is a {spec.kind}, not a {kind}")
            given = set(tags)
            if given != set(spec.tags):
                raise ValueError(f"{name} takes tags {sorted(spec.tags)}, got {sorted(given)}")
            metric = self._factory.create(spec)
            getattr(metric, self._OPS[kind])(float(value), tags={k: str(v) for k, v in tags.items()})
        except Exception as exc:  # metrics must never break training or a request; say so once
            if name not in self._failed:
                self._failed.add(name)
                log.warning("forgesweep metrics: recording %s failed (%s: %s); the work goes on without "
                            "it and further failures of this metric are not logged", name, type(exc).__name__,
                            exc)
