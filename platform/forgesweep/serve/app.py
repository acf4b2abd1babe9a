"""The Ray Serve application: a FastAPI ingress in front of the multiplexed stage models.

Routes (all JSON; errors are ``{"error": {"code", "message", ...}}`` with a 4xx/503 status):

* ``POST /v1/detect`` -- one image (raw ``image/*`` body or a multipart ``file``); optional
  stage as query ``?stage=2``, header ``X-Forgesweep-Stage: 2`` or multipart field ``stage``.
* ``POST /v1/detect/video`` -- an mp4/avi/webm video; ``video.num_frames`` frames are sampled
  with decord, scored in one call and aggregated (``video.aggregate``). A clip model's stage
  (e.g. StyleFlow) scores the clips its run was evaluated on instead (``data.clips``: clip
  length, stride, clips per video): probability = sigmoid of the clips' mean logit.
* ``GET /v1/stages`` -- stages, model versions, registry metrics, the task each stage added.
* ``POST /v1/reload`` -- re-read the stage aliases now (hot reload, see below).
* ``GET /healthz``; ``GET /docs`` and ``GET /openapi.json`` come from FastAPI.

Batching: the model call is batched where the requests arrive, in the ingress
(``@serve.batch``, ``batching.max_batch_size`` / ``batching.batch_wait_timeout_s``). Each batch is
split by stage and every stage's group goes to the model deployment as one call, so one hop,
one replica request and one forward pass serve up to ``max_batch_size`` HTTP requests. Batching
inside the model deployment instead would still pay the hop and the replica's request handling
once per HTTP request; behind Serve's Python proxy those costs are larger than the small default
model's forward pass on a CPU (``benchmarks/serve_load.py`` prints the CPU per request of each
process; ``forgesweep serve`` starts Serve's high-throughput mode, where they are small:
:mod:`forgesweep.serve.serving_mode`).

Hot reload: the ingress resolves ``stage-k`` to a model version from a snapshot of the registry
that it re-reads every ``registry_refresh_s`` seconds in the background, or at once on
``POST /v1/reload``. Requests resolved after that carry the new version in their multiplexed
model id, so each model replica loads the new version on its next request for that stage;
requests already running finish on the version they started with. With several ingress
replicas, a reload call reaches one of them; the others follow within ``registry_refresh_s``.

Metrics: every detection request is counted by route, stage and status, timed, and its verdict
counted by label (``forgesweep_serve_*`` in Ray's Prometheus endpoint, see
:mod:`forgesweep.observability.serving` and ``dashboards/grafana/forgesweep_serving.json``).

Usage::

    forgesweep serve                                    # jobs/configs/serve.yaml
    serve run forgesweep.serve.app:app_builder config=jobs/configs/serve.yaml
    ray job submit -- python jobs/serve_best.py --detach
"""

# No ``from __future__ import annotations`` here: Serve rebuilds the route methods' signatures
# for FastAPI, which then cannot resolve annotations kept as strings.
import asyncio
import logging
import math
import time
from typing import Any, Optional

import numpy as np
from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse
from mlflow.tracking import MlflowClient
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from forgesweep.errors import UserError
from forgesweep.observability.serving import ServingMetrics, observe_stage, observed
from forgesweep.serve.catalog import StageCatalog, StageEntry, read_stages
from forgesweep.serve.config import ServeConfig, load_serve_config, validate_serve_config
from forgesweep.serve.errors import RequestError, root_cause
from forgesweep.serve.inputs import (MULTIPART, VIDEO_TYPES, aggregate, decode_image, decode_video,
                                     decode_video_clips, read_upload, video_suffix)
from forgesweep.serve.schemas import (DetectResponse, ErrorResponse, HealthResponse, ReloadResponse, StageInfo,
                                      StagesResponse, VideoDetectResponse)
from forgesweep.serve.stage_models import ModelSpec, StageModels

logger = logging.getLogger("ray.serve")

