"""Cost of checkpointing each task stage to S3 (a moto server on loopback) vs to local disk.

For each model the project's continual loop runs the default strategy (``cffd``, replay) over
the four tasks of a small synthetic benchmark, one epoch per task, and keeps every stage's real
checkpoint (weights, strategy state, replay ids, accuracy matrices). Each stage checkpoint is
then persisted the way Ray Train persists a reported checkpoint -- ``pyarrow.fs.copy_files``
from the worker's temporary folder to the run's storage path, with the settings Ray uses for S3
(one thread, 64 MiB chunks) -- to:

* local disk (``train.storage_path`` a local folder): a pyarrow copy between local folders;
* S3: pyarrow's S3 filesystem on a moto server, configured from the AWS environment as Ray's is.

Columns: checkpoint MB; ``write s`` = :func:`save_stage_checkpoint` into a temporary folder (paid
either way); ``local s`` / ``S3 s`` = persisting it; ``restore s`` = reading it back from S3
(:func:`download_checkpoint`, what a restarted worker or a user loading the model pays). Each
figure is the median of ``--repeats`` runs. moto keeps objects in memory and runs in Python on
this machine: it measures the client side and the protocol, not a network.

Usage::

    python benchmarks/s3_checkpoint_cost.py
    python benchmarks/s3_checkpoint_cost.py --models rsia_lite:small rsia_net:small --repeats 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "platform"))

BUCKET = "checkpoint-cost"


def train_stage_checkpoints(model: str, preset: str, workdir: Path) -> list[Path]:
    """Run the continual loop (no Ray) and return its four stage checkpoint folders."""
    import torch

    from forgesweep.cli import resolve_config
    from forgesweep.data.prepare import prepare_data
    from forgesweep.train.loop import LocalContext, run_continual

    torch.set_num_threads(1)
    cfg = resolve_config(None, [
        f"data.root={workdir / 'data'}", f"model.name={model}", f"model.preset={preset}",
        "train.epochs_per_task=1", "data.synthetic.train_identities=8", "data.synthetic.val_identities=2",
        "data.synthetic.test_identities=4", "data.synthetic.frames_per_video=2", "data.synthetic.write_videos=false",
    ], smoke=False, configs_dir=REPO / "jobs" / "configs")
    manifest, _ = prepare_data(cfg, echo=lambda _: None)
    out = workdir / f"{model}-{preset}"
    shutil.rmtree(out, ignore_errors=True)  # a kept workdir: train afresh, do not resume
    run_continual(cfg, LocalContext(out), manifest)
    return sorted(out.glob("stage-*"), key=lambda p: int(p.name.split("-")[1]))


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def persist(source: Path, destination: str, filesystem) -> float:
    """Seconds to copy ``source`` to ``destination`` as Ray Train persists a checkpoint."""
    import pyarrow.fs

    s3 = isinstance(filesystem, pyarrow.fs.S3FileSystem)
    began = time.perf_counter()
    filesystem.create_dir(destination)
    pyarrow.fs.copy_files(str(source), destination, destination_filesystem=filesystem,
                          use_threads=not s3, chunk_size=64 * 1024 * 1024)
    return time.perf_counter() - began


def measure_stage(stage_dir: Path, repeats: int, local_root: Path, s3_fs, tag: str) -> dict[str, float]:
    import pyarrow.fs

    from forgesweep.train.checkpoint import download_checkpoint, load_weights, read_state, save_stage_checkpoint
    from forgesweep.models import build_model

    state = read_state(stage_dir)
    model_cfg = dict(state["config"]["model"])
    model = build_model(model_cfg.pop("name"), model_cfg)
    model.load_state_dict(load_weights(stage_dir))
    strategy_file = stage_dir / "strategy.safetensors"
    write, local, remote, restore = [], [], [], []
    local_fs = pyarrow.fs.LocalFileSystem()
    for i in range(repeats):
        with tempfile.TemporaryDirectory(prefix="ckpt-cost-") as tmp:
            fresh = Path(tmp) / "ckpt"
            fresh.mkdir()
            began = time.perf_counter()
            if strategy_file.is_file():
                shutil.copyfile(strategy_file, fresh / strategy_file.name)
            save_stage_checkpoint(fresh, model, state)
            write.append(time.perf_counter() - began)
            local.append(persist(fresh, str(local_root / f"{tag}-{i}"), local_fs))
            remote.append(persist(fresh, f"{BUCKET}/{tag}-{i}", s3_fs))
            began = time.perf_counter()
            download_checkpoint(f"s3://{BUCKET}/{tag}-{i}", Path(tmp) / "restored")
            restore.append(time.perf_counter() - began)
    return {"mb": folder_mb(stage_dir), "write": statistics.median(write), "local": statistics.median(local),
            "s3": statistics.median(remote), "restore": statistics.median(restore)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["rsia_lite:small", "rsia_net:small"],
                        help="name:preset of each model")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", help="keep data and checkpoints here (default: a temporary folder)")
    args = parser.parse_args(argv)

    from forgesweep.tracking.local_servers import PLACEHOLDER_CREDENTIALS, MotoS3Server, ensure_bucket

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="s3-ckpt-cost-"))
    workdir.mkdir(parents=True, exist_ok=True)
    with MotoS3Server(workdir / "moto.log").start() as moto:
        env = {"AWS_ENDPOINT_URL": moto.endpoint, **PLACEHOLDER_CREDENTIALS}
        os.environ.update(env)
        for key in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
            os.environ.pop(key, None)
        ensure_bucket(moto.endpoint, BUCKET, env)
        import pyarrow.fs

        s3_fs, _ = pyarrow.fs.FileSystem.from_uri(f"s3://{BUCKET}")
        rows = []
        for spec in args.models:
            name, _, preset = spec.partition(":")
            print(f"[bench] training {name} ({preset or 'default'}) for 4 stages ...", flush=True)
            stages = train_stage_checkpoints(name, preset or "small", workdir)
            for k, stage_dir in enumerate(stages, start=1):
                row = measure_stage(stage_dir, args.repeats, workdir / "local-storage", s3_fs, f"{name}-{k}")
                rows.append((name, preset, k, row))
                print(f"[bench] {name} stage {k}: {row}", flush=True)

    print()
    print(f"Checkpoint cost per stage (median of {args.repeats}; moto S3 on 127.0.0.1)")
    print()
    print("| model | preset | stage | checkpoint MB | write s | to local disk s | to S3 s | S3 / local | S3 MB/s | restore from S3 s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, preset, k, r in rows:
        ratio = r["s3"] / r["local"] if r["local"] > 0 else float("nan")
        print(f"| {name} | {preset} | {k} | {r['mb']:.2f} | {r['write']:.3f} | {r['local']:.3f} | {r['s3']:.3f} | "
              f"{ratio:.1f} | {r['mb'] / r['s3']:.0f} | {r['restore']:.3f} |")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
