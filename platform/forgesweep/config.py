"""The typed experiment config: YAML files plus ``--set a.b=c`` overrides, validated by pydantic.

One :class:`ExperimentConfig` describes a whole experiment: data, model, continual strategy,
training, sweep and tracking. Every section forbids unknown keys, so a misspelled key (in a
YAML file or a ``--set`` override) fails loudly with the field's dotted name instead of being
silently ignored; :func:`check_search_space` does the same for the keys a sweep searches.

Setting ``model.name`` / ``strategy.name`` to another component drops the old component's
parameters (in ``--set`` overrides and in files that ``extends`` another).

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

from forgesweep.data.clips import ClipSampling
from forgesweep.data.synthetic.generate import SyntheticSpec
from forgesweep.errors import ConfigError, UserError, describe_validation_error


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
    clips: ClipSampling = Field(default_factory=ClipSampling, description="how clip models cut their clips")

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

    def manifest_path(self) -> Union[Path, str]:
        """Absolute manifest path, or its ``s3://`` URI (unchanged)."""
        if self.manifest and self.manifest.startswith("s3://"):
            return self.manifest
        return Path(self.manifest).resolve() if self.manifest else Path(self.root).resolve() / "manifest.jsonl"


class ComponentConfig(BaseModel):
    """A registered component (model or strategy): ``name`` plus that component's own parameters.

    The parameters sit beside ``name`` in YAML and are validated by the component's parameter
    model, so ``strategy.kd_temprature`` fails with the component's own error message.
    """

    model_config = ConfigDict(extra="allow")
    name: str

    _params: Any = PrivateAttr(None)

    @staticmethod
    def _registry() -> tuple[str, Any, Any]:
        """(config section, registry, params resolver) of the component kind."""
        raise NotImplementedError

    @model_validator(mode="after")
    def _validate_params(self) -> "ComponentConfig":
        section, registry, resolve = self._registry()
        if self.name not in registry:
            raise ConfigError(f"{section}.name: unknown {registry.kind} {self.name!r}; "
                              f"known: {', '.join(registry.names())}")
        self._params = resolve(self.name, self.raw_params)
        return self

    @property
    def raw_params(self) -> dict[str, Any]:
        """The parameters as written (everything except ``name``)."""
        return dict(self.model_extra or {})

    @property
    def params(self) -> BaseModel:
        """The component's validated parameter model."""
        return self._params


class ModelConfig(ComponentConfig):
    """``model:`` section: ``name`` of a registered architecture, optional ``preset``, parameters."""

    name: str = "rsia_lite"

    @staticmethod
    def _registry() -> tuple[str, Any, Any]:
        from forgesweep.models.registry import MODELS, resolve_model_params

        return "model", MODELS, resolve_model_params


class StrategyConfig(ComponentConfig):
    """``strategy:`` section: ``name`` of a registered continual strategy plus its parameters."""

    name: str = "cffd"

    @staticmethod
    def _registry() -> tuple[str, Any, Any]:
        from forgesweep.continual import STRATEGIES, resolve_strategy_params

        return "strategy", STRATEGIES, resolve_strategy_params


class TrainConfig(_Strict):
    """The per-worker training loop and its Ray Train scaling."""

    epochs_per_task: int = Field(4, ge=1, le=1000)
    lr: float = Field(2e-3, gt=0, le=10)
    weight_decay: float = Field(0.0, ge=0, le=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    num_workers: int = Field(1, ge=1, le=4096, description="Ray Train workers (DDP ranks)")
    use_gpu: Union[bool, Literal["auto"]] = Field("auto", description="auto: GPUs when the cluster has them")
    cpus_per_worker: float = Field(1.0, gt=0, le=256)
    gpus_per_worker: float = Field(1.0, gt=0, le=8)
    max_failures: int = Field(0, ge=-1, description="restarts from the latest stage checkpoint; -1 = forever")
    storage_path: str = Field("forgesweep_runs", description="Ray storage for checkpoints (local dir or s3://)")
    deterministic: bool = Field(False, description="torch deterministic algorithms (slower)")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="autocast dtype of forward passes: auto = bf16 on CUDA, fp32 on CPU")
    channels_last: Union[bool, Literal["auto"]] = Field(
        "auto", description="channels-last memory format for models with convolutions; auto = on CUDA only")


