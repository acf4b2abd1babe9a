"""Checking Grafana dashboards against what a running Ray really exports.

A dashboard whose query names a metric nobody exports shows an empty panel and no error, so
``dashboards/grafana/*.json`` are checked mechanically: every PromQL query (panel targets and
``label_values(...)`` variables) is reduced to the metric names and label keys it selects, and
those are looked up in a Prometheus scrape (:func:`parse_exposition`) of Ray's metrics
endpoint. ``tests/integration/test_metrics_export.py`` does that against the test session's Ray.

Example::

    exported = parse_exposition(scrape("http://127.0.0.1:8080/metrics"))
    problems = check_queries(all_queries(load_dashboards("dashboards/grafana")), exported)
"""

from __future__ import annotations

import json
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional

# Labels Prometheus itself attaches at scrape time: present in queries, never in an exposition.
SCRAPE_LABELS = frozenset({"instance", "job"})

_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and",
                       "or", "unless", "atan2", "inf", "nan"})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NUMBER = re.compile(r"(?<![\w:])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER_KEY = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_LABEL_VALUES = re.compile(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)")
_VARIABLE = re.compile(r"\$\{?\w+\}?")
_EXPOSITION_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+\S+")
_EXPOSITION_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*"')
_EXPOSITION_LABEL_VALUE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Query:
    """One PromQL expression of a dashboard, with where it sits."""

    dashboard: str
    where: str  # "panel 7 (Requests/s)" or "variable app"
    expr: str


def load_dashboards(folder: str | Path) -> dict[str, dict[str, Any]]:
    """Every ``*.json`` dashboard in ``folder`` by file name.

    Raises:
        ValueError: a file that is not valid JSON, or not a dashboard (no ``panels`` list),
            named with its path.
    """
    out = {}
    for path in sorted(Path(folder).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("panels"), list):
            raise ValueError(f"{path}: not a Grafana dashboard (no 'panels' list)")
        out[path.name] = data
    return out


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def duplicate_panel_ids(dashboard: Mapping[str, Any]) -> list[Any]:
    """Panel ids used more than once (Grafana silently mixes such panels up)."""
    seen: set[Any] = set()
    dup = []
    for panel in iter_panels(dashboard):
        pid = panel.get("id")
        if pid in seen:
            dup.append(pid)
        seen.add(pid)
    return dup


def dashboard_queries(name: str, dashboard: Mapping[str, Any]) -> list[Query]:
    """PromQL of every panel target and every query variable of ``dashboard``."""
    queries = []
    for panel in iter_panels(dashboard):
        for t in panel.get("targets", []):
            if t.get("expr"):
                queries.append(Query(name, f"panel {panel.get('id')} ({panel.get('title')})", t["expr"]))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            q = var.get("query")
            text = q.get("query") if isinstance(q, Mapping) else q
            if text:
                queries.append(Query(name, f"variable {var.get('name')}", text))
    return queries


def all_queries(dashboards: Mapping[str, Mapping[str, Any]]) -> list[Query]:
    """:func:`dashboard_queries` of every dashboard."""
    return [q for name, d in dashboards.items() for q in dashboard_queries(name, d)]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a ``label_values(metric, label)`` query) selects.

    Strings, ranges, grouping clauses, numbers, Grafana variables and function names are
    stripped; what is left is the metric names.
    """
    found = set(_LABEL_VALUES.findall(expr))
    if found:
        return found
    text = _STRING.sub(" ", expr)
    text = _VARIABLE.sub(" ", _RANGE.sub(" ", text))
    text = re.sub(r"\boffset\s+-?\w+", " ", text)  # "offset 5m": a duration, not a metric
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = _GROUPING.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        rest = text[match.end():].lstrip()
        if rest.startswith("(") or match.group(0).lower() in _KEYWORDS:
            continue  # a function or aggregation, or a keyword
        names.add(match.group(0))
    return names


def selector_labels(expr: str) -> list[tuple[str, set[str]]]:
    """``(metric, label keys its matchers use)`` for every ``metric{...}`` selector."""
    text = _STRING.sub('""', expr)
    return [(m.group(1), set(_MATCHER_KEY.findall(m.group(2)))) for m in _SELECTOR.finditer(text)]


def parse_exposition(text: str) -> dict[str, set[str]]:
    """Prometheus text exposition -> ``{series name: label keys seen on it}``."""
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _EXPOSITION_LINE.match(line)
        if match:
            labels = out.setdefault(match.group(1), set())
            if match.group(2):
                labels.update(_EXPOSITION_LABEL.findall(match.group(2)))
    return out


@dataclass(frozen=True)
class Sample:
    """One line of an exposition: series name, labels, value."""

    name: str
    labels: dict[str, str]
    value: float


def parse_samples(text: str) -> list[Sample]:
    """Every sample line of a Prometheus text exposition."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _EXPOSITION_LINE.match(line)
        if not match:
            continue
        labels = {m.group(1): m.group(2).replace('\\"', '"').replace("\\\\", "\\")
                  for m in _EXPOSITION_LABEL_VALUE.finditer(match.group(2) or "")}
        try:
            value = float(line[match.end(2) if match.group(2) else len(match.group(1)):].split()[0])
        except (ValueError, IndexError):
            continue
        out.append(Sample(match.group(1), labels, value))
    return out


def metrics_endpoints() -> list[str]:
    """``http://<node>:<metrics export port>/metrics`` of every alive node of the connected Ray."""
    import ray

    return [f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics" for n in ray.nodes()
            if n.get("Alive") and n.get("MetricsExportPort")]


def check_queries(queries: Iterable[Query], exported: Mapping[str, set[str]]) -> list[str]:
    """Problems: a metric no scrape showed, or a matcher on a label that metric never carries."""
    problems = []
    for q in queries:
        for name in sorted(metric_names(q.expr)):
            if name not in exported:
                problems.append(f"{q.dashboard} {q.where}: metric {name} is not exported")
        for name, keys in selector_labels(q.expr):
            missing = keys - exported.get(name, set()) - SCRAPE_LABELS
            if name in exported and missing:
                problems.append(f"{q.dashboard} {q.where}: {name} has no label {', '.join(sorted(missing))}")
    return problems


def scrape(url: str, timeout: float = 10.0) -> str:
    """The text of a Prometheus endpoint (``http://host:port/metrics``)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode("utf-8", errors="replace")


def merge_expositions(*parsed: Mapping[str, set[str]], into: Optional[dict[str, set[str]]] = None) -> dict[str, set[str]]:
    """Union of several :func:`parse_exposition` results (series seen in any scrape)."""
    out = into if into is not None else {}
    for item in parsed:
        for name, keys in item.items():
            out.setdefault(name, set()).update(keys)
    return out
