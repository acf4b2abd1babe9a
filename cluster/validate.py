"""Validate the cluster files in cluster/ with Ray's own checks, offline.

* Ray cluster launcher YAML (``provider:`` at the top): Ray's ``prepare_config`` (fills in the
  provider's defaults, as ``ray up`` does) then ``validate_config`` against the JSON schema
  shipped with Ray (``ray/autoscaler/ray-schema.json``). Fake multi-node configs skip the
  defaults (the PyPI wheel lacks the fake provider's defaults file) and are checked as the
  autoscaler reads them, raw.
* KubeRay ``RayCluster`` / ``RayJob``: the fields the operator needs, then Ray's KubeRay
  autoscaler code derives the autoscaling config from the cluster spec exactly as it does in a
  running cluster (``_derive_autoscaling_config_from_ray_cr``) and validates it with the same
  schema.
* A job runtime environment (``py_modules`` / ``excludes`` / ...): Ray's ``RuntimeEnv``.
* Other Kubernetes objects (e.g. a ``PersistentVolumeClaim``): apiVersion, kind, metadata.name.

On top of Ray's checks, every worker node type must state ``min_workers`` and ``max_workers``
(KubeRay: ``minReplicas`` / ``maxReplicas``): the autoscaling bounds are never left to defaults.

A bad file gives one line naming the file, the field and the problem, e.g.
``cluster/aws-gpu.yaml: available_node_types.gpu-1x: 'resources' is a required property``.

Usage::

    python cluster/validate.py                      # every YAML file under cluster/
    python cluster/validate.py cluster/aws-gpu.yaml
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml

HERE = Path(__file__).resolve().parent
RUNTIME_ENV_KEYS = {"working_dir", "py_modules", "excludes", "pip", "uv", "conda", "env_vars", "py_executable",
                    "container", "image_uri", "config", "java_jars", "nsight", "mpi"}


class ClusterConfigError(ValueError):
    """A cluster file is invalid; the message names the file and the field."""


def _where(path: Sequence[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _get(doc: Any, dotted: str, source: str, at: str = "") -> Any:
    """``doc`` at a path like ``spec.workerGroupSpecs[0].groupName``; ClusterConfigError if missing.

    ``at`` is where ``doc`` itself sits in the file (for the message), e.g. ``spec.headGroupSpec``.
    """
    node, walked = doc, [at] if at else []
    for part in dotted.replace("[", ".[").split("."):
        if not part:
            continue
        key: Any = int(part[1:-1]) if part.startswith("[") else part
        container_ok = isinstance(node, list) if isinstance(key, int) else isinstance(node, dict)
        if not container_ok or (isinstance(key, int) and key >= len(node)) or (
                isinstance(key, str) and key not in node):
            raise ClusterConfigError(f"{source}: missing field {_where(walked + [key])}")
        node = node[key]
        walked.append(key)
    return node


def validate_launcher_config(config: Dict[str, Any], source: str) -> Dict[str, Any]:
    """Validate a cluster launcher config; return it as the autoscaler will see it."""
    from jsonschema import ValidationError
    from ray.autoscaler._private.util import prepare_config, validate_config

    for field in ("cluster_name", "provider", "head_node_type", "available_node_types", "max_workers",
                  "idle_timeout_minutes"):
        _get(config, field, source)
    _get(config, "provider.type", source)
    head = config["head_node_type"]
    node_types = config["available_node_types"]
    for name, node_type in (node_types.items() if isinstance(node_types, dict) else ()):
        if name == head or not isinstance(node_type, dict):
            continue  # Ray's schema reports a node type that is not a mapping
        for field in ("min_workers", "max_workers"):
            _get(node_type, field, source, at=f"available_node_types.{name}")
        if node_type["min_workers"] > node_type["max_workers"]:
            raise ClusterConfigError(f"{source}: available_node_types.{name}: min_workers "
                                     f"({node_type['min_workers']}) exceeds max_workers ({node_type['max_workers']})")
    prepared = copy.deepcopy(config)
    try:
        if config["provider"]["type"] != "fake_multinode":
            prepared = prepare_config(prepared)
        validate_config(prepared)
    except ValidationError as exc:
        raise ClusterConfigError(f"{source}: {_where(list(exc.absolute_path))}: {exc.message}") from None
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ClusterConfigError(f"{source}: {exc}") from None
    return prepared


def _check_group(group: Dict[str, Any], where: str, source: str, worker: bool) -> None:
    _get(group, "template.spec.containers[0].image", source, at=where)
    if worker:
        for field in ("groupName", "minReplicas", "maxReplicas"):
            _get(group, field, source, at=where)
        if group["minReplicas"] > group["maxReplicas"]:
            raise ClusterConfigError(f"{source}: {where}: minReplicas ({group['minReplicas']}) exceeds "
                                     f"maxReplicas ({group['maxReplicas']})")


def validate_ray_cluster_spec(spec: Dict[str, Any], name: str, namespace: str, source: str,
                              where: str = "spec") -> Dict[str, Any]:
    """Validate a ``RayCluster`` spec; return the autoscaling config Ray derives from it."""
    from jsonschema import ValidationError
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    _check_group(_get(spec, "headGroupSpec", source, at=where), f"{where}.headGroupSpec", source, False)
    groups = _get(spec, "workerGroupSpecs", source, at=where)
    if not isinstance(groups, list) or not groups:
        raise ClusterConfigError(f"{source}: {where}.workerGroupSpecs: needs at least one worker group")
    for i, group in enumerate(groups):
        _check_group(group, f"{where}.workerGroupSpecs[{i}]", source, True)
    try:
        return _derive_autoscaling_config_from_ray_cr({"metadata": {"name": name, "namespace": namespace},
                                                       "spec": spec})
    except ValidationError as exc:
        raise ClusterConfigError(f"{source}: {where} (as Ray's autoscaler reads it) "
                                 f"{_where(list(exc.absolute_path))}: {exc.message}") from None
    except (ValueError, KeyError) as exc:
        raise ClusterConfigError(f"{source}: {where}: {exc}") from None


def validate_kubernetes_object(doc: Dict[str, Any], source: str) -> Optional[Dict[str, Any]]:
    """Validate one Kubernetes object; for RayCluster/RayJob return Ray's autoscaling config."""
    for field in ("apiVersion", "kind", "metadata.name"):
        _get(doc, field, source)
    kind, name = doc["kind"], doc["metadata"]["name"]
    namespace = doc["metadata"].get("namespace", "default")
    if kind in ("RayCluster", "RayJob") and doc["apiVersion"] != "ray.io/v1":
        raise ClusterConfigError(f"{source}: apiVersion: {kind} needs ray.io/v1, got {doc['apiVersion']!r}")
    if kind == "RayCluster":
        return validate_ray_cluster_spec(_get(doc, "spec", source), name, namespace, source)
    if kind == "RayJob":
        entrypoint = _get(doc, "spec.entrypoint", source)
        if not isinstance(entrypoint, str) or not entrypoint.strip():
            raise ClusterConfigError(f"{source}: spec.entrypoint: must be a non-empty command")
        if "clusterSelector" in doc["spec"]:
            return None  # runs on an existing RayCluster, validated on its own
        spec = _get(doc, "spec.rayClusterSpec", source)
        return validate_ray_cluster_spec(spec, name, namespace, source, where="spec.rayClusterSpec")
    return None


