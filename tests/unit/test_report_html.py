"""``forgesweep report`` on a store written by the project's own tracking code (no Ray).

A sweep (three trials that finished, one stopped after stage 1, stage models registered from
the best) and a comparison matrix (two strategies x two seeds) are logged through
``SweepRunLogger`` into a sqlite store, exactly as the sweep and matrix jobs log them; the
report is built from that store and its HTML checked piece by piece.
"""

from __future__ import annotations

import argparse
import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from forgesweep.config import load_config
from forgesweep.errors import UserError
from forgesweep.report import cli as report_cli
from forgesweep.report.cli import build_report
from forgesweep.report.collect import find_parent_runs, open_store
from forgesweep.report.importance import parameter_importances
from forgesweep.tracking.model_registry import StageChoice, register_stage_models
from forgesweep.tracking.runs import SweepRunLogger, ensure_experiment, open_client
from forgesweep.train.checkpoint import save_stage_checkpoint

REPO = Path(__file__).resolve().parents[2]
TASKS = ["Deepfakes", "Face2Face"]
SPACE = {"strategy.kd_temperature": {"type": "loguniform", "low": 1.0, "high": 8.0},
         "strategy.replay_size": {"type": "int", "low": 50, "high": 400},
         "strategy.replay_policy": {"type": "categorical", "choices": ["random", "hybrid"]}}
# trial id -> (kd_temperature, replay_size, policy, avg_acc per stage); "t3" stops after stage 1.
SWEEP_TRIALS = {"t0": (2.0, 100, "random", [0.95, 0.80]), "t1": (4.0, 300, "hybrid", [0.96, 0.91]),
                "t2": (1.5, 60, "random", [0.94, 0.70]), "t3": (7.0, 200, "hybrid", [0.60])}
MODEL = "unit-report-model"


