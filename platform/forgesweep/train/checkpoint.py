"""Stage checkpoints: weights as safetensors plus a JSON state; loading never unpickles.

Layout of one stage checkpoint directory::

    model.safetensors   the detector's state_dict
    state.json          format version, stage, task names, config, strategy state (replay ids),
                        accuracy/AUC matrices, seeds
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from forgesweep.errors import DataError
from forgesweep.models.registry import Detector, build_model, unwrap_model

WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "state.json"
FORMAT_VERSION = 1


def save_stage_checkpoint(directory: str | Path, model: nn.Module, state: dict[str, Any]) -> Path:
    """Write ``model``'s weights and ``state`` into ``directory`` (created if needed).

    Each file is written under a temporary name and renamed, so a crash never leaves a
    half-written checkpoint that looks complete.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in unwrap_model(model).state_dict().items()}
    tmp_weights = directory / (WEIGHTS_FILE + ".tmp")
    save_file(weights, str(tmp_weights), metadata={"format": "forgesweep", "version": str(FORMAT_VERSION)})
    tmp_state = directory / (STATE_FILE + ".tmp")
    tmp_state.write_text(json.dumps({"format_version": FORMAT_VERSION, **state}, indent=1, sort_keys=True))
    os.replace(tmp_weights, directory / WEIGHTS_FILE)
    os.replace(tmp_state, directory / STATE_FILE)
    return directory


def read_state(directory: str | Path) -> dict[str, Any]:
    """The JSON state of a stage checkpoint.

    Raises:
        DataError: when the directory is not a complete forgesweep checkpoint.
    """
    directory = Path(directory)
    path = directory / STATE_FILE
    if not path.is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise DataError(f"not a forgesweep checkpoint (needs {WEIGHTS_FILE} and {STATE_FILE}): {directory}")
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"corrupt checkpoint state {path}: {exc.msg}") from None
    if state.get("format_version") != FORMAT_VERSION:
        raise DataError(f"checkpoint {directory} has format {state.get('format_version')}, expected {FORMAT_VERSION}")
    return state


def load_weights(directory: str | Path, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The safetensors weights of a stage checkpoint."""
    return load_file(str(Path(directory) / WEIGHTS_FILE), device=str(map_location))


def load_model_from_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> tuple[Detector, dict[str, Any]]:
    """Rebuild the detector recorded in a checkpoint's config and load its weights.

    Returns:
        ``(model in eval mode, state)``.
    """
    state = read_state(directory)
    model_cfg = dict(state["config"]["model"])
    name = model_cfg.pop("name")
    model = build_model(name, model_cfg)
    model.load_state_dict(load_weights(directory, map_location))
    model.to(map_location).eval()
    return model, state
