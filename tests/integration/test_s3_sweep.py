"""A sweep whose checkpoints and MLflow artifacts live on S3 (moto), read back with boto3.

One sweep (2 trials x 2 stages, tiny model) runs for the module, as a user runs it on a cluster:
``python jobs/sweep_cffd.py`` in a driver process that joins the session's Ray head through
``RAY_ADDRESS``, with ``train.storage_path=s3://...`` and ``MLFLOW_TRACKING_URI`` naming a real
``mlflow server`` (sqlite backend, artifacts proxied to the same S3 server).

The S3 server checks credentials for the module (moto's IAM authentication, a fresh access key
whose secret is random): every process that touches the bucket -- the driver, Tune's trial
actors, Ray Train's controller and workers, the MLflow server -- must hold that key, and the
Ray head's workers were started without it, so the sweep passes only if the driver hands it to
them. Its random secret is then searched for wherever it must not be: MLflow params, tags and
config artifacts, the objects Tune and Train wrote, the driver's output and the Ray head's logs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import boto3
import mlflow
import pytest
from mlflow import MlflowClient

from forgesweep.errors import ConfigError
from forgesweep.tracking.local_servers import MlflowServer
from forgesweep.tracking.server_check import check_tracking_store
from forgesweep.train.checkpoint import load_model_from_checkpoint

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BUCKET = "forgesweep-it-s3-sweep"
MODEL_NAME = "it-s3-model"
SWEEP = "it-s3"
TASKS = ["Deepfakes", "Face2Face"]
ALLOW_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


def set_moto_auth(endpoint: str, free_requests: str) -> None:
    """moto's IAM authentication: ``"0"`` checks every request, ``"inf"`` none (its default)."""
    request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=free_requests.encode(),
                                     method="POST", headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


@pytest.fixture(scope="module")
def aws(s3_server):
    """A moto IAM user with a fresh key; moto checks credentials until the module ends."""
    common = {"endpoint_url": s3_server.endpoint, "region_name": "us-east-1"}
    iam = boto3.client("iam", aws_access_key_id="setup", aws_secret_access_key="setup", **common)
    iam.create_user(UserName="forgesweep-it")
    iam.put_user_policy(UserName="forgesweep-it", PolicyName="all", PolicyDocument=json.dumps(ALLOW_ALL))
    key = iam.create_access_key(UserName="forgesweep-it")["AccessKey"]
    env = {"AWS_ENDPOINT_URL": s3_server.endpoint, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    set_moto_auth(s3_server.endpoint, "0")
    try:
        yield env
    finally:
        set_moto_auth(s3_server.endpoint, "inf")


@pytest.fixture(scope="module")
def s3(aws):
    return boto3.client("s3", endpoint_url=aws["AWS_ENDPOINT_URL"], region_name="us-east-1",
                        aws_access_key_id=aws["AWS_ACCESS_KEY_ID"], aws_secret_access_key=aws["AWS_SECRET_ACCESS_KEY"])


@pytest.fixture()
def aws_environ(aws, monkeypatch):
    """This process reads S3 through the standard AWS chain, as a user's shell would."""
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    for key, value in aws.items():
        monkeypatch.setenv(key, value)


def _clean_env(base: dict, aws: dict) -> dict:
    env = {k: v for k, v in base.items() if not k.startswith(("AWS_", "MLFLOW_", "FORGESWEEP_FORWARD"))}
    return {**env, **aws}


@pytest.fixture(scope="module")
def mlflow_server(aws, s3, tmp_path_factory):
    """A real ``mlflow server`` (sqlite, artifacts proxied to s3://BUCKET/mlflow).

    It starts before the bucket exists, so the up-front artifact-store check is seen failing
    once; then the bucket is created.
    """
    root = tmp_path_factory.mktemp("mlflow-server")
    server = MlflowServer(root, f"s3://{BUCKET}/mlflow", env=_clean_env(dict(os.environ), aws)).start()
    try:
        try:
            check_tracking_store(server.uri)
            missing_bucket_error = None
        except ConfigError as exc:
            missing_bucket_error = str(exc)
        s3.create_bucket(Bucket=BUCKET)
        yield server, missing_bucket_error
    finally:
        server.stop()


@pytest.fixture(scope="module")
def sweep(ray_head, aws, mlflow_server, tmp_path_factory):
    """Run the sweep as a driver process that joins the session's Ray head."""
    server, _ = mlflow_server
    root = tmp_path_factory.mktemp("s3-sweep")
    env = _clean_env(ray_head.env, aws)
    env["MLFLOW_TRACKING_URI"] = server.uri
    cmd = [sys.executable, str(REPO / "jobs" / "sweep_cffd.py"), "--smoke",
           "--set", f"data.root={root / 'data'}", "--set", f"data.sequence=[{', '.join(TASKS)}]",
           "--set", "data.synthetic.write_videos=false",
           "--set", f"train.storage_path=s3://{BUCKET}/ray", "--set", f"sweep.name={SWEEP}",
           "--set", f"tracking.registered_model={MODEL_NAME}"]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=480)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"sweep failed ({proc.returncode}):\n{output[-6000:]}"
    return MlflowClient(server.uri), output


