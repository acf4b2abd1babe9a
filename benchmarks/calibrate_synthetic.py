"""Calibrate the synthetic benchmark: is each forgery learnable, and does fine-tuning forget?

Generates the benchmark (one per seed, spec seed = --seed + i) and, with a small stand-in CNN,
measures averaged over the seeds:

  (a) each method trained alone (reals + that method's fakes) -> test accuracy      target >= 0.90
  (b) plain fine-tuning over the task sequence (task k = reals + method k fakes, trained on task k
      only) -> task-1 test accuracy right after stage 1 and after the last stage    target drop >= 10 pts
  (c) the same with random replay of --replay stored samples -> task-1 after the last stage
                                                                                    target > (b), part of the gap back

Usage:
    python benchmarks/calibrate_synthetic.py                 # default spec, 3 seeds
    python benchmarks/calibrate_synthetic.py --seeds 1 --epochs 4 --out /tmp/synth

``train_sequence(model_factory, tasks, epochs, replay_size, seed)`` does not depend on the stand-in
model: pass any factory returning a module that maps ``[B, 3, H, W]`` in [-1, 1] to ``[B]`` logits.
Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

from forgesweep.data.manifest import read_manifest
from forgesweep.data.synthetic import KNOWN_METHODS, SyntheticSpec, generate_synthetic


@dataclass
class Task:
    """One stage of the sequence: reals + one method's fakes, as in-memory tensors."""

    name: str
    train_x: torch.Tensor  # uint8 [N, 3, H, W]
    train_y: torch.Tensor  # float [N], 1 = fake
    test_x: torch.Tensor
    test_y: torch.Tensor


def load_tasks(manifest_path: Path, methods: list[str]) -> list[Task]:
    """Read every frame of the benchmark once and build one task per method."""
    manifest = read_manifest(manifest_path)

    def tensors(split: str, method: str) -> tuple[torch.Tensor, torch.Tensor]:
        rows = manifest.select(split, [method, "real"])
        images = np.stack([np.asarray(Image.open(manifest.resolve(r)).convert("RGB")) for r in rows])
        x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        return x, torch.tensor([float(r.label) for r in rows])

    return [Task(m, *tensors("train", m), *tensors("test", m)) for m in methods]


