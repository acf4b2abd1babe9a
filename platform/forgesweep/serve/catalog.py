"""The stages on offer: a snapshot of a registered model's ``stage-k`` aliases in MLflow.

A sweep registers, for each task stage k, a version of one model with alias ``stage-k`` and
tags ``forgesweep.task`` (the task stage k added) and ``metric.*`` (``metric.acc/<task>`` ...),
see :mod:`forgesweep.tracking.model_registry`. The catalog reads those aliases and tags; the
ingress uses it to resolve the stage a request names, to answer ``GET /v1/stages`` and to build
the multiplexed model id ``stage-<k>:v<version>``.

Why the version is part of the model id: a replica caches models by id. When a newer version
takes alias ``stage-k``, the next snapshot yields a new id, so replicas load the new version on
its first request while requests already running finish on the old one (which the LRU cache
evicts later). Nothing is ever swapped under a running request.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from forgesweep.serve.errors import RequestError
from forgesweep.tracking.model_registry import stage_alias

_ALIAS = re.compile(r"^stage-(\d+)$")
_MODEL_ID = re.compile(r"^stage-(\d+):v(\d+)$")
_STAGE_TEXT = re.compile(r"^(?:stage-)?(\d+)$")


@dataclass(frozen=True)
class StageEntry:
    """One stage alias and the model version it points at."""

    stage: int
    version: str
    task: Optional[str]
    run_id: Optional[str]
    source: str
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def alias(self) -> str:
        return stage_alias(self.stage)

    @property
    def model_id(self) -> str:
        """The multiplexed model id: alias and version (see the module docstring)."""
        return f"{self.alias}:v{self.version}"


def parse_model_id(model_id: str) -> tuple[int, str]:
    """``"stage-2:v7"`` -> ``(2, "7")``.

    Raises:
        ValueError: for any other shape.
    """
    match = _MODEL_ID.match(model_id)
    if not match:
        raise ValueError(f"not a forgesweep model id (stage-<k>:v<version>): {model_id!r}")
    return int(match.group(1)), match.group(2)


def metrics_from_tags(tags: dict[str, str]) -> dict[str, Any]:
    """``metric.*`` version tags -> ``{"avg_acc": 0.9, "acc": {"Deepfakes": 0.95}, ...}``.

    Per-task metrics (``metric.acc/<task>``) are grouped by metric name; tags whose value is not
    a number are skipped (they were not written by forgesweep).
    """
    out: dict[str, Any] = {}
    for key, text in sorted(tags.items()):
        if not key.startswith("metric."):
            continue
        try:
            value = float(text)
        except ValueError:
            continue
        name = key[len("metric."):]
        if "/" in name:
            group, task = name.split("/", 1)
            out.setdefault(group, {})[task] = value
        else:
            out[name] = value
    return out


def read_stages(client: MlflowClient, name: str) -> list[StageEntry]:
    """The ``stage-k`` aliases of registered model ``name``, in stage order.

    Raises:
        RequestError: 503 when the registry cannot be read or has no such model.
    """
    try:
        registered = client.get_registered_model(name)
        entries = []
        for alias, version in sorted(registered.aliases.items()):
            match = _ALIAS.match(alias)
            if not match:
                continue
            mv = client.get_model_version(name, str(version))
            entries.append(StageEntry(stage=int(match.group(1)), version=str(mv.version),
                                      task=mv.tags.get("forgesweep.task"), run_id=mv.run_id, source=mv.source,
                                      metrics=metrics_from_tags(dict(mv.tags))))
    except MlflowException as exc:
        raise RequestError(503, "registry_unavailable",
                           f"cannot read registered model {name!r} from the MLflow registry: {exc.message}") from None
    return sorted(entries, key=lambda e: e.stage)


class StageCatalog:
    """A refreshable snapshot of the stages of one registered model.

    Thread-safe: the ingress refreshes it in a worker thread while requests read it.

    Args:
        client: MLflow client on the tracking/registry URI.
        name: the registered model.
        default_stage: stage used when a request names none (None: the newest stage).
        refresh_s: a snapshot older than this is stale (see :meth:`stale`).
        clock: monotonic clock (tests pass a fake one).
    """

    def __init__(self, client: MlflowClient, name: str, default_stage: Optional[int] = None,
                 refresh_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.name = name
        self.default_stage = default_stage
        self.refresh_s = refresh_s
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[int, StageEntry] = {}
        self._loaded_at: Optional[float] = None
        self._error: Optional[RequestError] = None

    @property
    def loaded(self) -> bool:
        """Whether a snapshot was ever read successfully."""
        return self._loaded_at is not None

    def stale(self) -> bool:
        """Whether the snapshot is older than ``refresh_s`` (or was never read)."""
        return self._loaded_at is None or self._clock() - self._loaded_at >= self.refresh_s

    def refresh(self) -> list[dict[str, Any]]:
        """Re-read the aliases; returns the stages whose version changed.

        On failure the previous snapshot stays in use and the error is remembered (it is what
        requests get when there never was a snapshot).

        Raises:
            RequestError: 503 when the registry cannot be read.
        """
        try:
            entries = {e.stage: e for e in read_stages(self.client, self.name)}
        except RequestError as exc:
            with self._lock:
                self._error = exc
            raise
        with self._lock:
            old = {k: e.version for k, e in self._entries.items()}
            new = {k: e.version for k, e in entries.items()}
            changes = [{"stage": k, "from_version": old.get(k), "to_version": new.get(k)}
                       for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
            self._entries = entries
            self._loaded_at = self._clock()
            self._error = None
        return changes

    def entries(self) -> list[StageEntry]:
        """The current stages, in order."""
        with self._lock:
            return [self._entries[k] for k in sorted(self._entries)]

    def default(self) -> Optional[int]:
        """The stage a request without one gets: the configured one, else the newest."""
        with self._lock:
            if self.default_stage is not None:
                return self.default_stage
            return max(self._entries) if self._entries else None

    def require(self) -> dict[int, StageEntry]:
        """The current stages by number, when there are any.

        Raises:
            RequestError: 503 with the registry's error when no snapshot could ever be read, or
                when the registered model has no stage aliases.
        """
        with self._lock:
            entries = dict(self._entries)
            error = self._error if self._loaded_at is None else None
        if error is not None:
            raise error
        if not entries:
            raise RequestError(503, "no_stages", f"registered model {self.name!r} has no stage-<k> aliases yet")
        return entries

    def resolve(self, requested: Optional[str]) -> StageEntry:
        """The entry of the stage a request names (``"2"`` or ``"stage-2"``; None: the default).

        Raises:
            RequestError: 404 for an unknown stage (listing the valid ones), 400 for a value
                that is not a stage, 503 when no snapshot could be read or no stage exists.
        """
        entries = self.require()
        valid = sorted(entries)
        if requested is None or requested.strip() == "":
            stage = self.default()
        else:
            match = _STAGE_TEXT.match(requested.strip().lower())
            if not match:
                raise RequestError(400, "invalid_stage", f"stage must be a number or 'stage-<k>', got {requested!r}",
                                   {"valid_stages": valid})
            stage = int(match.group(1))
        if stage not in entries:
            raise RequestError(404, "unknown_stage",
                               f"stage {stage} is not served; valid stages: {', '.join(map(str, valid))}",
                               {"valid_stages": valid})
        return entries[stage]
