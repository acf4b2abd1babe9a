"""MLflow tracking: run layout, metrics, artifacts, model registry."""
