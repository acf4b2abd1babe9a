"""Submit jobs to the session's token-authenticated Ray head exactly as a user would.

`ray job submit --address http://127.0.0.1:<dashboard port> -- <entrypoint>` without
--working-dir: the entrypoint runs in the directory the head was started from (the repository
root), with the head's environment (token auth variables included).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

REPO_ROOT = Path(__file__).resolve().parents[2]
REGISTERED_MODEL = "cffd-synthetic-smoke"
STAGES = 4


def _submit(
    ray_head,
    entrypoint: List[str],
    env: Optional[Dict[str, str]] = None,
    timeout: float = 120,
    extra: Optional[List[str]] = None,
) -> subprocess.CompletedProcess:
    cmd = [ray_head.ray_bin, "job", "submit", "--address", ray_head.dashboard_url]
    cmd += extra or []
    cmd += ["--", *entrypoint]
    return subprocess.run(
        cmd,
        env=ray_head.env if env is None else env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _output(result: subprocess.CompletedProcess) -> str:
    return f"{result.stdout}\n{result.stderr}"


def _tail(text: str, chars: int = 6000) -> str:
    return text[-chars:]


def _job_client(ray_head):
    from ray.job_submission import JobSubmissionClient

    # The token goes in explicitly: the client's automatic auth headers depend on
    # RAY_AUTH_MODE as this (pytest) process saw it when `ray` was loaded.
    return JobSubmissionClient(ray_head.dashboard_url, headers=ray_head.auth_headers)


def _submitted_job_id(output: str) -> str:
    match = re.search(r"Job '([^']+)' (?:submitted successfully|succeeded|failed)", output)
    assert match, f"no job id in the `ray job submit` output:\n{_tail(output)}"
    return match.group(1)


def _job_ids_with(client, needle: str) -> List[str]:
    return [
        job.submission_id
        for job in client.list_jobs()
        if job.submission_id and needle in (job.entrypoint or "")
    ]


def test_token_auth_is_enforced(ray_head, tmp_path):
    from ray.job_submission import JobStatus

    client = _job_client(ray_head)

    # The Jobs API itself refuses a request without a token (401) and a wrong token (403).
    import urllib.error
    import urllib.request

    for headers, status in (({}, 401), ({"Authorization": "Bearer not-the-token"}, 403)):
        request = urllib.request.Request(f"{ray_head.dashboard_url}/api/jobs/", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as excinfo:
            urllib.request.urlopen(request, timeout=10)
        assert excinfo.value.code == status, (headers, excinfo.value.code)

    # `ray job submit` as a user without the token (no RAY_AUTH_MODE, no token anywhere:
    # an empty HOME so no ~/.ray/auth_token is found either) is rejected ...
    empty_home = tmp_path / "home"
    empty_home.mkdir()
    no_token_env = {
        k: v
        for k, v in ray_head.env.items()
        if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    }
    no_token_env["HOME"] = str(empty_home)
    marker = f"rejected-{os.getpid()}"
    rejected = _submit(ray_head, ["python", "-c", f"print('{marker}')"], env=no_token_env)
    out = _output(rejected)
    assert rejected.returncode != 0, f"submission without a token was accepted:\n{_tail(out)}"
    assert "Unauthorized: Missing authentication token" in out, _tail(out)
    assert "AuthenticationError" in out, _tail(out)

    # ... and so is one with the wrong token.
    wrong_env = dict(ray_head.env)
    wrong_env.pop("RAY_AUTH_TOKEN_PATH", None)
    wrong_env["RAY_AUTH_TOKEN"] = "0" * 32
    wrong = _submit(ray_head, ["python", "-c", f"print('{marker}')"], env=wrong_env)
    out = _output(wrong)
    assert wrong.returncode != 0, f"submission with a wrong token was accepted:\n{_tail(out)}"
    assert "Forbidden: Invalid authentication token" in out, _tail(out)

    # Neither rejected submission created a job.
    assert _job_ids_with(client, marker) == []

    # With the token, a trivial job succeeds and runs in the repository root (no --working-dir).
    accepted = _submit(
        ray_head, ["python", "-c", "import os; print('CWD=' + os.getcwd())"], timeout=180
    )
    out = _output(accepted)
    assert accepted.returncode == 0, f"submission with the token failed:\n{_tail(out)}"
    assert re.search(r"Job '[^']+' succeeded", out), _tail(out)
    cwds = re.findall(r"^CWD=(.*)$", accepted.stdout, flags=re.MULTILINE)
    assert cwds, f"the job did not print its working directory:\n{_tail(out)}"
    assert Path(cwds[-1]).resolve() == REPO_ROOT, (cwds[-1], REPO_ROOT)

    job_id = _submitted_job_id(out)
    assert job_id in {job.submission_id for job in client.list_jobs()}
    assert client.get_job_status(job_id) == JobStatus.SUCCEEDED


def test_job_driver_joins_the_cluster_over_loopback(ray_head):
    """A submitted driver's plain ray.init() joins this cluster, authenticated, on 127.0.0.1
    (what jobs/sweep_cffd.py relies on when run with `ray job submit`)."""
    script = (
        "import ray; ray.init(); "
        "f = ray.remote(lambda: ray.util.get_node_ip_address()); "
        "print('NODE_IP=' + ray.get(f.remote())); "
        "print('GCS=' + ray.get_runtime_context().gcs_address)"
    )
    result = _submit(ray_head, ["python", "-c", script], timeout=180)
    out = _output(result)
    assert result.returncode == 0, _tail(out)
    assert "NODE_IP=127.0.0.1" in result.stdout, _tail(out)
    assert f"GCS={ray_head.address}" in result.stdout, _tail(out)


@pytest.fixture(scope="module")
def smoke_sweep(ray_head, tmp_path_factory) -> Dict[str, str]:
    """`ray job submit -- python jobs/sweep_cffd.py --smoke`, once for the module, into a fresh
    MLflow store; the output and the tracking URI for the tests that check and serve it."""
    root = tmp_path_factory.mktemp("smoke-sweep")
    tracking_uri = f"sqlite:///{root}/mlflow.db"
    entrypoint = [
        "python",
        "jobs/sweep_cffd.py",
        "--smoke",
        "--set",
        f"tracking.tracking_uri={tracking_uri}",
        "--set",
        f"tracking.artifact_location={root}/artifacts",
        "--set",
        f"data.root={root}/data",
        "--set",
        f"train.storage_path={root}/runs",
    ]
    try:
        result = _submit(ray_head, entrypoint, timeout=300)
    except subprocess.TimeoutExpired as exc:
        client = _job_client(ray_head)
        logs = ""
        for job_id in _job_ids_with(client, str(root)):
            logs += client.get_job_logs(job_id)[-6000:]
            client.stop_job(job_id)
        pytest.fail(f"`ray job submit` did not finish within {exc.timeout} s; job logs:\n{logs}")
    out = _output(result)
    assert result.returncode == 0, f"the sweep job failed:\n{_tail(out)}"
    return {"tracking_uri": tracking_uri, "output": out}


def test_sweep_cffd_smoke_job_registers_stage_aliases(ray_head, smoke_sweep):
    """The main job, submitted as a user would, ends with one registered model whose
    versions carry the aliases stage-1 ... stage-4."""
    out = smoke_sweep["output"]
    assert re.search(r"Job '[^']+' succeeded", out), _tail(out)

    from ray.job_submission import JobStatus

    client = _job_client(ray_head)
    assert client.get_job_status(_submitted_job_id(out)) == JobStatus.SUCCEEDED

    import mlflow

    mlflow_client = mlflow.MlflowClient(tracking_uri=smoke_sweep["tracking_uri"])
    versions = {}
    for k in range(1, STAGES + 1):
        mv = mlflow_client.get_model_version_by_alias(REGISTERED_MODEL, f"stage-{k}")
        assert mv.name == REGISTERED_MODEL
        assert f"stage-{k}" in mv.aliases
        versions[k] = mv.version
    # One version per stage: the best trial's stage-k model.
    assert len(set(versions.values())) == STAGES, versions


def test_serve_best_job_puts_the_sweeps_stages_online(ray_head, smoke_sweep, assert_stops_answering):
    """`ray job submit -- python jobs/serve_best.py --detach` deploys the sweep's stage models on
    the cluster (Serve in the head's high-throughput mode, HAProxy on 127.0.0.1); the app stays up
    after the job ends, answers every stage over HTTP, and `serve shutdown` takes it down."""
    import io

    import mlflow
    import numpy as np
    import requests
    from PIL import Image

    from forgesweep.serve.serving_mode import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    entrypoint = ["python", "jobs/serve_best.py", "--detach", "--set", f"registered_model={REGISTERED_MODEL}",
                  "--set", f"tracking_uri={smoke_sweep['tracking_uri']}", "--set", f"http.port={port}"]
    try:
        result = _submit(ray_head, entrypoint, timeout=240)
        out = _output(result)
        assert result.returncode == 0, f"the serve job failed:\n{_tail(out)}"
        assert f"[serve] {url}/v1/detect" in out, _tail(out)
        assert "proxy as the cluster's nodes were started" in out, _tail(out)

        # The job has ended; the app it deployed answers for every stage the sweep registered.
        registry = mlflow.MlflowClient(tracking_uri=smoke_sweep["tracking_uri"])
        aliases = {k: str(registry.get_model_version_by_alias(REGISTERED_MODEL, f"stage-{k}").version)
                   for k in range(1, STAGES + 1)}  # the API gives MLflow versions as strings
        stages = requests.get(f"{url}/v1/stages", timeout=30).json()
        assert stages["default_stage"] == STAGES
        assert {s["stage"]: s["model_version"] for s in stages["stages"]} == aliases
        pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        png = io.BytesIO()
        Image.fromarray(pixels).save(png, format="PNG")
        for k in range(1, STAGES + 1):
            answer = requests.post(f"{url}/v1/detect", params={"stage": k}, data=png.getvalue(),
                                   headers={"Content-Type": "image/png"}, timeout=60)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert (body["stage"], body["model_version"]) == (k, aliases[k])
            assert 0.0 <= body["fake_probability"] <= 1.0
    finally:
        # As a user would: Serve's CLI against the dashboard, with the head's token.
        down = subprocess.run([str(Path(ray_head.ray_bin).with_name("serve")), "shutdown", "-y", "--address",
                               ray_head.dashboard_url], env=ray_head.env, cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=120)
    assert down.returncode == 0, _tail(_output(down))
    assert_stops_answering(f"{url}/healthz", 60, "`serve shutdown`")
