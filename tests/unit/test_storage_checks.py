"""Remote stores checked before training, credentials handed to Ray workers, partial checkpoints.

The S3 checks run against the session's moto server (``s3_server``); "wrong credentials" turns
moto's IAM authentication on for one check (any key is then unknown to it).
"""

from __future__ import annotations

import json
import os
import socket
import urllib.request

import boto3
import pytest
import torch

from forgesweep.cli import resolve_config
from forgesweep.errors import ConfigError, DataError
from forgesweep.models import build_model
from forgesweep.tracking.server_check import check_tracking_store
from forgesweep.train import storage
from forgesweep.train.checkpoint import (
    STATE_FILE,
    WEIGHTS_FILE,
    download_checkpoint,
    load_model_from_checkpoint,
    read_state,
    save_stage_checkpoint,
)
from forgesweep.train.ray_session import AWS_CREDENTIALS, credentials_hook, worker_runtime_env

STRATEGY_FILE = "strategy.safetensors"


@pytest.fixture(autouse=True)
def fresh_checks():
    storage.forget_checked()
    yield
    storage.forget_checked()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def bucket(s3_env):
    name = "storage-checks"
    client = s3_env.client()
    if name not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=name)
    return name


# --------------------------------------------------------------------------- train.storage_path


def test_usable_s3_storage_path_passes_and_leaves_no_probe(s3_env, bucket):
    storage.check_storage_path(f"s3://{bucket}/runs")
    listed = s3_env.client().list_objects_v2(Bucket=bucket, Prefix="runs/")
    assert listed.get("KeyCount", 0) == 0


def test_missing_bucket_names_bucket_and_endpoint(s3_env):
    with pytest.raises(ConfigError) as info:
        storage.check_storage_path("s3://no-such-bucket-here/runs")
    message = str(info.value)
    assert message.startswith("train.storage_path: s3://no-such-bucket-here/runs")
    assert "bucket 'no-such-bucket-here' does not exist" in message and s3_env.endpoint in message


def test_unreachable_endpoint_is_named(s3_env, monkeypatch):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    with pytest.raises(ConfigError, match=f"cannot reach the S3 endpoint {endpoint}"):
        storage.check_storage_path("s3://any-bucket/runs")


def test_wrong_credentials_are_access_denied(s3_env, bucket):
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    _moto_auth(s3_env.endpoint, "0")  # from now on moto knows no key: every request is refused
    try:
        with pytest.raises(ConfigError) as info:
            storage.check_storage_path(f"s3://{bucket}/runs")
    finally:
        _moto_auth(s3_env.endpoint, "inf")
    message = str(info.value)
    assert "access denied" in message and bucket in message and s3_env.endpoint in message
    assert secret not in message


def test_pyarrow_failure_is_reported_when_boto3_succeeds(s3_env, bucket, monkeypatch):
    # boto3 gets a client on the moto server; pyarrow (Ray's filesystem) reads the environment,
    # which now names a closed port: the two disagree, and the message says which one failed.
    good = s3_env.client()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(ConfigError, match="Ray's filesystem \\(pyarrow S3\\) cannot write"):
        storage.check_storage_path(f"s3://{bucket}/runs", client=good)


def test_local_storage_path(tmp_path):
    storage.check_storage_path(str(tmp_path / "not" / "yet" / "there"))
    assert not (tmp_path / "not").exists(), "the check writes nothing"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        storage.check_storage_path(str(tmp_path / "file"))


def test_preflight_stops_a_sweep_on_a_missing_bucket(s3_env, tmp_path):
    from forgesweep.sweep.runner import preflight

    cfg = resolve_config(None, [f"data.root={tmp_path / 'data'}", "train.storage_path=s3://missing-ckpt-bucket/r",
                                f"tracking.tracking_uri=sqlite:///{tmp_path / 'm.db'}"], smoke=True)
    with pytest.raises(ConfigError, match="missing-ckpt-bucket"):
        preflight(cfg)
    assert not (tmp_path / "data").exists() and not (tmp_path / "m.db").exists()


