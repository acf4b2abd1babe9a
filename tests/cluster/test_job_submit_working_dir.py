"""`ray job submit --working-dir .` from a laptop checkout, against the session's local head.

The head runs from the repository (tests/conftest.py); the "laptop" is a copy of the checkout
in a temporary folder with the outputs a user accumulates: datasets in data/, an MLflow store
in mlruns/, Ray checkpoints in forgesweep_runs/, caches. The no-``--working-dir`` form (the
job runs where the head started) is tested by tests/e2e/test_ray_job_submit.py.

* plain ``--working-dir .``: the upload leaves out the outputs and caches (Ray's defaults plus
  the checkout's .gitignore) and the job runs in the uploaded copy;
* with ``--runtime-env cluster/job-runtime-env.yaml``: the same exclusions from the file's own
  ``excludes``, and the checkout's ``forgesweep`` (not the head's installed copy) runs in the
  driver and in Ray workers; the main job, a shortened smoke sweep, succeeds and registers its
  stage models.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.e2e, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNTIME_ENV = "cluster/job-runtime-env.yaml"

# Outputs and caches a checkout accumulates; none may reach the cluster.
DECOYS = [
    "data/synthetic/frames/real/0001.png",
    "data/synthetic/manifest.jsonl",
    "data/ffpp/videos/clip.mp4",
    "mlruns/mlflow.db",
    "mlruns/artifacts/1/model.safetensors",
    "forgesweep_runs/old-sweep/checkpoint_000000/model.safetensors",
    "platform/forgesweep/__pycache__/config.cpython-311.pyc",
    ".pytest_cache/v/cache/lastfailed",
    ".venv/lib/python3.11/site-packages/big.so",
]

PROBE = '''
import json, os
from pathlib import Path
import ray
import forgesweep

ray.init()

@ray.remote(num_cpus=0)
def worker_view():
    import forgesweep
    return forgesweep.__file__

def marker(module_file):
    path = Path(module_file).parent / "_checkout_marker.txt"
    return path.read_text().strip() if path.exists() else None

worker_file = ray.get(worker_view.remote())
files = sorted(str(p.relative_to(".")) for p in Path(".").rglob("*") if p.is_file())
print("PROBE=" + json.dumps({
    "cwd": os.getcwd(), "files": files,
    "driver_forgesweep": forgesweep.__file__, "driver_marker": marker(forgesweep.__file__),
    "worker_forgesweep": worker_file, "worker_marker": marker(worker_file),
}))
'''


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A copy of the repository as a user's laptop has it, outputs included; and its marker."""
    root = tmp_path_factory.mktemp("laptop") / "forgesweep"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for name in ("platform", "jobs", "cluster"):
        shutil.copytree(REPO_ROOT / name, root / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", ".gitignore"):
        shutil.copy2(REPO_ROOT / name, root / name)
    for rel in DECOYS:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(64 * 1024))
    marker = uuid.uuid4().hex  # tells the checkout's forgesweep from the head's installed one
    (root / "platform" / "forgesweep" / "_checkout_marker.txt").write_text(marker)
    (root / "probe_upload.py").write_text(PROBE)
    return root, marker


def _submit(ray_head, cwd: Path, extra: list, entrypoint: list, timeout: float):
    cmd = [ray_head.ray_bin, "job", "submit", "--address", ray_head.dashboard_url, *extra, "--", *entrypoint]
    return subprocess.run(cmd, env=ray_head.env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _probe(result: subprocess.CompletedProcess) -> dict:
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    assert re.search(r"Job '[^']+' succeeded", out), out[-6000:]
    found = re.findall(r"^PROBE=(.*)$", result.stdout, flags=re.MULTILINE)
    assert found, f"the probe printed nothing:\n{out[-6000:]}"
    return json.loads(found[-1])


def _assert_uploaded_without_outputs(probe: dict, checkout_root: Path) -> None:
    cwd = Path(probe["cwd"]).resolve()
    assert cwd not in (REPO_ROOT, checkout_root.resolve()), "the job did not run in the uploaded copy"
    files = set(probe["files"])
    for needed in ("jobs/sweep_cffd.py", "jobs/configs/default.yaml", "platform/forgesweep/__init__.py",
                   "platform/forgesweep/data/synthetic/generate.py", RUNTIME_ENV):
        assert needed in files, f"{needed} was not uploaded"
    leaked = sorted(f for f in files if f in DECOYS or f.startswith(("data/", "mlruns/", "forgesweep_runs/",
                                                                      ".venv/", ".pytest_cache/"))
                    or "__pycache__" in f)
    assert not leaked, f"outputs or caches were uploaded: {leaked}"


def test_plain_working_dir_leaves_outputs_behind(ray_head, checkout):
    root, _ = checkout
    probe = _probe(_submit(ray_head, root, ["--working-dir", "."], ["python", "probe_upload.py"], timeout=180))
    _assert_uploaded_without_outputs(probe, root)


def test_runtime_env_file_runs_the_checkouts_code_and_the_sweep(ray_head, checkout, tmp_path):
    root, marker = checkout
    probe = _probe(_submit(ray_head, root, ["--working-dir", ".", "--runtime-env", RUNTIME_ENV],
                           ["python", "probe_upload.py"], timeout=180))
    _assert_uploaded_without_outputs(probe, root)
    # py_modules: the driver and a Ray worker import the checkout's forgesweep, not the head's.
    assert probe["driver_marker"] == marker, probe["driver_forgesweep"]
    assert probe["worker_marker"] == marker, probe["worker_forgesweep"]
    assert not Path(probe["worker_forgesweep"]).resolve().is_relative_to(REPO_ROOT)

    # The main job itself, shortened: one trial over two tasks.
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    model_name = "cffd-working-dir-test"
    sweep = ["python", "jobs/sweep_cffd.py", "--smoke",
             "--set", "sweep.num_samples=1",
             "--set", "data.synthetic.methods=[Deepfakes,Face2Face]",
             "--set", "data.sequence=[Deepfakes,Face2Face]",
             "--set", f"data.root={tmp_path}/data",
             "--set", f"train.storage_path={tmp_path}/runs",
             "--set", f"tracking.tracking_uri={tracking_uri}",
             "--set", f"tracking.artifact_location={tmp_path}/artifacts",
             "--set", f"tracking.registered_model={model_name}"]
    result = _submit(ray_head, root, ["--working-dir", ".", "--runtime-env", RUNTIME_ENV], sweep, timeout=420)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    assert re.search(r"Job '[^']+' succeeded", out), out[-6000:]

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    versions = [client.get_model_version_by_alias(model_name, f"stage-{k}").version for k in (1, 2)]
    assert len(set(versions)) == 2, versions
