"""A local S3-compatible server and a real MLflow tracking server, for users without AWS.

Starts, on 127.0.0.1:

* ``moto`` in server mode (``pip install "moto[server]"``), an in-memory S3 endpoint, with one
  bucket; or, with ``--s3-endpoint``, uses an S3-compatible server you run yourself (MinIO, ...);
* ``mlflow server`` with a sqlite backend that proxies artifacts to ``s3://<bucket>/mlflow``.

Then it prints the variables that point a sweep at both, and runs until Ctrl-C::

    python -m forgesweep.tracking.local_servers            # or: forgesweep local-servers
    # in another shell, paste the printed exports, then:
    python jobs/sweep_cffd.py --smoke --set train.storage_path=s3://forgesweep/ray

moto keeps objects in memory: they are gone when it stops (the MLflow database stays in
``--root``). The credentials printed for moto are placeholders; moto checks none.
The test suite starts the same servers through :class:`MotoS3Server` and :class:`MlflowServer`.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Mapping, Optional

from forgesweep.data.object_store import describe_s3_error
from forgesweep.errors import UserError

HOST = "127.0.0.1"
# moto accepts any credentials; these only satisfy clients that insist on having some.
PLACEHOLDER_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local-placeholder",
                           "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _http_status(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


class _ServerProcess:
    """A server subprocess in its own process group (the MLflow CLI forks uvicorn workers)."""

    name = "server"

    def __init__(self, log_path: Path) -> None:
        self.log_path = Path(log_path)
        self.proc: Optional[subprocess.Popen] = None

    def _spawn(self, cmd: list[str], env: Mapping[str, str], ready_url: str, timeout_s: float) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(cmd, env=dict(env), stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while _http_status(ready_url) != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                why = f"exited with {self.proc.returncode}" if self.proc.poll() is not None \
                    else f"not ready after {timeout_s:.0f} s"
                self.stop()
                tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-15:])
                raise UserError(f"{self.name} {why} ({ready_url}); its log {self.log_path}:\n{tail}")
            time.sleep(0.3)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM the server's process group, SIGKILL whatever is left after ``timeout_s``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = self.proc.pid  # start_new_session: the group is the one this object created
        try:
            os.killpg(pgid, signal.SIGTERM)
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(timeout=timeout_s)
        except ProcessLookupError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class MotoS3Server(_ServerProcess):
    """``moto`` in server mode on ``127.0.0.1:port``: an in-memory S3 endpoint."""

    name = "moto S3 server"

    def __init__(self, log_path: Path, port: int = 0) -> None:
        super().__init__(log_path)
        self.port = port or free_port()
        self.endpoint = f"http://{HOST}:{self.port}"

    def start(self, timeout_s: float = 60.0) -> "MotoS3Server":
        try:
            import moto.server  # noqa: F401
        except ImportError:
            raise UserError('the local S3 server needs moto: pip install "moto[server]" '
                            '(or pass --s3-endpoint of an S3-compatible server you run)') from None
        cmd = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)]
        self._spawn(cmd, os.environ, f"{self.endpoint}/moto-api/", timeout_s)
        return self


class MlflowServer(_ServerProcess):
    """``mlflow server``: sqlite backend, artifacts proxied to ``artifacts_destination``.

    Args:
        root: folder of the sqlite database and the server log.
        artifacts_destination: e.g. ``s3://bucket/mlflow``; the server writes there with the
            AWS settings of ``env`` (the clients never need S3 credentials for artifacts).
        env: the server's environment (AWS endpoint/credentials for an S3 destination).
        port: 0 picks a free port.
    """

    name = "MLflow server"

    def __init__(self, root: Path, artifacts_destination: str, env: Optional[Mapping[str, str]] = None,
                 port: int = 0) -> None:
        super().__init__(Path(root) / "mlflow-server.log")
        self.root = Path(root)
        self.artifacts_destination = artifacts_destination
        self.env = dict(os.environ if env is None else env)
        self.port = port or free_port()
        self.uri = f"http://{HOST}:{self.port}"

    def start(self, timeout_s: float = 180.0) -> "MlflowServer":
        self.root.mkdir(parents=True, exist_ok=True)
        mlflow_cli = Path(sys.executable).with_name("mlflow")
        cmd = [str(mlflow_cli) if mlflow_cli.exists() else "mlflow", "server",
               "--backend-store-uri", f"sqlite:///{(self.root / 'mlflow.db').resolve()}",
               "--artifacts-destination", self.artifacts_destination,
               "--host", HOST, "--port", str(self.port), "--workers", "1"]
        # The server's background job runner is not needed for tracking and costs a process.
        env = {**self.env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self._spawn(cmd, env, f"{self.uri}/health", timeout_s)
        return self


def ensure_bucket(endpoint: Optional[str], bucket: str, env: Mapping[str, str]) -> None:
    """Create ``bucket`` at ``endpoint`` unless it exists."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name=env.get("AWS_DEFAULT_REGION", "us-east-1"),
                          aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
                          aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"))
    try:
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)
    except Exception as exc:  # botocore raises several unrelated types: all become one line
        raise UserError(describe_s3_error(exc, f"s3://{bucket}", client)) from None


