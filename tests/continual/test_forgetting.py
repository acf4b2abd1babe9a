"""Catastrophic forgetting on the synthetic benchmark, through the real continual loop (no Ray).

The benchmark's purpose is to make forgetting measurable: plain fine-tuning over the four tasks
must lose at least 10 points of task-1 accuracy between stage 1 and stage 4, and CFFD
(distillation + replay) must forget less. Seed 0 of the default benchmark and training settings,
on the compact ``rsia_lite`` model: the default model, ``rsia_net``, takes about twice as long per
step and would add minutes to the suite (it passes too: ``benchmarks/forgetting.py`` runs it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from forgesweep.config import load_config, validate_config
from forgesweep.data.prepare import prepare_data
from forgesweep.train.loop import LocalContext, run_continual

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "default.yaml"


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory):
    root = tmp_path_factory.mktemp("forgetting")
    # The embedded default: benchmark (without videos, not needed here), model, training settings.
    cfg = load_config(DEFAULT_CONFIG, [f"data.root={root / 'data'}", "data.synthetic.write_videos=false",
                                       "model.name=rsia_lite"])
    manifest, _ = prepare_data(cfg, echo=lambda _: None)
    return cfg, manifest, root


def _run(benchmark, strategy: dict):
    cfg, manifest, root = benchmark
    data = cfg.to_dict()
    data["strategy"] = strategy
    out = root / strategy["name"]
    return run_continual(validate_config(data), LocalContext(Path(out)), manifest)


@pytest.fixture(scope="module")
def finetune(benchmark):
    return _run(benchmark, {"name": "finetune"})


@pytest.fixture(scope="module")
def cffd(benchmark):
    return _run(benchmark, {"name": "cffd"})


def test_task1_is_learned_first(finetune):
    assert finetune.get(0, 0) >= 0.8


def test_finetuning_forgets_task1_by_at_least_10_points(finetune):
    drop = finetune.get(0, 0) - finetune.get(3, 0)
    assert drop >= 0.10, f"task-1 accuracy {finetune.get(0, 0):.3f} -> {finetune.get(3, 0):.3f}"


def test_cffd_forgets_less_than_finetuning(finetune, cffd):
    assert cffd.get(3, 0) > finetune.get(3, 0) + 0.05
    assert cffd.forgetting(3) < finetune.forgetting(3)
    assert cffd.average(3) > finetune.average(3)
