"""Data-parallel training: the project's trainer with ``num_workers=2`` on CPU (DDP over gloo).

Runs the real Ray Train path (``build_trainer`` -> ``TorchTrainer`` -> ``train_loop_per_worker``
-> the continual loop) on the session's Ray head, with the trainer's worker trace on, and checks
what data parallelism promises:

* ``prepare_data_loader`` gave each worker a ``DistributedSampler`` shard: within every epoch the
  two workers drew disjoint sample sets of equal size whose union is the whole training split,
  and the shards are reshuffled between epochs;
* DDP averaged the gradients: after each stage both workers hold bit-identical parameters, which
  moved away from their common initialisation, and rank 0's checkpoint holds those weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from forgesweep.config import load_config
from forgesweep.data.prepare import prepare_data
from forgesweep.models import build_model
from forgesweep.train.checkpoint import load_weights
from forgesweep.train.loop import seed_everything
from forgesweep.train.trainer import build_trainer

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SMOKE_CONFIG = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "smoke.yaml"
EPOCHS = 2
TASKS = ["Deepfakes", "Face2Face"]


def _read_trace(trace_dir: Path, rank: int) -> list[dict]:
    path = trace_dir / f"rank-{rank}" / "samples.jsonl"
    assert path.is_file(), f"worker {rank} wrote no sample trace at {path}"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def ddp_run(ray_session, tmp_path_factory, one_torch_thread):
    """Train two tasks x two epochs with two DDP workers; return (cfg, tasks, trace dir, result)."""
    root = tmp_path_factory.mktemp("ddp")
    cfg = load_config(SMOKE_CONFIG, [
        f"data.root={root}/data", "data.synthetic.train_identities=6", "data.synthetic.test_identities=2",
        "data.synthetic.val_identities=1", "data.synthetic.write_videos=false",
        f"data.synthetic.methods=[{','.join(TASKS)}]", f"data.sequence=[{','.join(TASKS)}]",
        "data.batch_size=4", "strategy.name=finetune", f"train.epochs_per_task={EPOCHS}",
        "train.num_workers=2", "train.cpus_per_worker=1", "train.use_gpu=false",
        f"train.storage_path={root}/runs",
    ]).with_absolute_paths()
    _, tasks = prepare_data(cfg, echo=lambda _: None)
    trace_dir = root / "trace"
    result = build_trainer(cfg, name="ddp-two-workers", trace_dir=str(trace_dir)).fit()
    assert result.error is None, result.error
    return cfg, tasks, trace_dir, result


def test_two_cpu_workers_train_under_ddp_over_gloo(ddp_run):
    _, _, trace_dir, _ = ddp_run
    for rank in (0, 1):
        info = json.loads((trace_dir / f"rank-{rank}" / "worker.json").read_text())
        assert info == {"rank": rank, "world_size": 2, "device": "cpu", "backend": "gloo",
                        "model_type": "DistributedDataParallel"}, info


def test_each_worker_draws_a_disjoint_shard_of_every_epoch(ddp_run):
    _, tasks, trace_dir, _ = ddp_run
    traces = {rank: _read_trace(trace_dir, rank) for rank in (0, 1)}
    for rank, lines in traces.items():
        assert [(line["loader"], line["epoch"]) for line in lines] == [
            (t, e) for t in range(len(TASKS)) for e in range(EPOCHS)], (rank, lines)

    for t, task in enumerate(tasks):
        everything = {row.key for row in task.train}  # finetune: no replay samples
        assert len(everything) == len(task.train) and len(everything) % 2 == 0, len(task.train)
        orders = []
        for epoch in range(EPOCHS):
            shard0, shard1 = (next(line["keys"] for line in traces[rank]
                                   if (line["loader"], line["epoch"]) == (t, epoch)) for rank in (0, 1))
            # Each shard: half of the split, no sample twice; together: all of it, no overlap.
            assert len(shard0) == len(shard1) == len(everything) // 2
            assert len(set(shard0)) == len(shard0) and len(set(shard1)) == len(shard1)
            assert not set(shard0) & set(shard1), f"task {t} epoch {epoch}: shards overlap"
            assert set(shard0) | set(shard1) == everything
            orders.append(shard0)
        # set_epoch reshuffles: rank 0 does not draw the same sequence every epoch.
        assert orders[0] != orders[1], f"task {t}: the same shard order in both epochs"


def test_ddp_keeps_both_workers_weights_identical(ddp_run):
    cfg, _, trace_dir, result = ddp_run
    seed_everything(cfg.seed)  # the loop seeds the same way before it builds the model
    initial = build_model(cfg.model.name, cfg.model.params).state_dict()
    parameter_names = {name for name, _ in build_model(cfg.model.name, cfg.model.params).named_parameters()}
    for stage in range(1, len(TASKS) + 1):
        w0, w1 = (load_file(str(trace_dir / f"rank-{rank}" / f"stage-{stage}.safetensors")) for rank in (0, 1))
        assert w0.keys() == w1.keys() == initial.keys()
        for name in parameter_names:
            assert torch.equal(w0[name], w1[name]), f"stage {stage}: parameter {name} differs between ranks"
        moved = [name for name in parameter_names if not torch.equal(w0[name], initial[name])]
        assert len(moved) > len(parameter_names) // 2, f"stage {stage}: training barely changed the weights"

    # The checkpoint rank 0 reported holds the same (synchronised) parameters.
    with result.checkpoint.as_directory() as checkpoint:
        reported = load_weights(checkpoint)
    final = load_file(str(trace_dir / "rank-1" / f"stage-{len(TASKS)}.safetensors"))
    for name in parameter_names:
        assert torch.equal(reported[name], final[name]), name
    assert result.metrics["stage"] == len(TASKS)
