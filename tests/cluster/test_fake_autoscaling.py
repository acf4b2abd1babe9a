"""The Ray autoscaler grows and shrinks a fake multi-node cluster with the demand of a real job.

A token-authenticated head of its own (cluster/fake_cluster.py: Ray's fake multi-node provider,
not the session's head) declares one worker type, ``accel-1x``, with a custom resource standing
in for a GPU, 0..2 nodes, idle timeout 12 s. ``ray job submit`` runs a Tune job
(tests/cluster/accel_trials_job.py) whose three trials each need one ``accel``:

* the autoscaler adds exactly two worker nodes (``max_workers``), never a third, and every
  trial runs on one of them (the head has no CPU and no ``accel``), the third trial after one
  of the first two freed its node;
* once idle, both nodes are removed, each no sooner than the idle timeout after its last trial,
  and the autoscaler logs the removal as idle; the cluster is back to its head alone.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

IDLE_TIMEOUT_MIN = 0.2
MAX_WORKERS = 2
TRIALS = 3
TRIAL_SECONDS = 5.0


def test_trials_needing_accel_add_nodes_which_go_away_when_idle(fake_cluster_tool, validate_tool, tmp_path):
    fc = fake_cluster_tool
    config = fc.load_config(worker_types={"accel-1x": {
        "resources": {"CPU": 1, "accel": 1, "object_store_memory": 100_000_000},
        "min_workers": 0, "max_workers": MAX_WORKERS}}, idle_timeout_minutes=IDLE_TIMEOUT_MIN)
    validate_tool.validate_launcher_config(config, "fake cluster config")

    with fc.FakeCluster(config) as cluster:
        nodes = cluster.nodes()
        assert len(nodes) == 1 and nodes[0].is_head, nodes
        assert not nodes[0].has("accel") and not nodes[0].has("CPU"), nodes[0]
        head_id = nodes[0].node_id

        cmd = [cluster.ray_bin, "job", "submit", "--address", cluster.dashboard_url, "--", "python",
               "tests/cluster/accel_trials_job.py", "--trials", str(TRIALS), "--seconds", str(TRIAL_SECONDS),
               "--storage", str(tmp_path / "tune")]
        job = subprocess.Popen(cmd, env=cluster.client_env, cwd=cluster.cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        seen = {}  # worker node id -> (first seen, last seen alive), time.time()
        peak = 0
        deadline = time.monotonic() + 240
        try:
            while job.poll() is None:
                assert time.monotonic() < deadline, f"the job did not finish in time\n{cluster.log_tail()}"
                workers = [n for n in cluster.nodes() if not n.is_head]
                now = time.time()
                peak = max(peak, len(workers))
                for n in workers:
                    assert n.resources.get("accel") == 1 and n.resources.get("CPU") == 1, n
                    seen[n.node_id] = (seen.get(n.node_id, (now, now))[0], now)
                time.sleep(1.0)
        finally:
            if job.poll() is None:
                job.kill()
        out = job.stdout.read()
        assert job.returncode == 0, out[-6000:]
        found = re.findall(r"^TRIALS=(.*)$", out, flags=re.MULTILINE)
        assert found, out[-6000:]
        trials = json.loads(found[-1])

        # Scale-up: exactly max_workers nodes for three pending trials; all trials on them.
        assert peak == MAX_WORKERS, (peak, seen)
        assert len(seen) == MAX_WORKERS, seen
        assert len(trials) == TRIALS
        assert {t["node_id"] for t in trials} <= set(seen) and head_id not in {t["node_id"] for t in trials}
        first_two, third = sorted(trials, key=lambda t: t["began"])[:2], sorted(trials, key=lambda t: t["began"])[2]
        assert third["began"] >= min(t["ended"] for t in first_two) - 0.5, trials

        # Scale-down: both nodes removed after (not before) the idle timeout.
        removed = {}
        deadline = time.monotonic() + IDLE_TIMEOUT_MIN * 60 + 90
        while len(removed) < len(seen):
            assert time.monotonic() < deadline, f"idle nodes were not removed: {cluster.nodes()}\n{cluster.log_tail()}"
            alive = {n.node_id for n in cluster.nodes()}
            now = time.time()
            removed.update({node: now for node in seen if node not in alive and node not in removed})
            time.sleep(1.0)
        for node, gone in removed.items():
            last_trial_end = max(t["ended"] for t in trials if t["node_id"] == node)
            assert gone >= last_trial_end + IDLE_TIMEOUT_MIN * 60 - 1.0, (node, gone - last_trial_end)
        final = cluster.nodes()
        assert [n.node_id for n in final] == [head_id], final
        idle_removals = re.findall(r"Removing (\d+) nodes of type accel-1x \(idle\)", cluster.log_text())
        assert sum(int(n) for n in idle_removals) == MAX_WORKERS, cluster.log_tail()
