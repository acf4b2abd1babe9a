"""Stage checkpoints: weights as safetensors plus a JSON state; loading never unpickles.

Layout of one stage checkpoint directory::

    model.safetensors   the detector's state_dict
    state.json          format version, stage, task names, config, strategy state (replay ids),
                        accuracy/AUC matrices, seeds, and ``files``: the name and size of every
                        other file of the checkpoint

A checkpoint is complete only when ``state.json`` exists and every file it lists is there (with
its recorded size, where :func:`read_state` is asked to compare sizes). Locally the files are
renamed into place, state last; but Ray copies a checkpoint folder to its storage path file by
file in an order of its own (``state.json`` may land before ``strategy.safetensors``), and on
object storage there is no rename, so an interrupted upload can leave a ``state.json`` without
the files it belongs with. The file list makes :func:`read_state` refuse such a folder,
wherever it was copied. Ray itself reports a checkpoint only after its upload finished, so
``ray.train.get_checkpoint``, a run's results and the MLflow copy never name a partial one.

``s3://`` checkpoints (a Ray storage path on S3, or an MLflow artifact root there) are read with
:func:`download_checkpoint`, or loaded directly by :func:`load_model_from_checkpoint`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from forgesweep.data.object_store import describe_s3_error, is_s3, parse_s3_uri, s3_client
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
    # Files a caller wrote into the folder before (e.g. a strategy's tensors) belong to it too.
    files = {p.name: p.stat().st_size for p in directory.iterdir()
             if p.is_file() and p.name != STATE_FILE and not p.name.endswith(".tmp")}
    files[WEIGHTS_FILE] = tmp_weights.stat().st_size
    tmp_state = directory / (STATE_FILE + ".tmp")
    tmp_state.write_text(json.dumps({"format_version": FORMAT_VERSION, **state, "files": files},
                                    indent=1, sort_keys=True))
    os.replace(tmp_weights, directory / WEIGHTS_FILE)
    os.replace(tmp_state, directory / STATE_FILE)
    return directory


def read_state(directory: str | Path, verify_sizes: bool = False) -> dict[str, Any]:
    """The JSON state of a stage checkpoint (without its file list).

    Args:
        verify_sizes: also compare every listed file's size with the recorded one (a copy that
            replaced some files of an older checkpoint). Presence is always checked: an object
            store holds every uploaded object whole, so an interrupted upload lacks files.

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
    # Checkpoints written before the file list existed have none: their two files suffice.
    files = state.pop("files", None) or {}
    for name, size in files.items():
        found = directory / name
        if not found.is_file():
            raise DataError(f"incomplete checkpoint {directory}: {name} is missing (an interrupted upload or copy?)")
        if verify_sizes and found.stat().st_size != size:
            raise DataError(f"incomplete checkpoint {directory}: {name} has {found.stat().st_size} bytes, "
                            f"expected {size} (an interrupted upload or copy?)")
    return state


def load_weights(directory: str | Path, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The safetensors weights of a stage checkpoint."""
    return load_file(str(Path(directory) / WEIGHTS_FILE), device=str(map_location))


def download_checkpoint(uri: str, destination: str | Path, client=None) -> Path:
    """Copy the checkpoint folder at ``s3://bucket/prefix`` into ``destination`` and check it.

    Args:
        uri: the checkpoint folder (every object under ``prefix/``).
        destination: a local folder (created if needed).
        client: a boto3 S3 client (default: the standard AWS chain).

    Returns:
        ``destination``, a complete checkpoint.

    Raises:
        DataError: no objects under the prefix, an S3 error (naming bucket, key and endpoint),
            or an incomplete checkpoint (see :func:`read_state`).
    """
    parsed = parse_s3_uri(uri, require_key=False)
    prefix = parsed.key.strip("/") + "/" if parsed.key.strip("/") else ""
    destination = Path(destination)
    client = client or s3_client()
    try:
        keys = [item["Key"] for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=parsed.bucket, Prefix=prefix) for item in page.get("Contents", [])
                if not item["Key"].endswith("/")]  # folder markers (pyarrow's create_dir) hold no data
    except Exception as exc:  # botocore raises several unrelated types: all become one line
        raise DataError(describe_s3_error(exc, uri, client)) from None
    if not keys:
        raise DataError(f"no checkpoint at {uri}: no objects under that prefix")
    for key in keys:
        target = destination / key[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            client.download_file(parsed.bucket, key, str(target))
        except Exception as exc:
            raise DataError(describe_s3_error(exc, f"s3://{parsed.bucket}/{key}", client)) from None
    read_state(destination, verify_sizes=True)
    return destination


def load_model_from_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> tuple[Detector, dict[str, Any]]:
    """Rebuild the detector recorded in a checkpoint's config and load its weights.

    Args:
        directory: a local checkpoint folder, or ``s3://bucket/prefix`` of one (downloaded to
            a temporary folder first).

    Returns:
        ``(model in eval mode, state)``.
    """
    if is_s3(str(directory)):
        with tempfile.TemporaryDirectory(prefix="forgesweep-checkpoint-") as tmp:
            return load_model_from_checkpoint(download_checkpoint(str(directory), tmp), map_location)
    state = read_state(directory)
    model_cfg = dict(state["config"]["model"])
    name = model_cfg.pop("name")
    model = build_model(name, model_cfg)
    model.load_state_dict(load_weights(directory, map_location))
    model.to(map_location).eval()
    return model, state
