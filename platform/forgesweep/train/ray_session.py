"""Connecting to Ray: join the cluster named by ``RAY_ADDRESS`` (as ``ray job submit`` sets it),
else start a local instance."""

from __future__ import annotations

import os

import ray


def connect_ray() -> str:
    """Initialise Ray once for this process and say where it runs.

    The dashboard stays on for a local instance: Train V2 relies on the State API it serves to
    clean up the workers of trials an early-stopping scheduler ended (without it a sweep hangs
    waiting for their CPUs).

    Returns:
        A short description (``"joined cluster at ..."`` or ``"started local Ray ..."``).
    """
    if ray.is_initialized():
        return "using the Ray instance already connected"
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return f"joined Ray cluster at {address}"
    ray.init(include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=True)
    return f"started local Ray with {int(ray.cluster_resources().get('CPU', 0))} CPUs"
