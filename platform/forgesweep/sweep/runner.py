"""Runs a whole sweep: checks, Ray Tune + Optuna over TorchTrainer trials, MLflow, registry.

Order of work (bad input fails in the first two steps, before anything is written):

1. validate the config and the search space; build the model and strategy once as a check;
2. prepare the data (generate the synthetic benchmark if needed, validate the manifest);
3. connect to Ray; with ``features.cache``, fill the frozen-feature cache (a parallel Ray job,
   once for the whole sweep: every trial then trains heads only); open the MLflow parent run,
   run the Tuner (ASHA stops weak trials after ``grace_period`` stages);
4. pick the best trial among those that finished every stage, register its stage-k checkpoints
   as versions of one registered model with aliases ``stage-k``;
5. print the summary table and the command that opens the MLflow UI.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
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
    features: Optional[Any] = None  # forgesweep.features.ray_job.CacheReport when features.cache


def preflight(cfg: ExperimentConfig, search_space: bool = True) -> None:
    """Checks that need no data and no Ray: search space (for sweeps), model and strategy construction."""
    if search_space:
        check_search_space(cfg)
    build_model(cfg.model.name, cfg.model.params)
    build_strategy(cfg.strategy.name, cfg.strategy.params)
    if cfg.sweep.trial_executor == "in_trial" and cfg.train.num_workers != 1:
        raise ConfigError(f"config error: sweep.trial_executor: in_trial runs one worker per trial, but "
                          f"train.num_workers is {cfg.train.num_workers}; use torch_trainer (or auto)")
    if cfg.sweep.scheduler.type == "asha" and cfg.sweep.scheduler.grace_period > len(cfg.data.sequence):
        raise ConfigError(f"config error: sweep.scheduler.grace_period ({cfg.sweep.scheduler.grace_period}) "
                          f"exceeds the number of tasks ({len(cfg.data.sequence)})")
    # Remote stores (S3 checkpoints, an MLflow server and its artifact root) are checked now,
    # not minutes later inside a trial.
    from forgesweep.tracking.server_check import check_tracking_store
    from forgesweep.train.storage import check_storage_path

    check_storage_path(storage_path(cfg))
    check_tracking_store(cfg.tracking.resolved_tracking_uri(), cfg.tracking.resolved_artifact_location())


def unique_sweep_name(cfg: ExperimentConfig) -> str:
    """The configured sweep name, or ``<experiment name>-<UTC timestamp>``.

    Raises:
        ConfigError: when a sweep of that name already exists in the storage path, a local
            folder or object storage (Tune would overwrite its state).
    """
    from forgesweep.train.storage import storage_entry_exists

    name = cfg.sweep.name or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    root = storage_path(cfg)
    if storage_entry_exists(root, name):
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


def make_scheduler(cfg: ExperimentConfig, num_tasks: int):
    """The early-stopping scheduler of ``sweep.scheduler`` (None for ``type: none``).

    ASHA counts ``training_iteration``, i.e. stage reports: a trial reaches rung ``r`` after
    ``grace_period * reduction_factor**k`` stages and continues only if its ``sweep.metric``
    there is in the top ``1 / reduction_factor`` of the trials that reached that rung.
    """
    from ray.tune.schedulers import ASHAScheduler

    s = cfg.sweep.scheduler
    if s.type == "none":
        return None
    return ASHAScheduler(time_attr="training_iteration", max_t=num_tasks, grace_period=s.grace_period,
                         reduction_factor=s.reduction_factor)


def trial_in_process(cfg: ExperimentConfig) -> bool:
    """Whether trials train in their own process (``sweep.trial_executor``; ``auto``: single-worker
    runs with ``features.cache``, whose short head-only trials would mostly wait for actors)."""
    if cfg.sweep.trial_executor == "auto":
        return cfg.train.num_workers == 1 and cfg.features.cache
    return cfg.sweep.trial_executor == "in_trial"


def trial_resources(cfg: ExperimentConfig, use_gpu: bool = False) -> dict[str, float]:
    """What each trial asks Tune for (``tune.with_resources``).

    * In-process trials hold the run's resources themselves: ``train.cpus_per_worker`` CPUs and,
      with GPUs, ``train.gpus_per_worker`` GPUs -- fractions allowed, so with
      ``gpus_per_worker: 0.25`` four head-only trials share one GPU.
    * ``TorchTrainer`` trials: the driver only waits on its trainer, whose workers request those
      same per-worker resources (``ScalingConfig``); the driver itself asks for no CPU and a
      token amount of memory, so every core goes to the workers.

    ``sweep.max_concurrent_trials`` bounds how many trials hold resources at once.
    """
    if trial_in_process(cfg):
        resources = {"CPU": cfg.train.cpus_per_worker}
        if use_gpu:
            resources["GPU"] = cfg.train.gpus_per_worker
        return resources
    return {"CPU": 0, "memory": TRIAL_DRIVER_MEMORY}


def run_sweep(cfg: ExperimentConfig, echo: Callable[[str], None] = echo_stdout) -> SweepOutcome:
    """Run the sweep described by ``cfg`` end to end (see the module docstring).

    Args:
        cfg: the validated experiment config.
        echo: receives the progress lines (must be picklable: Tune stores its callbacks).
    """
    import ray
    from optuna.samplers import TPESampler
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from forgesweep.sweep.trial import run_trial
    from forgesweep.train.ray_session import connect_ray
    from forgesweep.train.trainer import resolve_use_gpu

    began = time.perf_counter()
    cfg = cfg.with_absolute_paths()
    preflight(cfg)
    sweep_name = unique_sweep_name(cfg)
    manifest, tasks = prepare_data(cfg, echo)
    task_names = [t.name for t in tasks]

    echo(f"[ray] {connect_ray()}")
    use_gpu = resolve_use_gpu(cfg)
    cache_report = None
    if cfg.features.cache:
        from forgesweep.features.ray_job import prepare_sweep_cache

        cache_report = prepare_sweep_cache(cfg, manifest, tasks, use_gpu)
        echo(cache_report.line)
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
    scheduler = make_scheduler(cfg, len(tasks))
    in_trial = trial_in_process(cfg)
    trainable = tune.with_parameters(run_trial, base_config=base, sweep_name=sweep_name, use_gpu=use_gpu,
                                     in_trial=in_trial)
    resources = trial_resources(cfg, use_gpu)
    trainable = tune.with_resources(trainable, resources)
    workers = (f" plus {cfg.train.num_workers} worker(s) of {cfg.train.cpus_per_worker} CPU"
               + (f" and {cfg.train.gpus_per_worker} GPU" if use_gpu else ""))
    echo(f"[sweep] trials train {'in their own process' if in_trial else 'in a TorchTrainer'}; each asks Tune for "
         f"{resources}" + ("" if in_trial else workers))
    tuner = tune.Tuner(
        trainable,
        param_space=tune_space(s.space),
        tune_config=tune.TuneConfig(metric=s.metric, mode=s.mode, search_alg=search, scheduler=scheduler,
                                    num_samples=s.num_samples, max_concurrent_trials=s.max_concurrent_trials,
                                    # In-process trials: the next trial reuses a finished trial's warm
                                    # process (imports done), which is most of a short trial's start-up.
                                    reuse_actors=in_trial),
        run_config=tune.RunConfig(
            name=sweep_name, storage_path=storage_path(cfg), verbose=0,
            # TorchTrainer trials retry inside the trainer (train.max_failures); in-process ones here.
            failure_config=tune.FailureConfig(max_failures=cfg.train.max_failures) if in_trial else None,
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
                        versions, time.perf_counter() - began, cache_report)


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
