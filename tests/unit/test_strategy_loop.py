"""Every strategy through the real (Ray-free) continual loop on a tiny two-task benchmark: the
loop's sample access, tensor state in checkpoints, resume, and the evaluation hook."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

from forgesweep.config import validate_config
from forgesweep.continual import STRATEGIES
from forgesweep.continual.icarl import ICaRL
from forgesweep.data.synthetic.generate import SyntheticSpec, generate_synthetic
from forgesweep.errors import DataError
from forgesweep.train.checkpoint import read_state
from forgesweep.train.loop import STRATEGY_TENSORS_FILE, LocalContext, run_continual

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Per strategy: parameters, and the loss terms the second task must report.
CASES = {
    "finetune": ({}, set()),
    "joint": ({}, set()),
    "lwf": ({}, {"lwf"}),
    "ewc": ({"fisher_samples": 6}, {"ewc"}),
    "er": ({"replay_size": 4, "selection": "reservoir"}, set()),
    "icarl": ({"replay_size": 4}, {"icarl_kd"}),
    "der": ({"replay_size": 4}, {"der"}),
    "derpp": ({"replay_size": 4}, {"der"}),
    "cored": ({"num_bands": 2, "replay_size": 4}, {"cored_kd", "cored_rep"}),
    "cffd": ({"replay_size": 4, "replay_policy": "hybrid", "distill_on": "replay", "w_hscl": 0.1,
              "w_relational": 1.0, "w_domain": 1.0,
              "domain_pairs": "spatial3:frequency3+spatial4:frequency4"},
             {"slkd", "mfkd", "hscl", "relational", "domain"}),
}


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench") / "synthetic"
    spec = SyntheticSpec(image_size=32, train_identities=4, val_identities=1, test_identities=3,
                         frames_per_video=1, write_videos=False, methods=["Deepfakes", "FaceSwap"])
    generate_synthetic(root, spec, workers=1)
    return root


def _config(root: Path, name: str, params: dict):
    return validate_config({
        "seed": 0,
        "data": {"root": str(root), "image_size": 32, "batch_size": 8, "eval_batch_size": 16,
                 "sequence": ["Deepfakes", "FaceSwap"]},
        "model": {"name": "rsia_lite", "preset": "tiny"},
        "strategy": {"name": name, **params},
        "train": {"epochs_per_task": 1},
    })


def test_every_registered_strategy_has_a_loop_case():
    assert set(CASES) == set(STRATEGIES.names())


@pytest.mark.parametrize("name", sorted(CASES))
def test_strategy_runs_two_tasks_through_the_loop(name, benchmark, tmp_path):
    params, terms = CASES[name]
    ctx = LocalContext(tmp_path / "run")
    run_continual(_config(benchmark, name, params), ctx)
    first, second = ctx.reports
    assert [first["stage"], second["stage"]] == [1, 2]
    for report in ctx.reports:
        assert all(math.isfinite(v) for k, v in report.items() if k.startswith("train/"))
        assert 0.0 <= report["avg_acc"] <= 1.0
    assert not {f"train/{t}" for t in terms} & (set(first) - {"train/hscl"})  # teachers start at task 2
    assert {f"train/{t}" for t in terms} <= set(second)
    if name == "joint":
        assert second["replay_size"] == 4  # task 1's fakes; the shared reals are not repeated
    if "replay_size" in params:
        assert second["replay_size"] == params["replay_size"]


def test_ewc_saves_its_fisher_with_the_checkpoint_and_resumes_exactly(benchmark, tmp_path):
    cfg = _config(benchmark, "ewc", {"fisher_samples": 6})
    full = LocalContext(tmp_path / "full")
    run_continual(cfg, full)
    stage1 = Path(full.reports[0]["checkpoint_path"])
    assert (stage1 / STRATEGY_TENSORS_FILE).is_file()
    assert read_state(stage1)["strategy"] == {"tasks": 1, "online": False}
    resumed = LocalContext(tmp_path / "resumed")
    shutil.copytree(stage1, tmp_path / "resumed" / "stage-1")
    run_continual(cfg, resumed)
    assert [r["stage"] for r in resumed.reports] == [2]
    a, b = full.reports[1], resumed.reports[0]
    assert b["train/ewc"] == pytest.approx(a["train/ewc"], rel=1e-5)
    assert b["avg_acc"] == a["avg_acc"] and b["avg_auc"] == pytest.approx(a["avg_auc"])
    # A checkpoint whose tensor file went missing is refused (its state.json lists the file), not
    # silently run without the penalty.
    (tmp_path / "resumed" / "stage-2" / STRATEGY_TENSORS_FILE).unlink()
    shutil.rmtree(tmp_path / "resumed" / "stage-1")
    with pytest.raises(DataError, match=f"incomplete checkpoint .*stage-2: {STRATEGY_TENSORS_FILE} is missing"):
        run_continual(cfg, LocalContext(tmp_path / "resumed"))


def test_evaluation_asks_the_strategy_for_its_logits(benchmark, tmp_path, monkeypatch):
    calls = []
    original = ICaRL.predict_logits

    def spy(self, out):
        logits = original(self, out)
        calls.append((self.class_means is not None, logits.shape == out.logits.shape))
        return logits

    monkeypatch.setattr(ICaRL, "predict_logits", spy)
    ctx = LocalContext(tmp_path / "run")
    run_continual(_config(benchmark, "icarl", {"replay_size": 4}), ctx)
    assert calls and all(shape_ok for _, shape_ok in calls)
    assert all(has_means for has_means, _ in calls)  # NME: means exist at every evaluation
    means = torch.tensor(read_state(ctx.reports[-1]["checkpoint_path"])["strategy"]["class_means"])
    assert means.shape == (2, 16) and torch.allclose(means.norm(dim=1), torch.ones(2))  # tiny: embed_dim 16