COMMANDS = ("local-servers",)  # the sub-command this module adds to `forgesweep`


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``local-servers`` sub-command to the ``forgesweep`` command line."""
    p = subparsers.add_parser("local-servers", help="local S3 (moto) + MLflow server for runs without AWS",
                              description=__doc__.split("\n\n")[0])
    _arguments(p)
    return p


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default="local-servers", help="folder for the MLflow database and logs")
    p.add_argument("--bucket", default="forgesweep", help="bucket for checkpoints and MLflow artifacts")
    p.add_argument("--s3-port", type=int, default=9000, help="port of the moto S3 server")
    p.add_argument("--mlflow-port", type=int, default=5000, help="port of the MLflow server")
    p.add_argument("--s3-endpoint", help="use this S3-compatible server (with your AWS_* credentials) "
                                         "instead of starting moto")


def run(args: argparse.Namespace) -> int:
    """Start the servers, print how to use them, wait for Ctrl-C, stop them."""
    root = Path(args.root).resolve()
    # SIGTERM (a service manager, `kill`) stops the servers too, like Ctrl-C: the `finally` below
    # runs on SystemExit; the servers are in their own sessions and would otherwise stay up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    moto: Optional[MotoS3Server] = None
    if args.s3_endpoint:
        endpoint, env = args.s3_endpoint, dict(os.environ)
        shown = {"AWS_ENDPOINT_URL": endpoint}  # the user's own keys are never printed
    else:
        moto = MotoS3Server(root / "moto.log", port=args.s3_port).start()
        endpoint = moto.endpoint
        env = {**os.environ, **PLACEHOLDER_CREDENTIALS}
        shown = {"AWS_ENDPOINT_URL": endpoint, **PLACEHOLDER_CREDENTIALS}
    env["AWS_ENDPOINT_URL"] = endpoint
    mlflow_server: Optional[MlflowServer] = None
    try:
        ensure_bucket(endpoint, args.bucket, env)
        mlflow_server = MlflowServer(root, f"s3://{args.bucket}/mlflow", env, port=args.mlflow_port).start()
        print(f"S3 endpoint {endpoint} (bucket {args.bucket!r}); MLflow server {mlflow_server.uri} "
              f"(database {root / 'mlflow.db'}, artifacts s3://{args.bucket}/mlflow)")
        print("In another shell:")
        for key, value in {**shown, "MLFLOW_TRACKING_URI": mlflow_server.uri}.items():
            print(f"  export {key}={value}")
        print(f"  python jobs/sweep_cffd.py --smoke --set train.storage_path=s3://{args.bucket}/ray")
        print("Ctrl-C stops both servers.", flush=True)
        while True:
            for server in (moto, mlflow_server):
                if server is not None and server.proc is not None and server.proc.poll() is not None:
                    raise UserError(f"{server.name} stopped (exit {server.proc.returncode}); see {server.log_path}")
            time.sleep(1.0)
    except KeyboardInterrupt:
        return 0
    finally:
        if mlflow_server is not None:
            mlflow_server.stop()
        if moto is not None:
            moto.stop()


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m forgesweep.tracking.local_servers``."""
    parser = argparse.ArgumentParser(prog="python -m forgesweep.tracking.local_servers",
                                     description=__doc__.split("\n\n")[0])
    _arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
