"""Shared pytest fixtures: one real, token-authenticated Ray head for the whole session.

Tests that need Ray request ``ray_head`` (subprocesses: ``ray job submit``, scripts that join
the cluster) or ``ray_session`` (in-process ``ray.init(address=...)`` for Tune/Train
integration tests). Both are session-scoped and lazy: a run that selects only unit tests never
starts Ray.

How the head is started, and why (Ray 2.60):

* ``ray start --head`` runs with cwd = the repository root, so ``ray job submit`` without
  ``--working-dir`` runs a job's entrypoint in the repository.
* Token authentication is on: ``RAY_AUTH_MODE=token`` in the head's environment, with a token
  written by ``ray get-auth-token --generate`` into a temporary HOME (never the user's ``~``)
  and handed to every process through ``RAY_AUTH_TOKEN_PATH``. Clients need BOTH variables:
  with ``RAY_AUTH_MODE`` unset, neither ``ray job submit`` nor ``ray.init(address=...)``
  sends a token, even when one is on disk. ``RAY_AUTH_TOKEN`` takes precedence over
  ``RAY_AUTH_TOKEN_PATH``, so a user's own ``RAY_AUTH_TOKEN`` is removed from the environment.
* ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: on Linux Ray replaces ``--node-ip-address=127.0.0.1``
  (and a driver's ``address="127.0.0.1:port"``) with the machine's outward IP and binds its
  gRPC servers on every interface. In single-node mode it keeps 127.0.0.1 for everything.
  This module sets that variable for the whole test process (``os.environ.setdefault``), so a
  local ``ray.init()`` in any test or subprocess also stays on the loopback interface.
* Serve runs in its high-throughput mode (HAProxy ingress, gRPC between replicas), as it does
  under ``forgesweep serve`` (:mod:`forgesweep.serve.serving_mode`).
* Every port that has a fixed default (GCS 6379, dashboard 8265, client server 10001, dashboard
  agent 52365, metrics 44217/44227, workers 10002-19999, HAProxy stats 8404 and metrics 9101,
  Serve's fallback proxy 8500/9500) is a free port or random, and
  ``--temp-dir`` is a fresh directory, so the session never collides with a user's Ray.
* Teardown does NOT run ``ray stop``: ``ray stop`` (with or without ``--force``) kills every
  raylet/gcs_server/worker it can see on the machine, whatever its temp dir or address. Instead
  the session's own processes are found (a marker variable in their environment, the process
  session of ``ray start``, and their descendants) and sent SIGKILL, which is what
  ``ray stop --force`` sends.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Seconds `ray start` + dashboard readiness may take before the fixture fails.
RAY_START_TIMEOUT_S = float(os.environ.get("FORGESWEEP_TEST_RAY_START_TIMEOUT", "60"))

# Variable put only into the head's environment; every process Ray starts inherits it
# (raylet, GCS, dashboard, workers, job drivers), which is how teardown finds them.
_MARKER_VAR = "FORGESWEEP_TEST_RAY_HEAD"

# Keep Ray on 127.0.0.1 in this process and its children (see module docstring). Must happen
# before `ray` is imported anywhere, which is why it is at import time of this conftest.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@dataclasses.dataclass(frozen=True)
class RayHead:
    """A running Ray head started by the ``ray_head`` fixture."""

    address: str  # GCS address for ray.init(address=...): "127.0.0.1:<port>"
    dashboard_url: str  # for `ray job submit --address`: "http://127.0.0.1:<port>"
    env: Dict[str, str]  # full environment for subprocesses (os.environ + env_overrides)
    # Only the variables a client needs on top of the user's environment; a value of None
    # means "remove this variable".
    env_overrides: Dict[str, Optional[str]] = dataclasses.field(default_factory=dict)
    token_path: Optional[Path] = None
    temp_dir: Optional[Path] = None
    ray_bin: str = "ray"  # absolute path of the `ray` CLI of this interpreter
    startup_s: float = 0.0

    @property
    def token(self) -> str:
        assert self.token_path is not None
        return self.token_path.read_text().strip()

    @property
    def auth_headers(self) -> Dict[str, str]:
        """HTTP headers for the dashboard / JobSubmissionClient(headers=...)."""
        return {"Authorization": f"Bearer {self.token}"}


# --------------------------------------------------------------------------- helpers


def _ray_cli() -> str:
    candidate = Path(sys.executable).parent / "ray"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("ray")
    if not found:
        raise RuntimeError(f"the `ray` CLI is not installed next to {sys.executable} nor on PATH")
    return found


def _serving_mode_overrides() -> Dict[str, Optional[str]]:
    """The head serves as ``forgesweep serve``'s local Ray does (high-throughput mode, HAProxy).

    HAProxy's stats, metrics and fallback-proxy ports get free ports, never Ray's fixed defaults,
    which a user's own Serve on the machine may hold.
    """
    from forgesweep.serve.serving_mode import HA_PROXY, HAPROXY_PORTS, serving_mode_env

    # Given as if already set, so serving_mode_env neither probes the defaults nor replaces them.
    missing = [name for name in HAPROXY_PORTS if name not in os.environ]
    ports = {name: str(port) for name, port in zip(missing, _free_ports(len(missing)))}
    env: Dict[str, Optional[str]] = dict(serving_mode_env({**os.environ, **ports}))
    if env.get(HA_PROXY, os.environ.get(HA_PROXY)) == "1":
        env.update(ports)
    return env


def _free_ports(count: int) -> List[int]:
    """`count` distinct ports that are free on 127.0.0.1 right now."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _apply(base: Dict[str, str], overrides: Dict[str, Optional[str]]) -> Dict[str, str]:
    env = dict(base)
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _with_interpreter_on_path(env: Dict[str, str]) -> Dict[str, str]:
    # Jobs run `python ...` through a shell: make that the interpreter running the tests,
    # even when pytest was started as `.venv/bin/python -m pytest` without activating.
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text[-lines:])


