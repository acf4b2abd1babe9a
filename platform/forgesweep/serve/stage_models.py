"""The model deployment: every stage of a registered model behind one deployment.

* **Multiplexing** (``@serve.multiplexed``): the model id of a request is
  ``stage-<k>:v<version>`` (see :mod:`forgesweep.serve.catalog`). A replica keeps the
  ``model.max_models_per_replica`` most recently used stage models loaded and loads any other
  on demand from the MLflow registry; Serve routes a request preferably to a replica that
  already holds its model.
* **One forward pass per call**: a call carries ``[n, H, W, 3]`` frames -- a batch the ingress
  formed with ``@serve.batch`` (see :mod:`forgesweep.serve.app`), or a video's frames.
* **Compute off the event loop**: forward passes run on one dedicated thread per replica, so
  the replica keeps accepting requests while one computes, and two forward passes never compete
  for the replica's CPUs.
* **Failed loads**: a model that fails to load is answered with :class:`RequestError` 503
  naming the stage and version, the replica stays healthy, and for ``model.load_retry_s``
  seconds further requests for that model fail at once instead of downloading it again.

``@serve.multiplexed`` is applied in ``__init__`` (Serve detects multiplexing wired up this way),
so the cache size comes from the config rather than being fixed when the class is defined.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch
from mlflow.tracking import MlflowClient
from ray import serve

from forgesweep.continual import Strategy, build_strategy
from forgesweep.data.preprocess import to_model_input
from forgesweep.serve.catalog import parse_model_id
from forgesweep.serve.config import validate_serve_config
from forgesweep.serve.errors import RequestError
from forgesweep.train.checkpoint import load_model_from_checkpoint

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class ModelSpec:
    """What the ingress needs to know about a loaded stage model (sent across processes)."""

    model_id: str
    stage: int
    version: str
    architecture: str
    preset: Optional[str]
    strategy: str
    image_size: int
    input_kind: str
    task_names: tuple[str, ...]
    device: str
    # Clip models only (input_kind "clip"): how the video route cuts clips, as evaluation did.
    clip_length: int = 1
    clip_stride: int = 1
    clips_per_video: int = 1


class LoadedStageModel:
    """A detector in eval mode with its spec; scores uint8 frames the way evaluation does.

    Evaluation turns a model's output into logits through its continual strategy
    (``Strategy.predict_logits``: the model's own logit, or e.g. iCaRL's nearest-mean
    classifier), so the strategy is rebuilt from the checkpoint and applied here too.
    """

    def __init__(self, model: torch.nn.Module, strategy: Strategy, spec: ModelSpec) -> None:
        self.model = model
        self.strategy = strategy
        self.spec = spec

    @torch.inference_mode()
    def score(self, frames: list[np.ndarray]) -> list[list[float]]:
        """Fake probabilities for a list of ``[n_i, H, W, 3]`` uint8 arrays, one forward pass."""
        sizes = [len(f) for f in frames]
        batch = to_model_input(torch.from_numpy(np.concatenate(frames))).to(self.spec.device)
        logits = self.strategy.predict_logits(self.model(batch))
        probs = torch.sigmoid(logits).float().cpu().tolist()
        out, start = [], 0
        for n in sizes:
            out.append(probs[start:start + n])
            start += n
        return out

    @torch.inference_mode()
    def clip_logits(self, clips: np.ndarray) -> list[float]:
        """Logit of each clip of ``clips`` (uint8 ``[n, T, H, W, 3]``), one forward pass.

        A video's probability is the sigmoid of its clips' mean logit, as in evaluation
        (:func:`forgesweep.train.loop.predict_video_probs`).
        """
        frames = torch.from_numpy(clips).permute(0, 1, 4, 2, 3)  # [n, T, 3, H, W], as ClipDataset gives
        batch = to_model_input(frames).to(self.spec.device)
        return self.strategy.predict_logits(self.model(batch)).float().cpu().tolist()


def load_stage_model(tracking_uri: str, registered_model: str, model_id: str, device: str) -> LoadedStageModel:
    """Download version ``v`` of ``registered_model`` (model id ``stage-k:v``) and build it.

    The version's artifacts are a stage checkpoint (safetensors + JSON state), so loading never
    unpickles anything.

    Raises:
        Exception: whatever MLflow or the checkpoint reader raise; the deployment wraps it.
    """
    import mlflow.artifacts

    stage, version = parse_model_id(model_id)
    # The version's source is resolved through an explicit client: a ``models:/`` URI would be
    # looked up in the process-wide default registry, not necessarily this one.
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    source = client.get_model_version_download_uri(registered_model, version)
    with tempfile.TemporaryDirectory(prefix="forgesweep-serve-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp, tracking_uri=tracking_uri)
        model, state = load_model_from_checkpoint(local, map_location=device)
    # Only the strategy's JSON state is restored: predict_logits reads nothing else (tensor
    # state such as EWC's Fisher information matters to training only).
    strategy_params = dict(state["config"]["strategy"])
    strategy_name = strategy_params.pop("name")
    strategy = build_strategy(strategy_name, strategy_params, seed=int(state.get("seed", 0)))
    if state.get("strategy"):
        strategy.load_state_dict(state["strategy"])
    model_cfg = state["config"]["model"]
    clip_fields = {}
    if type(model).input_kind == "clip":
        sampling = state["config"]["data"].get("clips", {})
        clip_fields = {"clip_length": int(model.clip_length()), "clip_stride": int(sampling.get("stride", 1)),
                       "clips_per_video": int(sampling.get("eval_clips_per_video", 4))}
    spec = ModelSpec(model_id=model_id, stage=stage, version=version, architecture=model_cfg["name"],
                     preset=model_cfg.get("preset"), strategy=strategy_name,
                     image_size=int(state["config"]["data"]["image_size"]),
                     input_kind=type(model).input_kind, task_names=tuple(state.get("task_names", ())),
                     device=device, **clip_fields)
    return LoadedStageModel(model, strategy, spec)


@serve.deployment(name="StageModels")
class StageModels:
    """All stages of one registered model; call with ``handle.options(multiplexed_model_id=...)``.

    Args:
        config: a :class:`~forgesweep.serve.config.ServeConfig` as a plain dict.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.cfg = validate_serve_config(config)
        # This process is the replica's own: no download progress bars in its log.
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
        self.device = "cuda" if self.cfg.model.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        self._forward_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forgesweep-forward")
        self._failures: dict[str, tuple[float, RequestError]] = {}

        async def load(model_id: str) -> LoadedStageModel:
            return await self._load(model_id)

        self.get_model = serve.multiplexed(max_num_models_per_replica=self.cfg.model.max_models_per_replica)(load)

    async def _load(self, model_id: str) -> LoadedStageModel:
        failed = self._failures.get(model_id)
        if failed is not None and time.monotonic() - failed[0] < self.cfg.model.load_retry_s:
            raise failed[1]
        try:
            stage, version = parse_model_id(model_id)
        except ValueError as exc:
            raise RequestError(400, "invalid_model_id", str(exc)) from None
        began = time.perf_counter()
        try:
            loaded = await asyncio.to_thread(load_stage_model, self.cfg.tracking_uri, self.cfg.registered_model,
                                             model_id, self.device)
        except Exception as exc:  # any failure to load becomes a 503 naming the stage; the replica lives on
            logger.exception("forgesweep: loading %s (%s) failed", model_id, self.cfg.registered_model)
            error = RequestError(503, "model_unavailable",
                                 f"stage {stage} (model {self.cfg.registered_model!r} version {version}) failed to "
                                 f"load: {type(exc).__name__}: {exc}", {"stage": stage, "model_version": version})
            self._failures[model_id] = (time.monotonic(), error)
            raise error from None
        self._failures.pop(model_id, None)
        logger.info("forgesweep: loaded %s (%s) on %s in %.2f s", model_id, loaded.spec.architecture, self.device,
                    time.perf_counter() - began)
        return loaded


    # The two methods the ingress calls answer an expected failure (a model that cannot load,
    # frames that do not fit it) with a RequestError as their *value*: raised, Serve would log
    # it as a crashed call with a full traceback on every request for a broken stage.

    async def describe(self) -> Union[ModelSpec, RequestError]:
        """The spec of the request's model (loading it if needed), or why it cannot load."""
        try:
            return (await self.get_model(serve.get_multiplexed_model_id())).spec
        except RequestError as exc:
            return exc

    async def predict(self, frames: np.ndarray) -> Union[list[float], RequestError]:
        """Fake probability of each frame of ``frames`` (uint8 ``[n, size, size, 3]``).

        Returns:
            The probabilities, or a :class:`RequestError` (503 the model cannot be loaded,
            400 the frames do not fit it).
        """
        try:
            model = await self.get_model(serve.get_multiplexed_model_id())
        except RequestError as exc:
            return exc
        size = model.spec.image_size
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (size, size, 3) or not len(frames):
            return RequestError(400, "bad_input_shape", f"expected uint8 frames [n, {size}, {size}, 3], got "
                                                        f"{frames.dtype} {list(frames.shape)}")
        loop = asyncio.get_running_loop()
        return (await loop.run_in_executor(self._forward_pool, model.score, [frames]))[0]

    async def predict_clips(self, clips: np.ndarray) -> Union[list[float], RequestError]:
        """Logit of each clip of ``clips`` (uint8 ``[n, T, size, size, 3]``) for a clip model.

        Returns:
            The logits, or a :class:`RequestError` (503 the model cannot be loaded, 400 the
            clips do not fit it, 422 the model takes single images).
        """
        try:
            model = await self.get_model(serve.get_multiplexed_model_id())
        except RequestError as exc:
            return exc
        spec = model.spec
        if spec.input_kind != "clip":
            return RequestError(422, "image_model", f"stage {spec.stage}'s model ({spec.architecture}) scores "
                                                    f"single frames, not clips")
        expected = (spec.clip_length, spec.image_size, spec.image_size, 3)
        if clips.dtype != np.uint8 or clips.ndim != 5 or clips.shape[1:] != expected or not len(clips):
            return RequestError(400, "bad_input_shape", f"expected uint8 clips [n, {', '.join(map(str, expected))}], "
                                                        f"got {clips.dtype} {list(clips.shape)}")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._forward_pool, model.clip_logits, clips)