def validate_runtime_env(doc: Dict[str, Any], source: str) -> None:
    """Validate a job runtime environment file with Ray's ``RuntimeEnv``."""
    from ray.runtime_env import RuntimeEnv

    try:
        RuntimeEnv(**doc)
    except (ValueError, TypeError) as exc:
        raise ClusterConfigError(f"{source}: {exc}") from None


def validate_file(path: str | Path) -> List[str]:
    """Validate every document of one YAML file; return one summary line per document.

    Raises:
        ClusterConfigError: the first problem, naming the file and the field.
    """
    path = Path(path)
    source = str(path)
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except OSError as exc:
        raise ClusterConfigError(f"{source}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ClusterConfigError(f"{source}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not docs:
        raise ClusterConfigError(f"{source}: empty file")
    lines = []
    for doc in docs:
        if not isinstance(doc, dict):
            raise ClusterConfigError(f"{source}: every document must be a mapping")
        if "provider" in doc or "available_node_types" in doc:
            prepared = validate_launcher_config(doc, source)
            lines.append(f"{source}: cluster launcher config ({prepared['provider']['type']}), "
                         f"node types: {', '.join(prepared['available_node_types'])}")
        elif "kind" in doc or "apiVersion" in doc:
            derived = validate_kubernetes_object(doc, source)
            types = f", node types: {', '.join(derived['available_node_types'])}" if derived else ""
            lines.append(f"{source}: {doc['kind']} {doc['metadata']['name']!r}{types}")
        elif set(doc) & RUNTIME_ENV_KEYS:
            validate_runtime_env(doc, source)
            lines.append(f"{source}: runtime environment ({', '.join(sorted(doc))})")
        else:
            raise ClusterConfigError(f"{source}: not a cluster launcher config (no 'provider'), a Kubernetes "
                                     f"object (no 'kind') or a runtime environment")
    return lines


def cluster_files(root: Path = HERE) -> List[Path]:
    """Every YAML file under ``root`` (the cluster/ folder by default)."""
    return sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    paths = [Path(a) for a in args] or cluster_files()
    try:
        for path in paths:
            for line in validate_file(path):
                print(f"ok  {line}")
    except ClusterConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
