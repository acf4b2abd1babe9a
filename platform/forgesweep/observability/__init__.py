"""Observability: the project's custom Ray metrics and the Grafana dashboards' contract.

* :mod:`forgesweep.observability.metrics` -- the catalogue of every custom metric (name, type,
  tags, where it is recorded) and the failure-tolerant recording base;
* :mod:`forgesweep.observability.training` -- what a Ray Train worker records (throughput,
  stage/epoch, per-stage ACC/AUC, replay buffer size);
* :mod:`forgesweep.observability.serving` -- what the Serve ingress records per request;
* :mod:`forgesweep.observability.dashboards` -- reading ``dashboards/grafana/*.json``, the
  metric names their PromQL queries use, and scraping a Prometheus endpoint.
"""