# Uploads up to this size are decoded on the ingress's event loop (see ``detect``).
INLINE_DECODE_BYTES = 64 * 1024

api = FastAPI(title="forgesweep detector",
              description="Continual face-forgery detection: every task stage of a registered model, over HTTP.")

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse, "description": text} for code, text in {
    400: "empty body, unreadable image/video, bad stage value", 404: "unknown stage",
    413: "upload over the configured size", 415: "unsupported content type",
    422: "the stage's model takes clips, not images", 503: "model or registry unavailable"}.items()}


def _body_doc(kind: str) -> dict[str, Any]:
    binary = {"schema": {"type": "string", "format": "binary"}}
    types = ["image/png", "image/jpeg", "image/webp", "image/bmp"] if kind == "image" else sorted(VIDEO_TYPES)
    content = {t: binary for t in types}
    content[MULTIPART] = {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}, "stage": {"type": "string"}}}}
    return {"requestBody": {"required": True, "content": content}}


@api.exception_handler(RequestError)
async def _request_error(_: Request, exc: RequestError) -> JSONResponse:
    return JSONResponse(exc.to_json(), status_code=exc.status)


_STAGE_QUERY = Query(None, description="task stage: 2 or stage-2 (default: the newest)")
_STAGE_HEADER = Header(None, description="task stage, when the query has none")


