"""Checks that the MLflow tracking store and its artifact root are usable, before training.

* A tracking **server** (``http(s)://``) must answer ``/health``. When it proxies artifacts
  (``mlflow server --artifacts-destination s3://...``, the default ``--serve-artifacts``), the
  server itself lists the root of its artifact store, which surfaces a missing bucket or bad
  credentials *on the server* as one line now rather than as a failed upload after the first
  stage.
* An ``s3://`` experiment artifact root (``tracking.artifact_location``) is written by this
  process directly: its bucket is looked up with boto3 (standard AWS chain).

Local stores (sqlite, a local artifact folder) need no check: they are created on first use.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Optional

from forgesweep.data.object_store import describe_s3_error, is_s3, parse_s3_uri, s3_client
from forgesweep.errors import ConfigError

TIMEOUT_S = 10.0


def is_server_uri(tracking_uri: str) -> bool:
    """Whether ``tracking_uri`` names a tracking server (not a local database or folder)."""
    return tracking_uri.startswith(("http://", "https://"))


def check_tracking_store(tracking_uri: str, artifact_location: Optional[str] = None, client=None) -> None:
    """Raise a one-line :class:`ConfigError` when the tracking server or artifact root is unusable.

    Args:
        tracking_uri: the resolved tracking URI (``tracking.tracking_uri`` / ``MLFLOW_TRACKING_URI``).
        artifact_location: the experiment artifact root a new experiment gets, if any.
        client: a boto3 S3 client for an ``s3://`` artifact root (default: standard AWS chain).
    """
    if is_server_uri(tracking_uri):
        base = tracking_uri.rstrip("/")
        status, body = _get(f"{base}/health")
        if status != 200:
            reason = body if status == 0 else f"HTTP {status}"
            raise ConfigError(f"tracking.tracking_uri: cannot reach the MLflow tracking server at {tracking_uri} "
                              f"({reason}); set tracking.tracking_uri or MLFLOW_TRACKING_URI to a running server")
        _check_proxied_artifacts(base)
    if artifact_location and is_s3(artifact_location):
        parsed = parse_s3_uri(artifact_location, require_key=False)
        client = client or s3_client()
        try:
            client.head_bucket(Bucket=parsed.bucket)
        except Exception as exc:  # botocore raises several unrelated types: all become one line
            reason = describe_s3_error(exc, artifact_location, client)
            raise ConfigError(f"tracking.artifact_location: {reason}") from None


def _check_proxied_artifacts(base: str) -> None:
    status, body = _get(f"{base}/api/2.0/mlflow-artifacts/artifacts?path=")
    if status == 200:
        return
    try:
        error = json.loads(body)
    except ValueError:
        # Not an MLflow error: a server run with --no-serve-artifacts (503, plain text) or one
        # without the route; clients then write the artifact root themselves.
        return
    if not isinstance(error, dict) or "error_code" not in error:
        return
    message = str(error.get("message", "")).splitlines()[0] if error.get("message") else error["error_code"]
    raise ConfigError(f"tracking.tracking_uri: the MLflow server at {base} cannot use its artifact store: {message}")


def _get(url: str) -> tuple[int, str]:
    """``(status, body)``; status 0 and the reason when the server cannot be reached."""
    request = urllib.request.Request(url, headers=_auth_headers())
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(getattr(exc, "reason", exc))


def _auth_headers() -> dict[str, str]:
    """The credentials MLflow's own client would send (basic auth or a bearer token from the
    MLFLOW_TRACKING_* variables); nothing is logged."""
    import base64
    import os

    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {}
