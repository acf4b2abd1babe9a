"""The comparison matrix: every (architecture x task sequence x strategy x seed) cell on Ray.

``jobs/train_matrix.py`` runs each cell of ``cfg.matrix`` as one trial of a Ray Tune grid (a
trial fits a Ray Train ``TorchTrainer`` over the cell's whole sequence, exactly like a sweep
trial), logs every cell to MLflow as a nested run tagged with its labels, and aggregates the
cells into the paper-style comparison: per-task ACC and AUC after the last stage, average ACC,
average forgetting and BWT, mean ± std over seeds. The table is printed and saved on the parent
run as ``comparison.csv``, ``comparison.md`` and ``avg_acc_per_stage.png``.

Order of work: every cell's config is validated (and its model and strategy built once) and every
sequence is checked against the manifest before Ray starts, so a typo fails in seconds.
"""

from __future__ import annotations

import csv
import functools
import io
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from forgesweep.config import ExperimentConfig, validate_config
from forgesweep.data.prepare import prepare_data
from forgesweep.data.tasks import build_task_sequence
from forgesweep.errors import ConfigError, SweepFailed
from forgesweep.sweep.mlflow_callback import MLflowTrialCallback, echo_stdout
from forgesweep.sweep.runner import TRIAL_DRIVER_MEMORY, preflight
from forgesweep.tracking.runs import SweepRunLogger, TrialRecord, ensure_experiment, open_client
from forgesweep.train.trainer import storage_path

AXES = ("model", "sequence", "strategy", "seed")
SUMMARY_KEYS = ("avg_acc", "avg_auc", "forgetting", "bwt")


@dataclass(frozen=True)
class Cell:
    """One combination of the matrix: its labels and its full config (a plain dict)."""

    labels: tuple[str, str, str, int]  # model, sequence, strategy, seed
    config: dict[str, Any]

    @property
    def cell_id(self) -> str:
        model, sequence, strategy, seed = self.labels
        return f"{model}|{sequence}|{strategy}|seed{seed}"


def build_cells(cfg: ExperimentConfig) -> list[Cell]:
    """Every cell of ``cfg.matrix``, each validated as a complete experiment config.

    Raises:
        ConfigError: naming the cell (``matrix.strategies.<label>`` ...) and the problem.
    """
    base = cfg.to_dict()
    m = cfg.matrix
    models = m.models or {base["model"]["name"]: base["model"]}
    sequences = m.sequences or {"sequence": base["data"]["sequence"]}
    strategies = m.strategies or {base["strategy"]["name"]: base["strategy"]}
    cells = []
    for model_label, model in models.items():
        for seq_label, sequence in sequences.items():
            for strategy_label, strategy in strategies.items():
                for seed in m.seeds:
                    data = {**base, "model": dict(model), "strategy": dict(strategy), "seed": seed,
                            "data": {**base["data"], "sequence": [_plain(t) for t in sequence]}}
                    where = f"matrix cell model={model_label} sequence={seq_label} strategy={strategy_label}"
                    try:
                        cell_cfg = validate_config(data)
                    except ConfigError as exc:
                        reason = str(exc).removeprefix("config error: ")
                        raise ConfigError(f"config error: {where}: {reason}") from None
                    cells.append(Cell((model_label, seq_label, strategy_label, seed), cell_cfg.to_dict()))
    return cells


def _plain(task: Any) -> Any:
    return task.model_dump() if hasattr(task, "model_dump") else task


def _cell_config(cells: Mapping[str, Cell], sampled: Mapping[str, Any]) -> dict[str, Any]:
    return cells[sampled["cell"]].config


def _cell_tags(cells: Mapping[str, Cell], sampled: Mapping[str, Any]) -> dict[str, str]:
    return {f"forgesweep.matrix.{axis}": str(v) for axis, v in zip(AXES, cells[sampled["cell"]].labels)}


@dataclass
class MatrixOutcome:
    """What a finished matrix produced."""

    name: str
    tracking_uri: str
    parent_run_id: str
    rows: list[dict[str, Any]]
    markdown: str
    seconds: float
    failed: list[str]


