"""Plots logged as run artifacts, drawn off-screen.

Figures are built with :class:`matplotlib.figure.Figure` and rendered by the Agg canvas
directly, never through :mod:`matplotlib.pyplot`: no display is needed, the global
backend is left alone and no figure is kept alive in pyplot's figure manager.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from forgesweep.metrics import AccuracyMatrix

__all__ = ["accuracy_heatmap", "stage_curves"]

_NAN_COLOUR = "#d9d9d9"


def accuracy_heatmap(matrix: AccuracyMatrix, task_names: Sequence[str], title: str,
                     path: str | os.PathLike[str]) -> Path:
    """Write the continual matrix ``R`` as an annotated heat map (PNG).

    Rows are "after stage k: <task k>", columns "test on <task j>"; each evaluated cell
    shows its value to 3 decimals, cells not evaluated (NaN) are grey and blank. The
    colour scale is fixed to ``[0, 1]`` so plots of different runs compare at a glance.

    Args:
        matrix: the accuracy (or AUC) matrix.
        task_names: one display name per task, in task order.
        title: figure title.
        path: where to write the PNG; missing parent folders are created.

    Returns:
        The path written, as a :class:`pathlib.Path`.

    Raises:
        ValueError: ``task_names`` does not hold one name per task.
    """
    names = [str(n) for n in task_names]
    n = matrix.num_tasks
    if len(names) != n:
        raise ValueError(f"task_names must hold {n} names (one per task), got {len(names)}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)

    values = matrix.as_array()
    masked = np.ma.masked_invalid(values)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad=_NAN_COLOUR)

    side = max(4.0, 1.1 * n + 3.0)
    fig = Figure(figsize=(side + 1.5, side), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(masked, cmap=cmap, vmin=0.0, vmax=1.0, aspect="equal",
                      interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)

    ax.set_xticks(range(n), labels=[f"test on {name}" for name in names],
                  rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), labels=[f"after stage {k}: {name}" for k, name in enumerate(names, start=1)])
    ax.set_title(title)
    # Thin white grid between cells.
    ax.set_xticks(np.arange(-0.5, n, 1.0), minor=True)
    ax.set_yticks(np.arange(-0.5, n, 1.0), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.0)
    ax.tick_params(which="minor", length=0)

    fontsize = 10 if n <= 6 else max(5, 10 - (n - 6))
    for i in range(n):
        for j in range(n):
            v = values[i, j]
            if np.isnan(v):
                continue
            colour = "white" if v < 0.6 else "black"
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", color=colour,
                    fontsize=fontsize)

    fig.savefig(out, format="png")
    return out


def stage_curves(panels: Mapping[str, Mapping[str, Sequence[Sequence[float]]]], title: str,
                 path: str | os.PathLike[str]) -> Path:
    """Per-stage curves, one panel per group and one line per series, mean ± std band over runs.

    Args:
        panels: ``{panel title: {series label: [run values per stage, ...]}}`` -- e.g. per
            (model, sequence) panel, per strategy the average accuracy after each stage of every
            seed's run. Runs of one series may differ in length (a run that stopped early); the
            mean at a stage is over the runs that reached it.
        title: figure title.
        path: where to write the PNG; missing parent folders are created.

    Returns:
        The path written.

    Raises:
        ValueError: no panel, or a panel without series.
    """
    if not panels or any(not series for series in panels.values()):
        raise ValueError("stage_curves needs at least one panel, each with at least one series")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(6.0 * len(panels), 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (panel, series) in zip(axes, panels.items()):
        for label, runs in series.items():
            length = max(len(r) for r in runs)
            padded = np.full((len(runs), length), np.nan)
            for i, run in enumerate(runs):
                padded[i, : len(run)] = run
            stages = np.arange(1, length + 1)
            mean = np.nanmean(padded, axis=0)
            ax.plot(stages, mean, marker="o", label=label)
            if len(runs) > 1:
                std = np.nanstd(padded, axis=0)
                ax.fill_between(stages, mean - std, mean + std, alpha=0.15)
        ax.set_xlabel("after stage")
        ax.set_ylabel("average accuracy over seen tasks")
        ax.set_ylim(0.0, 1.02)
        ax.set_xticks(stages)
        ax.set_title(panel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(out, format="png")
    return out
