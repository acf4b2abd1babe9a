"""Sweep time with and without the frozen-feature cache, and Ray's overhead on a sweep.

Each measurement is a real sweep through ``forgesweep.sweep.runner.run_sweep`` (Ray Tune + Optuna
on a local Ray, MLflow tracking to a sqlite file in the work folder):

1. ``rine_ssca`` (``small`` heads) on a ViT-B-sized CLIP tower -- 12 blocks, width 768, 12 heads,
   MLP 3072, patch 16, input ``--clip-size`` px (96; the model resizes the 64 px frames to it, as
   RINE resizes to 224), random weights saved once as a local "pretrained" directory and left out
   of the checkpoints (``save_tower: false``) -- on a two-task synthetic benchmark (150 frames),
   CFFD, 4 epochs per task: a ``--trials``-trial (16) sweep over the CLIP layer subset and the
   distillation temperature, 2 trials at a time, with ``features.cache: true``. Measured: wall
   time, the extraction job's wall time (one tower pass over every frame and both views, Ray
   tasks), and the trials' own training time (the sum of their ``stage_seconds``).
2. The same sweep (same sampler seed, so the same configurations) with ``features.cache: false``:
   every trial runs the tower in every epoch, evaluation and teacher pass. Both sweeps run their
   trials in the trial processes (``sweep.trial_executor: in_trial``), so only the cache differs.
   By default only its first ``--uncached-trials`` (4) trials run and the wall time is
   extrapolated to all of them (the part before the first trial starts is not scaled).
3. Ray's overhead at the default config (``jobs/configs/default.yaml``, ``--overhead-trials`` 4
   trials of ``--overhead-epochs`` 1 epoch per task): sweep wall time against the sum of the
   trials' own training time, also with that sum divided by the concurrent trials.

Printed ratios and the issue's targets: speed-up = wall(no cache) / wall(cache), >= 8; cached wall
/ (extraction + sum of head trainings), <= 1.5; sweep wall / trials' training time, <= 1.3.

4. ``--gpu-extraction`` (CUDA only, instead of 1-3): the cache's extraction path
   (``extract_frozen_features`` of every block, both activations, under bf16 autocast) on the
   ``full`` preset's CLIP ViT-L/14 at 224 px, in images/s, against the device's bf16
   matrix-multiply ceiling (a timed 8192^3 matmul): the fraction of the ceiling it reaches.

Usage::

    python benchmarks/feature_cache.py                            # 1-3, about 12 minutes on 2 cores
    python benchmarks/feature_cache.py --uncached-trials 16       # the uncached sweep in full (long)
    python benchmarks/feature_cache.py --overhead-executors torch_trainer,in_trial --overhead-scheduler none
    python benchmarks/feature_cache.py --gpu-extraction           # on a CUDA machine
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "platform"))
CONFIGS = HERE.parent / "jobs" / "configs"

VIT_B = {"clip_hidden_size": 768, "clip_num_layers": 12, "clip_num_heads": 12, "clip_intermediate_size": 3072,
         "clip_patch_size": 16}
LAYER_SUBSETS = ["0+1+2+3+4+5+6+7+8+9+10+11", "6+7+8+9+10+11", "9+10+11", "3+7+11", "11"]


def save_random_tower(path: Path, size: int) -> None:
    """A random ViT-B CLIP vision tower saved like a downloaded checkpoint (seeded)."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=VIT_B["clip_hidden_size"], num_hidden_layers=VIT_B["clip_num_layers"],
                              num_attention_heads=VIT_B["clip_num_heads"],
                              intermediate_size=VIT_B["clip_intermediate_size"],
                              patch_size=VIT_B["clip_patch_size"], image_size=size)
    with torch.device("meta"):
        tower = CLIPVisionModel(config)
    tower = tower.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in tower.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=generator)
        for b in tower.buffers():  # position ids
            b.copy_(torch.arange(b.shape[-1]).expand_as(b))
    tower.save_pretrained(str(path))


