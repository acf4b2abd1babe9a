"""A local Ray started by the platform works while another Ray instance runs on the machine.

Ray's clients inside a worker (the State API that Ray Train's ``PlacementGroupCleaner`` polls)
find a ``ray.init()``-started instance by scanning the machine for GCS servers; with two
instances that scan fails and an early-stopped trial's CPUs are never given back, hanging the
sweep. :func:`forgesweep.train.ray_session.connect_ray` gives every worker of its local instance
``RAY_ADDRESS``. The test session's Ray head is the "other" instance here; a fresh interpreter
(no ``RAY_ADDRESS``) starts the local one through ``connect_ray`` and queries the State API from
a worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

PROBE = r"""
import json, os
import ray
from ray._private.services import find_gcs_addresses
from forgesweep.train.ray_session import connect_ray

print(connect_ray(), flush=True)

@ray.remote(num_cpus=0)
def ask_the_state_api():
    from ray.util.state import list_nodes
    try:
        nodes = [n.node_id for n in list_nodes()]
    except Exception as exc:  # what the PlacementGroupCleaner would die of
        nodes = f"{type(exc).__name__}: {exc}"
    return {"address": os.environ.get("RAY_ADDRESS"), "nodes": nodes}

seen = ray.get(ask_the_state_api.remote())
print("RESULT " + json.dumps({
    "gcs_servers": len(find_gcs_addresses()),
    "own_gcs": ray.get_runtime_context().gcs_address,
    "own_node": ray.get_runtime_context().get_node_id(),
    **seen,
}), flush=True)
ray.shutdown()
"""


def test_workers_of_a_local_instance_reach_their_own_cluster_beside_another(ray_head):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "started local Ray" in proc.stdout
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    # The premise: the session's head and this local instance both run here.
    assert result["gcs_servers"] >= 2, result
    assert result["nodes"] == [result["own_node"]], result
    assert result["address"] == result["own_gcs"], result
