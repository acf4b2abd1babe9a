"""The comparison matrix without Ray: cells from the config, the aggregated table."""

from __future__ import annotations

import math

import pytest

from forgesweep.config import load_config
from forgesweep.errors import ConfigError
from forgesweep.metrics import AccuracyMatrix
from forgesweep.sweep.matrix import build_cells, comparison_csv, comparison_markdown, comparison_rows
from forgesweep.tracking.runs import TrialRecord

from pathlib import Path

DEFAULT = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "default.yaml"


def _cfg(*overrides):
    return load_config(DEFAULT, list(overrides))


def test_cells_are_the_cross_product_with_full_configs():
    cfg = _cfg("matrix.strategies={FT: {name: finetune}, CFFD: {name: cffd, w_slkd: 0.5}}",
               "matrix.sequences={fwd: [Deepfakes, Face2Face], rev: [Face2Face, Deepfakes]}",
               "matrix.seeds=[0, 3]")
    cells = build_cells(cfg)
    assert len(cells) == 2 * 2 * 2
    ids = {c.cell_id for c in cells}
    assert "rsia_net|rev|CFFD|seed3" in ids
    cell = next(c for c in cells if c.cell_id == "rsia_net|rev|CFFD|seed3")
    assert cell.config["seed"] == 3
    assert [t["name"] for t in cell.config["data"]["sequence"]] == ["Face2Face", "Deepfakes"]
    assert cell.config["strategy"]["name"] == "cffd" and cell.config["strategy"]["w_slkd"] == 0.5
    ft = next(c for c in cells if c.labels[2] == "FT")
    assert "kd_temperature" not in ft.config["strategy"]  # the FT cell does not inherit cffd's keys


def test_empty_axes_use_the_configs_own_sections():
    cells = build_cells(_cfg())
    assert len(cells) == 1
    assert cells[0].labels == ("rsia_net", "sequence", "cffd", 0)


@pytest.mark.parametrize("override, words", [
    ("matrix.strategies={X: {name: nosuch}}", ["strategy=X", "nosuch"]),
    ("matrix.strategies={X: {name: cffd, w_slkd: -1}}", ["strategy=X", "w_slkd"]),
    ("matrix.models={M: {name: rsia_lite, width: 1}}", ["model=M", "width"]),
])
def test_a_bad_cell_is_named(override, words):
    with pytest.raises(ConfigError) as info:
        build_cells(_cfg(override))
    for word in words:
        assert word in str(info.value)


def _record(tasks, finals, stages=None):
    n = len(tasks)
    rec = TrialRecord("t", "r", {}, list(tasks), AccuracyMatrix(n), AccuracyMatrix(n))
    for k in range(1, n + 1):
        rec.stages[k] = {"avg_acc": 0.5 + 0.1 * k}
    rec.stages[n] = dict(finals)
    return rec


def test_rows_average_over_seeds_with_sample_std():
    tasks = ["A", "B"]
    results = [
        (("m", "s", "FT", 0), _record(tasks, {"acc/A": 0.6, "acc/B": 0.9, "avg_acc": 0.75, "forgetting": 0.3, "bwt": -0.3})),
        (("m", "s", "FT", 1), _record(tasks, {"acc/A": 0.8, "acc/B": 0.9, "avg_acc": 0.85, "forgetting": 0.1, "bwt": -0.1})),
        (("m", "s", "CFFD", 0), _record(tasks, {"acc/A": 0.9, "acc/B": 0.8, "avg_acc": 0.85, "forgetting": 0.0, "bwt": 0.0})),
    ]
    rows = comparison_rows(results)
    assert [r["strategy"] for r in rows] == ["FT", "CFFD"]
    ft = rows[0]
    assert ft["seeds"] == 2
    assert ft["acc/A"] == pytest.approx(0.7) and ft["acc/A_std"] == pytest.approx(math.sqrt(0.02))
    assert ft["forgetting"] == pytest.approx(0.2)
    assert math.isnan(ft["avg_auc"])  # not reported -> NaN, shown as a dash
    md = comparison_markdown(rows)
    assert "| FT | 0.700 ± 0.141 | 0.900 ± 0.000 | 0.800 ± 0.071 | – | 0.200 ± 0.141 | -0.200 ± 0.141 | 2 |" in md
    assert "| CFFD | 0.900 | 0.800 | 0.850 | – | 0.000 | 0.000 | 1 |" in md
    assert "**m** on **s** (A → B)" in md
    csv_text = comparison_csv(rows)
    assert csv_text.splitlines()[0].startswith("model,sequence,strategy,seeds,acc/A,acc/A_std")
    assert len(csv_text.strip().splitlines()) == 3


def test_a_label_mlflow_cannot_store_is_rejected_at_config_time():
    with pytest.raises(ConfigError, match=r"matrix.strategies: .*'DER\+\+'"):
        _cfg("matrix.strategies={DER++: {name: derpp}}")
