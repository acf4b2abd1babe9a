"""The source layout: platform/ is a source folder, never a package shadowing the stdlib."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _python_in_repo_root(code: str) -> subprocess.CompletedProcess:
    # `python -c` puts the current directory first on sys.path: exactly the situation in which
    # a `platform` package in the repository root would shadow the standard library.
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def test_platform_folder_is_not_a_package():
    assert (REPO_ROOT / "platform").is_dir()
    assert not (REPO_ROOT / "platform" / "__init__.py").exists(), (
        "platform/__init__.py makes `platform` a package that shadows the standard-library "
        "module torch and ray import; platform/ must stay a plain source folder"
    )


def test_import_platform_from_repo_root_gives_the_stdlib_module():
    result = _python_in_repo_root(
        "import json, platform, sys, sysconfig; "
        "print(json.dumps({'file': platform.__file__, "
        "'stdlib': sysconfig.get_paths()['stdlib'], "
        "'path0': sys.path[0], "
        "'has_api': callable(getattr(platform, 'python_version', None))}))"
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["path0"] in ("", os.curdir, str(REPO_ROOT)), info  # the repo root is searched
    module_file = Path(info["file"]).resolve()
    assert not _is_within(module_file, REPO_ROOT), f"`platform` resolved into the repo: {info}"
    assert _is_within(module_file, Path(info["stdlib"]).resolve()), info
    assert module_file.name == "platform.py", info
    assert info["has_api"], info


def test_import_forgesweep_from_repo_root():
    result = _python_in_repo_root(
        "import forgesweep; print(forgesweep.__file__); print(forgesweep.__name__)"
    )
    assert result.returncode == 0, f"`import forgesweep` failed from the repo root:\n{result.stderr}"
    lines = result.stdout.strip().splitlines()
    module_file, name = lines[-2], lines[-1]
    assert name == "forgesweep"
    # A regular package (not a namespace package picked up from some folder on sys.path).
    assert module_file not in ("None", "") and Path(module_file).name == "__init__.py", lines
