"""Response bodies of the HTTP API (they make FastAPI's OpenAPI schema describe every route)."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, Field


class Detection(BaseModel):
    """Fields every detection answer carries."""

    fake_probability: float = Field(description="probability that the input is fake, in [0, 1]")
    label: Literal["real", "fake"] = Field(description="'fake' when fake_probability >= threshold")
    threshold: float
    stage: int = Field(description="task stage whose model answered")
    task: Optional[str] = Field(None, description="the task that stage added")
    registered_model: str
    model_version: str = Field(description="MLflow model version behind the stage alias")
    architecture: str = Field(description="registered detector name, e.g. rsia_lite")
    preset: Optional[str] = None
    strategy: str = Field(description="continual strategy; its predict_logits turns outputs into scores")
    image_size: int = Field(description="side of the square frames the model sees")
    latency_ms: float = Field(description="time in the app, from request to answer")


class DetectResponse(Detection):
    """Answer of ``POST /v1/detect``."""


class FrameScore(BaseModel):
    """One sampled video frame's score."""

    index: int = Field(description="frame index in the video")
    fake_probability: float


class ClipScore(BaseModel):
    """One scored clip of a video (clip models)."""

    start: int = Field(description="index of the clip's first frame in the video")
    frames: int = Field(description="frames in the clip")
    logit: float
    fake_probability: float


class VideoDetectResponse(Detection):
    """Answer of ``POST /v1/detect/video``."""

    aggregate: str = Field(description="how frame or clip scores became fake_probability (mean, median, max; "
                                       "mean_logit for clip models: the sigmoid of the clips' mean logit)")
    total_frames: int = Field(description="frames in the video")
    frames: list[FrameScore] = Field(default_factory=list,
                                     description="image models: the sampled frames, in video order")
    clips: list[ClipScore] = Field(default_factory=list,
                                   description="clip models: the scored clips, in video order")


class StageInfo(BaseModel):
    """One stage on offer."""

    stage: int
    alias: str = Field(description="registry alias, stage-<k>")
    model_version: str
    task: Optional[str] = Field(None, description="the task this stage added")
    run_id: Optional[str] = None
    default: bool = Field(description="used when a request names no stage")
    metrics: dict[str, Any] = Field(description="from the registry: avg_acc, forgetting, ..., acc/auc per task")


class StagesResponse(BaseModel):
    """Answer of ``GET /v1/stages``."""

    registered_model: str
    default_stage: Optional[int]
    stages: list[StageInfo]


class StageChange(BaseModel):
    """A stage whose alias moved."""

    stage: int
    from_version: Optional[str]
    to_version: Optional[str]


class ReloadResponse(StagesResponse):
    """Answer of ``POST /v1/reload``."""

    changed: list[StageChange]


class HealthResponse(BaseModel):
    """Answer of ``GET /healthz``."""

    status: Literal["ok"]
    registered_model: str
    stages: list[int]
    default_stage: Optional[int]


class ErrorBody(BaseModel):
    """What went wrong; extra fields (``valid_stages``, ``limit_bytes`` ...) depend on the code."""

    model_config = {"extra": "allow"}
    code: str
    message: str


class ErrorResponse(BaseModel):
    """Body of every 4xx/5xx answer."""

    error: ErrorBody
