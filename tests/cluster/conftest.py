"""Helpers for the cluster tests: the tools in cluster/ are scripts, loaded here by path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

CLUSTER_DIR = Path(__file__).resolve().parents[2] / "cluster"


def load_cluster_tool(name: str) -> ModuleType:
    """Import ``cluster/<name>.py`` (cached in ``sys.modules`` as ``forgesweep_cluster_<name>``)."""
    key = f"forgesweep_cluster_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, CLUSTER_DIR / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


@pytest.fixture(scope="session")
def validate_tool() -> ModuleType:
    """``cluster/validate.py``."""
    return load_cluster_tool("validate")


@pytest.fixture(scope="session")
def fake_cluster_tool() -> ModuleType:
    """``cluster/fake_cluster.py``."""
    return load_cluster_tool("fake_cluster")
