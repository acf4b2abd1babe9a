"""The typed experiment config: YAML files plus ``--set a.b=c`` overrides, validated by pydantic.

One :class:`ExperimentConfig` describes a whole experiment: data, model, continual strategy,
training, sweep and tracking. Every section forbids unknown keys, so a misspelled key (in a
YAML file, a ``--set`` override or a sweep search space) fails loudly with the field's dotted
name instead of being silently ignored.

A YAML file may start from another one with ``extends: other.yaml`` (a path relative to the
file); its keys are merged over the other file's, recursively.

Example:
    >>> cfg = load_config("jobs/configs/default.yaml", ["strategy.kd_temperature=2.0"])
    >>> cfg.strategy.params.kd_temperature
    2.0
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Sequence, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from forgesweep.data.synthetic.generate import SyntheticSpec
from forgesweep.errors import ConfigError, UserError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskSpec(_Strict):
    """One task of a continual sequence: the manifest rows it trains and tests on.

    A plain string ``"Deepfakes"`` in YAML is short for
    ``{name: Deepfakes, methods: [real, Deepfakes]}`` (reals plus one method's fakes).
    """

    name: str = Field(min_length=1)
    methods: list[str] = Field(min_length=1, description="manifest methods included (reals are 'real')")
    datasets: Optional[list[str]] = Field(None, description="restrict to these manifest datasets")


class DataConfig(_Strict):
    """Where the samples come from and how they are split into tasks."""

    root: str = Field("data/synthetic", description="folder of the manifest; relative to the working dir")
    manifest: Optional[str] = Field(None, description="manifest path; default <root>/manifest.jsonl")
    generate_if_missing: bool = Field(True, description="generate the synthetic benchmark when absent")
    verify_frames: bool = Field(True, description="check every frame is a readable image before training")
    synthetic: SyntheticSpec = Field(default_factory=SyntheticSpec)
    sequence: list[TaskSpec] = Field(
        default_factory=lambda: [TaskSpec(name=m, methods=["real", m]) for m in
                                 ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")],
        min_length=1,
    )
    image_size: int = Field(64, ge=16, le=1024, description="frames are resized to this square size")
    batch_size: int = Field(32, ge=1, le=4096)
    eval_batch_size: int = Field(256, ge=1, le=65536)
    horizontal_flip: bool = Field(True, description="random horizontal flip while training")

    @field_validator("sequence", mode="before")
    @classmethod
    def _expand_shorthand(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": v, "methods": ["real", v]} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _unique_task_names(self) -> "DataConfig":
        names = [t.name for t in self.sequence]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"task names must be unique in data.sequence, repeated: {sorted(dup)}")
        return self

    def manifest_path(self) -> Path:
        """Absolute manifest path."""
        return Path(self.manifest).resolve() if self.manifest else Path(self.root).resolve() / "manifest.jsonl"


class ComponentConfig(BaseModel):
    """A registered component (model or strategy): ``name`` plus that component's own parameters.

    The parameters sit beside ``name`` in YAML and are validated by the component's parameter
    model, so ``strategy.kd_temprature`` fails with the component's own error message.
    """

    model_config = ConfigDict(extra="allow")
    name: str

    _params: Any = PrivateAttr(None)

    @property
    def raw_params(self) -> dict[str, Any]:
        """The parameters as written (everything except ``name``)."""
        return dict(self.model_extra or {})


class ModelConfig(ComponentConfig):
    """``model:`` section: ``name`` of a registered architecture, optional ``preset``, parameters."""

    name: str = "rsia_lite"

    @model_validator(mode="after")
    def _validate_params(self) -> "ModelConfig":
        from forgesweep.models.registry import MODELS, resolve_model_params

        if self.name not in MODELS:
            raise ConfigError(f"model.name: unknown model {self.name!r}; known: {', '.join(MODELS.names())}")
        self._params = resolve_model_params(self.name, self.raw_params)
        return self

    @property
    def params(self) -> BaseModel:
        """The validated parameter model of the architecture."""
        return self._params


class StrategyConfig(ComponentConfig):
    """``strategy:`` section: ``name`` of a registered continual strategy plus its parameters."""

    name: str = "cffd"

    @model_validator(mode="after")
    def _validate_params(self) -> "StrategyConfig":
        from forgesweep.continual import STRATEGIES, resolve_strategy_params

        if self.name not in STRATEGIES:
            raise ConfigError(f"strategy.name: unknown strategy {self.name!r}; known: {', '.join(STRATEGIES.names())}")
        self._params = resolve_strategy_params(self.name, self.raw_params)
        return self

    @property
    def params(self) -> BaseModel:
        """The validated parameter model of the strategy."""
        return self._params


class TrainConfig(_Strict):
    """The per-worker training loop and its Ray Train scaling."""

    epochs_per_task: int = Field(3, ge=1, le=1000)
    lr: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(0.0, ge=0, le=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    num_workers: int = Field(1, ge=1, le=4096, description="Ray Train workers (DDP ranks)")
    use_gpu: Union[bool, Literal["auto"]] = Field("auto", description="auto: GPUs when the cluster has them")
    cpus_per_worker: float = Field(1.0, gt=0, le=256)
    gpus_per_worker: float = Field(1.0, gt=0, le=8)
    max_failures: int = Field(0, ge=-1, description="restarts from the latest stage checkpoint; -1 = forever")
    storage_path: str = Field("forgesweep_runs", description="Ray storage for checkpoints (local dir or s3://)")
    deterministic: bool = Field(False, description="torch deterministic algorithms (slower)")


class ParamSpace(_Strict):
    """One search-space dimension of the sweep."""

    type: Literal["uniform", "loguniform", "int", "categorical"]
    low: Optional[float] = None
    high: Optional[float] = None
    choices: Optional[list[Any]] = None

    @model_validator(mode="after")
    def _check_bounds(self) -> "ParamSpace":
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty 'choices' list")
        else:
            if self.low is None or self.high is None:
                raise ValueError(f"{self.type} needs 'low' and 'high'")
            if self.low > self.high:
                raise ValueError(f"low ({self.low}) is greater than high ({self.high})")
            if self.type == "loguniform" and self.low <= 0:
                raise ValueError("loguniform needs low > 0")
        return self


class SchedulerConfig(_Strict):
    """Early stopping across task stages (ASHA); ``type: none`` runs every trial to the end."""

    type: Literal["asha", "none"] = "asha"
    grace_period: int = Field(2, ge=1, description="stages every trial runs before it can be stopped")
    reduction_factor: float = Field(2.0, gt=1)


class SweepConfig(_Strict):
    """Ray Tune + Optuna sweep over dotted config keys."""

    name: Optional[str] = Field(None, description="unique sweep name; default <experiment>-<timestamp>")
    num_samples: int = Field(8, ge=1, le=100000)
    max_concurrent_trials: int = Field(2, ge=1, le=10000)
    metric: str = Field("avg_acc", description="per-stage metric; its last-stage value is the objective")
    mode: Literal["max", "min"] = "max"
    seed: Optional[int] = Field(0, description="Optuna sampler seed (None = random)")
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    space: dict[str, ParamSpace] = Field(default_factory=dict)
    optuna_storage: Optional[str] = Field(None, description="Optuna RDB URL to persist the study")


class TrackingConfig(_Strict):
    """MLflow tracking and model registry."""

    tracking_uri: Optional[str] = Field(
        None, description="default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlruns/mlflow.db")
    artifact_location: Optional[str] = Field(
        None, description="artifact root of a new experiment; default <cwd>/mlruns/artifacts")
    experiment: str = Field("forgesweep-cffd", min_length=1)
    registered_model: str = Field("cffd-synthetic", min_length=1)
    register_models: bool = Field(True, description="register the best trial's stage models with stage-k aliases")

    def resolved_tracking_uri(self) -> str:
        """Config value, else ``MLFLOW_TRACKING_URI``, else a sqlite file under the working dir."""
        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if uri:
            return uri
        return f"sqlite:///{Path('mlruns').resolve() / 'mlflow.db'}"

    def resolved_artifact_location(self) -> str:
        """Artifact root for a newly created experiment."""
        return self.artifact_location or str(Path("mlruns").resolve() / "artifacts")


class ExperimentConfig(_Strict):
    """The whole experiment."""

    name: str = Field("cffd-synthetic", min_length=1)
    seed: int = Field(0, ge=0)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-safe dict that :func:`validate_config` turns back into this config."""
        return self.model_dump(mode="json")

    def with_absolute_paths(self) -> "ExperimentConfig":
        """A copy whose local paths are absolute, resolved against the current directory.

        The driver calls this before handing the config to Ray workers, which run in other
        directories (and on other nodes, where a shared path must be absolute anyway).
        """
        data = self.to_dict()
        data["data"]["root"] = str(Path(self.data.root).resolve())
        if self.data.manifest and "://" not in self.data.manifest:
            data["data"]["manifest"] = str(Path(self.data.manifest).resolve())
        if "://" not in self.train.storage_path:
            data["train"]["storage_path"] = str(Path(self.train.storage_path).resolve())
        data["tracking"]["tracking_uri"] = self.tracking.resolved_tracking_uri()
        data["tracking"]["artifact_location"] = self.tracking.resolved_artifact_location()
        return validate_config(data)


# ---------------------------------------------------------------------------------------------
# Loading


def _format_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if not str(p).startswith("function-"))
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    value = first.get("input")
    shown = "" if first["type"] in ("extra_forbidden", "missing") or isinstance(value, (dict, list)) else f" (got {value!r})"
    extra = f" [and {len(exc.errors()) - 1} more]" if len(exc.errors()) > 1 else ""
    return f"{loc or 'config'}: {msg}{shown}{extra}"


