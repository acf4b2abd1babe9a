"""Writes the Grafana dashboards in ``dashboards/grafana/`` (training, sweep, serving).

The JSON files are generated from the compact definitions below so every panel follows the same
conventions: the ``${datasource}`` Prometheus variable of Ray's own dashboards, a
``SessionName`` filter on every selector (Ray labels every metric with its session), unique panel
ids, and a grid layout. Edit this file, then run it::

    python dashboards/generate_dashboards.py          # rewrites dashboards/grafana/*.json
    python dashboards/generate_dashboards.py --check  # exit 1 if a JSON file is out of date

``tests/unit/test_dashboards.py`` fails when the JSON files and this script disagree, and
``tests/integration/test_metrics_export.py`` checks every metric a query names against a scrape
of a running Ray. Metric names: Ray exports application metrics with a ``ray_`` prefix, so the
project's ``forgesweep_*`` metrics (``forgesweep.observability.metrics``) appear as
``ray_forgesweep_*``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

OUT = Path(__file__).resolve().parent / "grafana"
DS = {"type": "prometheus", "uid": "${datasource}"}
SESSION = 'SessionName=~"$SessionName"'
RUN = f'ray_train_run_name=~"$TrainRunName",{SESSION}'
SWEEP = f'ray_train_run_name=~"$run_filter",{SESSION}'
SERVE = f'app=~"$app",{SESSION}'
RATE = "[$__rate_interval]"


# ------------------------------------------------------------------------------ building blocks


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False, fmt: str = "time_series") -> dict:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "instant": instant,
            "range": not instant, "format": fmt}


def _targets(queries: list) -> list[dict]:
    out = []
    for i, q in enumerate(queries):
        q = dict(q) if isinstance(q, dict) else {"expr": q[0], "legend": q[1]}
        out.append(target(q.pop("expr"), q.pop("legend", ""), ref=chr(ord("A") + i), **q))
    return out


def panel(kind: str, title: str, description: str, queries: list, unit: str = "short", w: int = 12, h: int = 8,
          options: Optional[dict] = None, defaults: Optional[dict] = None, transformations: Optional[list] = None,
          ) -> dict:
    """One panel; ``queries`` are ``(expr, legend)`` pairs or dicts of :func:`target` arguments."""
    body: dict[str, Any] = {
        "type": kind, "title": title, "description": description, "datasource": DS,
        "gridPos": {"w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit, **(defaults or {})}, "overrides": []},
        "options": options or {}, "targets": _targets(queries),
    }
    if transformations:
        body["transformations"] = transformations
    return body


def timeseries(title: str, description: str, queries: list, unit: str = "short", **kw: Any) -> dict:
    options = {"legend": {"displayMode": "table", "placement": "bottom", "showLegend": True, "calcs": ["lastNotNull"]},
               "tooltip": {"mode": "multi", "sort": "desc"}}
    defaults = {"custom": {"lineWidth": 2, "fillOpacity": 10, "showPoints": "auto"}, **kw.pop("defaults", {})}
    return panel("timeseries", title, description, queries, unit, options=options, defaults=defaults, **kw)


def stat(title: str, description: str, queries: list, unit: str = "short", **kw: Any) -> dict:
    options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
               "colorMode": "value", "graphMode": "area", "textMode": "auto", "orientation": "auto"}
    return panel("stat", title, description, queries, unit, w=kw.pop("w", 6), h=kw.pop("h", 5), options=options, **kw)


def bars(title: str, description: str, queries: list, unit: str = "short", **kw: Any) -> dict:
    options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
               "orientation": "horizontal", "displayMode": "gradient", "showUnfilled": True}
    return panel("bargauge", title, description, queries, unit, options=options, **kw)


def table(title: str, description: str, queries: list, transformations: list, unit: str = "short", **kw: Any) -> dict:
    options = {"showHeader": True, "cellHeight": "sm"}
    return panel("table", title, description, queries, unit, options=options, transformations=transformations, **kw)


def heatmap(title: str, description: str, expr: str, unit: str, **kw: Any) -> dict:
    options = {"calculate": False, "yAxis": {"unit": unit}, "cellGap": 1,
               "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64}, "tooltip": {"show": True}}
    return panel("heatmap", title, description, [{"expr": expr, "legend": "{{le}}", "fmt": "heatmap"}], unit,
                 options=options, **kw)


def row(title: str) -> dict:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"w": 24, "h": 1}}


def matrix_table(title: str, description: str, metric: str) -> dict:
    """An instant table of ``metric{stage, task}`` pivoted to rows = stage, columns = task."""
    expr = f"max by (stage, task) ({metric}{{{RUN}}})"
    pivot = {"id": "groupingToMatrix", "options": {"columnField": "task", "rowField": "stage", "valueField": "Value"}}
    return table(title, description, [{"expr": expr, "instant": True, "fmt": "table"}], [pivot], unit="percentunit",
                 defaults={"decimals": 3, "min": 0, "max": 1,
                           "custom": {"cellOptions": {"type": "color-background"}},
                           "color": {"mode": "continuous-RdYlGr"}})


def variable_query(name: str, label: str, query: str, multi: bool = True, include_all: bool = True,
                   hide: int = 0) -> dict:
    return {"name": name, "label": label, "type": "query", "datasource": DS, "definition": query,
            "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery", "qryType": 1},
            "refresh": 2, "sort": 1, "multi": multi, "includeAll": include_all, "allValue": ".*" if include_all else None,
            "hide": hide, "current": {}, "options": []}


DATASOURCE_VARIABLE = {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
                       "hide": 0, "current": {}, "options": [], "refresh": 1, "regex": ""}


def session_variable(metric: str) -> dict:
    return variable_query("SessionName", "Ray session", f"label_values({metric}, SessionName)")


def dashboard(uid: str, title: str, description: str, variables: list[dict], panels: list[dict]) -> dict:
    """Assign ids and grid positions (left to right, wrapping at 24 columns) and wrap the panels."""
    x = y = row_h = 0
    for i, p in enumerate(panels, start=1):
        p["id"] = i
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if p["type"] == "row" or x + w > 24:
            x, y, row_h = 0, y + row_h, 0
        p["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        x, row_h = x + w, max(row_h, h)
        if p["type"] == "row":
            x, y, row_h = 0, y + h, 0
    return {
        "uid": uid, "title": title, "description": description, "tags": ["forgesweep", "ray"],
        "editable": True, "graphTooltip": 1, "schemaVersion": 39, "version": 1, "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"}, "timezone": "browser", "fiscalYearStartMonth": 0,
        "liveNow": False, "weekStart": "", "links": [],
        "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                                  "name": "Annotations & Alerts", "type": "dashboard"}]},
        "templating": {"list": [DATASOURCE_VARIABLE, *variables]},
        "panels": panels,
    }


def cluster_panels(extra_filter: str = "") -> list[dict]:
    """CPU, memory and Ray resources of the cluster's nodes (Ray's own node metrics)."""
    return [
        row("Cluster (Ray node metrics)"),
        timeseries("CPU cores in use per node", "ray_node_cpu_utilization x ray_node_cpu_count: cores busy on each "
                   "node, against the node's cores.",
                   [(f"sum by (ip) (ray_node_cpu_utilization{{{SESSION}}} * ray_node_cpu_count{{{SESSION}}} / 100)",
                     "busy {{ip}}"),
                    (f"sum by (ip) (ray_node_cpu_count{{{SESSION}}})", "cores {{ip}}")], w=8),
        timeseries("Memory per node", "ray_node_mem_used against ray_node_mem_total.",
                   [(f"sum by (ip) (ray_node_mem_used{{{SESSION}}})", "used {{ip}}"),
                    (f"sum by (ip) (ray_node_mem_total{{{SESSION}}})", "total {{ip}}")], unit="bytes", w=8),
        timeseries("Ray logical CPUs", "ray_resources: CPUs Ray has handed to tasks, actors and placement groups "
                   "(USED) and still free (AVAILABLE).",
                   [(f'sum by (State) (ray_resources{{Name="CPU",{SESSION}}})', "{{State}}")], w=8),
    ]


# ------------------------------------------------------------------------------ the dashboards


def training_dashboard() -> dict:
    run_var = variable_query("TrainRunName", "Ray Train run", f"label_values(ray_forgesweep_train_stage{{{SESSION}}}, "
                             "ray_train_run_name)", multi=False, include_all=False)
    panels = [
        row("Progress (every Ray Train worker)"),
        stat("Stage", "Task stage the run is training (forgesweep_train_stage, highest over its workers).",
             [(f"max(ray_forgesweep_train_stage{{{RUN}}})", "stage")]),
        stat("Epoch", "Epoch within the current stage (forgesweep_train_epoch).",
             [(f"max(ray_forgesweep_train_epoch{{{RUN}}})", "epoch")]),
        stat("Stages completed", "Stages finished and reported (forgesweep_stages_completed).",
             [(f"max(ray_forgesweep_stages_completed{{{RUN}}})", "done")]),
        stat("Average accuracy", "Average ACC over the tasks seen after the latest stage.",
             [(f"max(ray_forgesweep_avg_accuracy{{{RUN}}})", "avg ACC")], unit="percentunit"),
        timeseries("Training samples/s per worker", "forgesweep_train_samples_per_second: each worker's rate, "
                   "refreshed every second while it trains (flat while it evaluates).",
                   [(f"ray_forgesweep_train_samples_per_second{{{RUN}}}", "rank {{ray_train_worker_world_rank}}")]),
        timeseries("Training samples/s (from the counter)", "rate() of forgesweep_train_samples_total, summed over "
                   "the run's workers.",
                   [(f"sum(rate(ray_forgesweep_train_samples_total{{{RUN}}}{RATE}))", "all workers")]),
        timeseries("Stage and epoch per worker", "forgesweep_train_stage and forgesweep_train_epoch.",
                   [(f"ray_forgesweep_train_stage{{{RUN}}}", "stage, rank {{ray_train_worker_world_rank}}"),
                    (f"ray_forgesweep_train_epoch{{{RUN}}}", "epoch, rank {{ray_train_worker_world_rank}}")],
                   defaults={"custom": {"lineInterpolation": "stepAfter", "lineWidth": 2, "fillOpacity": 0}}),
        timeseries("Loss terms (last epoch of each stage)", "forgesweep_train_loss by term (loss, bce, kd, ...).",
                   [(f"ray_forgesweep_train_loss{{{RUN}}}", "{{term}}")]),
        row("Results after each stage (rank 0)"),
        matrix_table("Accuracy matrix R[stage][task]", "forgesweep_task_accuracy: ACC on each task (column) after "
                     "each stage (row).", "ray_forgesweep_task_accuracy"),
        matrix_table("AUC matrix", "forgesweep_task_auc: AUC on each task after each stage.", "ray_forgesweep_task_auc"),
        timeseries("Average ACC / AUC", "After the latest reported stage; steps up or down at every stage.",
                   [(f"ray_forgesweep_avg_accuracy{{{RUN}}}", "avg ACC"), (f"ray_forgesweep_avg_auc{{{RUN}}}", "avg AUC")],
                   unit="percentunit", w=8),
        timeseries("Forgetting", "Average forgetting after the latest stage (lower is better).",
                   [(f"ray_forgesweep_forgetting{{{RUN}}}", "forgetting")], w=8),
        timeseries("Replay buffer and stage time", "Replayed samples in the latest stage's training set, and the "
                   "stage's wall-clock seconds.",
                   [(f"ray_forgesweep_replay_buffer_size{{{RUN}}}", "replay samples"),
                    (f"ray_forgesweep_stage_seconds{{{RUN}}}", "stage seconds")], w=8),
        row("Ray Train"),
        timeseries("Controller state", "ray_train_controller_state: 1 for the state the run's controller is in.",
                   [(f"sum by (ray_train_controller_state) (ray_train_controller_state{{{RUN}}})",
                     "{{ray_train_controller_state}}")], w=8),
        timeseries("Worker group start time", "ray_train_worker_group_start_total_time_s: seconds spent starting "
                   "worker groups (restarts after failures add up).",
                   [(f"sum(ray_train_worker_group_start_total_time_s{{{RUN}}})", "start")], unit="s", w=8),
        timeseries("Time blocked in report / checkpoint upload", "ray_train_report_total_blocked_time_s and "
                   "ray_train_checkpoint_transfer_total_time_s per worker.",
                   [(f"sum by (ray_train_worker_world_rank) (ray_train_report_total_blocked_time_s{{{RUN}}})",
                     "report, rank {{ray_train_worker_world_rank}}"),
                    (f"sum by (ray_train_worker_world_rank) (ray_train_checkpoint_transfer_total_time_s{{{RUN}}})",
                     "checkpoint upload, rank {{ray_train_worker_world_rank}}")], unit="s", w=8),
        *cluster_panels(),
    ]
    return dashboard("forgesweep-training", "forgesweep: training",
                     "One continual run (Ray Train run): throughput, stage and epoch per worker, accuracy matrix "
                     "and forgetting after every stage, Ray Train internals, cluster load.",
                     [session_variable("ray_forgesweep_train_stage"), run_var], panels)


def sweep_dashboard() -> dict:
    run_filter = {"name": "run_filter", "label": "Runs (regex)", "type": "textbox", "query": ".*",
                  "current": {"text": ".*", "value": ".*"}, "hide": 0,
                  "description": "Ray Train run names to include; a sweep's trials are named <sweep>-<trial id>, "
                                 "so my-sweep-.* selects one sweep."}
    latest = f"{{{SWEEP}}}"
    panels = [
        row("Sweep progress"),
        stat("Trials training now", "Runs whose workers currently export forgesweep_train_stage.",
             [(f"count(max by (ray_train_run_name) (ray_forgesweep_train_stage{latest}))", "runs")]),
        stat("Best average accuracy", "Highest forgesweep_avg_accuracy among the selected runs (latest stage of each).",
             [(f"max(ray_forgesweep_avg_accuracy{latest})", "best")], unit="percentunit"),
        stat("Stages completed (all runs)", "Sum of forgesweep_stages_completed.",
             [(f"sum(ray_forgesweep_stages_completed{latest})", "stages")]),
        stat("Samples/s (all runs)", "rate() of forgesweep_train_samples_total over every selected run.",
             [(f"sum(rate(ray_forgesweep_train_samples_total{latest}{RATE}))", "samples/s")]),
        bars("Average accuracy per run (latest stage)", "forgesweep_avg_accuracy of each run.",
             [(f"max by (ray_train_run_name) (ray_forgesweep_avg_accuracy{latest})", "{{ray_train_run_name}}")],
             unit="percentunit", defaults={"min": 0, "max": 1}),
        bars("Stage reached per run", "forgesweep_stages_completed: trials an early-stopping scheduler ended stop "
             "growing.", [(f"max by (ray_train_run_name) (ray_forgesweep_stages_completed{latest})",
                          "{{ray_train_run_name}}")]),
        timeseries("Average accuracy per run", "forgesweep_avg_accuracy over time: one step per reported stage.",
                   [(f"max by (ray_train_run_name) (ray_forgesweep_avg_accuracy{latest})", "{{ray_train_run_name}}")],
                   unit="percentunit"),
        timeseries("Forgetting per run", "forgesweep_forgetting after each stage.",
                   [(f"max by (ray_train_run_name) (ray_forgesweep_forgetting{latest})", "{{ray_train_run_name}}")]),
        timeseries("Samples/s per run", "Sum of the run's workers' forgesweep_train_samples_per_second.",
                   [(f"sum by (ray_train_run_name) (ray_forgesweep_train_samples_per_second{latest})",
                     "{{ray_train_run_name}}")]),
        table("Runs", "Latest values per run: model and strategy labels, stages completed, average ACC, forgetting.",
              [{"expr": f"max by (ray_train_run_name, model, strategy) (ray_forgesweep_avg_accuracy{latest})",
                "instant": True, "fmt": "table"},
               {"expr": f"max by (ray_train_run_name, model, strategy) (ray_forgesweep_forgetting{latest})",
                "instant": True, "fmt": "table"},
               {"expr": f"max by (ray_train_run_name, model, strategy) (ray_forgesweep_stages_completed{latest})",
                "instant": True, "fmt": "table"}],
              [{"id": "merge", "options": {}},
               {"id": "organize", "options": {"excludeByName": {"Time": True}, "renameByName": {
                   "Value #A": "avg ACC", "Value #B": "forgetting", "Value #C": "stages"}}}]),
        row("Ray Train and Tune resources"),
        timeseries("Train controllers by state", "ray_train_controller_state summed per state: how many trials are "
                   "starting workers, running, restarting or finished.",
                   [(f"sum by (ray_train_controller_state) (ray_train_controller_state{latest})",
                     "{{ray_train_controller_state}}")], w=8),
        timeseries("Placement groups", "ray_placement_groups by state: each trial's worker group holds one.",
                   [(f"sum by (State) (ray_placement_groups{{{SESSION}}})", "{{State}}")], w=8),
        timeseries("Actors by state", "ray_actors: Tune trial drivers, Train controllers and workers.",
                   [(f"sum by (State) (ray_actors{{{SESSION}}})", "{{State}}")], w=8),
        *cluster_panels(),
    ]
    return dashboard("forgesweep-sweep", "forgesweep: sweep",
                     "Every trial of a sweep (or cell of a comparison matrix) side by side: progress, average "
                     "accuracy and forgetting per run, throughput, Ray resources.",
                     [session_variable("ray_forgesweep_train_stage"), run_filter], panels)


def serving_dashboard() -> dict:
    app_var = variable_query("app", "Serve app", f"label_values(ray_forgesweep_serve_requests_total{{{SESSION}}}, app)")
    c = f"{{{SERVE}}}"
    ray_app = f'{{application=~"$app",{SESSION}}}'
    panels = [
        row("Detection requests (forgesweep ingress)"),
        stat("Requests/s", "rate() of forgesweep_serve_requests_total (both detection routes).",
             [(f"sum(rate(ray_forgesweep_serve_requests_total{c}{RATE}))", "req/s")], unit="reqps"),
        stat("p99 latency", "99th percentile of forgesweep_serve_request_latency_ms.",
             [(f"histogram_quantile(0.99, sum by (le) (rate(ray_forgesweep_serve_request_latency_ms_bucket{c}{RATE})))",
               "p99")], unit="ms"),
        stat("Fake rate", "Share of answered detections labelled fake (forgesweep_serve_predictions_total).",
             [(f'sum(rate(ray_forgesweep_serve_predictions_total{{label="fake",{SERVE}}}{RATE})) / '
               f"sum(rate(ray_forgesweep_serve_predictions_total{c}{RATE}))", "fake rate")], unit="percentunit"),
        stat("Errors/s", "rate() of forgesweep_serve_errors_total.",
             [(f"sum(rate(ray_forgesweep_serve_errors_total{c}{RATE}))", "errors/s")], unit="reqps"),
        timeseries("Requests/s by stage and status", "forgesweep_serve_requests_total by task stage and HTTP status.",
                   [(f"sum by (stage, status) (rate(ray_forgesweep_serve_requests_total{c}{RATE}))",
                     "stage {{stage}} {{status}}")], unit="reqps"),
        timeseries("Latency p50 / p95 / p99 by stage", "From the forgesweep_serve_request_latency_ms histogram.",
                   [(f"histogram_quantile({q}, sum by (le, stage) "
                     f"(rate(ray_forgesweep_serve_request_latency_ms_bucket{c}{RATE})))", f"p{int(q * 100)} stage {{{{stage}}}}")
                    for q in (0.5, 0.95, 0.99)], unit="ms"),
        timeseries("Fake rate by stage", "fake / all answered detections of each stage's model.",
                   [(f'sum by (stage) (rate(ray_forgesweep_serve_predictions_total{{label="fake",{SERVE}}}{RATE})) / '
                     f"sum by (stage) (rate(ray_forgesweep_serve_predictions_total{c}{RATE}))", "stage {{stage}}")],
                   unit="percentunit", defaults={"min": 0, "max": 1}),
        timeseries("Errors/s by stage and code", "forgesweep_serve_errors_total; stage 'unresolved' when the "
                   "request failed before its stage was known.",
                   [(f"sum by (stage, code) (rate(ray_forgesweep_serve_errors_total{c}{RATE}))",
                     "stage {{stage}}: {{code}}")], unit="reqps"),
        heatmap("Latency distribution", "forgesweep_serve_request_latency_ms buckets over time.",
                f"sum by (le) (increase(ray_forgesweep_serve_request_latency_ms_bucket{c}{RATE}))", "ms"),
        timeseries("Median fake probability by stage", "From the forgesweep_serve_fake_probability histogram: a "
                   "drift in the scores of one stage's model shows here first.",
                   [(f"histogram_quantile(0.5, sum by (le, stage) "
                     f"(rate(ray_forgesweep_serve_fake_probability_bucket{c}{RATE})))", "stage {{stage}}")],
                   defaults={"min": 0, "max": 1}),
        row("Ray Serve"),
        timeseries("HTTP requests/s by route and status",
                   "ray_serve_num_http_requests_total at the proxy. Behind HAProxy (Serve's high-throughput mode, "
                   "forgesweep's default) route is the app's route prefix; the forgesweep panels split by endpoint.",
                   [(f"sum by (route, status_code) (rate(ray_serve_num_http_requests_total{ray_app}{RATE}))",
                     "{{route}} {{status_code}}")], unit="reqps", w=8),
        timeseries("HTTP p99 latency by route",
                   "ray_serve_http_request_latency_ms at the proxy (includes queueing; route as in the panel above).",
                   [(f"histogram_quantile(0.99, sum by (le, route) "
                     f"(rate(ray_serve_http_request_latency_ms_bucket{ray_app}{RATE})))", "{{route}}")], unit="ms", w=8),
        timeseries("Replica processing p99 by deployment", "ray_serve_deployment_processing_latency_ms: time inside "
                   "the DetectorIngress and StageModels replicas.",
                   [(f"histogram_quantile(0.99, sum by (le, deployment) "
                     f"(rate(ray_serve_deployment_processing_latency_ms_bucket{ray_app}{RATE})))", "{{deployment}}")],
                   unit="ms", w=8),
        timeseries("Ongoing and queued requests", "ray_serve_replica_processing_queries (in replicas) and "
                   "ray_serve_deployment_queued_queries (waiting in handles).",
                   [(f"sum by (deployment) (ray_serve_replica_processing_queries{ray_app})", "processing {{deployment}}"),
                    (f"sum by (deployment) (ray_serve_deployment_queued_queries{ray_app})", "queued {{deployment}}")],
                   w=8),
        timeseries("Healthy replicas", "ray_serve_deployment_replica_healthy per deployment.",
                   [(f"sum by (deployment) (ray_serve_deployment_replica_healthy{ray_app})", "{{deployment}}")], w=8),
        timeseries("Stage models loaded per replica", "ray_serve_num_multiplexed_models: stage models held by the "
                   "StageModels replicas (@serve.multiplexed LRU).",
                   [(f"sum by (replica) (ray_serve_num_multiplexed_models{ray_app})", "{{replica}}")], w=8),
        *cluster_panels(),
    ]
    return dashboard("forgesweep-serving", "forgesweep: serving",
                     "The detection API: requests/s, latency, fake rate and errors per task stage, Ray Serve's "
                     "proxy and replicas, cluster load.",
                     [session_variable("ray_forgesweep_serve_requests_total"), app_var], panels)


DASHBOARDS = {"forgesweep_training.json": training_dashboard, "forgesweep_sweep.json": sweep_dashboard,
              "forgesweep_serving.json": serving_dashboard}


def render(build) -> str:
    """A dashboard as the text written to disk (stable key order, trailing newline)."""
    return json.dumps(build(), indent=2) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a file differs from what would be written")
    parser.add_argument("--out", type=Path, default=OUT, help=f"output folder (default {OUT})")
    args = parser.parse_args(argv)
    stale = []
    args.out.mkdir(parents=True, exist_ok=True)
    for name, build in DASHBOARDS.items():
        path, text = args.out / name, render(build)
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
            continue
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(text)
        tmp.replace(path)  # atomic: Grafana's file provisioner never reads half a file
        print(f"wrote {path}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run python dashboards/generate_dashboards.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
