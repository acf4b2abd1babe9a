"""The report's plots as PNG bytes (embedded in the page as data URIs).

Drawn off-screen with :class:`matplotlib.figure.Figure` and the Agg canvas, never through
:mod:`matplotlib.pyplot` (no display, no global state). The accuracy heat map is the same
figure the trial runs log as ``accuracy_matrix.png`` (:func:`forgesweep.tracking.plots.accuracy_heatmap`).
"""

from __future__ import annotations

import base64
import io
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from forgesweep.metrics import AccuracyMatrix
from forgesweep.tracking.plots import accuracy_heatmap


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for an ``<img src>``."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def heatmap_png(matrix: AccuracyMatrix, task_names: Sequence[str], title: str) -> bytes:
    """The accuracy matrix as the annotated heat map the runs log (fixed 0..1 colour scale)."""
    with tempfile.TemporaryDirectory(prefix="forgesweep-report-") as tmp:
        path = accuracy_heatmap(matrix, task_names, title, Path(tmp) / "heatmap.png")
        return path.read_bytes()


def mean_matrix(matrices: Sequence[AccuracyMatrix]) -> AccuracyMatrix:
    """Cell-wise mean over runs (cells no run evaluated stay empty)."""
    arrays = np.stack([m.as_array() for m in matrices])
    out = AccuracyMatrix(matrices[0].num_tasks)
    with np.errstate(invalid="ignore"):
        counts = np.sum(~np.isnan(arrays), axis=0)
        mean = np.where(counts > 0, np.nansum(arrays, axis=0) / np.maximum(counts, 1), np.nan)
    for i in range(out.num_tasks):
        for j in range(i + 1):
            if not np.isnan(mean[i, j]):
                out.set(i, j, float(mean[i, j]))
    return out


def stage_lines_png(series: Mapping[str, Mapping[str, Sequence[Sequence[float]]]], title: str) -> bytes:
    """Per-stage curves: one panel per metric, one line per label, mean ± std band over runs.

    Args:
        series: ``{metric title: {line label: [values per stage of each run, ...]}}`` -- e.g.
            ``{"average accuracy": {"trial a": [[0.9, 0.8]]}, "forgetting": {...}}``. Runs of a
            label may differ in length (a trial stopped early); a stage's mean is over the runs
            that reached it.
    """
    fig = Figure(figsize=(5.5 * len(series), 4.2), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(series), squeeze=False)[0]
    longest = 1
    for ax, (metric, lines) in zip(axes, series.items()):
        for label, runs in lines.items():
            runs = [r for r in runs if len(r)]
            if not runs:
                continue
            length = max(len(r) for r in runs)
            longest = max(longest, length)
            padded = np.full((len(runs), length), np.nan)
            for i, run in enumerate(runs):
                padded[i, : len(run)] = run
            stages = np.arange(1, length + 1)
            with np.errstate(invalid="ignore"):
                mean = np.nanmean(padded, axis=0)
            ax.plot(stages, mean, marker="o", label=label)
            if len(runs) > 1:
                ax.fill_between(stages, mean - np.nanstd(padded, axis=0), mean + np.nanstd(padded, axis=0), alpha=0.15)
        ax.set_xlabel("after stage")
        ax.set_title(metric)
        ax.set_xticks(np.arange(1, longest + 1))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    return _png(fig)


def importance_png(values: Mapping[str, float], title: str) -> bytes:
    """Horizontal bars, most important parameter on top."""
    names = list(values)[::-1]
    fig = Figure(figsize=(6.5, 0.45 * len(names) + 1.4), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.barh(names, [values[n] for n in names], color="#4c72b0")
    for y, n in enumerate(names):
        ax.text(values[n], y, f" {values[n]:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, max(1.0, max(values.values()) * 1.15))
    ax.set_xlabel("importance (share of the objective's variance)")
    ax.set_title(title)
    return _png(fig)