def test_a_sweep_name_already_on_s3_is_refused_before_tune_overwrites_it(s3_env, bucket, tmp_path):
    from forgesweep.sweep.runner import unique_sweep_name

    root = f"s3://{bucket}/named-runs"
    cfg = resolve_config(None, [f"train.storage_path={root}", "sweep.name=sweep-a"], smoke=True)
    assert not storage.storage_entry_exists(root, "sweep-a")
    assert unique_sweep_name(cfg) == "sweep-a"
    s3_env.client().put_object(Bucket=bucket, Key="named-runs/sweep-a/tuner.pkl", Body=b"earlier sweep")
    assert storage.storage_entry_exists(root, "sweep-a")
    assert not storage.storage_entry_exists(root, "sweep")  # a prefix of a name is not that name
    with pytest.raises(ConfigError, match=r"sweep.name: a sweep named 'sweep-a' already exists in s3://"):
        unique_sweep_name(cfg)
    body = s3_env.client().get_object(Bucket=bucket, Key="named-runs/sweep-a/tuner.pkl")["Body"].read()
    assert body == b"earlier sweep"


# --------------------------------------------------------------------------- MLflow stores


def test_unreachable_tracking_server_is_named():
    uri = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(ConfigError, match=f"cannot reach the MLflow tracking server at {uri}"):
        check_tracking_store(uri)


def test_s3_artifact_location_with_missing_bucket(s3_env, tmp_path):
    with pytest.raises(ConfigError, match="tracking.artifact_location: .*bucket 'no-artifacts' does not exist"):
        check_tracking_store(f"sqlite:///{tmp_path / 'm.db'}", "s3://no-artifacts/mlflow")


def test_a_tracking_server_keeps_its_own_artifact_root(tmp_path):
    cfg = resolve_config(None, ["tracking.tracking_uri=http://127.0.0.1:5000"], smoke=True)
    assert cfg.tracking.artifact_location is None
    local = resolve_config(None, [f"tracking.tracking_uri=sqlite:///{tmp_path / 'm.db'}"], smoke=True)
    assert local.tracking.artifact_location.endswith("artifacts")


# --------------------------------------------------------------------------- credentials to workers

ENV = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_DEFAULT_REGION": "us-east-1",
       "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "very-secret-value"}