def _ray_logs_tail(temp_dir: Path) -> str:
    logs = temp_dir / "session_latest" / "logs"
    if not logs.is_dir():
        sessions = sorted(temp_dir.glob("session_2*"))
        if not sessions:
            return f"(no Ray session directory under {temp_dir})"
        logs = sessions[-1] / "logs"
    parts = []
    for name in (
        "gcs_server.out",
        "gcs_server.err",
        "raylet.out",
        "raylet.err",
        "dashboard.log",
        "dashboard.err",
        "monitor.log",
    ):
        path = logs / name
        if path.exists() and path.stat().st_size:
            parts.append(f"----- {path} (tail) -----\n{_tail(path)}")
    return "\n".join(parts) or f"(no non-empty logs in {logs})"


def _http_get(url: str, headers: Optional[Dict[str, str]] = None, timeout: float = 5.0):
    """(status, body) of a GET; status 0 when the server cannot be reached."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return 0, ""


def _psutil():
    try:
        import psutil
    except ImportError:
        import ray  # noqa: F401  (puts Ray's vendored psutil on sys.path)
        import psutil
    return psutil


def _session_processes(marker: str, sid: Optional[int]):
    """Processes of this session's Ray: the marker in their environment, the process session
    `ray start` created, and their descendants. Never this process or its ancestors."""
    psutil = _psutil()

    protected = {os.getpid()}
    try:
        protected.update(p.pid for p in psutil.Process().parents())
    except psutil.Error:
        pass

    found = {}
    for proc in psutil.process_iter():
        if proc.pid in protected:
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            mine = sid is not None and os.getsid(proc.pid) == sid
            if not mine:
                mine = proc.environ().get(_MARKER_VAR) == marker
        except (psutil.Error, OSError):
            continue
        if mine:
            found[proc.pid] = proc
    for proc in list(found.values()):
        try:
            for child in proc.children(recursive=True):
                if child.pid not in protected:
                    found.setdefault(child.pid, child)
        except psutil.Error:
            pass
    return list(found.values())


def _kill_session_processes(marker: str, sid: Optional[int], timeout: float = 15.0) -> List[str]:
    """SIGKILL this session's Ray processes; return descriptions of any that survive."""
    psutil = _psutil()

    deadline = time.monotonic() + timeout
    while True:
        procs = _session_processes(marker, sid)
        if not procs:
            return []
        for proc in procs:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=2)
        if time.monotonic() > deadline:
            survivors = []
            for proc in _session_processes(marker, sid):
                try:
                    survivors.append(f"{proc.pid} {' '.join(proc.cmdline())[:160]}")
                except psutil.Error:
                    pass
            return survivors