def _keys(s3, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def _runs(client):
    experiment = client.get_experiment_by_name("forgesweep-cffd")
    return client.search_runs([experiment.experiment_id])


def test_artifact_store_checked_before_the_bucket_exists(mlflow_server):
    _, error = mlflow_server
    assert error is not None and error.startswith("tracking.tracking_uri:")
    assert BUCKET in error and "does not exist" in error


def test_driver_forwards_aws_settings_by_name_only(sweep, aws):
    _, output = sweep
    line = next(line for line in output.splitlines() if line.startswith("[ray] joined Ray cluster at"))
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert name in line
    assert aws["AWS_SECRET_ACCESS_KEY"] not in output


def test_stage_checkpoints_on_s3_load(sweep, s3, aws_environ):
    keys = _keys(s3, "ray/")
    folders = sorted({k.rsplit("/", 1)[0] for k in keys if k.endswith("/state.json")})
    # One Ray Train run per trial, one checkpoint folder per stage.
    assert len(folders) == 4, folders
    assert all(f"{folder}/model.safetensors" in keys for folder in folders)
    stages = {}
    for folder in folders:
        model, state = load_model_from_checkpoint(f"s3://{BUCKET}/{folder}")
        assert type(model).__name__ == "RSIALite" and state["task_names"] == TASKS
        stages.setdefault(folder.split("/")[1], []).append(state["stage"])
    assert sorted(stages.values()) == [[1, 2], [1, 2]]
    assert any(k.startswith(f"ray/{SWEEP}/") for k in keys), "Tune's experiment state is on S3 too"


def test_mlflow_artifacts_are_in_the_bucket(sweep, s3):
    client, _ = sweep
    trials = [r for r in _runs(client) if r.data.tags.get("forgesweep.kind") == "trial"]
    assert len(trials) == 2
    keys = set(_keys(s3, "mlflow/"))
    for run in trials:
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server
        prefix = f"mlflow/{run.info.experiment_id}/{run.info.run_id}/artifacts"
        for name in ("config.yaml", "accuracy_matrix.json", "accuracy_matrix.png",
                     "checkpoints/stage-1/model.safetensors", "checkpoints/stage-2/state.json"):
            assert f"{prefix}/{name}" in keys, name


def test_registered_stage_models_load_by_alias(sweep, tmp_path, monkeypatch):
    client, _ = sweep
    # As a user would: the registry of models:/ URIs follows MLFLOW_TRACKING_URI.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)
    # An MLflow client downloads S3-backed artifacts through URLs the server presigns; moto's
    # IAM simulation fails on presigned requests (HTTP 500), so download through the server.
    monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", "false")
    for stage in (1, 2):
        version = client.get_model_version_by_alias(MODEL_NAME, f"stage-{stage}")
        assert version.tags["forgesweep.task"] == TASKS[stage - 1]
        local = mlflow.artifacts.download_artifacts(f"models:/{MODEL_NAME}@stage-{stage}",
                                                    dst_path=str(tmp_path / str(stage)))
        _, state = load_model_from_checkpoint(local)
        assert state["stage"] == stage


def test_secret_key_is_written_nowhere(sweep, s3, aws, ray_head):
    client, output = sweep
    secret = aws["AWS_SECRET_ACCESS_KEY"]
    runs = _runs(client)
    assert len(runs) == 3  # the parent and two trials
    for run in runs:
        for value in [*run.data.params.values(), *run.data.tags.values()]:
            assert secret not in value
    for key in [k for k in _keys(s3, "mlflow/") if k.endswith("config.yaml")] + _keys(s3, "ray/"):
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert secret.encode() not in body, key
    assert secret not in output
    logs = [p for p in Path(ray_head.temp_dir).rglob("*") if p.is_file() and "logs" in p.parts]
    assert logs, "the Ray head writes logs"
    leaked = {str(p): [line.replace(secret, "<SECRET>")[:300] for line in p.read_text(errors="replace").splitlines()
                       if secret in line][:3]
              for p in logs if secret.encode() in p.read_bytes()}
    assert not leaked, f"the secret key is in Ray's logs: {leaked}"
