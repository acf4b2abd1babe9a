"""Every cluster file validates with Ray's own checks; the configs have what the issue asks for;
a file with a missing or misspelled field fails with a message naming it."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER = REPO_ROOT / "cluster"
AWS = CLUSTER / "aws-gpu.yaml"
RAYCLUSTER = CLUSTER / "kuberay" / "raycluster.yaml"
RAYJOB = CLUSTER / "kuberay" / "rayjob.yaml"
PINNED_IMAGE = f"rayproject/ray:{ray.__version__}-py311-gpu"  # the Ray this project runs


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _write(tmp_path: Path, name: str, doc: dict) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# --------------------------------------------------------------------------- every file is valid


def test_every_yaml_under_cluster_is_checked(validate_tool):
    names = {p.relative_to(CLUSTER).as_posix() for p in validate_tool.cluster_files()}
    assert {"aws-gpu.yaml", "local-fake-cluster.yaml", "job-runtime-env.yaml", "kuberay/raycluster.yaml",
            "kuberay/rayjob.yaml", "kuberay/shared-storage.yaml"} <= names, names


@pytest.mark.parametrize("path", sorted(p.relative_to(CLUSTER).as_posix() for p in CLUSTER.rglob("*.yaml")))
def test_cluster_file_passes_rays_validation(validate_tool, path):
    lines = validate_tool.validate_file(CLUSTER / path)
    assert lines and all(str(CLUSTER / path) in line for line in lines)


# --------------------------------------------------------------------------- AWS launcher config


def test_aws_config_has_a_cpu_head_and_two_autoscaled_gpu_worker_types(validate_tool):
    prepared = validate_tool.validate_launcher_config(_load(AWS), str(AWS))
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU") == 0
    assert not head["node_config"]["InstanceType"].startswith(("g", "p"))
    workers = {name: t for name, t in types.items() if name != prepared["head_node_type"]}
    gpus = sorted(t["resources"].get("GPU", 0) for t in workers.values())
    assert gpus == [1, 8], gpus
    for name, node_type in workers.items():
        assert node_type["min_workers"] == 0 < node_type["max_workers"], name  # scale from zero
    assert sum(t["max_workers"] for t in workers.values()) <= prepared["max_workers"]
    assert 0 < prepared["idle_timeout_minutes"] <= 60


def test_aws_config_pins_rays_gpu_image_and_turns_token_auth_on():
    config = _load(AWS)
    assert config["docker"]["image"] == PINNED_IMAGE
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    # Serve's high-throughput mode on every node, as forgesweep serve sets it for a local Ray.
    assert {"--env RAY_SERVE_ENABLE_HA_PROXY=1", "--env RAY_SERVE_THROUGHPUT_OPTIMIZED=1"} <= set(
        config["docker"]["run_options"])
    # The laptop's token (written by `ray get-auth-token --generate`) reaches every node.
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_aws_config_installs_the_project_and_starts_ray_from_it():
    config = _load(AWS)
    assert config["file_mounts"]["~/forgesweep"] == "."
    assert any("pip install" in c and "-e ~/forgesweep" in c for c in config["setup_commands"])
    head_start = next(c for c in config["head_start_ray_commands"] if "ray start --head" in c)
    # Jobs without --working-dir run where the head's Ray started.
    assert head_start.startswith("cd ~/forgesweep &&"), head_start
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start
    # Data and checkpoints on the folder all nodes share.
    assert any("/srv/forgesweep" in c for c in config["initialization_commands"])
    for name in ("gpu-1x", "gpu-8x"):
        mount = config["available_node_types"][name]["initialization_commands"]
        assert any("mount -t nfs4" in c and "$RAY_HEAD_IP" in c for c in mount), name


# --------------------------------------------------------------------------- KubeRay


def test_raycluster_autoscales_gpu_groups_from_zero_with_token_auth(validate_tool):
    doc = _load(RAYCLUSTER)
    spec = doc["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"]["mode"] == "token"
    assert spec["rayVersion"] == ray.__version__
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["workingDir"] == "/home/ray/forgesweep"
    # Serve's high-throughput mode in every pod (Serve reads it where each node's Ray starts).
    serving_mode = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        env = {e["name"]: e["value"] for e in group["template"]["spec"]["containers"][0]["env"]}
        assert serving_mode.items() <= env.items()
    derived = validate_tool.validate_kubernetes_object(doc, str(RAYCLUSTER))
    types = derived["available_node_types"]
    assert types["headgroup"]["resources"]["CPU"] == 0 and "GPU" not in types["headgroup"]["resources"]
    assert sorted(types[g]["resources"]["GPU"] for g in ("gpu-1x", "gpu-8x")) == [1, 8]
    for group in ("gpu-1x", "gpu-8x"):
        assert types[group]["min_workers"] == 0 < types[group]["max_workers"]
    assert derived["idle_timeout_minutes"] == spec["autoscalerOptions"]["idleTimeoutSeconds"] / 60


def test_rayjob_runs_the_main_job_on_the_same_cluster_shape(validate_tool):
    job, cluster = _load(RAYJOB), _load(RAYCLUSTER)
    assert job["spec"]["entrypoint"] == "python jobs/sweep_cffd.py"  # no working_dir: the image's project
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    job_spec, cluster_spec = job["spec"]["rayClusterSpec"], cluster["spec"]
    for key in ("rayVersion", "authOptions", "enableInTreeAutoscaling"):
        assert job_spec[key] == cluster_spec[key], key
    derived_job = validate_tool.validate_kubernetes_object(job, str(RAYJOB))["available_node_types"]
    derived_cluster = validate_tool.validate_kubernetes_object(cluster, str(RAYCLUSTER))["available_node_types"]
    assert derived_job == derived_cluster
    images = {c["image"] for spec in (job_spec, cluster_spec)
              for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
              for c in group["template"]["spec"]["containers"]}
    assert len(images) == 1, images


def test_dockerfile_builds_on_the_pinned_ray_image_and_installs_the_project():
    text = (CLUSTER / "Dockerfile").read_text()
    assert f"FROM {PINNED_IMAGE}" in text
    assert "WORKDIR /home/ray/forgesweep" in text
    assert "pip install --no-cache-dir -e ." in text
    ignored = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    assert {"data", "mlruns", "forgesweep_runs", ".venv", ".git"} <= set(ignored)


# --------------------------------------------------------------------------- bad input


def _broken_aws(edit) -> dict:
    config = copy.deepcopy(_load(AWS))
    edit(config)
    return config


@pytest.mark.parametrize("edit, expected", [
    (lambda c: c["available_node_types"]["gpu-1x"].pop("resources"),
     "available_node_types.gpu-1x: 'resources' is a required property"),
    (lambda c: c["available_node_types"]["gpu-8x"].pop("node_config"),
     "available_node_types.gpu-8x: 'node_config' is a required property"),
    (lambda c: c["available_node_types"]["gpu-1x"].pop("max_workers"),
     "missing field available_node_types.gpu-1x.max_workers"),
    (lambda c: c.pop("head_node_type"), "missing field head_node_type"),
    (lambda c: c.pop("idle_timeout_minutes"), "missing field idle_timeout_minutes"),
    (lambda c: c.update(idle_timeout_minute=c.pop("idle_timeout_minutes")), "missing field idle_timeout_minutes"),
    (lambda c: c["available_node_types"]["gpu-1x"].update(max_worker=3),
     "Additional properties are not allowed ('max_worker' was unexpected)"),
    (lambda c: c["available_node_types"]["gpu-1x"].update(min_workers=9),
     "gpu-1x: min_workers (9) exceeds max_workers (4)"),
])
def test_broken_launcher_config_names_the_field(validate_tool, tmp_path, edit, expected):
    path = _write(tmp_path, "aws.yaml", _broken_aws(edit))
    with pytest.raises(validate_tool.ClusterConfigError) as excinfo:
        validate_tool.validate_file(path)
    message = str(excinfo.value)
    assert message.startswith(f"{path}: "), message
    assert expected in message, message


def _drop_head_cpu(doc: dict) -> None:
    head = doc["spec"]["headGroupSpec"]
    head["rayStartParams"].pop("num-cpus")
    for key in ("limits", "requests"):
        head["template"]["spec"]["containers"][0]["resources"][key].pop("cpu")


@pytest.mark.parametrize("path, edit, expected", [
    (RAYCLUSTER, lambda d: d["spec"]["workerGroupSpecs"][0].pop("maxReplicas"),
     "missing field spec.workerGroupSpecs[0].maxReplicas"),
    (RAYCLUSTER, lambda d: d["spec"]["workerGroupSpecs"][1].pop("groupName"),
     "missing field spec.workerGroupSpecs[1].groupName"),
    (RAYCLUSTER, lambda d: d["spec"].pop("headGroupSpec"), "missing field spec.headGroupSpec"),
    (RAYCLUSTER, _drop_head_cpu, "failed to detect `CPU` resources for group headgroup"),
    (RAYJOB, lambda d: d["spec"].pop("entrypoint"), "missing field spec.entrypoint"),
    (RAYJOB, lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"].pop("containers"),
     "missing field spec.rayClusterSpec.workerGroupSpecs[0].template.spec.containers"),
])
def test_broken_kuberay_manifest_names_the_field(validate_tool, tmp_path, path, edit, expected):
    doc = copy.deepcopy(_load(path))
    edit(doc)
    broken = _write(tmp_path, path.name, doc)
    with pytest.raises(validate_tool.ClusterConfigError) as excinfo:
        validate_tool.validate_file(broken)
    assert expected in str(excinfo.value), str(excinfo.value)


def test_broken_runtime_env_is_rejected_by_ray(validate_tool, tmp_path):
    doc = _load(CLUSTER / "job-runtime-env.yaml")
    doc["py_modules"] = "platform/forgesweep"  # a string, where Ray wants a list
    with pytest.raises(validate_tool.ClusterConfigError, match="py_modules"):
        validate_tool.validate_file(_write(tmp_path, "env.yaml", doc))


def test_validate_command_exits_2_with_one_line(tmp_path):
    broken = _write(tmp_path, "aws.yaml", _broken_aws(lambda c: c["available_node_types"]["head"].pop("resources")))
    result = subprocess.run([sys.executable, str(CLUSTER / "validate.py"), str(broken)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {broken}: available_node_types.head: 'resources' is a required property"], result.stderr
