"""The Grafana dashboards in ``dashboards/grafana``: valid, consistent, and built on known metrics.

That every metric really is exported is proven against a running Ray in
``tests/integration/test_metrics_export.py`` (training, sweep) and ``test_serve.py`` (serving);
here the checks need no Ray: structure, the datasource and session conventions, the custom
metric catalogue, the generator, and the PromQL parsing those integration tests rely on.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from forgesweep.observability.dashboards import (Query, all_queries, check_queries, dashboard_queries,
                                                 duplicate_panel_ids, iter_panels, load_dashboards, metric_names,
                                                 parse_exposition, parse_samples, selector_labels)
from forgesweep.observability.metrics import CATALOGUE, PROMETHEUS_PREFIX, catalogue_markdown

REPO = Path(__file__).resolve().parents[2]
FOLDER = REPO / "dashboards" / "grafana"
DS = {"type": "prometheus", "uid": "${datasource}"}


@pytest.fixture(scope="module")
def dashboards():
    return load_dashboards(FOLDER)


def test_the_three_dashboards_parse(dashboards):
    assert set(dashboards) == {"forgesweep_training.json", "forgesweep_sweep.json", "forgesweep_serving.json"}
    uids = [d["uid"] for d in dashboards.values()]
    assert len(set(uids)) == 3 and all(u.startswith("forgesweep-") for u in uids)


@pytest.mark.parametrize("name", ["forgesweep_training.json", "forgesweep_sweep.json", "forgesweep_serving.json"])
def test_panel_ids_unique_and_every_panel_on_the_datasource_variable(dashboards, name):
    d = dashboards[name]
    assert duplicate_panel_ids(d) == []
    panels = [p for p in iter_panels(d) if p["type"] != "row"]
    assert len(panels) >= 10
    for p in panels:
        assert p["datasource"] == DS, p["title"]
        assert p["targets"] and all(t["datasource"] == DS and t["expr"] for t in p["targets"]), p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"])
        grid = p["gridPos"]
        assert grid["x"] + grid["w"] <= 24
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"


@pytest.mark.parametrize("name", ["forgesweep_training.json", "forgesweep_sweep.json", "forgesweep_serving.json"])
def test_every_selector_filters_on_the_session_and_uses_defined_variables(dashboards, name):
    d = dashboards[name]
    defined = {v["name"] for v in d["templating"]["list"]} | {"__rate_interval", "__interval"}
    for q in dashboard_queries(name, d):
        for metric, keys in selector_labels(q.expr):
            assert "SessionName" in keys, f"{q.where}: {metric} is not filtered by session"
        used = set(re.findall(r"\$\{?(\w+)\}?", q.expr))
        assert used <= defined, f"{q.where}: undefined variables {used - defined}"


def test_custom_metric_names_are_in_the_catalogue_and_all_are_shown(dashboards):
    used = {n for q in all_queries(dashboards) for n in metric_names(q.expr)}
    custom = {n for n in used if n.startswith(PROMETHEUS_PREFIX + "forgesweep_")}
    known = {n for m in CATALOGUE for n in m.prometheus_names}
    assert custom <= known, f"not in forgesweep.observability.metrics: {sorted(custom - known)}"
    for spec in CATALOGUE:
        assert any(n in used for n in spec.prometheus_names), f"{spec.name} is on no dashboard"
    other = used - custom
    assert other and all(n.startswith("ray_") for n in other), sorted(other)


def test_json_files_match_the_generator(tmp_path):
    spec = importlib.util.spec_from_file_location("generate_dashboards", REPO / "dashboards" / "generate_dashboards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0, "run python dashboards/generate_dashboards.py"
    assert module.main(["--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in FOLDER.glob("*.json"))


def test_readme_lists_the_current_catalogue():
    text = (REPO / "dashboards" / "README.md").read_text()
    assert catalogue_markdown() in text, "regenerate the table in dashboards/README.md from catalogue_markdown()"


def test_load_dashboards_names_a_broken_file(tmp_path):
    (tmp_path / "bad.json").write_text("{ not json")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        load_dashboards(tmp_path)
    (tmp_path / "bad.json").write_text('{"title": "no panels"}')
    with pytest.raises(ValueError, match="bad.json: not a Grafana dashboard"):
        load_dashboards(tmp_path)


@pytest.mark.parametrize("expr, names", [
    ('histogram_quantile(0.99, sum by (le, stage) (rate(ray_x_bucket{app=~"$app",SessionName=~"$S"}[$__rate_interval])))',
     {"ray_x_bucket"}),
    ('sum(rate(a_total{label="fake"}[5m])) / sum(rate(a_total[5m]))', {"a_total"}),
    ("max by (ray_train_run_name) (ray_y{x=\"by (z)\"}) * on(ip) group_left ray_z offset 5m", {"ray_y", "ray_z"}),
    ("sum(ray_node_cpu_utilization * ray_node_cpu_count / 100) by (ip) > bool 1e3", {"ray_node_cpu_utilization",
                                                                                    "ray_node_cpu_count"}),
    ("label_values(ray_forgesweep_train_stage{SessionName=~\"$SessionName\"}, ray_train_run_name)",
     {"ray_forgesweep_train_stage"}),
])
def test_metric_names_of_promql(expr, names):
    assert metric_names(expr) == names


def test_selector_labels_and_exposition_parsing():
    assert selector_labels('sum(a{x="1", y=~"$v"}) + b{z!="q,w"}') == [("a", {"x", "y"}), ("b", {"z"})]
    text = "\n".join([
        "# HELP ray_a help", "# TYPE ray_a gauge",
        'ray_a{SessionName="s",task="Face \\"2\\" Face",stage="1"} 0.5',
        "ray_b 3", 'ray_c_bucket{le="+Inf"} 7.0',
    ])
    assert parse_exposition(text) == {"ray_a": {"SessionName", "task", "stage"}, "ray_b": set(),
                                      "ray_c_bucket": {"le"}}
    samples = {s.name: s for s in parse_samples(text)}
    assert samples["ray_a"].labels["task"] == 'Face "2" Face' and samples["ray_a"].value == 0.5
    assert samples["ray_b"].value == 3.0 and samples["ray_c_bucket"].labels == {"le": "+Inf"}


def test_check_queries_reports_missing_metrics_and_labels():
    exported = {"ray_a": {"SessionName", "stage"}}
    queries = [Query("d.json", "panel 1 (A)", 'ray_a{stage="1",instance="x",SessionName=~"$S"}'),
               Query("d.json", "panel 2 (B)", 'ray_a{tsak="x"} + ray_missing')]
    assert check_queries(queries, exported) == ["d.json panel 2 (B): metric ray_missing is not exported",
                                                "d.json panel 2 (B): ray_a has no label tsak"]