def _short_temp_dir() -> Path:
    # Ray puts unix sockets under --temp-dir; their paths must stay under ~107 bytes, so
    # prefer a short base (macOS's $TMPDIR is long).
    base = "/tmp" if os.path.isdir("/tmp") else None
    return Path(tempfile.mkdtemp(prefix="fs-ray-", dir=base))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def ray_head(request) -> Iterator[RayHead]:
    """Start ONE token-authenticated Ray head (with dashboard) for the test session."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def report(line: str) -> None:
        # Shown in the run's output even when output capturing is on.
        if reporter is None:
            return
        if capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(f"[ray_head] {line}")
        else:
            reporter.write_line(f"[ray_head] {line}")

    ray_bin = _ray_cli()
    root = _short_temp_dir()
    temp_dir = root / "ray"
    home = root / "home"
    home.mkdir()

    # 1. Token: `ray get-auth-token --generate` writes $HOME/.ray/auth_token; run it with a
    #    temporary HOME and without the user's token variables so it generates a fresh one.
    gen_env = _apply(
        dict(os.environ),
        {"HOME": str(home), "RAY_AUTH_TOKEN": None, "RAY_AUTH_TOKEN_PATH": None},
    )
    gen = subprocess.run(
        [ray_bin, "get-auth-token", "--generate"],
        env=gen_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    token_path = home / ".ray" / "auth_token"
    if gen.returncode != 0 or not token_path.is_file() or not token_path.read_text().strip():
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(
            "`ray get-auth-token --generate` did not create a token "
            f"(rc={gen.returncode}):\n{gen.stdout}\n{gen.stderr}",
            pytrace=False,
        )
    token_path.chmod(0o600)

    (
        gcs_port,
        dashboard_port,
        client_port,
        agent_listen_port,
        dashboard_metric_port,
        autoscaler_metric_port,
    ) = _free_ports(6)

    auth_overrides: Dict[str, Optional[str]] = {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_path),
        "RAY_AUTH_TOKEN": None,  # would take precedence over RAY_AUTH_TOKEN_PATH
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    marker = uuid.uuid4().hex
    head_env = _with_interpreter_on_path(
        _apply(
            dict(os.environ),
            {
                **auth_overrides,
                "RAY_ADDRESS": None,
                "RAY_API_SERVER_ADDRESS": None,
                "DASHBOARD_METRIC_PORT": str(dashboard_metric_port),
                "AUTOSCALER_METRIC_PORT": str(autoscaler_metric_port),
                # Every process exports its metrics every 2 s (default 10 s), so the metrics
                # tests see a short run's gauges while its workers are alive (a dead worker's
                # gauges leave the endpoint after two export intervals).
                "RAY_metrics_report_interval_ms": "2000",
                _MARKER_VAR: marker,
                **_serving_mode_overrides(),
            },
        )
    )
    address = f"127.0.0.1:{gcs_port}"
    dashboard_url = f"http://127.0.0.1:{dashboard_port}"
    client_overrides: Dict[str, Optional[str]] = {
        **auth_overrides,
        "RAY_ADDRESS": address,
        "RAY_API_SERVER_ADDRESS": dashboard_url,
    }
    client_env = _with_interpreter_on_path(_apply(dict(os.environ), client_overrides))
    client_env.pop(_MARKER_VAR, None)

    cmd = [
        ray_bin,
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs_port}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        f"--ray-client-server-port={client_port}",
        f"--dashboard-agent-listen-port={agent_listen_port}",
        "--min-worker-port=0",  # random worker ports instead of the fixed 10002-19999
        "--max-worker-port=0",
        "--num-cpus=2",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
    ]

    sid: Optional[int] = None

    def fail(reason: str, output: str = "") -> None:
        survivors = _kill_session_processes(marker, sid)
        pytest.fail(
            f"Ray head did not come up: {reason}\n"
            f"command (cwd={REPO_ROOT}): {' '.join(cmd)}\n"
            f"{output}\n{_ray_logs_tail(temp_dir)}\n"
            f"(Ray temp dir kept for inspection: {root})"
            + (f"\nprocesses that survived SIGKILL: {survivors}" if survivors else ""),
            pytrace=False,
        )

    started = time.monotonic()
    ray_start_s = 0.0
    try:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=head_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process session: teardown finds Ray's processes
        )
        sid = proc.pid
        try:
            out, _ = proc.communicate(timeout=RAY_START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            fail(f"`ray start` did not return within {RAY_START_TIMEOUT_S:.0f} s", out[-4000:])
        if proc.returncode != 0:
            fail(f"`ray start` exited with {proc.returncode}", out[-4000:])
        ray_start_s = time.monotonic() - started

        # 2. Wait until the dashboard's Jobs API answers (normally already when `ray start`
        #    returns; its modules start asynchronously, so do not rely on that).
        head = RayHead(
            address=address,
            dashboard_url=dashboard_url,
            env=client_env,
            env_overrides=client_overrides,
            token_path=token_path,
            temp_dir=temp_dir,
            ray_bin=ray_bin,
        )
        last = (0, "")
        while time.monotonic() - started < RAY_START_TIMEOUT_S:
            last = _http_get(f"{dashboard_url}/api/jobs/", head.auth_headers)
            if last[0] == 200:
                break
            time.sleep(0.5)
        else:
            fail(
                f"the dashboard's Jobs API at {dashboard_url} did not answer 200 within "
                f"{RAY_START_TIMEOUT_S:.0f} s (last status {last[0]}: {last[1][:300]})",
                out[-4000:],
            )
        mode = _http_get(f"{dashboard_url}/api/authentication_mode")
        if mode[0] != 200 or "token" not in mode[1]:
            fail(f"the head does not report token authentication: {mode}", out[-4000:])
    except BaseException:
        # Interrupted or failed start (fail() already cleaned up; again is harmless).
        _kill_session_processes(marker, sid)
        raise

    head = dataclasses.replace(head, startup_s=time.monotonic() - started)
    report(
        f"head up in {head.startup_s:.1f} s (`ray start` {ray_start_s:.1f} s, then Jobs API): "
        f"gcs {address}, dashboard {dashboard_url}"
    )
    try:
        yield head
    finally:
        stop_started = time.monotonic()
        survivors = _kill_session_processes(marker, sid)
        report(f"head stopped in {time.monotonic() - stop_started:.1f} s")
        if survivors:
            pytest.fail(
                f"Ray processes of this test session survived SIGKILL: {survivors}",
                pytrace=False,
            )
        shutil.rmtree(root, ignore_errors=True)


def _refresh_ray_auth_config() -> None:
    """Make an already-imported `ray` re-read RAY_AUTH_MODE / the token from os.environ.

    Ray caches its config (auth mode included) and the token when ray._raylet is loaded, so
    setting the variables after `import ray` is not enough: ray.init(address=...) would connect
    without a token and fail with "InvalidAuthToken ... RAY_AUTH_MODE is currently 'disabled'".
    Ray itself refreshes the cache like this when it turns token auth on for a local cluster.
    """
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@pytest.fixture(scope="session")
def ray_session(ray_head: RayHead) -> Iterator[None]:
    """Connect this pytest process to the session's Ray head (ray.init(address=...)).

    Sets the head's client variables in os.environ for the session (restored afterwards), so
    Tune/Train code in tests, and any ray.init() without an address, joins the same cluster.
    """
    import ray
    import ray._private.ray_constants as ray_constants

    if ray.is_initialized():
        pytest.fail(
            "ray_session: Ray is already initialized in this process; a test called "
            "ray.init() itself without shutting it down",
            pytrace=False,
        )
    saved = {key: os.environ.get(key) for key in ray_head.env_overrides}
    saved_cluster_flag = ray_constants.ENABLE_RAY_CLUSTER
    for key, value in ray_head.env_overrides.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    # Read once at import: patch it too, in case `ray` was imported before this conftest.
    ray_constants.ENABLE_RAY_CLUSTER = False
    _refresh_ray_auth_config()
    try:
        ray.init(address=ray_head.address, log_to_driver=True)
        yield
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        ray_constants.ENABLE_RAY_CLUSTER = saved_cluster_flag
        _refresh_ray_auth_config()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's torch code on one thread: the machine's cores are shared, and torch's
    default thread pool oversubscribes them (a tiny forward pass then takes seconds)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- synthetic training data

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "default.yaml"


@pytest.fixture(scope="session")
def learn_benchmark(tmp_path_factory):
    """A small synthetic benchmark shared by the tests that check an architecture learns.

    Deepfakes-like fakes and their reals, 64 px, with masks and MP4 videos (8 frames a video so
    clip models get clips): 384 train / 192 test frames, batches of 16.
    """
    from forgesweep.config import load_config
    from forgesweep.data.prepare import prepare_data

    root = tmp_path_factory.mktemp("learn") / "data"
    cfg = load_config(DEFAULT_CONFIG, [
        f"data.root={root}", "data.synthetic.methods=[Deepfakes]", "data.sequence=[Deepfakes]",
        "data.synthetic.train_identities=24", "data.synthetic.val_identities=2",
        "data.synthetic.test_identities=12", "data.synthetic.frames_per_video=8", "data.batch_size=16",
    ])
    manifest, _ = prepare_data(cfg, echo=lambda _: None)
    return cfg, manifest


@pytest.fixture()
def train_one_stage(learn_benchmark, tmp_path):
    """``train_one_stage(model={...}, **train) -> AccuracyMatrix``: one fine-tuning stage on
    :func:`learn_benchmark` through the real continual loop (no Ray), test split evaluated."""
    from forgesweep.config import validate_config
    from forgesweep.train.loop import LocalContext, run_continual

    cfg, manifest = learn_benchmark

    def run(model: dict, strategy: Optional[dict] = None, **train):
        data = cfg.to_dict()
        data["model"] = model
        data["strategy"] = strategy or {"name": "finetune"}
        data["train"].update(train)
        return run_continual(validate_config(data), LocalContext(tmp_path / "run"), manifest)

    return run


# --------------------------------------------------------------------------- S3-compatible server


@dataclasses.dataclass
class S3Server:
    """A moto S3 server on loopback, with the AWS environment that points boto3 at it."""

    endpoint: str
    env: Dict[str, str]

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.env["AWS_DEFAULT_REGION"],
                            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"])


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """Start ``moto.server`` on 127.0.0.1 for the test session; stopped at the end."""
    port = _free_ports(1)[0]
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while _http_get(endpoint + "/moto-api/", timeout=1.0)[0] == 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start on {endpoint}:\n{_tail(log)}")
            time.sleep(0.2)
        env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "forgesweep-test",
               "AWS_SECRET_ACCESS_KEY": "forgesweep-test-secret", "AWS_DEFAULT_REGION": "us-east-1"}
        yield S3Server(endpoint, env)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture()
def s3_env(s3_server, monkeypatch, tmp_path):
    """This test's AWS environment points at :func:`s3_server`; a fresh object cache in tmp."""
    from forgesweep.data import object_store

    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("FORGESWEEP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(object_store, "_shared", None)
    return s3_server


@pytest.fixture(scope="session")
def random_frame_manifest():
    """``write(root, per_split=3, size=32, seed=0) -> manifest path``: random PNG frames of reals
    and two fake methods in train/test under ``root``, and their manifest (feature-cache tests)."""
    import json

    import numpy as np
    from PIL import Image

    def write(root: Path, per_split: int = 3, size: int = 32, seed: int = 0) -> Path:
        """Random frames of reals and two fake methods in train/test, and their manifest."""
        rng = np.random.default_rng(seed)
        rows = []
        for split in ("train", "test"):
            for method in ("real", "Deepfakes", "Face2Face"):
                for i in range(per_split):
                    path = Path(split) / method / f"{i}.png"
                    (root / path).parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / path)
                    rows.append({"path": str(path), "label": int(method != "real"), "method": method,
                                 "dataset": "tiny", "split": split, "video_id": f"{split}-{method}-{i}"})
        (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return root / "manifest.jsonl"

    return write


@pytest.fixture()
def assert_stops_answering():
    """``check(url, timeout_s, after)``: fail unless ``url`` refuses connections within ``timeout_s``.

    For a server that was just shut down (Serve's proxy and replicas stop asynchronously).
    """

    def check(url: str, timeout_s: float, after: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(url, timeout=5).close()
            except urllib.error.HTTPError:
                pass  # still answering, with an error status
            except urllib.error.URLError as exc:
                if isinstance(exc.reason, ConnectionError):  # refused or reset: nobody listens
                    return
            except ConnectionError:
                return
            time.sleep(0.5)
        pytest.fail(f"{url} still answers after {after}", pytrace=False)

    return check