def test_settings_as_variables_credentials_only_through_the_hook():
    runtime_env, names = worker_runtime_env(ENV)
    assert runtime_env["env_vars"] == {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_DEFAULT_REGION": "us-east-1"}
    assert names == ["AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    hook = runtime_env["worker_process_setup_hook"]
    # What Ray logs of a runtime env: its variables and the hook's name.
    logged = json.dumps({"env_vars": runtime_env["env_vars"], "worker_process_setup_hook": hook.__name__})
    assert "very-secret-value" not in logged and "AKIDEXAMPLE" not in logged


def test_hook_replaces_the_workers_credentials_as_a_set():
    saved = {key: os.environ.get(key) for key in AWS_CREDENTIALS}
    os.environ.update({"AWS_ACCESS_KEY_ID": "node-key", "AWS_SESSION_TOKEN": "node-token"})
    try:
        credentials_hook({"AWS_ACCESS_KEY_ID": "driver-key", "AWS_SECRET_ACCESS_KEY": "driver-secret"})()
        assert os.environ["AWS_ACCESS_KEY_ID"] == "driver-key"
        assert os.environ["AWS_SECRET_ACCESS_KEY"] == "driver-secret"
        assert "AWS_SESSION_TOKEN" not in os.environ
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_nothing_forwarded_that_the_submitted_job_sets_or_when_opted_out():
    job = {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(
        {"runtime_env": {"env_vars": {"AWS_ENDPOINT_URL": "http://job", "AWS_SECRET_ACCESS_KEY": "job-secret"}}})}
    runtime_env, names = worker_runtime_env({**ENV, **job})
    assert runtime_env == {"env_vars": {"AWS_DEFAULT_REGION": "us-east-1"}} and names == ["AWS_DEFAULT_REGION"]
    hooked = {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": {"worker_process_setup_hook": "m.f"}})}
    assert "worker_process_setup_hook" not in worker_runtime_env({**ENV, **hooked})[0]
    assert worker_runtime_env({**ENV, "FORGESWEEP_FORWARD_AWS_ENV": "0"}) == ({}, [])
    assert worker_runtime_env({"HOME": "/root"}) == ({}, [])


# --------------------------------------------------------------------------- partial checkpoints


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    """A stage checkpoint with a strategy tensor file written before it, as the loop does."""
    from safetensors.torch import save_file

    from forgesweep.config import validate_config

    cfg = validate_config({"model": {"name": "rsia_lite", "preset": "tiny"}})
    model = build_model("rsia_lite", {"preset": "tiny"})
    out = tmp_path_factory.mktemp("ckpt") / "stage-1"
    out.mkdir()
    save_file({"fisher": torch.ones(3)}, str(out / STRATEGY_FILE))
    save_stage_checkpoint(out, model, {"stage": 1, "config": cfg.to_dict()})
    return out


def _upload(client, bucket, directory, prefix, names):
    for name in names:
        client.upload_file(str(directory / name), bucket, f"{prefix}/{name}")


def test_checkpoint_lists_its_files(checkpoint_dir):
    files = json.loads((checkpoint_dir / STATE_FILE).read_text())["files"]
    assert set(files) == {WEIGHTS_FILE, STRATEGY_FILE}
    assert "files" not in read_state(checkpoint_dir)


@pytest.mark.parametrize("uploaded, missing", [
    ([STATE_FILE], WEIGHTS_FILE),
    ([STATE_FILE, WEIGHTS_FILE], f"{STRATEGY_FILE} is missing"),
    ([STATE_FILE, STRATEGY_FILE], WEIGHTS_FILE),
])
def test_interrupted_upload_is_not_a_checkpoint(s3_env, bucket, checkpoint_dir, tmp_path, uploaded, missing):
    # Ray copies the folder file by file, in an order of its own; an interruption leaves
    # state.json without some of the files it belongs with.
    prefix = f"partial-{len(uploaded)}-{uploaded[-1]}"
    _upload(s3_env.client(), bucket, checkpoint_dir, prefix, uploaded)
    with pytest.raises(DataError, match="checkpoint") as info:
        download_checkpoint(f"s3://{bucket}/{prefix}", tmp_path / "down")
    assert missing in str(info.value)
    with pytest.raises(DataError):
        load_model_from_checkpoint(f"s3://{bucket}/{prefix}")


def test_complete_upload_loads_and_replaced_weights_are_refused(s3_env, bucket, checkpoint_dir, tmp_path):
    client = s3_env.client()
    _upload(client, bucket, checkpoint_dir, "complete", [WEIGHTS_FILE, STRATEGY_FILE, STATE_FILE])
    model, state = load_model_from_checkpoint(f"s3://{bucket}/complete")
    assert state["stage"] == 1 and type(model).__name__ == "RSIALite"
    client.put_object(Bucket=bucket, Key=f"complete/{WEIGHTS_FILE}", Body=b"older weights")
    with pytest.raises(DataError, match=f"{WEIGHTS_FILE} has 13 bytes, expected"):
        download_checkpoint(f"s3://{bucket}/complete", tmp_path / "again")
    with pytest.raises(DataError, match="no checkpoint at s3://.*/nothing-here"):
        download_checkpoint(f"s3://{bucket}/nothing-here", tmp_path / "none")


def _moto_auth(endpoint: str, free_requests: str) -> None:
    """moto's IAM authentication: ``"0"`` checks every request, ``"inf"`` none (its default)."""
    request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=free_requests.encode(),
                                     method="POST", headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def test_ensure_bucket_creates_once(s3_env):
    from forgesweep.tracking.local_servers import ensure_bucket

    ensure_bucket(s3_env.endpoint, "made-by-helper", s3_env.env)
    ensure_bucket(s3_env.endpoint, "made-by-helper", s3_env.env)
    assert "made-by-helper" in {b["Name"] for b in boto3.client(
        "s3", endpoint_url=s3_env.endpoint, region_name="us-east-1").list_buckets()["Buckets"]}