def run_matrix(cfg: ExperimentConfig, echo: Callable[[str], None] = echo_stdout) -> MatrixOutcome:
    """Run every cell of ``cfg.matrix`` as a Ray Tune grid and write the comparison.

    Raises:
        ConfigError: a bad cell or a sequence naming tasks the manifest lacks (before Ray starts).
        SweepFailed: no cell completed its sequence.
    """
    from ray import tune

    from forgesweep.sweep.trial import run_cell_trial
    from forgesweep.train.ray_session import connect_ray
    from forgesweep.train.trainer import resolve_use_gpu

    began = time.perf_counter()
    cfg = cfg.with_absolute_paths()
    cells = {c.cell_id: c for c in build_cells(cfg)}
    for cell in cells.values():
        preflight(validate_config(cell.config), search_space=False)
    name = cfg.matrix.name or f"{cfg.name}-matrix-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    if "://" not in storage_path(cfg) and (Path(storage_path(cfg)) / name).exists():
        raise ConfigError(f"config error: matrix.name: a run named {name!r} already exists in {storage_path(cfg)}")
    manifest, _ = prepare_data(cfg, echo)
    for cell in cells.values():  # every sequence must exist in the manifest
        build_task_sequence(manifest, validate_config(cell.config).data.sequence)
    counts = [len({c.labels[i] for c in cells.values()}) for i in range(len(AXES))]
    echo(f"[matrix] {len(cells)} cells: " + ", ".join(
        f"{n} {plural}" for n, plural in zip(counts, ("models", "sequences", "strategies", "seeds"))))

    echo(f"[ray] {connect_ray()}")
    use_gpu = resolve_use_gpu(cfg)
    tracking_uri = cfg.tracking.resolved_tracking_uri()
    client = open_client(tracking_uri)
    experiment_id = ensure_experiment(client, cfg.tracking.experiment, cfg.tracking.resolved_artifact_location())
    logger = SweepRunLogger(client, experiment_id, name, cfg.to_dict(), [t.name for t in cfg.data.sequence],
                            kind="matrix")
    parent = logger.start_parent({"cells": sorted(cells)})
    echo(f"[mlflow] tracking to {tracking_uri} (experiment {cfg.tracking.experiment!r}, run {parent})")

    trainable = tune.with_parameters(run_cell_trial, cells={k: c.config for k, c in cells.items()},
                                     sweep_name=name, use_gpu=use_gpu)
    trainable = tune.with_resources(trainable, {"CPU": 0, "memory": TRIAL_DRIVER_MEMORY})
    callback = MLflowTrialCallback(logger, functools.partial(_cell_config, cells), echo,
                                   trial_tags=functools.partial(_cell_tags, cells))
    tuner = tune.Tuner(
        trainable,
        param_space={"cell": tune.grid_search(list(cells))},
        tune_config=tune.TuneConfig(max_concurrent_trials=cfg.matrix.max_concurrent_trials),
        run_config=tune.RunConfig(name=name, storage_path=storage_path(cfg), verbose=0, callbacks=[callback]),
    )
    status = "FAILED"
    try:
        tuner.fit()
        by_cell = {r.params["cell"]: r for r in logger.trials.values()}
        complete = {cid: r for cid, r in by_cell.items() if r.last_stage == len(r.task_names)}
        if not complete:
            raise SweepFailed(f"no cell of matrix {name} completed its sequence; see the Ray logs")
        ordered = [(cells[cid].labels, complete[cid]) for cid in cells if cid in complete]  # config order
        rows = comparison_rows(ordered)
        markdown = comparison_markdown(rows)
        _log_comparison(client, parent, rows, markdown, ordered)
        status = "FINISHED"
    finally:
        logger.end_parent(status)
    failed = sorted(set(cells) - set(complete))
    return MatrixOutcome(name, tracking_uri, parent, rows, markdown, time.perf_counter() - began, failed)


