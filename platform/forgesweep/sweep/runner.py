"""Runs a whole sweep: checks, Ray Tune + Optuna over TorchTrainer trials, MLflow, registry.

Order of work (bad input fails in the first two steps, before anything is written):

1. validate the config and the search space; build the model and strategy once as a check;
2. prepare the data (generate the synthetic benchmark if needed, validate the manifest);
3. connect to Ray, open the MLflow parent run, run the Tuner;
4. pick the best trial among those that finished every stage, register its stage-k checkpoints
   as versions of one registered model with aliases ``stage-k``;
5. print the summary table and the command that opens the MLflow UI.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from forgesweep.config import ExperimentConfig
from forgesweep.continual import build_strategy
from forgesweep.data.prepare import prepare_data
from forgesweep.errors import ConfigError, SweepFailed
from forgesweep.metrics import AccuracyMatrix
from forgesweep.models import build_model
from forgesweep.sweep.mlflow_callback import MLflowTrialCallback, echo_stdout
from forgesweep.config import apply_params, check_search_space
from forgesweep.sweep.space import tune_space
from forgesweep.tracking.model_registry import StageChoice, register_stage_models
from forgesweep.tracking.runs import SweepRunLogger, TrialRecord, ensure_experiment, open_client
from forgesweep.train.trainer import storage_path


TRIAL_DRIVER_MEMORY = 16 * 1024**2


@dataclass
class SweepOutcome:
    """What a finished sweep produced."""

    sweep_name: str
    tracking_uri: str
    parent_run_id: str
    best: TrialRecord
    registered_model: Optional[str]
    versions: list[Any]
    seconds: float


def preflight(cfg: ExperimentConfig, search_space: bool = True) -> None:
    """Checks that need no data and no Ray: search space (for sweeps), model and strategy construction."""
    if search_space:
        check_search_space(cfg)
    build_model(cfg.model.name, cfg.model.params)
    build_strategy(cfg.strategy.name, cfg.strategy.params)
    if cfg.sweep.scheduler.type == "asha" and cfg.sweep.scheduler.grace_period > len(cfg.data.sequence):
        raise ConfigError(f"config error: sweep.scheduler.grace_period ({cfg.sweep.scheduler.grace_period}) "
                          f"exceeds the number of tasks ({len(cfg.data.sequence)})")


def unique_sweep_name(cfg: ExperimentConfig) -> str:
    """The configured sweep name, or ``<experiment name>-<UTC timestamp>``.

    Raises:
        ConfigError: when a sweep of that name already exists in the storage path (Tune would
            overwrite its state).
    """
    name = cfg.sweep.name or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    root = storage_path(cfg)
    if "://" not in root and (Path(root) / name).exists():
        raise ConfigError(f"config error: sweep.name: a sweep named {name!r} already exists in {root}; "
                          f"choose another name")
    return name


def select_best(trials: dict[str, TrialRecord], num_tasks: int, metric: str, mode: str) -> TrialRecord:
    """Best trial by its last-stage ``metric`` among trials that completed every stage."""
    complete = [t for t in trials.values() if t.last_stage == num_tasks and metric in t.stages[num_tasks]]
    if not complete:
        failed = sum(1 for t in trials.values() if t.status == "FAILED")
        raise SweepFailed(f"no trial completed every task stage ({failed} of {len(trials)} trials failed; "
                          f"their errors are in the Ray logs and the MLflow runs); nothing was registered")
    sign = 1 if mode == "max" else -1
    return max(complete, key=lambda t: sign * t.stages[num_tasks][metric])


def run_sweep(cfg: ExperimentConfig, echo: Callable[[str], None] = echo_stdout) -> SweepOutcome:
    """Run the sweep described by ``cfg`` end to end (see the module docstring).

    Args:
        cfg: the validated experiment config.
        echo: receives the progress lines (must be picklable: Tune stores its callbacks).
    """
    import ray
    from optuna.samplers import TPESampler
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from forgesweep.sweep.trial import run_trial
    from forgesweep.train.ray_session import connect_ray
    from forgesweep.train.trainer import resolve_use_gpu

    began = time.perf_counter()
    cfg = cfg.with_absolute_paths()
    preflight(cfg)
    sweep_name = unique_sweep_name(cfg)
    _, tasks = prepare_data(cfg, echo)
    task_names = [t.name for t in tasks]

    echo(f"[ray] {connect_ray()}")
    use_gpu = resolve_use_gpu(cfg)
    tracking_uri = cfg.tracking.resolved_tracking_uri()
    client = open_client(tracking_uri)
    experiment_id = ensure_experiment(client, cfg.tracking.experiment, cfg.tracking.resolved_artifact_location())
    base = cfg.to_dict()
    logger = SweepRunLogger(client, experiment_id, sweep_name, base, task_names)
    parent = logger.start_parent({k: v.model_dump(exclude_none=True) for k, v in cfg.sweep.space.items()})
    echo(f"[mlflow] tracking to {tracking_uri} (experiment {cfg.tracking.experiment!r}, run {parent})")

    s = cfg.sweep
    search = OptunaSearch(sampler=TPESampler(seed=s.seed), storage=_optuna_storage(s.optuna_storage),
                          study_name=sweep_name if s.optuna_storage else None)
    scheduler = None
    if s.scheduler.type == "asha":
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=len(tasks),
                                  grace_period=s.scheduler.grace_period, reduction_factor=s.scheduler.reduction_factor)
    trainable = tune.with_parameters(run_trial, base_config=base, sweep_name=sweep_name, use_gpu=use_gpu)
    # The trial driver only waits on its TorchTrainer: it holds no CPU (a token amount of memory
    # makes the request valid), so every core goes to the Ray Train workers.
    trainable = tune.with_resources(trainable, {"CPU": 0, "memory": TRIAL_DRIVER_MEMORY})
    tuner = tune.Tuner(
        trainable,
        param_space=tune_space(s.space),
        tune_config=tune.TuneConfig(metric=s.metric, mode=s.mode, search_alg=search, scheduler=scheduler,
                                    num_samples=s.num_samples, max_concurrent_trials=s.max_concurrent_trials),
        run_config=tune.RunConfig(
            name=sweep_name, storage_path=storage_path(cfg), verbose=0,
            callbacks=[MLflowTrialCallback(logger, functools.partial(apply_params, base), echo)],
        ),
    )
    status = "FAILED"
    try:
        grid = tuner.fit()
        best = select_best(logger.trials, len(tasks), s.metric, s.mode)
        versions: list[Any] = []
        if cfg.tracking.register_models:
            choices = [StageChoice(k, best.run_id, best.trial_id, task_names[k - 1], best.stages[k])
                       for k in range(1, len(tasks) + 1)]
            versions = register_stage_models(client, cfg.tracking.registered_model, choices,
                                             description=f"best trial of sweep {sweep_name}")
        status = "FINISHED"
        errors = sum(1 for r in grid if r.error is not None)
        if errors:
            echo(f"[sweep] warning: {errors} of {len(grid)} trials failed; see the Ray logs")
    finally:
        summary: dict[str, Any] = {}
        if status == "FINISHED":
            summary = {"best_trial": best.trial_id, "best_run_id": best.run_id,
                       **{f"best_{k}": v for k, v in best.stages[len(tasks)].items()
                          if k in ("avg_acc", "avg_auc", "forgetting", "bwt")}}
        logger.end_parent(status, summary)
    return SweepOutcome(sweep_name, tracking_uri, parent, best,
                        cfg.tracking.registered_model if cfg.tracking.register_models else None,
                        versions, time.perf_counter() - began)


def _optuna_storage(url: Optional[str]):
    if not url:
        return None
    import optuna

    return optuna.storages.RDBStorage(url)


def format_summary(outcome: SweepOutcome, task_names: list[str]) -> str:
    """The table printed at the end of a sweep."""
    best = outcome.best
    n = len(task_names)
    final = best.stages[n]
    width = max(len(t) for t in task_names) + 2
    lines = [
        "",
        f"Sweep {outcome.sweep_name}: finished in {outcome.seconds:.0f}s",
        f"Best trial {best.trial_id} (MLflow run {best.run_id})",
        "  hyperparameters:",
        *[f"    {k} = {v:.4g}" if isinstance(v, float) else f"    {k} = {v}" for k, v in best.params.items()],
        "  accuracy matrix (row: after training task; column: tested on task):",
        "    " + " " * width + "".join(f"{t[:10]:>11}" for t in task_names),
    ]
    matrix: AccuracyMatrix = best.acc
    for i, name in enumerate(task_names):
        cells = "".join(f"{matrix.get(i, j):>11.3f}" if j <= i else f"{'':>11}" for j in range(n))
        lines.append(f"    {name:<{width}}{cells}")
    lines += [
        f"  average accuracy {final['avg_acc']:.3f}   average AUC {final.get('avg_auc', float('nan')):.3f}   "
        f"forgetting {final['forgetting']:.3f}   BWT {final['bwt']:.3f}",
    ]
    if outcome.registered_model:
        aliases = ", ".join(f"stage-{k}=v{v.version}" for k, v in enumerate(outcome.versions, start=1))
        lines.append(f"  registered model {outcome.registered_model!r}: {aliases}")
        lines.append(f"    load one with models:/{outcome.registered_model}@stage-{n}")
    lines += [
        f"Tracking store: {outcome.tracking_uri}",
        f"Open the MLflow UI: mlflow ui --backend-store-uri {outcome.tracking_uri} --host 127.0.0.1 --port 5000",
    ]
    return "\n".join(lines)
