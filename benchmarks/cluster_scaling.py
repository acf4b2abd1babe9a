"""Scaling efficiency of the sweep on a fake multi-node Ray cluster: trials per minute with 1 vs
2 simulated worker nodes.

For each node count N the script starts a fake autoscaling cluster of its own
(cluster/fake_cluster.py: a CPU-less head and N one-CPU worker nodes, ``min_workers =
max_workers = N`` so all are up before the clock starts), submits the main job as a user would
(``ray job submit -- python jobs/sweep_cffd.py --smoke`` with ``sweep.max_concurrent_trials = N``
and the same number of trials), and reads the trials' start and end times back from the job's
MLflow store. The synthetic data is generated once, beforehand, and shared by all runs.

* trial span: first trial start to last trial end (what the cluster's size changes);
* trials/min: trials / trial span;
* efficiency: (trials/min with N nodes) / (N x trials/min with 1 node).

Every fake node is a raylet on this machine, so the figures measure Ray's scheduling and the
sweep's parallelism on the cores this machine has (N one-CPU nodes need N free cores), not a
network. Timings on a shared machine are noisy: compare ratios, repeat with ``--repeats``.

Usage::

    python benchmarks/cluster_scaling.py                       # 1 and 2 nodes, 4 trials each
    python benchmarks/cluster_scaling.py --nodes 1 2 --trials 6 --repeats 2
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "platform"))


def _fake_cluster_module():
    spec = importlib.util.spec_from_file_location("forgesweep_cluster_fake_cluster", REPO / "cluster" / "fake_cluster.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def prepare_shared_data(root: Path) -> list[str]:
    """Generate the smoke benchmark once; return the ``--set`` overrides every run shares."""
    from forgesweep.cli import resolve_config
    from forgesweep.data.prepare import prepare_data

    overrides = [f"data.root={root / 'data'}"]
    cfg = resolve_config(None, overrides, smoke=True, configs_dir=REPO / "jobs" / "configs")
    prepare_data(cfg, echo=lambda _: None)
    return overrides


def trial_times(tracking_uri: str) -> list[tuple[float, float]]:
    """(start, end) in seconds of every trial run (the parent's nested runs) in the store."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    times = []
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id], max_results=1000):
            if "mlflow.parentRunId" in run.data.tags and run.info.end_time:
                times.append((run.info.start_time / 1000.0, run.info.end_time / 1000.0))
    return times


def run_once(fc, nodes: int, trials: int, shared: list[str], work: Path, job_timeout: float) -> dict:
    """One sweep of ``trials`` trials on a fake cluster of ``nodes`` one-CPU workers."""
    config = fc.load_config(worker_types={"cpu-1x": {
        "resources": {"CPU": 1, "object_store_memory": 100_000_000},
        "min_workers": nodes, "max_workers": nodes}})
    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    entrypoint = ["python", "jobs/sweep_cffd.py", "--smoke",
                  "--set", f"sweep.num_samples={trials}", "--set", f"sweep.max_concurrent_trials={nodes}",
                  "--set", "train.cpus_per_worker=1", "--set", "train.use_gpu=false",
                  "--set", f"train.storage_path={work / 'runs'}",
                  "--set", f"tracking.tracking_uri={tracking_uri}",
                  "--set", f"tracking.artifact_location={work / 'artifacts'}",
                  *[arg for o in shared for arg in ("--set", o)]]
    with fc.FakeCluster(config) as cluster:
        began = time.monotonic()
        cluster.wait_for_nodes(lambda ns: sum(not n.is_head for n in ns) == nodes, timeout=180,
                               what=f"{nodes} worker nodes")
        nodes_up_s = time.monotonic() - began
        began = time.monotonic()
        try:
            result = cluster.submit(entrypoint, timeout=job_timeout)
        except subprocess.TimeoutExpired:
            logs = sorted((cluster.root / "ray" / "session_latest" / "logs").glob("job-driver-*.log"))
            tail = cluster.log_tail(logs[-1].name) if logs else "(no job driver log)"
            raise RuntimeError(f"the sweep on {nodes} node(s) did not finish within {job_timeout:.0f} s; "
                               f"the job driver's log ends:\n{tail}") from None
        job_s = time.monotonic() - began
    output = result.stdout + result.stderr
    if result.returncode != 0 or not re.search(r"Job '[^']+' succeeded", output):
        raise RuntimeError(f"the sweep on {nodes} node(s) failed:\n{output[-4000:]}")
    times = trial_times(tracking_uri)
    if len(times) != trials:
        raise RuntimeError(f"expected {trials} finished trial runs in MLflow, found {len(times)}")
    span = max(end for _, end in times) - min(start for start, _ in times)
    return {"nodes": nodes, "trials": trials, "nodes_up_s": nodes_up_s, "job_s": job_s, "span_s": span,
            "mean_trial_s": statistics.mean(end - start for start, end in times),
            "per_min": 60.0 * trials / span}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--job-timeout", type=float, default=900.0, help="seconds one sweep may take")
    args = parser.parse_args(argv)
    # `kill <pid>` must still stop the fake cluster: turn SIGTERM into an exit that unwinds it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    fc = _fake_cluster_module()
    with tempfile.TemporaryDirectory(prefix="fs-scaling-") as tmp:
        shared = prepare_shared_data(Path(tmp))
        rows = []
        for repeat in range(args.repeats):
            for nodes in args.nodes:
                work = Path(tmp) / f"n{nodes}-r{repeat}"
                work.mkdir()
                row = run_once(fc, nodes, args.trials, shared, work, args.job_timeout)
                print(f"[{nodes} node(s), repeat {repeat + 1}] {row['trials']} trials in {row['span_s']:.1f} s "
                      f"({row['per_min']:.2f}/min), job {row['job_s']:.1f} s", flush=True)
                rows.append(row)
    by_nodes = {n: [r for r in rows if r["nodes"] == n] for n in args.nodes}
    base = statistics.mean(r["per_min"] for r in by_nodes[min(args.nodes)]) / min(args.nodes)
    print()
    print("| worker nodes | trials | trial span (s) | mean trial (s) | trials/min | speed-up | efficiency | job wall (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for n, group in by_nodes.items():
        per_min = statistics.mean(r["per_min"] for r in group)
        print(f"| {n} | {group[0]['trials']} x {len(group)} | {statistics.mean(r['span_s'] for r in group):.1f} | "
              f"{statistics.mean(r['mean_trial_s'] for r in group):.1f} | {per_min:.2f} | "
              f"{per_min / (base * min(args.nodes)):.2f} | {per_min / (base * n):.2f} | "
              f"{statistics.mean(r['job_s'] for r in group):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