@serve.deployment(name="DetectorIngress")
@serve.ingress(api)
class DetectorIngress:
    """HTTP ingress: validates and decodes uploads, resolves stages, calls :class:`StageModels`.

    Args:
        models: handle of the :class:`StageModels` deployment.
        config: a :class:`ServeConfig` as a plain dict.
    """

    def __init__(self, models: DeploymentHandle, config: dict[str, Any]) -> None:
        self.cfg = validate_serve_config(config)
        self.models = models
        # Per request: count, latency, errors and verdicts by stage (forgesweep.observability).
        self.metrics = ServingMetrics(self.cfg.app_name)
        self.catalog = StageCatalog(MlflowClient(tracking_uri=self.cfg.tracking_uri),
                                    self.cfg.registered_model, self.cfg.default_stage, self.cfg.registry_refresh_s)
        self._specs: dict[str, ModelSpec] = {}
        self._handles: dict[str, DeploymentHandle] = {}
        self._refreshing: Optional[asyncio.Future] = None
        self._try_refresh()

        async def score_batch(items: list[tuple[StageEntry, np.ndarray]]) -> list[Any]:
            return await self._score_groups(items)

        self._batched = serve.batch(max_batch_size=self.cfg.batching.max_batch_size,
                                    batch_wait_timeout_s=self.cfg.batching.batch_wait_timeout_s)(score_batch)

    # -- stages and models --------------------------------------------------------------------
    def _try_refresh(self) -> None:
        try:
            self._refresh()
        except RequestError as exc:
            logger.warning("forgesweep: %s", exc.message)

    def _refresh(self) -> list[dict[str, Any]]:
        changes = self.catalog.refresh()
        if changes:
            logger.info("forgesweep: stage aliases of %s: %s", self.cfg.registered_model, changes)
            # Forget what belongs to versions no alias points at any more (new dicts, not edits:
            # this may run in a worker thread while requests read them).
            live = {e.model_id for e in self.catalog.entries()}
            self._specs = {k: v for k, v in self._specs.items() if k in live}
            self._handles = {k: v for k, v in self._handles.items() if k in live}
        return changes

    async def _current_catalog(self) -> StageCatalog:
        if not self.catalog.loaded:
            await asyncio.to_thread(self._try_refresh)
        elif self.catalog.stale() and (self._refreshing is None or self._refreshing.done()):
            # Served from the current snapshot meanwhile: no request waits for the registry.
            self._refreshing = asyncio.ensure_future(asyncio.to_thread(self._try_refresh))
        return self.catalog

    async def _call(self, entry: StageEntry, method: str, *args: Any) -> Any:
        handle = self._handles.get(entry.model_id)
        if handle is None:
            handle = self._handles[entry.model_id] = self.models.options(multiplexed_model_id=entry.model_id)
        try:
            result = await getattr(handle, method).remote(*args)
        except Exception as exc:
            cause = root_cause(exc)
            if isinstance(cause, RequestError):
                raise cause from None
            if isinstance(cause, (RayActorError, BackPressureError, DeploymentUnavailableError)):
                raise RequestError(503, "replica_unavailable", f"no model replica could take the request for stage "
                                   f"{entry.stage}: {type(cause).__name__}", {"stage": entry.stage}) from None
            raise
        if isinstance(result, RequestError):  # an expected failure, answered as a value (see StageModels)
            raise result
        return result

    async def _score(self, entry: StageEntry, frames: np.ndarray) -> list[float]:
        """Fake probabilities of ``frames`` from ``entry``'s model, through the batcher when on."""
        if not self.cfg.batching.enabled:
            return await self._call(entry, "predict", frames)
        result = await self._batched((entry, frames))
        if isinstance(result, RequestError):
            raise result
        return result

    async def _score_groups(self, items: list[tuple[StageEntry, np.ndarray]]) -> list[Any]:
        # A batch may mix stages: one model call (one forward pass) per stage, all at once.
        groups: dict[str, list[int]] = {}
        for i, (entry, _) in enumerate(items):
            groups.setdefault(entry.model_id, []).append(i)
        results: list[Any] = [None] * len(items)

        async def score_group(indices: list[int]) -> None:
            frames = [items[i][1] for i in indices]
            try:
                probs = await self._call(items[indices[0]][0], "predict", np.concatenate(frames))
            except RequestError as exc:  # the group's requests all get it; other stages go on
                for i in indices:
                    results[i] = exc
                return
            start = 0
            for i, f in zip(indices, frames):
                results[i] = probs[start:start + len(f)]
                start += len(f)

        await asyncio.gather(*(score_group(indices) for indices in groups.values()))
        return results

    async def _spec(self, entry: StageEntry) -> ModelSpec:
        spec = self._specs.get(entry.model_id)
        if spec is None:
            spec = await self._call(entry, "describe")
            self._specs[entry.model_id] = spec
        return spec

    async def _resolve(self, request_stage: Optional[str]) -> tuple[StageEntry, ModelSpec]:
        entry = (await self._current_catalog()).resolve(request_stage)
        observe_stage(entry.stage)  # before loading: a stage whose model fails is counted as that stage
        spec = await self._spec(entry)
        return entry, spec

    def _detection(self, entry: StageEntry, spec: ModelSpec, prob: float, began: float) -> dict[str, Any]:
        return {"fake_probability": prob, "label": "fake" if prob >= self.cfg.threshold else "real",
                "threshold": self.cfg.threshold, "stage": entry.stage, "task": entry.task,
                "registered_model": self.cfg.registered_model, "model_version": entry.version,
                "architecture": spec.architecture, "preset": spec.preset, "strategy": spec.strategy,
                "image_size": spec.image_size,
                "latency_ms": (time.perf_counter() - began) * 1000.0}

    def _stages(self) -> dict[str, Any]:
        default = self.catalog.default()
        return {"registered_model": self.cfg.registered_model, "default_stage": default, "stages": [
            StageInfo(stage=e.stage, alias=e.alias, model_version=e.version, task=e.task, run_id=e.run_id,
                      default=e.stage == default, metrics=e.metrics) for e in self.catalog.entries()]}

    # -- routes --------------------------------------------------------------------------------
    @api.post("/v1/detect", response_model=DetectResponse, responses=_ERRORS, openapi_extra=_body_doc("image"),
              summary="Score one image")
    @observed("/v1/detect")
    async def detect(self, request: Request, stage: Optional[str] = _STAGE_QUERY,
                     x_forgesweep_stage: Optional[str] = _STAGE_HEADER) -> dict[str, Any]:
        """Fake probability of one face image, from the model of the requested stage."""
        began = time.perf_counter()
        upload = await read_upload(request, "image", self.cfg.limits.max_image_bytes)
        entry, spec = await self._resolve(stage or x_forgesweep_stage or upload.stage)
        if spec.input_kind != "image":
            raise RequestError(422, "clip_model", f"stage {entry.stage}'s model ({spec.architecture}) scores clips of "
                               f"frames, not single images; send a video to /v1/detect/video")
        if len(upload.data) <= INLINE_DECODE_BYTES:
            # A thread hop costs more than decoding a face crop; only large uploads leave the loop.
            frame = decode_image(upload.data, spec.image_size, self.cfg.limits.max_image_pixels)
        else:
            frame = await asyncio.to_thread(decode_image, upload.data, spec.image_size,
                                            self.cfg.limits.max_image_pixels)
        probs = await self._score(entry, frame[None])
        return self._detection(entry, spec, probs[0], began)

    @api.post("/v1/detect/video", response_model=VideoDetectResponse, responses=_ERRORS,
              openapi_extra=_body_doc("video"), summary="Score a video")
    @observed("/v1/detect/video")
    async def detect_video(self, request: Request, stage: Optional[str] = _STAGE_QUERY,
                           x_forgesweep_stage: Optional[str] = _STAGE_HEADER) -> dict[str, Any]:
        """Sample frames with decord, score them in one call, aggregate to a video probability."""
        began = time.perf_counter()
        upload = await read_upload(request, "video", self.cfg.limits.max_video_bytes)
        entry, spec = await self._resolve(stage or x_forgesweep_stage or upload.stage)
        if spec.input_kind == "clip":
            return await self._detect_clips(entry, spec, upload, began)
        video = await asyncio.to_thread(decode_video, upload.data, video_suffix(upload), self.cfg.video.num_frames,
                                        spec.image_size)
        probs = await self._score(entry, video.frames)
        fields = self._detection(entry, spec, aggregate(probs, self.cfg.video.aggregate), began)
        return {**fields, "aggregate": self.cfg.video.aggregate, "total_frames": video.total_frames,
                "frames": [{"index": i, "fake_probability": p} for i, p in zip(video.indices, probs)]}

    async def _detect_clips(self, entry: StageEntry, spec: ModelSpec, upload: Any, began: float) -> dict[str, Any]:
        # A clip model scores the video as evaluation does: its evenly spaced clips (the run's
        # data.clips geometry) in one forward pass, probability = sigmoid(mean clip logit).
        video = await asyncio.to_thread(decode_video_clips, upload.data, video_suffix(upload), spec.clip_length,
                                        spec.clip_stride, spec.clips_per_video, spec.image_size)
        logits = await self._call(entry, "predict_clips", video.clips)
        prob = 1.0 / (1.0 + math.exp(-sum(logits) / len(logits)))
        fields = self._detection(entry, spec, prob, began)
        return {**fields, "aggregate": "mean_logit", "total_frames": video.total_frames,
                "clips": [{"start": a, "frames": spec.clip_length, "logit": z, "fake_probability": 1 / (1 + math.exp(-z))}
                          for a, z in zip(video.starts, logits)]}

    @api.get("/v1/stages", response_model=StagesResponse, responses=_ERRORS, summary="Stages on offer")
    async def stages(self) -> StagesResponse:
        """Every stage alias with its model version, registry metrics and the task it added."""
        catalog = await self._current_catalog()
        catalog.require()
        return StagesResponse(**self._stages())

    @api.post("/v1/reload", response_model=ReloadResponse, responses=_ERRORS, summary="Re-read the stage aliases")
    async def reload(self) -> ReloadResponse:
        """Re-read the registry now; stages whose alias moved are served from their new version on."""
        changes = await asyncio.to_thread(self._refresh)
        return ReloadResponse(**self._stages(), changed=changes)

    @api.get("/healthz", response_model=HealthResponse, responses=_ERRORS, summary="Readiness")
    async def healthz(self) -> HealthResponse:
        """200 when the registry was read and at least one stage is on offer, else 503."""
        catalog = await self._current_catalog()
        catalog.require()
        return HealthResponse(status="ok", registered_model=self.cfg.registered_model,
                              stages=[e.stage for e in catalog.entries()], default_stage=catalog.default())


