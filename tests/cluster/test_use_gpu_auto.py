"""``train.use_gpu: auto`` on an autoscaling cluster whose GPU workers are scaled to zero.

The driver resolves ``auto`` once, before any trial asks for resources. On a GPU cluster at rest
(every GPU worker type with ``min_workers: 0``) there is no GPU yet; ``auto`` must still choose
GPUs when the autoscaler can start GPU nodes, which autoscaler v2 (the default of ``ray up``
and KubeRay) publishes as the cluster config's node types. Ray calls are replaced by stubs here:
the fake multi-node provider only runs autoscaler v1, which publishes no cluster config.
"""

from __future__ import annotations

import pytest
import ray
from ray._private import state as ray_state

from forgesweep.config import validate_config
from forgesweep.train.trainer import resolve_use_gpu


@pytest.fixture()
def cluster(monkeypatch):
    """Stub the connected cluster: ``cluster(now={...}, can_add={...} or None)``."""

    def configure(now: dict, can_add):
        monkeypatch.setattr(ray, "is_initialized", lambda: True)
        monkeypatch.setattr(ray, "cluster_resources", lambda: dict(now))
        monkeypatch.setattr(ray_state.state, "get_max_resources_from_cluster_config", lambda: can_add)

    return configure


def _cfg(use_gpu):
    return validate_config({"train": {"use_gpu": use_gpu}})


@pytest.mark.parametrize("now, can_add, expected", [
    ({"CPU": 4.0, "GPU": 2.0}, None, True),          # GPUs in the cluster now
    ({"CPU": 0.0}, {"CPU": 128, "GPU": 12}, True),    # none now, GPU node types to scale up
    ({"CPU": 8.0}, {"CPU": 64}, False),               # an autoscaling CPU-only cluster
    ({"CPU": 2.0}, None, False),                      # a fixed CPU cluster / a laptop
])
def test_auto_uses_gpus_the_autoscaler_can_add(cluster, now, can_add, expected):
    cluster(now, can_add)
    assert resolve_use_gpu(_cfg("auto")) is expected


def test_explicit_setting_wins(cluster):
    cluster({"CPU": 0.0}, {"GPU": 8})
    assert resolve_use_gpu(_cfg(False)) is False
    cluster({"CPU": 2.0}, None)
    assert resolve_use_gpu(_cfg(True)) is True


def test_auto_without_ray_is_cpu(monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    assert resolve_use_gpu(_cfg("auto")) is False