def trial_times(tracking_uri: str, parent_run_id: str) -> list[float]:
    """Per trial: the sum of its stages' ``stage_seconds`` (from the MLflow child runs)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")
    return [sum(m.value for m in client.get_metric_history(r.info.run_id, "stage_seconds")) for r in runs]


def run(config_overrides: list[str], base: str, workdir: Path, name: str) -> dict:
    """One sweep; returns its wall time, trial times and the cache report."""
    from forgesweep.config import load_config
    from forgesweep.sweep.runner import run_sweep

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    cfg = load_config(base, config_overrides + [
        f"sweep.name={name}", f"train.storage_path={workdir / 'runs'}", f"tracking.tracking_uri={uri}",
        f"tracking.artifact_location={workdir / 'artifacts'}", f"tracking.experiment=bench-{name}",
        "tracking.register_models=false"])
    lines: list[tuple[float, str]] = []
    began = time.perf_counter()
    outcome = run_sweep(cfg, echo=lambda line: (lines.append((time.perf_counter() - began, line)),
                                                print(f"  {time.strftime('%H:%M:%S')} {line}", flush=True)))
    wall = time.perf_counter() - began
    times = trial_times(uri, outcome.parent_run_id)
    stopped = sum(1 for _, line in lines if "stopped early" in line)
    first = min((t for t, line in lines if " started: " in line), default=0.0)
    return {"wall": wall, "trials": times, "stopped": stopped, "first_trial_at": first,
            "extraction": outcome.features.seconds if outcome.features is not None else None,
            "cache_line": outcome.features.line if outcome.features is not None else None}


def gpu_extraction(batch: int, iters: int) -> None:
    """Print ViT-L/14 feature-extraction images/s in bf16 and its fraction of the matmul ceiling."""
    import torch

    from forgesweep.features.ray_job import _no_init_weights
    from forgesweep.models import build_model

    if not torch.cuda.is_available():
        raise SystemExit("--gpu-extraction needs a CUDA device")
    device = torch.device("cuda")
    with _no_init_weights():
        model = build_model("rine_ssca", {"preset": "full"})
    with torch.no_grad():
        for p in model.parameters():  # any finite weights do for timing
            p.normal_(0.0, 0.02)
    model.to(device).eval()
    images = torch.rand(batch, 3, 224, 224, device=device) * 2 - 1

    def extract() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model.extract_frozen_features(images, ["layer_norm2", "block_output"])

    for _ in range(3):
        extract()
    torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(iters):
        extract()
    torch.cuda.synchronize()
    images_per_s = batch * iters / (time.perf_counter() - began)

    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(20):
        a @ b
    torch.cuda.synchronize()
    ceiling = 2 * n ** 3 * 20 / (time.perf_counter() - began)

    # Matmul FLOPs of one 224 px image through ViT-L/14: 257 tokens, 24 blocks of width 1024.
    tokens, width, mlp, blocks = 257, 1024, 4096, 24
    per_block = 2 * tokens * width * width * 4 + 2 * tokens * width * mlp * 2 + 2 * 2 * tokens * tokens * width
    flops = blocks * per_block + 2 * 256 * (3 * 14 * 14) * width
    achieved = images_per_s * flops
    print(f"\n| what | figure |\n|---|---|\n| device | {torch.cuda.get_device_name()} |")
    print(f"| ViT-L/14 extraction, bf16, batch {batch} | {images_per_s:.0f} images/s |")
    print(f"| matmul FLOPs per image | {flops / 1e9:.1f} GFLOP |")
    print(f"| bf16 matmul ceiling (8192^3) | {ceiling / 1e12:.0f} TFLOP/s |")
    print(f"| fraction of the ceiling | {achieved / ceiling:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=2, help="max concurrent trials of the rine_ssca sweeps")
    parser.add_argument("--size", type=int, default=64, help="frame size (the SSCA branch's input)")
    parser.add_argument("--clip-size", type=int, default=96,
                        help="CLIP's input size, patch 16 (the model resizes the frames to it, as RINE does to 224)")
    parser.add_argument("--train-identities", type=int, default=16, help="synthetic identities in train")
    parser.add_argument("--test-identities", type=int, default=8)
    parser.add_argument("--frames", type=int, default=2, help="frames per video")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per task of the rine_ssca sweeps")
    parser.add_argument("--overhead-trials", type=int, default=4)
    parser.add_argument("--overhead-epochs", type=int, default=1)
    parser.add_argument("--overhead-executors", default="torch_trainer",
                        help="sweep.trial_executor values the default-config sweep is measured with")
    parser.add_argument("--overhead-scheduler", default="asha", choices=["asha", "none"],
                        help="sweep.scheduler.type of the default-config sweeps (none: every trial runs every "
                             "stage; TorchTrainer trials stopped by ASHA need Ray's State API, see README)")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-uncached", action="store_true")
    parser.add_argument("--uncached-trials", type=int, default=4,
                        help="run only the first N trials of the uncached sweep and extrapolate its wall time to "
                             "--trials (its fixed part, up to the first trial's start, is not scaled)")
    parser.add_argument("--workdir", type=Path, default=None, help="kept when given; else a temporary folder")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    parser.add_argument("--gpu-extraction", action="store_true", help="only the CUDA extraction measurement")
    parser.add_argument("--gpu-batch", type=int, default=256)
    args = parser.parse_args()
    if args.gpu_extraction:
        gpu_extraction(args.gpu_batch, iters=10)
        return

    from forgesweep.config import load_config
    from forgesweep.data.prepare import prepare_data
    from forgesweep.train.ray_session import connect_ray

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fs-bench-cache-"))
    workdir.mkdir(parents=True, exist_ok=True)
    data = [f"data.root={workdir / 'data'}", "data.synthetic.methods=[Deepfakes,Face2Face]",
            "data.sequence=[Deepfakes,Face2Face]", f"data.synthetic.train_identities={args.train_identities}",
            "data.synthetic.val_identities=1", f"data.synthetic.test_identities={args.test_identities}",
            f"data.synthetic.frames_per_video={args.frames}", f"data.synthetic.image_size={args.size}",
            "data.synthetic.write_videos=false", f"data.image_size={args.size}", "data.batch_size=32"]
    clip_size = args.clip_size
    tower = workdir / f"clip-vit-b-{clip_size}"
    if not tower.is_dir():
        save_random_tower(tower, clip_size)
    # As a real tower: weights read from a local directory, left out of the stage checkpoints
    # (save_tower: false keeps its SHA-256 instead of 86M frozen weights per stage and trial).
    model = {"name": "rine_ssca", "preset": "small", **VIT_B, "clip_image_size": clip_size, "pretrained": True,
             "backbone": str(tower), "save_tower": False}
    space = {"model.use_layers": {"type": "categorical", "choices": LAYER_SUBSETS},
             "strategy.kd_temperature": {"type": "loguniform", "low": 1.0, "high": 8.0}}
    sweep = data + [f"model={json.dumps(model)}",
                    "strategy={name: cffd, replay_size: 32, distill_on: replay, feature_layers: [rine, fused]}",
                    f"train.epochs_per_task={args.epochs}", "train.lr=1e-3",
                    f"sweep.num_samples={args.trials}", f"sweep.max_concurrent_trials={args.concurrency}",
                    # Both sweeps run their trials in the trial processes, so the comparison
                    # isolates the cache (without it, auto would pick a TorchTrainer per trial).
                    "sweep.trial_executor=in_trial",
                    "sweep.scheduler={type: none}", f"sweep.space={json.dumps(space)}",
                    f"features.root={workdir / 'features'}"]
    manifest, tasks = prepare_data(load_config(CONFIGS / "default.yaml", data), echo=print)
    frames = len({r.key for t in tasks for s in (t.train, t.val, t.test) for r in s})
    print(f"[bench] {connect_ray()}", flush=True)
    default = str(CONFIGS / "default.yaml")

    results: dict = {"frames": frames, "tasks": len(tasks), "epochs": args.epochs, "trials": args.trials,
                     "concurrency": args.concurrency, "size": args.size, "clip_size": clip_size,
                     "overhead_scheduler": args.overhead_scheduler}
    stamp = time.strftime("%H%M%S")
    print("[bench] sweep with the feature cache", flush=True)
    results["cached"] = run(sweep + ["features.cache=true"], default, workdir, f"cached-{stamp}")
    if not args.skip_uncached:
        print("[bench] the same sweep without the cache", flush=True)
        n = min(args.uncached_trials or args.trials, args.trials)
        results["uncached"] = run(sweep + ["features.cache=false", f"sweep.num_samples={n}"], default, workdir,
                                  f"uncached-{stamp}")
        u = results["uncached"]
        u["measured_trials"] = n
        u["wall_for_all"] = u["first_trial_at"] + (u["wall"] - u["first_trial_at"]) * args.trials / n
    if not args.skip_overhead:
        results["overhead"] = {}
        for executor in args.overhead_executors.split(","):
            print(f"[bench] Ray overhead at the default config, trial_executor={executor}", flush=True)
            overhead = [f"data.root={workdir / 'default-data'}", f"sweep.num_samples={args.overhead_trials}",
                        f"train.epochs_per_task={args.overhead_epochs}", f"sweep.trial_executor={executor}",
                        f"sweep.scheduler.type={args.overhead_scheduler}"]
            results["overhead"][executor] = run(overhead, default, workdir, f"default-{executor}-{stamp}")
            results["overhead"][executor]["concurrency"] = load_config(default).sweep.max_concurrent_trials

    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


def print_table(r: dict) -> None:
    """The figures as a Markdown table."""
    c = r["cached"]
    rows = [("rine_ssca sweep", f"{r['trials']} trials, {r['concurrency']} concurrent, {r['tasks']} tasks x "
             f"{r['epochs']} epochs, {r['frames']} frames at {r['size']} px, ViT-B/16 tower at "
             f"{r['clip_size']} px")]
    rows.append(("cached sweep wall time", f"{c['wall']:.1f} s"))
    rows.append(("  extraction job (one tower pass, all views)", f"{c['extraction']:.1f} s"))
    rows.append(("  sum of the trials' training time (heads only)", f"{sum(c['trials']):.1f} s"))
    ideal = c["extraction"] + sum(c["trials"])
    rows.append(("cached wall / (extraction + head trainings)  [target <= 1.5]", f"{c['wall'] / ideal:.2f}"))
    rows.append(("  same, head trainings divided by concurrency",
                 f"{c['wall'] / (c['extraction'] + sum(c['trials']) / r['concurrency']):.2f}"))
    if "uncached" in r:
        u = r["uncached"]
        n = u["measured_trials"]
        if n == r["trials"]:
            rows.append(("uncached sweep wall time", f"{u['wall']:.1f} s"))
        else:
            rows.append((f"uncached sweep wall time, first {n} of the {r['trials']} trials (measured)",
                         f"{u['wall']:.1f} s ({u['first_trial_at']:.1f} s before the first trial)"))
            rows.append((f"  extrapolated to {r['trials']} trials", f"{u['wall_for_all']:.1f} s"))
        rows.append((f"  sum of the {n} trials' training time (tower every step)", f"{sum(u['trials']):.1f} s"))
        label = "speed-up with the cache  [target >= 8]" + ("" if n == r["trials"] else " (extrapolated)")
        rows.append((label, f"{u['wall_for_all'] / c['wall']:.2f}x"))
    for executor, o in r.get("overhead", {}).items():
        total = sum(o["trials"])
        rows.append((f"default-config sweep, {executor}, {r['overhead_scheduler']} ({len(o['trials'])} trials, "
                     f"{o['stopped']} stopped early)",
                     f"{o['wall']:.1f} s wall, trials' training {total:.1f} s"))
        rows.append(("  sweep wall / sum of trials' training", f"{o['wall'] / total:.2f}"))
        rows.append((f"  sweep wall / (sum / {o['concurrency']} concurrent)  [target <= 1.3]",
                     f"{o['wall'] / (total / o['concurrency']):.2f}"))
    width = max(len(a) for a, _ in rows)
    print("\n| what | figure |\n|---|---|")
    for a, b in rows:
        print(f"| {a:<{width}} | {b} |")


if __name__ == "__main__":
    main()