# ------------------------------------------------------------------------------------ aggregation


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v == v]  # NaN-free
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def comparison_rows(results: list[tuple[tuple[str, str, str, int], TrialRecord]]) -> list[dict[str, Any]]:
    """One row per (model, sequence, strategy): last-stage metrics as mean and std over seeds.

    Each row has ``model``, ``sequence``, ``strategy``, ``seeds`` and, for every metric ``k``
    (``acc/<task>``, ``auc/<task>``, ``avg_acc``, ``avg_auc``, ``forgetting``, ``bwt``), the keys
    ``k`` (mean) and ``k_std``. Rows keep the order the cells were configured in.
    """
    groups: dict[tuple[str, str, str], list[TrialRecord]] = {}
    for (model, sequence, strategy, _seed), record in results:
        groups.setdefault((model, sequence, strategy), []).append(record)
    rows = []
    for (model, sequence, strategy), records in groups.items():
        tasks = records[0].task_names
        keys = [f"acc/{t}" for t in tasks] + [f"auc/{t}" for t in tasks] + list(SUMMARY_KEYS)
        row: dict[str, Any] = {"model": model, "sequence": sequence, "strategy": strategy, "seeds": len(records)}
        for key in keys:
            mean, std = _mean_std([r.stages[r.last_stage].get(key, float("nan")) for r in records])
            row[key], row[f"{key}_std"] = mean, std
        rows.append(row)
    return rows


def comparison_markdown(rows: list[dict[str, Any]]) -> str:
    """The seed-paper style table(s), one per (model, sequence): mean ± std over seeds."""
    out = []
    for (model, sequence) in dict.fromkeys((r["model"], r["sequence"]) for r in rows):
        group = [r for r in rows if r["model"] == model and r["sequence"] == sequence]
        tasks = [k[4:] for k in group[0] if k.startswith("acc/") and not k.endswith("_std")]
        head = ["strategy", *[f"ACC {t}" for t in tasks], "avg ACC", "avg AUC", "forgetting", "BWT", "seeds"]
        out += [f"**{model}** on **{sequence}** ({' → '.join(tasks)}), metrics after the last task", "",
                "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in group:
            cells = [_pm(r, f"acc/{t}") for t in tasks] + [_pm(r, k) for k in SUMMARY_KEYS]
            out.append("| " + " | ".join([r["strategy"], *cells, str(r["seeds"])]) + " |")
        out.append("")
    return "\n".join(out)


def _pm(row: Mapping[str, Any], key: str) -> str:
    mean, std = row.get(key, float("nan")), row.get(f"{key}_std", float("nan"))
    if mean != mean:
        return "–"
    return f"{mean:.3f}" if row["seeds"] < 2 else f"{mean:.3f} ± {std:.3f}"


def comparison_csv(rows: list[dict[str, Any]]) -> str:
    """All rows as CSV (union of columns; per-task columns differ between sequences)."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _log_comparison(client, run_id: str, rows, markdown: str, results) -> None:
    import tempfile

    from forgesweep.tracking.plots import stage_curves

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "comparison.csv").write_text(comparison_csv(rows))
        Path(tmp, "comparison.md").write_text(markdown)
        curves: dict[str, dict[str, list[list[float]]]] = {}
        for (model, sequence, strategy, _seed), rec in results:
            series = [rec.stages[k].get("avg_acc", float("nan")) for k in sorted(rec.stages)]
            curves.setdefault(f"{model} / {sequence}", {}).setdefault(strategy, []).append(series)
        stage_curves(curves, "average accuracy after each stage (mean over seeds)", Path(tmp, "avg_acc_per_stage.png"))
        client.log_artifacts(run_id, tmp)


def format_matrix_summary(outcome: MatrixOutcome) -> str:
    """What the job prints at the end."""
    lines = ["", f"Matrix {outcome.name}: finished in {outcome.seconds:.0f}s", "", outcome.markdown]
    if outcome.failed:
        lines.append(f"cells that did not complete: {', '.join(outcome.failed)}")
    lines += [f"Comparison saved on MLflow run {outcome.parent_run_id}: comparison.csv, comparison.md, "
              f"avg_acc_per_stage.png",
              f"Open the MLflow UI: mlflow ui --backend-store-uri {outcome.tracking_uri} --host 127.0.0.1 --port 5000"]
    return "\n".join(lines)