# ---------------------------------------------------------------------------------------------
# Building and deploying


def build_app(cfg: ServeConfig) -> serve.Application:
    """The application graph: ingress -> stage models, with the config's resources and scaling."""
    m = cfg.model
    logging_config = {"enable_access_log": cfg.access_log}
    options: dict[str, Any] = {"ray_actor_options": {"num_cpus": m.num_cpus, "num_gpus": m.num_gpus},
                               "max_ongoing_requests": m.max_ongoing_requests, "logging_config": logging_config}
    scaling = m.autoscaling
    if scaling.min_replicas == scaling.max_replicas:
        options["num_replicas"] = scaling.max_replicas  # nothing to scale: skip the autoscaler's metrics
    else:
        options["autoscaling_config"] = {"min_replicas": scaling.min_replicas, "max_replicas": scaling.max_replicas,
                                         "target_ongoing_requests": scaling.target_ongoing_requests}
    models = StageModels.options(**options).bind(cfg.to_dict())
    return DetectorIngress.options(num_replicas=cfg.ingress.num_replicas,
                                   max_ongoing_requests=cfg.ingress.max_ongoing_requests,
                                   ray_actor_options={"num_cpus": cfg.ingress.num_cpus},
                                   logging_config=logging_config).bind(models, cfg.to_dict())


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Builder for ``serve run`` / a Serve config file: ``config=<yaml>`` plus dotted overrides.

    Example::

        serve run forgesweep.serve.app:app_builder config=jobs/configs/serve.yaml batching.max_batch_size=8
    """
    args = dict(args)
    path = args.pop("config", None)
    return build_app(load_serve_config(path, [f"{k}={v}" for k, v in args.items()]))


def preflight(cfg: ServeConfig) -> list[StageEntry]:
    """The stages the app will serve, read before deploying so a wrong name fails at once.

    Raises:
        UserError: the registry cannot be read, the model does not exist or has no stage aliases.
    """
    try:
        entries = read_stages(MlflowClient(tracking_uri=cfg.tracking_uri), cfg.registered_model)
    except RequestError as exc:
        raise UserError(f"{exc.message} (tracking URI {cfg.tracking_uri}); run a sweep first "
                        f"(python jobs/sweep_cffd.py) or set registered_model / tracking_uri") from None
    if not entries:
        raise UserError(f"registered model {cfg.registered_model!r} has no stage-<k> aliases in {cfg.tracking_uri}")
    if cfg.default_stage is not None and cfg.default_stage not in {e.stage for e in entries}:
        raise UserError(f"default_stage: stage {cfg.default_stage} is not registered; stages: "
                        f"{', '.join(str(e.stage) for e in entries)}")
    return entries


def deploy(cfg: ServeConfig) -> str:
    """Start Serve's HTTP proxy (if not running) and deploy the app; returns its base URL.

    Ray must already be initialised (:func:`forgesweep.train.ray_session.connect_ray`). When
    Serve already runs on the cluster, its HTTP host and port stay what they were.
    """
    serve.start(http_options={"host": cfg.http.host, "port": cfg.http.port})
    serve.run(build_app(cfg), name=cfg.app_name, route_prefix=cfg.http.route_prefix)
    prefix = cfg.http.route_prefix.rstrip("/")
    return f"http://{cfg.http.host}:{cfg.http.port}{prefix}"
