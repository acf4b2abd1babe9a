"""The report page: one self-contained HTML document (inline CSS, plots as data URIs, no script).

One section per sweep or matrix (:class:`~forgesweep.report.collect.StudyData`), in this order:
facts (experiment, parent run, status, objective), best hyperparameters, the paper-style
comparison table (per-task ACC after the last stage, average ACC/AUC, forgetting, BWT; mean ±
std over seeds for a matrix), average accuracy and forgetting per stage, accuracy-matrix heat
maps (one per trial for a sweep, one per strategy averaged over seeds for a matrix), Optuna
parameter importances, the MLflow runs and the registered stage models.
"""

from __future__ import annotations

import html
import math
import time
from typing import Any, Optional, Sequence

from forgesweep.report.collect import StudyData, TrialData
from forgesweep.report.figures import data_uri, heatmap_png, importance_png, mean_matrix, stage_lines_png
from forgesweep.report.importance import Importances, parameter_importances
from forgesweep.sweep.matrix import SUMMARY_KEYS, comparison_rows
from forgesweep.tracking.runs import TrialRecord

MAX_HEATMAPS = 32  # per study; the best first
MAX_LINES = 12  # trials drawn in the per-stage plots of a sweep; the best first

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1280px;padding:0 24px 48px;
color:#1d232a;background:#fbfbfc}
h1{margin:24px 0 4px}h2{border-bottom:2px solid #3b6ea5;padding-bottom:4px;margin-top:40px}h3{margin-top:28px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}th,td{border:1px solid #d5d9de;padding:4px 8px;text-align:left}
th{background:#eef2f6}td.num{text-align:right;font-variant-numeric:tabular-nums}tr.best td{background:#e8f5e9}
code{font-size:12px;background:#f1f3f5;padding:1px 4px;border-radius:3px}
.facts{display:grid;grid-template-columns:max-content auto;gap:2px 16px;font-size:14px}.facts dt{font-weight:600}
.heatmaps{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;background:#fff;border:1px solid #d5d9de;padding:6px}
figure img{max-width:420px;display:block}figcaption{font-size:12px;max-width:420px}img.wide{max-width:100%}
.note{color:#5c6670;font-size:13px}nav a{margin-right:12px}
"""


def e(value: Any) -> str:
    """HTML-escaped text."""
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 3) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.{digits}f}"
    return "–"


def _param(text: Any) -> str:
    """A param value for a table cell: floats to 4 significant digits (the full value on hover)."""
    text = str(text)
    try:
        value = float(text)
    except ValueError:
        return e(text)
    if "." not in text and "e" not in text.lower():
        return e(text)  # an integer stays as logged
    return f'<span title="{e(text)}">{e(f"{value:.4g}")}</span>'


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "", row_classes: Sequence[str] = ()) -> str:
    """A table from pre-rendered cell HTML (cells starting ``<td`` are used as they are)."""
    out = [f'<table class="{e(cls)}"><thead><tr>' + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for i, r in enumerate(rows):
        klass = f' class="{e(row_classes[i])}"' if i < len(row_classes) and row_classes[i] else ""
        out.append(f"<tr{klass}>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in r) + "</tr>")
    return "\n".join(out) + "</tbody></table>"


def _run_link(study: StudyData, run_id: str, ui: Optional[str]) -> str:
    code = f"<code>{e(run_id)}</code>"
    if not ui:
        return code
    return f'<a href="{e(ui.rstrip("/"))}/#/experiments/{e(study.experiment_id)}/runs/{e(run_id)}">{code}</a>'


def _trial_label(study: StudyData, trial: TrialData) -> str:
    if study.kind == "matrix" and trial.labels:
        return " / ".join(trial.labels.get(a, "?") for a in ("model", "sequence", "strategy")) + \
            f" / seed {trial.labels.get('seed', '?')}"
    return f"trial {trial.trial_id}"


def _ranked(study: StudyData) -> list[TrialData]:
    """The best trial (as the sweep chose it), the other complete ones by objective, then the
    others by how far they got."""
    metric, mode = study.objective
    sign = -1.0 if mode == "max" else 1.0
    best = study.best()

    def key(t: TrialData) -> tuple:
        value = t.final(metric)
        return (t is not best, not t.complete, sign * value if math.isfinite(value) else math.inf, -t.last_stage,
                t.trial_id)

    return sorted(study.trials, key=key)


def _searched_keys(study: StudyData) -> list[str]:
    if study.search_space:
        return list(study.search_space)
    keys = sorted({k for t in study.trials for k in t.params})
    return [k for k in keys if len({t.params.get(k) for t in study.trials}) > 1]


def _record(trial: TrialData, labels: tuple[str, str, str, int]) -> tuple[tuple[str, str, str, int], TrialRecord]:
    record = TrialRecord(trial.trial_id, trial.run_id, dict(trial.params), list(trial.task_names), trial.matrix("acc"),
                         trial.matrix("auc"), stages=dict(trial.stages))
    return labels, record


def _comparison(study: StudyData, ranked: list[TrialData]) -> str:
    if study.kind == "matrix":
        cells = [t for t in ranked if t.complete]
        results = [_record(t, (t.labels.get("model", "?"), t.labels.get("sequence", "?"),
                               t.labels.get("strategy", "?"), int(t.labels.get("seed", 0) or 0))) for t in cells]
        # Config order of the cells (trial ids follow the grid), not rank order.
        results.sort(key=lambda item: item[1].trial_id)
        first = "strategy"
    else:
        results = [_record(t, (t.params.get("model.name", "model"), " → ".join(t.task_names), t.trial_id, 0))
                   for t in ranked if t.last_stage]
        first = "trial"
    if not results:
        return '<p class="note">No trial reported a stage yet.</p>'
    rows = comparison_rows(results)
    best = study.best()
    out = []
    for model, sequence in dict.fromkeys((r["model"], r["sequence"]) for r in rows):
        group = [r for r in rows if r["model"] == model and r["sequence"] == sequence]
        tasks = [k[4:] for k in group[0] if k.startswith("acc/") and not k.endswith("_std")]
        head = [first, *[f"ACC {t}" for t in tasks], "avg ACC", "avg AUC", "forgetting", "BWT",
                "seeds" if study.kind == "matrix" else "stages"]
        body, classes = [], []
        for r in group:
            cells = [_pm(r, f"acc/{t}") for t in tasks] + [_pm(r, k) for k in SUMMARY_KEYS]
            if study.kind == "matrix":
                extra = str(r["seeds"])
            else:
                trial = next(t for t in study.trials if t.trial_id == r["strategy"])
                extra = f"{trial.last_stage}/{len(trial.task_names)}"
            body.append([e(r["strategy"]), *cells, f'<td class="num">{e(extra)}</td>'])
            classes.append("best" if best is not None and study.kind != "matrix" and r["strategy"] == best.trial_id
                           else "")
        out.append(f"<p><b>{e(model)}</b> on <b>{e(sequence)}</b>: metrics after the last stage each "
                   f"{'cell' if study.kind == 'matrix' else 'trial'} reached"
                   f"{' (mean ± std over seeds)' if study.kind == 'matrix' else ''}</p>")
        out.append(_table(head, body, "comparison", classes))
    return "\n".join(out)


def _pm(row: dict[str, Any], key: str) -> str:
    mean, std = row.get(key, math.nan), row.get(f"{key}_std", math.nan)
    text = _num(mean) if row.get("seeds", 1) < 2 or not math.isfinite(mean) else f"{mean:.3f} ± {std:.3f}"
    return f'<td class="num">{e(text)}</td>'


def _best(study: StudyData) -> str:
    best = study.best()
    if best is None:
        return '<p class="note">No trial completed every stage, so there is no best trial.</p>'
    metric, mode = study.objective
    if study.kind == "matrix":
        items = [(a, best.labels.get(a, "?")) for a in ("model", "sequence", "strategy", "seed")]
        items += sorted((k, v) for k, v in best.params.items() if k.startswith("strategy."))
    else:
        items = [(k, best.params.get(k, "–")) for k in _searched_keys(study)]
    rows = [[f"<code>{e(k)}</code>", _param(v)] for k, v in items]
    return (f"<p>{e(_trial_label(study, best))}, MLflow run <code>{e(best.run_id)}</code>: "
            f"{e(metric)} = <b>{_num(best.final(metric))}</b> after stage {best.last_stage} ({e(mode)})</p>"
            + _table(["parameter", "value"], rows, "best-params"))


def _lines(study: StudyData, ranked: list[TrialData]) -> str:
    series: dict[str, dict[str, list[list[float]]]] = {"average accuracy": {}, "forgetting": {}}
    if study.kind == "matrix":
        groups = {(t.labels.get("model"), t.labels.get("sequence")) for t in ranked}
        for t in ranked:
            label = t.labels.get("strategy", "?") if len(groups) == 1 else \
                f"{t.labels.get('model')}/{t.labels.get('sequence')}/{t.labels.get('strategy')}"
            for metric, key in (("average accuracy", "avg_acc"), ("forgetting", "forgetting")):
                series[metric].setdefault(label, []).append([t.stages[k].get(key, math.nan) for k in sorted(t.stages)])
        note = "one line per strategy, mean ± std over seeds"
    else:
        for t in [t for t in ranked if t.last_stage][:MAX_LINES]:
            for metric, key in (("average accuracy", "avg_acc"), ("forgetting", "forgetting")):
                series[metric][f"trial {t.trial_id}"] = [[t.stages[k].get(key, math.nan) for k in sorted(t.stages)]]
        note = f"one line per trial (the best {MAX_LINES} at most)"
    if not any(series[m] for m in series):
        return '<p class="note">No stage metrics yet.</p>'
    png = stage_lines_png(series, f"{study.name}: after each stage")
    return f'<p class="note">{e(note)}</p><img class="lines wide" alt="average accuracy and forgetting per stage" ' \
           f'src="{data_uri(png)}">'


def _heatmaps(study: StudyData, ranked: list[TrialData]) -> str:
    figures: list[tuple[str, Any, list[str], str]] = []  # title, matrix, task names, caption
    if study.kind == "matrix":
        groups: dict[tuple[str, str, str], list[TrialData]] = {}
        for t in ranked:
            if t.complete:
                key = (t.labels.get("model", "?"), t.labels.get("sequence", "?"), t.labels.get("strategy", "?"))
                groups.setdefault(key, []).append(t)
        for (model, sequence, strategy), cells in groups.items():
            matrix = mean_matrix([c.matrix("acc") for c in cells])
            caption = f"{model} / {sequence} / {strategy}: mean over {len(cells)} seed(s); runs " + \
                ", ".join(c.run_id for c in cells)
            figures.append((f"{strategy} ({model}, {sequence})", matrix, cells[0].task_names, caption))
    else:
        metric, _ = study.objective
        for t in ranked:
            if t.last_stage:
                caption = f"trial {t.trial_id}: {metric} {_num(t.final(metric))} after stage {t.last_stage}; " \
                          f"run {t.run_id}"
                figures.append((f"trial {t.trial_id}: accuracy", t.matrix("acc"), t.task_names, caption))
    if not figures:
        return '<p class="note">No accuracy matrix yet.</p>'
    shown = figures[:MAX_HEATMAPS]
    out = ['<div class="heatmaps">']
    for title, matrix, names, caption in shown:
        png = heatmap_png(matrix, names, title)
        out.append(f'<figure class="heatmap"><img alt="{e(title)}" src="{data_uri(png)}">'
                   f"<figcaption>{e(caption)}</figcaption></figure>")
    out.append("</div>")
    if len(figures) > len(shown):
        out.append(f'<p class="note">{len(figures) - len(shown)} more not shown (best {MAX_HEATMAPS} kept).</p>')
    return "\n".join(out)


def study_importances(study: StudyData) -> Importances:
    """Importances of the searched parameters (sweep) or of the varying axes (matrix)."""
    metric, mode = study.objective
    direction = "maximize" if mode == "max" else "minimize"
    complete = [t for t in study.trials if t.complete]
    if study.kind == "matrix":
        axes = [a for a in ("model", "sequence", "strategy", "seed") if len({t.labels.get(a) for t in complete}) > 1]
        return parameter_importances([(t.labels, t.final(metric)) for t in complete], {a: {} for a in axes},
                                     direction)
    space = study.search_space or {k: {} for k in _searched_keys(study)}
    return parameter_importances([(t.params, t.final(metric)) for t in complete], space, direction)


def _importances(study: StudyData) -> str:
    result = study_importances(study)
    head = f"<p class=\"note\">Evaluator: {e(result.evaluator)}, over {result.trials_used} trial(s) that completed " \
           f"every stage; objective {e(study.objective[0])} after the last stage.</p>"
    if result.reason:
        return head + f'<p class="note">Not computed: {e(result.reason)}.</p>'
    png = importance_png(result.values, f"{study.name}: parameter importances")
    rows = [[f"<code>{e(k)}</code>", f'<td class="num">{v:.3f}</td>'] for k, v in result.values.items()]
    return head + f'<img class="importances" alt="parameter importances" src="{data_uri(png)}">' + \
        _table(["parameter", "importance"], rows, "importances")


def _runs(study: StudyData, ranked: list[TrialData], ui: Optional[str]) -> str:
    metric, _ = study.objective
    keys = [] if study.kind == "matrix" else _searched_keys(study)
    head = ["trial", "MLflow run", "status", "stages", "early stopped", metric, *keys]
    rows = []
    for t in ranked:
        rows.append([e(_trial_label(study, t)), _run_link(study, t.run_id, ui), e(t.status),
                     f'<td class="num">{t.last_stage}/{len(t.task_names)}</td>',
                     e(t.tags.get("forgesweep.early_stopped", "–")), f'<td class="num">{_num(t.final(metric))}</td>',
                     *[_param(t.params.get(k, "–")) for k in keys]])
    return f"<p>Parent run {_run_link(study, study.parent_run_id, ui)} ({e(study.status)}).</p>" + \
        _table(head, rows, "runs")


def _registered(study: StudyData, ui: Optional[str]) -> str:
    if not study.registered:
        return '<p class="note">No registered model version comes from this study\'s runs.</p>'
    rows = []
    for v in study.registered:
        version = e(v.version)
        if ui:
            version = f'<a href="{e(ui.rstrip("/"))}/#/models/{e(v.name)}/versions/{e(v.version)}">{version}</a>'
        rows.append([e(v.name), version, e(", ".join(v.aliases) or "–"), f"<code>{e(v.uri)}</code>",
                     e(v.stage if v.stage is not None else "–"), e(v.task or "–"), f"<code>{e(v.run_id)}</code>"])
    return _table(["registered model", "version", "aliases", "load with", "stage", "task", "run"], rows, "registered")


def render_study(study: StudyData, index: int, ui: Optional[str]) -> str:
    """One ``<section>`` of the page."""
    ranked = _ranked(study)
    metric, mode = study.objective
    complete = sum(t.complete for t in study.trials)
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(study.start_time / 1000)) if study.start_time else "–"
    facts = [("kind", study.kind), ("experiment", f"{study.experiment_name} (id {study.experiment_id})"),
             ("status", study.status), ("started", started),
             ("trials", f"{len(study.trials)} ({complete} completed every stage)"), ("objective", f"{metric} ({mode})")]
    parts = [f'<section class="study" id="study-{index}" data-kind="{e(study.kind)}">',
             f"<h2>{e('Matrix' if study.kind == 'matrix' else 'Sweep')} {e(study.name)}</h2>",
             '<dl class="facts">' + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in facts) +
             f"<dt>parent run</dt><dd>{_run_link(study, study.parent_run_id, ui)}</dd></dl>",
             "<h3>Best hyperparameters</h3>", _best(study),
             "<h3>Comparison</h3>", _comparison(study, ranked),
             "<h3>Average accuracy and forgetting per stage</h3>", _lines(study, ranked),
             "<h3>Accuracy matrices</h3>", _heatmaps(study, ranked),
             "<h3>Parameter importances</h3>", _importances(study),
             "<h3>MLflow runs</h3>", _runs(study, ranked, ui),
             "<h3>Registered stage models</h3>", _registered(study, ui),
             "</section>"]
    return "\n".join(parts)


def render_page(target: str, studies: Sequence[StudyData], tracking_uri: str, ui: Optional[str]) -> str:
    """The whole document."""
    nav = " ".join(f'<a href="#study-{i}">{e(s.kind)} {e(s.name)}</a>' for i, s in enumerate(studies))
    body = "\n".join(render_study(s, i, ui) for i, s in enumerate(studies))
    generated = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>forgesweep report: {e(target)}</title>
<style>{CSS}</style></head>
<body>
<header><h1>forgesweep report: {e(target)}</h1>
<p class="note">Generated {e(generated)} from the MLflow store <code>{e(tracking_uri)}</code>.
Open it with <code>mlflow ui --backend-store-uri {e(tracking_uri)}</code>.</p>
<nav>{nav}</nav></header>
{body}
</body></html>
"""
