"""A Ray autoscaling cluster faked on this machine, for tests, benchmarks and trying things out.

Ray's fake multi-node provider lets the real autoscaler (the same monitor process that runs on
the head of an AWS or KubeRay cluster) "launch" worker nodes that are extra raylets on this
machine. :class:`FakeCluster` starts such a cluster from ``cluster/local-fake-cluster.yaml``:

* its own head, with ``ray start --head --autoscaling-config=<file>`` and
  ``RAY_FAKE_CLUSTER=1`` (the provider refuses to run without it) and
  ``AUTOSCALER_UPDATE_INTERVAL_S=1`` (the monitor looks at demand every second, not every 5 s);
* token authentication on, as on the real clusters (a fresh token in a temporary HOME);
* every port free or random, a fresh ``--temp-dir``, the working directory a ``cwd`` of your
  choice (the repository root by default, so ``ray job submit`` without ``--working-dir``
  runs jobs in the checkout, exactly like the AWS config's head);
* the dashboard on: Train V2 needs its State API to clean up trials that ASHA stops.

:meth:`FakeCluster.stop` never runs ``ray stop`` (that kills every Ray process on the machine,
other users' included). It SIGKILLs only this cluster's processes: those in the process
session of its ``ray start``, those carrying its marker variable in their environment (the
fake worker raylets are spawned by the head's monitor and inherit it) and their descendants.

Ray 2.60's ``ray.cluster_utils.AutoscalingCluster`` would do part of this but cannot be used:
it loads ``fake_multi_node/example.yaml``, which the PyPI wheel does not ship, and it stops
with ``ray stop --force``.

Command line (prints the addresses and the client environment, then holds the cluster)::

    python cluster/fake_cluster.py --hold 300
    python cluster/fake_cluster.py --min-workers 1 --hold 300   # one node of each worker type from the start
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import secrets
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = Path(__file__).resolve().with_name("local-fake-cluster.yaml")
HEAD_TYPE = "ray.head.default"  # the fake provider hard-codes this name for the head
MARKER_VAR = "FORGESWEEP_FAKE_CLUSTER"


@dataclass(frozen=True)
class Node:
    """One alive node as the State API reports it."""

    node_id: str
    is_head: bool
    resources: Dict[str, float]

    def has(self, resource: str) -> bool:
        return self.resources.get(resource, 0) > 0


def load_config(path: Path = TEMPLATE, worker_types: Optional[Mapping[str, Mapping[str, Any]]] = None,
                idle_timeout_minutes: Optional[float] = None) -> Dict[str, Any]:
    """The fake cluster config from ``path``, optionally with other worker types / idle timeout.

    Args:
        path: a fake-multinode cluster YAML (default: ``cluster/local-fake-cluster.yaml``).
        worker_types: replaces every non-head node type, e.g.
            ``{"accel-1x": {"resources": {"CPU": 1, "accel": 1}, "min_workers": 0, "max_workers": 2}}``
            (``node_config`` defaults to ``{}``).
        idle_timeout_minutes: replaces ``idle_timeout_minutes``.
    """
    config = yaml.safe_load(Path(path).read_text())
    if worker_types is not None:
        head = config["available_node_types"][HEAD_TYPE]
        config["available_node_types"] = {HEAD_TYPE: head}
        for name, spec in worker_types.items():
            config["available_node_types"][name] = {"node_config": {}, **copy.deepcopy(dict(spec))}
        config["max_workers"] = max(config.get("max_workers", 0),
                                    sum(int(s.get("max_workers", 0)) for s in worker_types.values()))
    if idle_timeout_minutes is not None:
        config["idle_timeout_minutes"] = idle_timeout_minutes
    return config


def _free_ports(count: int) -> List[int]:
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


def _ray_cli() -> str:
    candidate = Path(sys.executable).parent / "ray"
    found = str(candidate) if candidate.exists() else shutil.which("ray")
    if not found:
        raise RuntimeError(f"the `ray` CLI is not installed next to {sys.executable} nor on PATH")
    return found


def _psutil():
    try:
        import psutil
    except ImportError:  # Ray vendors psutil
        import ray  # noqa: F401
        import psutil
    return psutil


class FakeCluster:
    """A token-authenticated fake autoscaling Ray cluster on this machine (use as a context manager).

    Args:
        config: the cluster config (see :func:`load_config`); ``provider.gcs_address`` is set here.
        cwd: directory the head's Ray starts from (jobs submitted without ``--working-dir`` run there).
        start_timeout: seconds ``ray start`` and the dashboard may take.
        extra_env: more variables for the head (and so for every node and job).

    Example::

        with FakeCluster(load_config(idle_timeout_minutes=0.2)) as cluster:
            subprocess.run(["ray", "job", "submit", "--address", cluster.dashboard_url, "--",
                            "python", "jobs/sweep_cffd.py", "--smoke"], env=cluster.client_env)
            print(len(cluster.nodes()))
    """

    def __init__(self, config: Optional[Dict[str, Any]] = None, cwd: Path = REPO_ROOT,
                 start_timeout: float = 90.0, extra_env: Optional[Mapping[str, str]] = None) -> None:
        self.config = copy.deepcopy(config) if config is not None else load_config()
        self.cwd = Path(cwd)
        self.start_timeout = start_timeout
        self.extra_env = dict(extra_env or {})
        self.ray_bin = _ray_cli()
        self.root: Optional[Path] = None
        self.address = ""
        self.dashboard_url = ""
        self.client_env: Dict[str, str] = {}
        self.token_path: Optional[Path] = None
        self._marker = uuid.uuid4().hex
        self._sid: Optional[int] = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> "FakeCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        survivors = self.stop()
        if survivors and exc[0] is None:
            raise RuntimeError(f"fake cluster processes survived SIGKILL: {survivors}")

    def start(self) -> "FakeCluster":
        """Start the head (and its autoscaler); return once the Jobs API answers."""
        # Ray puts unix sockets under the temp dir: keep the path short.
        self.root = Path(tempfile.mkdtemp(prefix="fs-fake-", dir="/tmp" if os.path.isdir("/tmp") else None))
        temp_dir, home = self.root / "ray", self.root / "home"
        (home / ".ray").mkdir(parents=True)
        # Same format `ray get-auth-token --generate` writes (Ray's own generator is token_hex(32)).
        self.token_path = home / ".ray" / "auth_token"
        self.token_path.write_text(secrets.token_hex(32))
        self.token_path.chmod(0o600)

        gcs, dash, client, agent, dash_metrics, as_metrics = _free_ports(6)
        self.address = f"127.0.0.1:{gcs}"
        self.dashboard_url = f"http://127.0.0.1:{dash}"
        # The provider starts worker raylets itself and points them at this GCS address
        # (its default is <node ip>:6379, which may be someone else's Ray).
        self.config.setdefault("provider", {})["gcs_address"] = self.address
        config_path = self.root / "autoscaling.yaml"
        config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

        auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}
        base = {k: v for k, v in os.environ.items()
                if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN")}
        # Keep every Ray process on 127.0.0.1 (see tests/conftest.py): with clustering enabled
        # Ray swaps 127.0.0.1 for the machine's outward IP.
        base["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        base["PATH"] = str(Path(sys.executable).parent) + os.pathsep + base.get("PATH", "")
        head_env = {**base, **auth, **self.extra_env,
                    "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
                    # Autoscaler v1: v2 (the default of `ray up` and KubeRay) runs prepare_config,
                    # which needs fake_multi_node/example.yaml, missing from the PyPI wheel.
                    "RAY_enable_autoscaler_v2": "0",
                    "DASHBOARD_METRIC_PORT": str(dash_metrics), "AUTOSCALER_METRIC_PORT": str(as_metrics),
                    MARKER_VAR: self._marker}
        self.client_env = {**base, **auth, "RAY_ADDRESS": self.address,
                           "RAY_API_SERVER_ADDRESS": self.dashboard_url}
        cmd = [self.ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
               f"--dashboard-agent-listen-port={agent}", "--min-worker-port=0", "--max-worker-port=0",
               "--num-cpus=0", "--object-store-memory=100000000", "--disable-usage-stats",
               f"--autoscaling-config={config_path}", f"--temp-dir={temp_dir}"]
        try:
            proc = subprocess.Popen(cmd, cwd=self.cwd, env=head_env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, start_new_session=True)
            self._sid = proc.pid
            try:
                out, _ = proc.communicate(timeout=self.start_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
                raise RuntimeError(f"`ray start` did not return within {self.start_timeout:.0f} s:\n{out[-3000:]}")
            if proc.returncode != 0:
                raise RuntimeError(f"`ray start` failed (rc={proc.returncode}):\n{out[-3000:]}")
            deadline = time.monotonic() + self.start_timeout
            while self._get("/api/jobs/")[0] != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the Jobs API at {self.dashboard_url} did not come up\n{self.log_tail()}")
                time.sleep(0.5)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 20.0) -> List[str]:
        """SIGKILL this cluster's processes; return descriptions of any that survived."""
        psutil = _psutil()
        deadline = time.monotonic() + timeout
        survivors: List[str] = []
        while True:
            procs = self._processes()
            if not procs:
                break
            for proc in procs:
                try:
                    proc.send_signal(signal.SIGKILL)
                except psutil.Error:
                    pass
            psutil.wait_procs(procs, timeout=2)
            if time.monotonic() > deadline:
                for proc in self._processes():
                    try:
                        survivors.append(f"{proc.pid} {' '.join(proc.cmdline())[:160]}")
                    except psutil.Error:
                        pass
                break
        if self.root is not None and not survivors:
            shutil.rmtree(self.root, ignore_errors=True)
        return survivors

    def _processes(self):
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
                mine = self._sid is not None and os.getsid(proc.pid) == self._sid
                if not mine:
                    mine = proc.environ().get(MARKER_VAR) == self._marker
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

    # ------------------------------------------------------------------ observing

    @property
    def auth_headers(self) -> Dict[str, str]:
        assert self.token_path is not None, "start() the cluster first"
        return {"Authorization": f"Bearer {self.token_path.read_text().strip()}"}

    def _get(self, path: str):
        request = urllib.request.Request(self.dashboard_url + path, headers=self.auth_headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except (urllib.error.URLError, OSError):
            return 0, ""

    def nodes(self) -> List[Node]:
        """Alive nodes (head included), from the dashboard's State API."""
        status, body = self._get("/api/v0/nodes?limit=1000&detail=1")
        if status != 200:
            raise RuntimeError(f"State API /api/v0/nodes answered {status}: {body[:300]}")
        rows = json.loads(body)["data"]["result"]["result"]
        return [Node(r["node_id"], bool(r.get("is_head_node")), dict(r.get("resources_total") or {}))
                for r in rows if r.get("state") == "ALIVE"]

    def wait_for_nodes(self, predicate: Callable[[List[Node]], bool], timeout: float,
                       what: str = "the expected nodes") -> List[Node]:
        """Poll :meth:`nodes` until ``predicate`` holds; raise ``TimeoutError`` with context."""
        deadline = time.monotonic() + timeout
        nodes: List[Node] = []
        while time.monotonic() < deadline:
            nodes = self.nodes()
            if predicate(nodes):
                return nodes
            time.sleep(1.0)
        raise TimeoutError(f"{what} did not appear within {timeout:.0f} s; alive nodes: {nodes}\n"
                           f"{self.log_tail()}")

    def submit(self, entrypoint: List[str], timeout: float, extra: Optional[List[str]] = None,
               cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
        """``ray job submit --address <dashboard> [extra] -- <entrypoint>``, as a user would."""
        cmd = [self.ray_bin, "job", "submit", "--address", self.dashboard_url, *(extra or []), "--", *entrypoint]
        return subprocess.run(cmd, env=self.client_env, cwd=cwd or self.cwd, capture_output=True,
                              text=True, timeout=timeout)

    def log_text(self, name: str = "monitor.log") -> str:
        """One of the head's logs, whole (default: the autoscaler's); empty if absent."""
        if self.root is None:
            return ""
        path = self.root / "ray" / "session_latest" / "logs" / name
        return path.read_text(errors="replace") if path.is_file() else ""

    def log_tail(self, name: str = "monitor.log", lines: int = 40) -> str:
        """The last lines of one of the head's logs (default: the autoscaler's)."""
        if self.root is None:
            return ""
        path = self.root / "ray" / "session_latest" / "logs" / name
        try:
            return f"--- {path} ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"<cannot read {path}: {exc}>"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=TEMPLATE)
    parser.add_argument("--min-workers", type=int, default=None, help="min_workers of every worker type")
    parser.add_argument("--idle-timeout-minutes", type=float, default=None)
    parser.add_argument("--hold", type=float, default=120.0, help="seconds to keep the cluster up")
    args = parser.parse_args(argv)
    # `kill <pid>` must still stop the cluster: turn SIGTERM into an exit that runs __exit__.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    config = load_config(args.config, idle_timeout_minutes=args.idle_timeout_minutes)
    if args.min_workers is not None:
        for name, spec in config["available_node_types"].items():
            if name != HEAD_TYPE:
                spec["min_workers"] = min(args.min_workers, spec.get("max_workers", args.min_workers))
    with FakeCluster(config) as cluster:
        print(f"GCS address:   {cluster.address}\nDashboard:     {cluster.dashboard_url}")
        print(f"Client env:    export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={cluster.token_path} "
              f"RAY_ADDRESS={cluster.address}")
        print(f"Submit a job:  ray job submit --address {cluster.dashboard_url} -- python jobs/sweep_cffd.py --smoke")
        end = time.monotonic() + args.hold
        try:
            while time.monotonic() < end:
                print(f"[{time.strftime('%H:%M:%S')}] alive nodes: {len(cluster.nodes())}", flush=True)
                time.sleep(min(10.0, max(0.0, end - time.monotonic())))
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