class StandInCNN(nn.Module):
    """Four conv-BN-ReLU blocks, global average pooling, one logit: a cheap detector to calibrate with."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        layers, c_in = [], 3
        for i, c_out in enumerate((width, width * 2, width * 4, width * 4)):
            # momentum 0.3, not PyTorch's 0.1: a stage is only ~100 steps, and with 0.1 the running
            # statistics lag the fast-moving weights so far that eval-mode accuracy sits at 0.5 for
            # the first ~50 steps while train-mode accuracy is already above 0.9.
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out, momentum=0.3),
                       nn.ReLU()]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3))).squeeze(1)


def _prep(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 127.5 - 1.0


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    """Fraction of frames whose logit sign matches the label."""
    model.eval()
    hits = sum(((model(_prep(x[i:i + batch])) > 0).float() == y[i:i + batch]).sum().item()
               for i in range(0, len(x), batch))
    return hits / len(x)


def train_sequence(model_factory: Callable[[], nn.Module], tasks: list[Task], epochs: int,
                   replay_size: int, seed: int, batch_size: int = 32, lr: float = 1e-3) -> np.ndarray:
    """Train one model on ``tasks`` in order, optionally with random replay.

    Args:
        model_factory: builds a fresh model (called once, after seeding).
        tasks: the sequence; stage k trains on ``tasks[k]`` only (plus replay).
        epochs: passes over the current task's train set per stage.
        replay_size: samples kept from earlier tasks (0 = plain fine-tuning); after each stage the
            buffer is refilled with an equal random share of every task seen so far, and each batch of
            the current task is joined by an equally sized random batch from the buffer.
        seed: seeds the model's initialisation, batch order and replay choices.

    Returns:
        ``acc[stage, task]``: test accuracy of task ``task`` after stage ``stage`` (NaN if not yet seen).
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = model_factory()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    acc = np.full((len(tasks), len(tasks)), np.nan)
    buf_x = buf_y = None
    for stage, task in enumerate(tasks):
        n = len(task.train_x)
        for _ in range(epochs):
            model.train()
            order = torch.randperm(n, generator=gen)
            for i in range(0, n, batch_size):
                idx = order[i:i + batch_size]
                x, y = task.train_x[idx], task.train_y[idx]
                if buf_x is not None:
                    r = torch.randint(len(buf_x), (len(idx),), generator=gen)
                    x, y = torch.cat([x, buf_x[r]]), torch.cat([y, buf_y[r]])
                flip = torch.rand(len(x), generator=gen) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(3), x)
                opt.zero_grad()
                loss_fn(model(_prep(x)), y).backward()
                opt.step()
        for seen in range(stage + 1):
            acc[stage, seen] = accuracy(model, tasks[seen].test_x, tasks[seen].test_y)
        if replay_size > 0:
            share = replay_size // (stage + 1)
            picks = [(t, torch.randperm(len(t.train_x), generator=gen)[:share]) for t in tasks[:stage + 1]]
            buf_x = torch.cat([t.train_x[p] for t, p in picks])
            buf_y = torch.cat([t.train_y[p] for t, p in picks])
    return acc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="benchmarks/initialisations averaged over")
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per stage")
    parser.add_argument("--replay", type=int, default=200, help="replay buffer size for (c)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=list(KNOWN_METHODS), help="the task order")
    parser.add_argument("--out", type=Path, default=None, help="keep the benchmarks here (default: temp)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    alone, ft, er, gen_s, train_s = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        for i in range(args.seeds):
            spec = SyntheticSpec(seed=args.seed + i)
            t0 = time.perf_counter()
            manifest = generate_synthetic(root / f"seed{spec.seed}", spec, overwrite=True)
            gen_s.append(time.perf_counter() - t0)
            tasks = load_tasks(manifest, args.methods)
            t0 = time.perf_counter()
            alone.append([train_sequence(StandInCNN, [t], args.epochs, 0, i)[0, 0] for t in tasks])
            ft.append(train_sequence(StandInCNN, tasks, args.epochs, 0, i))
            er.append(train_sequence(StandInCNN, tasks, args.epochs, args.replay, i))
            train_s.append(time.perf_counter() - t0)
            print(f"seed {spec.seed}: generated in {gen_s[-1]:.1f}s, trained in {train_s[-1]:.1f}s; "
                  f"task-1 FT {ft[-1][0, 0]:.3f} -> {ft[-1][-1, 0]:.3f}, replay -> {er[-1][-1, 0]:.3f}",
                  flush=True)
    alone_m, ft_m, er_m = np.mean(alone, 0), np.mean(ft, 0), np.mean(er, 0)
    n_train = len(tasks[0].train_x)
    print(f"\nspec: {SyntheticSpec().model_dump()}\ntrain images per task: {n_train}, "
          f"test images per task: {len(tasks[0].test_x)}; mean generation {np.mean(gen_s):.1f}s, "
          f"mean training (a+b+c) {np.mean(train_s):.1f}s; {args.seeds} seeds, {args.epochs} epochs/stage\n")
    print("(a) trained alone      " + "".join(f"{m:>16}" for m in args.methods))
    print("    test accuracy      " + "".join(f"{a:>16.3f}" for a in alone_m))
    print("    min over seeds     " + "".join(f"{a:>16.3f}" for a in np.min(alone, 0)))
    for name, mat in (("(b) fine-tuning", ft_m), (f"(c) replay {args.replay}", er_m)):
        print(f"\n{name}: test accuracy after each stage (rows) on each task (columns)")
        print("    after stage        " + "".join(f"{m:>16}" for m in args.methods))
        for s, row in enumerate(mat):
            print(f"    {s + 1}: {args.methods[s]:<15}" + "".join(
                f"{'':>16}" if np.isnan(v) else f"{v:>16.3f}" for v in row))
    drop = ft_m[0, 0] - ft_m[-1, 0]
    checks = [
        ("(a) every method alone >= 0.90", bool(np.all(alone_m >= 0.9)), f"min {alone_m.min():.3f}"),
        ("(b) FT task-1 drop >= 10 points", drop >= 0.10,
         f"{ft_m[0, 0]:.3f} -> {ft_m[-1, 0]:.3f} (drop {100 * drop:.1f} pts)"),
        ("(c) replay recovers part of the gap", er_m[-1, 0] > ft_m[-1, 0],
         f"{er_m[-1, 0]:.3f} vs FT {ft_m[-1, 0]:.3f} "
         f"({100 * (er_m[-1, 0] - ft_m[-1, 0]) / max(drop, 1e-9):.0f}% of the drop back)"),
    ]
    print()
    for label, ok, detail in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {label:<38} {detail}")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
