"""Data pipeline throughput: preprocessing on Ray, decord seeking, and the training input pipeline.

Three measurements, each a ratio (this machine is shared, so absolute numbers move):

1. **Preprocessing frames/s with 1 and 2 parallel Ray workers** -- a synthetic FF++-shaped tree
   of ``--videos`` videos (``--frame-size`` px frames, the face a quarter of the area), sampled
   ``--num-frames`` frames a video, Haar face detection, 256 px PNG crops; the same videos with
   ``max_in_flight`` 1 then 2 (fresh output folders; workers warmed up first).
2. **decord seek-sampling vs decoding every frame** -- one ``--long-frames`` video, 32 evenly
   spaced frames read by index (:func:`forgesweep.data.video.read_sampled_frames`) vs the whole
   video decoded and 32 frames picked, for key frames every 250 frames (x264's default) and 30.
3. **Training input pipeline vs the default model's train step** -- the preprocessed frames read
   the way a training worker reads them (:class:`FrameCache` decoding at ``data.image_size`` 64,
   :class:`FrameDataset`, a shuffled ``DataLoader`` of 32 with flips) vs ``rsia_lite`` preset
   ``small`` forward + loss + backward + Adam step on batches of 32, both on one thread (a Ray
   Train worker with one CPU). The pipeline decodes once per task and then iterates
   ``epochs_per_task`` (4) epochs, so its rate per task is 4 N / (decode + 4 epochs).

Usage::

    python benchmarks/data_pipeline.py                    # about two minutes on 2 cores
    python benchmarks/data_pipeline.py --videos 8 --num-frames 8 --long-frames 150   # quicker
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "platform"))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep the local Ray on 127.0.0.1


def _encode(frames, path: Path, gop: int) -> Path:
    """H.264 with a key frame every ``gop`` frames (write_video keeps x264's default of 250)."""
    import av

    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=25)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": str(gop), "keyint_min": str(gop), "threads": "1", "preset": "veryfast", "crf": "20"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def bench_preprocess(work: Path, args) -> dict:
    import ray

    from forgesweep.data.importers import run_import
    from forgesweep.data.synthetic.dataset_trees import TreeSpec, write_dataset_tree
    from forgesweep.preprocessing import PreprocessSpec, run_preprocess

    pairs = max(3, args.videos // 4)
    spec = TreeSpec(seed=0, frame_size=args.frame_size, face_size=args.frame_size // 2,
                    frames_per_video=args.video_frames, ffpp_pairs=pairs, ffpp_methods=["Deepfakes"], masks=False)
    began = time.perf_counter()
    tree = write_dataset_tree("ffpp", work / "tree", spec)
    manifest = run_import("ffpp", tree, work / "videos.jsonl").manifest
    print(f"[bench] tree of {4 * pairs} videos x {args.video_frames} frames at {args.frame_size} px written "
          f"in {time.perf_counter() - began:.1f} s", flush=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    quiet = lambda _: None  # noqa: E731
    pre = PreprocessSpec(num_frames=args.num_frames, image_size=256, detector="haar", progress_every_s=1e9)
    # Warm-up: start both workers and import OpenCV/decord there, outside the timings.
    run_preprocess([manifest], str(work / "warm"), pre.model_copy(update={"max_in_flight": 2}), echo=quiet)
    rates: dict[int, list[float]] = {1: [], 2: []}
    crops = None
    for r in range(args.rounds):
        for workers in (1, 2) if r % 2 == 0 else (2, 1):
            out = work / f"out-{workers}-{r}"
            s = run_preprocess([manifest], str(out), pre.model_copy(update={"max_in_flight": workers}), echo=quiet)
            rates[workers].append(s.frames / s.seconds)
            crops = s.crops
    ray.shutdown()
    one, two = max(rates[1]), max(rates[2])
    return {"frames": 4 * pairs * min(args.num_frames, args.video_frames), "one": one, "two": two,
            "ratio": two / one, "crops": dict(crops or {})}


def bench_seek(work: Path, args) -> list[dict]:
    import numpy as np

    from forgesweep.data.video import read_sampled_frames, read_video_frames

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (args.frame_size, args.frame_size, 3), dtype=np.uint8)
    # Moving content (a rolled texture), so P-frames carry real work as in a talking-head video.
    frames = [np.roll(base, (t, 2 * t), axis=(0, 1)) for t in range(args.long_frames)]
    rows = []
    for gop in (250, 30):
        path = _encode(frames, work / f"long-g{gop}.mp4", gop)
        seek, full = [], []
        for _ in range(3):
            t = time.perf_counter()
            idx, got = read_sampled_frames(path, 32)
            seek.append(time.perf_counter() - t)
            t = time.perf_counter()
            every = read_video_frames(path)
            picked = every[idx]
            full.append(time.perf_counter() - t)
            assert picked.shape == got.shape
        rows.append({"gop": gop, "seek": statistics.median(seek), "full": statistics.median(full)})
    return rows


def bench_training_input(frames_manifest: str, args) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from forgesweep.continual import build_strategy
    from forgesweep.data.datasets import FrameCache, FrameDataset
    from forgesweep.data.manifest import read_manifest
    from forgesweep.models import build_model

    torch.set_num_threads(1)
    manifest = read_manifest(frames_manifest)
    rows = [r for _ in range(max(1, args.samples // len(manifest) + 1)) for r in manifest.rows][: args.samples]
    # Distinct sample keys are what the loop decodes once; repeat the files under fresh caches.
    epochs = 4
    t = time.perf_counter()
    cache = FrameCache(manifest, 64)
    dataset = FrameDataset(manifest.rows, cache, horizontal_flip=True)
    decode_s = (time.perf_counter() - t) * len(rows) / len(manifest.rows)
    dataset = FrameDataset(rows, cache, horizontal_flip=True)
    loader = DataLoader(dataset, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    t = time.perf_counter()
    n = 0
    for _ in range(epochs):
        for batch in loader:
            n += batch["images"].shape[0]
    iterate_s = time.perf_counter() - t
    warm = n / iterate_s
    per_task = n / (decode_s + iterate_s)

    model = build_model("rsia_lite", {"preset": "small"})
    strategy = build_strategy("finetune")
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    batch = next(iter(DataLoader(dataset, batch_size=32, shuffle=True)))
    times = []
    for step in range(args.steps + 2):
        t = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        _, terms = strategy.compute_loss(model, batch)
        terms["loss"].backward()
        optimizer.step()
        if step >= 2:  # the first steps allocate
            times.append(time.perf_counter() - t)
    model_rate = 32 / statistics.median(times)
    return {"samples": n, "decode_s": decode_s, "warm": warm, "per_task": per_task, "model": model_rate}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=12, help="videos preprocessed (a multiple of 4)")
    parser.add_argument("--video-frames", type=int, default=32, help="frames of each synthetic video")
    parser.add_argument("--num-frames", type=int, default=16, help="frames sampled per video")
    parser.add_argument("--frame-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2, help="preprocessing rounds (best kept)")
    parser.add_argument("--long-frames", type=int, default=300, help="frames of the seek-test video")
    parser.add_argument("--samples", type=int, default=2048, help="training samples per epoch")
    parser.add_argument("--steps", type=int, default=10, help="timed model steps")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="fs-bench-data-") as tmp:
        work = Path(tmp)
        pre = bench_preprocess(work, args)
        seek = bench_seek(work, args)
        train = bench_training_input(str(work / "out-2-0" / "manifest.jsonl"), args)
    print()
    print("| measurement | value | ratio |")
    print("|---|---|---|")
    print(f"| preprocessing, 1 Ray worker ({pre['frames']} frames, Haar, 256 px PNG) | {pre['one']:.1f} frames/s | |")
    print(f"| preprocessing, 2 Ray workers | {pre['two']:.1f} frames/s | {pre['ratio']:.2f}x (2 vs 1) |")
    for row in seek:
        print(f"| 32 of {args.long_frames} frames, key frame every {row['gop']}: seek by index / decode all "
              f"| {1000 * row['seek']:.0f} ms / {1000 * row['full']:.0f} ms | {row['full'] / row['seek']:.1f}x faster |")
    print(f"| training input pipeline, warm epochs (64 px, batch 32, 1 thread) | {train['warm']:.0f} samples/s | |")
    print(f"| training input pipeline per task (decode once + 4 epochs) | {train['per_task']:.0f} samples/s | |")
    print(f"| rsia_lite small train step (batch 32, 64 px, 1 thread) | {train['model']:.0f} samples/s | |")
    print(f"| pipeline / model step rate | | {train['warm'] / train['model']:.1f}x warm, "
          f"{train['per_task'] / train['model']:.1f}x per task (>= 1: not the bottleneck) |")
    print(f"\nface boxes in the timed runs: {pre['crops']}")
    print(f"{os.cpu_count()} CPUs; 1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
          f"(a load above the CPU count means other work shared the cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
