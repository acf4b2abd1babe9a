"""A Ray Tune job whose trials each request one ``accel`` unit (the fake cluster's stand-in for
a GPU); submitted by tests/cluster/test_fake_autoscaling.py to a fake autoscaling cluster.

Each trial holds its resources for ``--seconds`` and reports the id of the node it ran on; the
job prints one line ``TRIALS=<json>`` with every trial's node id, start and end time.

    python tests/cluster/accel_trials_job.py --trials 3 --seconds 6
"""

import argparse
import json
import time

import ray
from ray import tune


def hold_accel(config: dict) -> None:
    """Tune trainable: keep the trial's resources busy, report where and when it ran."""
    began = time.time()
    time.sleep(config["seconds"])
    tune.report({"node_id": ray.get_runtime_context().get_node_id(), "began": began, "ended": time.time()})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--storage", required=True, help="Tune storage path")
    args = parser.parse_args()
    ray.init()  # joins the cluster named by RAY_ADDRESS (set by `ray job submit`)
    trainable = tune.with_resources(hold_accel, {"CPU": 1, "accel": 1})
    tuner = tune.Tuner(
        trainable,
        param_space={"seconds": args.seconds, "index": tune.grid_search(list(range(args.trials)))},
        tune_config=tune.TuneConfig(max_concurrent_trials=args.trials),
        run_config=tune.RunConfig(storage_path=args.storage, name="accel-trials", verbose=0),
    )
    grid = tuner.fit()
    errors = [str(r.error) for r in grid if r.error is not None]
    if errors:
        raise SystemExit(f"{len(errors)} trials failed: {errors}")
    print("TRIALS=" + json.dumps([{k: r.metrics[k] for k in ("node_id", "began", "ended")} for r in grid]))


if __name__ == "__main__":
    main()
