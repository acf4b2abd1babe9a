"""Per-architecture cost: parameters, trainable parameters, forward+backward time, peak memory.

Every registered architecture is measured at each requested preset, each in a fresh
subprocess so that its peak resident memory (``ru_maxrss``) is its own. Time is the median
over ``--iters`` training steps (forward, the model's own loss, backward; no optimiser step)
divided by the batch size. Frozen towers run as the model runs them (under ``no_grad``).

On a CUDA machine (``--device cuda``) the step runs under bf16 autocast and the table adds
images/s (frames/s for clip models) and peak GPU memory.

Usage::

    python benchmarks/models.py                               # every model, tiny and full
    python benchmarks/models.py --models rine_ssca dcr --presets full --size 224
    python benchmarks/models.py --device cuda --batch 32
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "platform"))

# Input side per preset when --size is not given: tiny presets are meant for 32-64 px test
# inputs; full presets for the papers' 224 px.
DEFAULT_SIZE = {"tiny": 64, "small": 64, "full": 224}


def measure(name: str, preset: str, size: int, batch: int, iters: int, device: str, threads: int) -> dict:
    """Build ``name`` at ``preset`` and time training steps (runs in the child process)."""
    import torch

    from forgesweep.models import MODELS, build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(name, {"preset": preset} if preset in MODELS.get(name).PRESETS else {}).to(device)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model.train()
    if model.input_kind == "clip":
        shape = (batch, model.clip_length(), 3, size, size)
    else:
        shape = (batch, 3, size, size)
    inputs = torch.rand(*shape, device=device) * 2 - 1
    labels = torch.arange(batch, device=device) % 2
    batch_dict = {"labels": labels}
    if model.uses_masks:
        batch_dict["masks"] = torch.zeros(batch, 1, size, size, device=device)
        batch_dict["mask_valid"] = torch.ones(batch, dtype=torch.bool, device=device)
    use_amp = device.startswith("cuda")

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            out = model(inputs)
            loss = sum(model.task_loss(out, batch_dict).values())
        loss.backward()
        model.zero_grad(set_to_none=True)
        if use_amp:
            torch.cuda.synchronize()

    if use_amp:
        torch.cuda.reset_peak_memory_stats()
    step()  # warm-up (allocations, cuDNN autotuning)
    times = []
    for _ in range(iters):
        began = time.perf_counter()
        step()
        times.append(time.perf_counter() - began)
    per_sample = statistics.median(times) / batch
    frames = batch * (shape[1] if model.input_kind == "clip" else 1)
    result = {
        "model": name, "preset": preset, "input": "x".join(map(str, shape[1:])), "params": params,
        "trainable": trainable, "ms_per_sample": 1000 * per_sample,
        "frames_per_s": frames / statistics.median(times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if use_amp:
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def _child(args: argparse.Namespace, name: str, preset: str) -> dict:
    size = args.size or DEFAULT_SIZE.get(preset, 64)
    batch = args.batch or (2 if preset == "full" and args.device == "cpu" else 8)
    cmd = [sys.executable, __file__, "--child", name, preset, str(size), str(batch), str(args.iters),
           args.device, str(args.threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"model": name, "preset": preset, "error": f"did not finish within {args.timeout:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"model": name, "preset": preset, "error": tail}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        name, preset, size, batch, iters, device, threads = sys.argv[2:9]
        print(json.dumps(measure(name, preset, int(size), int(batch), int(iters), device, int(threads))))
        return 0
    from forgesweep.models import MODELS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=None, help="default: every registered model")
    parser.add_argument("--presets", nargs="*", default=["tiny", "full"])
    parser.add_argument("--size", type=int, default=None, help="input side in pixels (default per preset)")
    parser.add_argument("--batch", type=int, default=None, help="default 2 for full presets on CPU, else 8")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed per (model, preset)")
    args = parser.parse_args()
    names = args.models or MODELS.names()
    gpu = args.device.startswith("cuda")
    head = ["model", "preset", "input", "params", "trainable", "fwd+bwd ms/sample", "peak RSS MB"]
    if gpu:
        head += ["frames/s (bf16)", "peak GPU MB"]
    print(f"device {args.device}, {args.threads} CPU threads, median of {args.iters} steps")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name in names:
        for preset in args.presets:
            if preset not in MODELS.get(name).PRESETS:
                continue
            r = _child(args, name, preset)
            if "error" in r:
                print(f"| {name} | {preset} | failed: {r['error']} |", flush=True)
                continue
            cells = [name, preset, r["input"], _millions(r["params"]), _millions(r["trainable"]),
                     f"{r['ms_per_sample']:.1f}", f"{r['peak_rss_mb']:.0f}"]
            if gpu:
                cells += [f"{r['frames_per_s']:.0f}", f"{r['peak_gpu_mb']:.0f}"]
            print("| " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