def validate_config(data: Mapping[str, Any]) -> ExperimentConfig:
    """Validate a plain dict into an :class:`ExperimentConfig`.

    Raises:
        ConfigError: one line naming the first bad field and the problem.
    """
    try:
        return ExperimentConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(f"config error: {_format_error(exc)}") from None
    except UserError as exc:
        raise ConfigError(f"config error: {exc}") from None


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config error: file not found: {path}")
    if path in seen:
        raise ConfigError(f"config error: 'extends' loops back to {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config error: {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config error: {path} must hold a mapping at the top level")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    base = _read_yaml((path.parent / parent).resolve(), seen + (path,))
    return deep_merge(base, data)


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``over`` into a copy of ``base`` (mappings merge, anything else replaces)."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for ``dotted == "a.b"``, creating missing mappings.

    Raises:
        ConfigError: when a prefix of the path is not a mapping.
    """
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"config error: bad key {dotted!r}")
    node = data
    for i, part in enumerate(parts[:-1]):
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"config error: {'.'.join(parts[:i + 1])} is not a section, cannot set {dotted}")
        node = nxt
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key=value``; the value is parsed as YAML (``2.0`` -> float, ``[a, b]`` -> list)."""
    if "=" not in text:
        raise ConfigError(f"config error: override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_config_dict(path: Optional[str | Path] = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a YAML config (with ``extends``) and apply ``key=value`` overrides, unvalidated."""
    data = _read_yaml(Path(path).resolve()) if path else {}
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(data, key, value)
    return data


def load_config(path: Optional[str | Path] = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Load, override and validate an experiment config.

    Args:
        path: YAML file; None starts from the built-in defaults.
        overrides: ``key=value`` strings, e.g. ``strategy.kd_temperature=2.0``.

    Raises:
        ConfigError: missing file, invalid YAML, unknown key, wrong type, value out of range.
    """
    return validate_config(load_config_dict(path, overrides))
