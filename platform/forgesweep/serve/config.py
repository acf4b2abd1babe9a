"""The typed serving config: which registered model to serve, limits, batching, scaling.

Kept apart from :class:`forgesweep.config.ExperimentConfig`: a deployment outlives the sweep
that produced its models, and one serving config can front any registered model. Every
section forbids unknown keys, so ``batching.max_batch_sise`` fails loudly with its dotted name.

Example:
    >>> cfg = load_serve_config(None, ["batching.max_batch_size=8", "http.port=8123"])
    >>> cfg.batching.max_batch_size, cfg.http.port
    (8, 8123)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from forgesweep.config import TrackingConfig, load_config_dict
from forgesweep.errors import ConfigError, describe_validation_error

MiB = 1024 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class HttpConfig(_Strict):
    """Where Serve's HTTP proxy listens (used when this process starts Serve)."""

    host: str = Field("127.0.0.1", description="bind address; 0.0.0.0 exposes the app on every interface")
    port: int = Field(8000, ge=1, le=65535)
    route_prefix: str = Field("/", pattern=r"^/", description="the app's routes live under this prefix")


class LimitsConfig(_Strict):
    """Input limits; a request over one is answered 413, not decoded."""

    max_image_bytes: int = Field(10 * MiB, ge=1024, le=1024 * MiB, description="largest image upload")
    max_image_pixels: int = Field(40_000_000, ge=1024, le=1_000_000_000,
                                  description="largest decoded image (width x height), checked before decoding")
    max_video_bytes: int = Field(200 * MiB, ge=1024, le=16 * 1024 * MiB, description="largest video upload")


class VideoConfig(_Strict):
    """How a video is scored."""

    num_frames: int = Field(16, ge=1, le=512, description="evenly spaced frames sampled with decord")
    aggregate: Literal["mean", "median", "max"] = Field(
        "mean", description="how per-frame fake probabilities become the video's probability")


class BatchingConfig(_Strict):
    """Dynamic request batching (``@serve.batch``) of the ingress's call into the model deployment.

    Concurrent requests are grouped by stage, and each group costs one call to the model
    deployment and one forward pass, instead of one of each per request.
    """

    enabled: bool = Field(True, description="false: every request runs its own forward pass")
    max_batch_size: int = Field(16, ge=1, le=4096, description="requests per model call, at most")
    batch_wait_timeout_s: float = Field(0.005, ge=0.0, le=10.0,
                                        description="how long a batch waits to fill after its first request")


class AutoscalingConfig(_Strict):
    """Replica autoscaling of the model deployment (Serve's ``autoscaling_config``)."""

    min_replicas: int = Field(1, ge=0, le=10000)
    max_replicas: int = Field(1, ge=1, le=10000)
    target_ongoing_requests: float = Field(8.0, gt=0, le=100000,
                                           description="requests per replica the autoscaler aims for")

    @model_validator(mode="after")
    def _ordered(self) -> "AutoscalingConfig":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is greater than max_replicas ({self.max_replicas})")
        return self


class ModelDeploymentConfig(_Strict):
    """The deployment that holds the stage models (one deployment, all stages multiplexed)."""

    num_cpus: float = Field(1.0, ge=0, le=1024, description="CPUs per replica (torch uses this many threads)")
    num_gpus: float = Field(0.0, ge=0, le=16, description="GPUs per replica; > 0 runs the models on CUDA")
    max_ongoing_requests: int = Field(32, ge=1, le=100000, description="requests one replica takes at once")
    max_models_per_replica: int = Field(3, ge=1, le=1000,
                                        description="stage models a replica keeps loaded (LRU, @serve.multiplexed)")
    load_retry_s: float = Field(30.0, ge=0, le=86400,
                                description="after a failed load, requests for that model fail fast this long")
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig)


class IngressDeploymentConfig(_Strict):
    """The FastAPI ingress deployment (decoding, validation, routing by stage)."""

    num_cpus: float = Field(0.25, ge=0, le=1024, description="CPUs per replica")
    num_replicas: int = Field(1, ge=1, le=10000)
    max_ongoing_requests: int = Field(128, ge=1, le=100000)


class ServeConfig(_Strict):
    """The whole serving config (``jobs/configs/serve.yaml``)."""

    app_name: str = Field("forgesweep", min_length=1, description="Serve application name")
    registered_model: str = Field("cffd-synthetic", min_length=1, description="MLflow registered model to serve")
    tracking_uri: Optional[str] = Field(
        None, description="default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlruns/mlflow.db")
    default_stage: Optional[int] = Field(None, ge=1, description="stage used when a request names none; null: newest")
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="fake probability at or above which the label is 'fake'")
    registry_refresh_s: float = Field(30.0, ge=0.0, le=86400,
                                      description="the ingress re-reads the stage aliases this often (0: every request)")
    access_log: bool = Field(True, description="Serve logs a line per request and replica; off saves CPU under load")
    http: HttpConfig = Field(default_factory=HttpConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    video: VideoConfig = Field(default_factory=VideoConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    model: ModelDeploymentConfig = Field(default_factory=ModelDeploymentConfig)
    ingress: IngressDeploymentConfig = Field(default_factory=IngressDeploymentConfig)

    @model_validator(mode="after")
    def _batches_can_fill(self) -> "ServeConfig":
        # The ingress forms the batches, and a replica never holds more requests than its
        # max_ongoing_requests: a larger batch size could never be reached.
        if self.batching.enabled and self.ingress.max_ongoing_requests < self.batching.max_batch_size:
            raise ValueError(
                f"ingress.max_ongoing_requests ({self.ingress.max_ongoing_requests}) is smaller than "
                f"batching.max_batch_size ({self.batching.max_batch_size}); raise the first or lower the second")
        return self

    def resolved_tracking_uri(self) -> str:
        """Config value, else ``MLFLOW_TRACKING_URI``, else the sweep's default sqlite store."""
        return TrackingConfig(tracking_uri=self.tracking_uri).resolved_tracking_uri()

    def to_dict(self) -> dict[str, Any]:
        """Plain dict that :func:`validate_serve_config` turns back into this config."""
        return self.model_dump(mode="json")


def validate_serve_config(data: Mapping[str, Any]) -> ServeConfig:
    """Validate a plain dict into a :class:`ServeConfig`.

    Raises:
        ConfigError: one line naming the first bad field and the problem.
    """
    try:
        return ServeConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(f"config error: {describe_validation_error(exc)}") from None


def load_serve_config(path: Optional[str | Path], overrides: Sequence[str] = ()) -> ServeConfig:
    """Load a serving YAML (``extends`` allowed), apply ``key=value`` overrides, validate.

    The tracking URI is resolved here, in the process that reads the config, so replicas
    started elsewhere (other directories, other nodes) read the same registry.

    Args:
        path: YAML file; None starts from the built-in defaults.
        overrides: ``key=value`` strings, e.g. ``batching.max_batch_size=8``.

    Raises:
        ConfigError: missing file, invalid YAML, unknown key, wrong type, value out of range.
    """
    cfg = validate_serve_config(load_config_dict(path, overrides))
    return cfg.model_copy(update={"tracking_uri": cfg.resolved_tracking_uri()})