def _stage_metrics(stage: int, avg: float, shift: float = 0.0) -> dict:
    accs = [min(1.0, avg + 0.02 + shift), max(0.0, avg - 0.02 - shift)][:stage] if stage > 1 else [avg]
    metrics = {"stage": stage, "task": TASKS[stage - 1], "avg_acc": avg, "avg_auc": min(1.0, avg + 0.03),
               "forgetting": 0.0 if stage == 1 else round(1 - avg, 3), "bwt": 0.0 if stage == 1 else -round(1 - avg, 3),
               "train/loss": 0.3}
    for task, acc in zip(TASKS, accs):
        metrics[f"acc/{task}"], metrics[f"auc/{task}"] = acc, min(1.0, acc + 0.03)
    return metrics


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("report-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = open_client(uri)
    exp = ensure_experiment(client, "unit-report", str(root / "artifacts"))
    base = load_config(REPO / "jobs" / "configs" / "default.yaml",
                       [f"data.sequence={TASKS}", f"tracking.registered_model={MODEL}"]).to_dict()

    sweep = SweepRunLogger(client, exp, "unit-sweep", base, TASKS)
    sweep.start_parent(SPACE)
    # A real (tiny) stage checkpoint: the logger only uploads complete ones.
    ckpt = save_stage_checkpoint(root / "ckpt", torch.nn.Linear(2, 1), {"stage": 1, "task_names": TASKS})
    for trial_id, (temp, size, policy, accs) in SWEEP_TRIALS.items():
        config = {**base, "strategy": {**base["strategy"], "kd_temperature": temp, "replay_size": size,
                                       "replay_policy": policy}}
        sweep.start_trial(trial_id, config, {"strategy.kd_temperature": temp})
        for stage, avg in enumerate(accs, start=1):
            sweep.log_stage(trial_id, _stage_metrics(stage, avg), ckpt if trial_id == "t1" else None)
        sweep.end_trial(trial_id, "FINISHED")
    best = sweep.trials["t1"]
    versions = register_stage_models(client, MODEL, [StageChoice(k, best.run_id, "t1", TASKS[k - 1], best.stages[k])
                                                     for k in (1, 2)])
    sweep.end_parent("FINISHED", {"best_trial": "t1", "best_run_id": best.run_id, "best_avg_acc": 0.91})

    matrix = SweepRunLogger(client, exp, "unit-matrix", base, TASKS, kind="matrix")
    matrix.start_parent({"cells": []})
    for i, (strategy, seed, avg) in enumerate([("FT", 0, 0.70), ("FT", 1, 0.72), ("ER", 0, 0.95), ("ER", 1, 0.93)]):
        tags = {"forgesweep.matrix.model": "lite", "forgesweep.matrix.sequence": "methods",
                "forgesweep.matrix.strategy": strategy, "forgesweep.matrix.seed": str(seed)}
        trial_id = f"cell_{i:05d}"
        matrix.start_trial(trial_id, {**base, "seed": seed}, {"cell": trial_id}, TASKS, tags)
        for stage, value in ((1, 0.97), (2, avg)):
            matrix.log_stage(trial_id, _stage_metrics(stage, value, shift=0.01 * seed), None)
        matrix.end_trial(trial_id, "FINISHED")
    matrix.end_parent("FINISHED")
    return {"uri": uri, "root": root, "sweep": sweep, "matrix": matrix, "versions": versions}


class _Page(HTMLParser):
    """Sections, images, tables (rows of cell texts) and links of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[dict] = []
        self.images: list[dict] = []
        self.tables: list[dict] = []
        self.links: list[str] = []
        self.tags: set[str] = set()
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if tag == "section":
            self.sections.append(attrs)
        elif tag == "img":
            self.images.append({**attrs, "section": len(self.sections) - 1})
        elif tag == "table":
            self.tables.append({"class": attrs.get("class", ""), "rows": [], "row_classes": [],
                                "section": len(self.sections) - 1})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])
            self.tables[-1]["row_classes"].append(attrs.get("class", ""))
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "a":
            self.links.append(attrs.get("href", ""))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self.tables:
            self.tables[-1]["rows"][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def table(self, cls: str, section: int = 0) -> list[list[str]]:
        found = [t for t in self.tables if t["class"] == cls and t["section"] == section]
        assert found, f"no table {cls!r} in section {section}"
        return found[0]["rows"]


def _parse(path: Path) -> tuple[str, _Page]:
    text = path.read_text()
    page = _Page()
    page.feed(text)
    return text, page


@pytest.fixture(scope="module")
def sweep_page(store, tmp_path_factory):
    """The sweep's page, written by the command as a user runs it: the store comes from the
    environment (as for ``forgesweep sweep``), the file lands in the current directory."""
    where = tmp_path_factory.mktemp("report")
    mp = pytest.MonkeyPatch()
    mp.chdir(where)
    mp.setenv("MLFLOW_TRACKING_URI", store["uri"])
    parser = argparse.ArgumentParser()
    report_cli.add_parser(parser.add_subparsers(dest="command"))
    try:
        status = report_cli.run(parser.parse_args(["report", "unit-sweep", "--config",
                                                   str(REPO / "jobs" / "configs" / "default.yaml")]))
    finally:
        mp.undo()
    assert status == 0
    return _parse(where / "report-unit-sweep.html")


def test_page_is_self_contained(sweep_page):
    text, page = sweep_page
    assert "script" not in page.tags and "link" not in page.tags
    assert not re.search(r'src="(?!data:image/png;base64,)', text), "every image is embedded"
    for img in page.images:
        png = base64.b64decode(img["src"].split(",", 1)[1])
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


def test_sweep_heatmaps_one_per_trial_that_reported(sweep_page):
    _, page = sweep_page
    heatmaps = [i for i in page.images if "accuracy" in i.get("alt", "") and i["alt"].startswith("trial")]
    assert sorted(i["alt"] for i in heatmaps) == [f"trial {t}: accuracy" for t in sorted(SWEEP_TRIALS)]
    assert any(i.get("class") == "lines wide" for i in page.images)


def test_sweep_comparison_table_ranks_trials_and_marks_the_best(sweep_page, store):
    _, page = sweep_page
    rows = page.table("comparison")
    assert rows[0] == ["trial", "ACC Deepfakes", "ACC Face2Face", "avg ACC", "avg AUC", "forgetting", "BWT", "stages"]
    body = rows[1:]
    assert [r[0] for r in body] == ["t1", "t0", "t2", "t3"], "complete trials best first, the stopped one last"
    assert body[0][3] == "0.910" and body[-1][-1] == "1/2" and body[0][-1] == "2/2"
    classes = [t for t in page.tables if t["class"] == "comparison"][0]["row_classes"]
    assert classes[1] == "best" and not any(classes[2:])


def test_best_hyperparameters_are_the_searched_keys_of_the_best_trial(sweep_page):
    _, page = sweep_page
    rows = dict(page.table("best-params")[1:])
    assert rows == {"strategy.kd_temperature": "4", "strategy.replay_size": "300",
                    "strategy.replay_policy": "hybrid"}


def test_importances_over_finished_trials_with_fanova(sweep_page):
    text, page = sweep_page
    assert "fANOVA" in text and "over 3 trial(s)" in text
    rows = page.table("importances")[1:]
    assert {r[0] for r in rows} == set(SPACE)
    assert sum(float(r[1]) for r in rows) == pytest.approx(1.0, abs=1e-3)


def test_runs_and_registered_stage_models_are_listed(sweep_page, store):
    _, page = sweep_page
    sweep = store["sweep"]
    runs = page.table("runs")
    listed = {r[1] for r in runs[1:]}
    assert listed == {t.run_id for t in sweep.trials.values()}
    assert any(link.endswith(f"/runs/{sweep.trials['t1'].run_id}") and link.startswith("http://127.0.0.1:5000/#/")
               for link in page.links)
    registered = page.table("registered")[1:]
    assert [(r[0], r[2], r[3]) for r in registered] == [(MODEL, "stage-1", f"models:/{MODEL}@stage-1"),
                                                        (MODEL, "stage-2", f"models:/{MODEL}@stage-2")]


def test_matrix_report_has_mean_std_table_and_one_heatmap_per_strategy(store, tmp_path):
    out = tmp_path / "matrix.html"
    build_report("unit-matrix", store["uri"], out)
    text, page = _parse(out)
    assert page.sections[0]["data-kind"] == "matrix"
    rows = page.table("comparison")
    assert [r[0] for r in rows[1:]] == ["FT", "ER"], "config order of the cells"
    assert rows[0][-1] == "seeds" and all(r[-1] == "2" for r in rows[1:])
    assert "±" in rows[2][3], "two seeds: mean ± std"
    heatmaps = [i for i in page.images if i.get("alt", "").endswith("(lite, methods)")]
    assert sorted(i["alt"] for i in heatmaps) == ["ER (lite, methods)", "FT (lite, methods)"]
    assert {r[0] for r in page.table("importances")[1:]} == {"strategy", "seed"}
    best = dict(page.table("best-params")[1:])
    assert best["strategy"] == "ER" and best["seed"] == "0"


def test_experiment_name_selects_every_sweep_and_matrix(store):
    client = open_store(store["uri"])
    runs = find_parent_runs(client, "unit-report")
    assert sorted(r.data.tags["forgesweep.sweep"] for r in runs) == ["unit-matrix", "unit-sweep"]
    parent = store["sweep"].parent_run_id
    assert [r.info.run_id for r in find_parent_runs(client, parent)] == [parent]
    with pytest.raises(UserError, match="not a sweep or matrix parent run"):
        find_parent_runs(client, store["sweep"].trials["t0"].run_id)


def test_unknown_target_names_what_exists_and_writes_nothing(store, tmp_path):
    out = tmp_path / "keep.html"
    out.write_text("previous report")
    with pytest.raises(UserError, match="unit-sweep.*unit-matrix|unit-matrix.*unit-sweep"):
        build_report("no-such-sweep", store["uri"], out)
    assert out.read_text() == "previous report"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.html"], "no temporary file left behind"


def test_cli_run_reports_bad_input_with_exit_status_2(tmp_path, capsys, monkeypatch):
    parser = argparse.ArgumentParser()
    report_cli.add_parser(parser.add_subparsers(dest="command"))
    missing = tmp_path / "nothing.db"
    args = parser.parse_args(["report", "x", "--tracking-uri", f"sqlite:///{missing}", "--out", str(tmp_path / "r.html")])
    assert report_cli.run(args) == 2
    assert "no MLflow store at" in capsys.readouterr().err
    assert not missing.exists(), "a read-only command must not create a store"


def test_importances_need_two_finished_trials_and_a_varying_parameter():
    space = {"a": {"type": "uniform", "low": 0, "high": 1}}
    assert "at least 2" in parameter_importances([({"a": "0.5"}, 0.9)], space).reason
    same = parameter_importances([({"a": "0.5"}, 0.9), ({"a": "0.5"}, 0.8)], space)
    assert "more than one value" in same.reason
    flat = parameter_importances([({"a": "0.1"}, 0.5), ({"a": "0.9"}, 0.5)], space)
    assert "same objective" in flat.reason
    # The objective is `a`; `b` alternates independently of it. The last trial lacks `a`.
    trials = [({"a": str(a / 10), "b": "xy"[i % 2]}, a / 10) for i, a in enumerate((1, 2, 3, 4, 5, 6, 7, 8))]
    result = parameter_importances([*trials, ({"b": "y"}, 0.2)], {**space, "b": {}})
    assert result.reason is None and result.trials_used == 8 and len(result.skipped) == 1
    assert set(result.values) == {"a", "b"} and result.values["a"] > result.values["b"]
