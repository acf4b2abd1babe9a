"""Measures catastrophic forgetting on the synthetic benchmark: fine-tuning vs replay vs CFFD.

Runs the project's own continual loop (``forgesweep.train.loop.run_continual``, no Ray) on the
4-task sequence for several seeds and prints, per strategy, the task-1 accuracy right after
stage 1 and after the last stage, the drop, the final average accuracy and forgetting, and
each method's accuracy when trained alone (the benchmark's learnability check).

Usage::

    python benchmarks/forgetting.py                   # default benchmark, 3 seeds
    python benchmarks/forgetting.py --seeds 0 1 --set train.epochs_per_task=3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "platform"))

from forgesweep.cli import resolve_config  # noqa: E402
from forgesweep.config import ExperimentConfig, validate_config  # noqa: E402
from forgesweep.data.prepare import prepare_data  # noqa: E402
from forgesweep.train.loop import LocalContext, run_continual  # noqa: E402

STRATEGIES = {
    "finetune": {"strategy": {"name": "finetune"}},
    "replay": {"strategy": {"name": "cffd", "w_slkd": 0.0, "w_mfkd": 0.0}},
    "cffd": {"strategy": {"name": "cffd"}},
}


def variant(cfg: ExperimentConfig, seed: int, **sections) -> ExperimentConfig:
    """``cfg`` with ``seed`` and whole sections replaced (strategy params reset to defaults)."""
    data = cfg.to_dict()
    data["seed"] = seed
    for key, value in sections.items():
        data[key] = value
    return validate_config(data)


def measure(cfg: ExperimentConfig, manifest, seeds: list[int]) -> dict[str, dict[str, float]]:
    """Run every strategy for every seed; mean figures per strategy."""
    rows: dict[str, dict[str, float]] = {}
    for name, sections in STRATEGIES.items():
        runs = []
        for seed in seeds:
            began = time.perf_counter()
            with tempfile.TemporaryDirectory() as out:
                acc = run_continual(variant(cfg, seed, **sections), LocalContext(Path(out)), manifest)
            last = acc.num_tasks - 1
            runs.append({"task1_after_1": acc.get(0, 0), "task1_after_last": acc.get(last, 0),
                         "avg_acc": acc.average(last), "forgetting": acc.forgetting(last),
                         "seconds": time.perf_counter() - began})
        rows[name] = {k: statistics.mean(r[k] for r in runs) for k in runs[0]}
        rows[name]["drop"] = rows[name]["task1_after_1"] - rows[name]["task1_after_last"]
        print(f"  {name}: done ({rows[name]['seconds']:.0f}s per run)", flush=True)
    return rows


def alone(cfg: ExperimentConfig, manifest, seeds: list[int]) -> dict[str, float]:
    """Accuracy of each method when it is the only task (fine-tuning, same epochs)."""
    out = {}
    for task in cfg.data.sequence:
        scores = []
        for seed in seeds:
            data = cfg.to_dict()
            data["data"]["sequence"] = [task.model_dump()]
            with tempfile.TemporaryDirectory() as tmp:
                acc = run_continual(variant(validate_config(data), seed, strategy={"name": "finetune"}),
                                    LocalContext(Path(tmp)), manifest)
            scores.append(acc.get(0, 0))
        out[task.name] = statistics.mean(scores)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="experiment YAML (default: jobs/configs/default.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--skip-alone", action="store_true", help="skip the trained-alone check")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1, as in a Ray worker)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = resolve_config(args.config, args.overrides, smoke=False, configs_dir=HERE.parent / "jobs" / "configs")
    manifest, tasks = prepare_data(cfg)
    print(f"seeds {args.seeds}; {cfg.train.epochs_per_task} epochs per task; model {cfg.model.name} "
          f"({cfg.model.raw_params}); images {cfg.data.image_size}px", flush=True)
    rows = measure(cfg, manifest, args.seeds)
    print()
    print(f"| strategy | task-1 ACC after stage 1 | task-1 ACC after stage {len(tasks)} | drop | "
          f"avg ACC (last stage) | forgetting | s/run |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['task1_after_1']:.3f} | {r['task1_after_last']:.3f} | {r['drop']:.3f} | "
              f"{r['avg_acc']:.3f} | {r['forgetting']:.3f} | {r['seconds']:.0f} |")
    if not args.skip_alone:
        print()
        print("| method trained alone | test ACC |")
        print("|---|---|")
        for name, score in alone(cfg, manifest, args.seeds).items():
            print(f"| {name} | {score:.3f} |")


if __name__ == "__main__":
    main()