class FeatureCacheConfig(_Strict):
    """Frozen-feature cache (``forgesweep.features``): a frozen tower's features computed once.

    With ``cache: true`` and a model that declares a frozen tower (``rine_ssca``'s CLIP), a
    sweep extracts the tower's features of every sample before its trials start (a parallel
    Ray job) and every trial trains the rest of the model on them, never running the tower.
    """

    cache: bool = Field(False, description="compute frozen-tower features once and train on them")
    root: str = Field("forgesweep_features", description="cache folder: a local dir or s3://bucket/prefix")
    views: Literal["auto", "identity", "identity+hflip"] = Field(
        "auto", description="cached views per sample; auto = identity+hflip when data.horizontal_flip")
    dtype: Literal["float32", "float16"] = Field("float32", description="storage dtype of cached features")
    shard_size: int = Field(256, ge=1, le=1_000_000, description="samples per shard file (one Ray task each)")
    batch_size: int = Field(64, ge=1, le=65536, description="frames per tower forward pass while extracting")
    cpus_per_task: float = Field(1.0, gt=0, le=256, description="CPUs of each extraction task")
    gpus_per_task: float = Field(0.0, ge=0, le=8, description="GPUs of each extraction task (0: CPU)")


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
    space: dict[str, ParamSpace] = Field(
        default_factory=dict, description="dotted key -> dimension; `key: null` drops a dimension inherited "
                                          "through `extends`")
    optuna_storage: Optional[str] = Field(None, description="Optuna RDB URL to persist the study")
    trial_executor: Literal["auto", "torch_trainer", "in_trial"] = Field(
        "auto", description="how a trial trains: a TorchTrainer (any workers) or in the trial's own process "
                            "(one worker); auto = in_trial for single-worker runs with features.cache")

    @field_validator("space", mode="before")
    @classmethod
    def _drop_nulled_dimensions(cls, value: Any) -> Any:
        # A config that extends another removes an inherited dimension by setting it to null.
        if isinstance(value, Mapping):
            return {k: v for k, v in value.items() if v is not None}
        return value


class TrackingConfig(_Strict):
    """MLflow tracking and model registry."""

    tracking_uri: Optional[str] = Field(
        None, description="default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlruns/mlflow.db")
    artifact_location: Optional[str] = Field(
        None, description="artifact root of a new experiment; default <cwd>/mlruns/artifacts "
                          "(with an http(s) tracking_uri: the server's own)")
    experiment: str = Field("forgesweep-cffd", min_length=1)
    registered_model: str = Field("cffd-synthetic", min_length=1)
    register_models: bool = Field(True, description="register the best trial's stage models with stage-k aliases")

    def resolved_tracking_uri(self) -> str:
        """Config value, else ``MLFLOW_TRACKING_URI``, else a sqlite file under the working dir."""
        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if uri:
            return uri
        return f"sqlite:///{Path('mlruns').resolve() / 'mlflow.db'}"

    def resolved_artifact_location(self) -> Optional[str]:
        """Artifact root for a newly created experiment; ``None`` leaves it to a tracking server
        (its ``--artifacts-destination`` / ``--default-artifact-root``), whose clients may run
        on other machines than this one's ``mlruns/``."""
        if self.artifact_location:
            return self.artifact_location
        if self.resolved_tracking_uri().startswith(("http://", "https://")):
            return None
        return str(Path("mlruns").resolve() / "artifacts")


class MatrixConfig(_Strict):
    """The comparison matrix (``jobs/train_matrix.py``): every model x sequence x strategy x seed.

    Each axis maps a label (used in tables and MLflow tags) to a config section; an empty axis
    means "the config's own" (its ``model``, ``data.sequence``, ``strategy``).
    """

    name: Optional[str] = Field(None, description="unique matrix run name; default <experiment>-matrix-<timestamp>")
    models: dict[str, dict[str, Any]] = Field(default_factory=dict, description="label -> model section")
    strategies: dict[str, dict[str, Any]] = Field(default_factory=dict, description="label -> strategy section")
    sequences: dict[str, list[Union[str, TaskSpec]]] = Field(default_factory=dict,
                                                           description="label -> task sequence")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="a grid axis of seeds")
    max_concurrent_trials: int = Field(2, ge=1, le=10000)

    @field_validator("models", "strategies", "sequences")
    @classmethod
    def _labels_are_mlflow_safe(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Labels become parts of MLflow parameter keys (matrix.strategies.<label>.name).
        for label in value:
            if not label or not all(c.isalnum() or c in "_-. :/" for c in label):
                raise ValueError(f"label {label!r} may only contain letters, digits, '_', '-', '.', ' ', ':' "
                                 f"and '/' (it names MLflow parameters)")
        return value


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
    matrix: MatrixConfig = Field(default_factory=MatrixConfig)
    features: FeatureCacheConfig = Field(default_factory=FeatureCacheConfig)

    @model_validator(mode="after")
    def _strategy_features_exist(self) -> "ExperimentConfig":
        from forgesweep.continual import STRATEGIES
        from forgesweep.models import MODELS

        wanted = STRATEGIES.get(self.strategy.name).required_features(self.strategy.params)
        available = MODELS.get(self.model.name).feature_names_for(self.model.params)
        missing = [name for name in wanted if name not in available]
        if missing:
            layers = getattr(self.strategy.params, "feature_layers", [])
            field = ("strategy.feature_layers" if missing[0] in layers
                     else "strategy.domain_pairs (used by w_hscl / w_domain > 0)")
            raise ConfigError(f"{field}: {missing[0]!r} is not a feature of model "
                              f"{self.model.name!r}; its features: {', '.join(available)}")
        return self

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
        if "://" not in self.features.root:
            data["features"]["root"] = str(Path(self.features.root).resolve())
        data["tracking"]["tracking_uri"] = self.tracking.resolved_tracking_uri()
        data["tracking"]["artifact_location"] = self.tracking.resolved_artifact_location()
        return validate_config(data)


# ---------------------------------------------------------------------------------------------
# Loading


def validate_config(data: Mapping[str, Any]) -> ExperimentConfig:
    """Validate a plain dict into an :class:`ExperimentConfig`.

    Raises:
        ConfigError: one line naming the first bad field and the problem.
    """
    try:
        return ExperimentConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(f"config error: {describe_validation_error(exc)}") from None
    except UserError as exc:
        message = str(exc)
        raise ConfigError(message if message.startswith("config error: ") else f"config error: {message}") from None


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


COMPONENT_SECTIONS = ("model", "strategy")


def _switches_component(key: str, base: Any, over: Any) -> bool:
    # A different component name makes the old component's parameters meaningless.
    return (key in COMPONENT_SECTIONS and isinstance(base, Mapping) and isinstance(over, Mapping)
            and "name" in over and over["name"] != base.get("name"))


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``over`` into a copy of ``base`` (mappings merge, anything else replaces).

    Exception: a ``model`` or ``strategy`` section naming a different component replaces the
    base section whole, so the old component's parameters are not carried over.
    """
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if _switches_component(key, out.get(key), value):
            out[key] = copy.deepcopy(value)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for ``dotted == "a.b"``, creating missing mappings.

    Setting ``model.name`` or ``strategy.name`` to a different component drops the old
    component's parameters (see :func:`deep_merge`).

    Raises:
        ConfigError: when a prefix of the path is not a mapping.
    """
    parts = dotted.split(".")
    if len(parts) == 2 and parts[1] == "name" and _switches_component(parts[0], data.get(parts[0]), {"name": value}):
        data[parts[0]] = {"name": value}
        return
    if not all(parts):
        raise ConfigError(f"config error: bad key {dotted!r}")
    node = data
    for i, part in enumerate(parts[:-1]):
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"config error: {'.'.join(parts[:i + 1])} is not a section, cannot set {dotted}")
        node = nxt
    node[parts[-1]] = value


def check_search_space(cfg: ExperimentConfig) -> None:
    """Validate the config with every bound and choice of every ``sweep.space`` dimension put in.

    A misspelled key (every section forbids unknown keys), a choice the model does not support or
    an impossible range fails before a sweep starts, not in the middle of it. Only the sweep
    command runs this check: ``train`` ignores the ``sweep`` section.

    Raises:
        ConfigError: ``config error: sweep.space.<key> = <value>: <problem>``.
    """
    base = cfg.to_dict()
    base["sweep"]["space"] = {}
    for key, dim in cfg.sweep.space.items():
        values = dim.choices if dim.type == "categorical" else [dim.low, dim.high]
        for value in values:
            value = int(value) if dim.type == "int" else value
            try:
                validate_config(apply_params(base, {key: value}))
            except ConfigError as exc:
                reason = str(exc).removeprefix("config error: ")
                raise ConfigError(f"config error: sweep.space.{key} = {value!r}: {reason}") from None


def apply_params(base: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the config dict ``base`` with ``params`` (dotted keys) set."""
    data = copy.deepcopy(dict(base))
    for key, value in params.items():
        set_dotted(data, key, value)
    return data


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
