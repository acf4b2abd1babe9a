"""Where Ray keeps a run's checkpoints (``train.storage_path``), checked before training starts.

Ray Train and Tune write checkpoints through a pyarrow filesystem resolved from the path: a
local folder, ``s3://bucket/prefix`` (pyarrow's S3 filesystem) or any other URI pyarrow knows.
pyarrow's S3 filesystem reads credentials, region and endpoint from the standard AWS chain,
like boto3 (``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` are honoured from pyarrow 15 on), so
no filesystem object is handed to Ray: one built with explicit keys would carry them into every
pickled ``RunConfig``, which Tune stores beside the experiment.

:func:`check_storage_path` finds a missing bucket, an unreachable endpoint or credentials that
cannot write before any trial starts, instead of minutes later inside a Ray worker:

* the bucket is looked up with boto3 (errors name the bucket and the endpoint, never a key);
* a small probe object is written through the very pyarrow filesystem Ray will use, read back
  with boto3 (so both agree on the endpoint and bucket), then deleted.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from pathlib import Path

from forgesweep.data.object_store import describe_s3_error, is_s3, parse_s3_uri, s3_client
from forgesweep.errors import ConfigError

log = logging.getLogger(__name__)

FIELD = "train.storage_path"
PROBE_PREFIX = ".forgesweep-storage-check-"

# Paths already found usable by this process (a matrix checks every cell's config).
_checked: set[str] = set()
_checked_lock = threading.Lock()


def check_storage_path(path: str, client=None) -> None:
    """Raise a one-line :class:`ConfigError` unless Ray can write checkpoints under ``path``.

    Args:
        path: an absolute local folder or a URI (``s3://bucket/prefix``, ``gs://...``).
        client: a boto3 S3 client for ``s3://`` paths (default: the standard AWS chain).

    Raises:
        ConfigError: naming the field, the path, and the bucket/endpoint for S3.
    """
    with _checked_lock:
        if path in _checked:
            return
    if is_s3(path):
        _check_s3(path, client)
    elif "://" in path:
        _check_other_uri(path)
    else:
        _check_local(Path(path))
    with _checked_lock:
        _checked.add(path)


def forget_checked() -> None:
    """Check every path again from now on (tests change the server between checks)."""
    with _checked_lock:
        _checked.clear()


def storage_entry_exists(root: str, name: str) -> bool:
    """Whether ``<root>/<name>`` exists in a storage path (a local folder or any pyarrow URI).

    On object storage a "folder" exists when any object has its prefix, which is what Ray
    writes a sweep as: a second sweep of the same name would overwrite its Tune state.

    Raises:
        ConfigError: the storage cannot be listed (names the field and the URI).
    """
    if "://" not in root:
        return (Path(root) / name).exists()
    import pyarrow.fs

    try:
        filesystem, base = pyarrow.fs.FileSystem.from_uri(root)
        info = filesystem.get_file_info(f"{base.rstrip('/')}/{name}")
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...: all become one line
        raise ConfigError(f"{FIELD}: cannot list {root}: {_first_line(exc)}") from None
    return info.type != pyarrow.fs.FileType.NotFound


def _check_local(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{FIELD}: {path} exists and is not a directory")
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    # Nothing is created here: a check must not write; Ray creates the folder when it starts.
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"{FIELD}: cannot create or write {path}: {ancestor} is not a writable directory")


def _check_other_uri(uri: str) -> None:
    import pyarrow.fs

    try:
        filesystem, root = pyarrow.fs.FileSystem.from_uri(uri)
        filesystem.get_file_info(root)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...: all become one line
        raise ConfigError(f"{FIELD}: pyarrow cannot use {uri}: {_first_line(exc)}") from None


def _check_s3(uri: str, client=None) -> None:
    parsed = parse_s3_uri(uri, require_key=False)
    client = client or s3_client()
    try:
        client.head_bucket(Bucket=parsed.bucket)
    except Exception as exc:  # botocore raises several unrelated types: all become one line
        raise ConfigError(f"{FIELD}: {describe_s3_error(exc, uri, client)}") from None

    prefix = parsed.key.strip("/")
    probe_key = f"{prefix}/{PROBE_PREFIX}{uuid.uuid4().hex}" if prefix else f"{PROBE_PREFIX}{uuid.uuid4().hex}"
    probe_uri = f"s3://{parsed.bucket}/{probe_key}"
    endpoint = getattr(client.meta, "endpoint_url", None) or "the default AWS endpoint"
    _write_probe_with_pyarrow(uri, parsed.bucket, probe_key, endpoint)
    try:
        client.head_object(Bucket=parsed.bucket, Key=probe_key)
    except Exception as exc:
        import pyarrow

        raise ConfigError(
            f"{FIELD}: pyarrow {pyarrow.__version__} wrote a test object for {uri}, but boto3 does not "
            f"find it at {endpoint} ({describe_s3_error(exc, probe_uri, client)}); the two read the AWS "
            f"settings differently (pyarrow < 15 ignores AWS_ENDPOINT_URL)") from None
    try:
        client.delete_object(Bucket=parsed.bucket, Key=probe_key)
    except Exception as exc:
        # Ray itself never needs to delete objects, so training can go ahead; say what is left.
        log.warning("%s: could not delete the probe object %s: %s", FIELD, probe_uri,
                    describe_s3_error(exc, probe_uri, client))


def _write_probe_with_pyarrow(uri: str, bucket: str, key: str, endpoint: str) -> None:
    import pyarrow.fs

    try:
        filesystem, _ = pyarrow.fs.FileSystem.from_uri(uri)
        with filesystem.open_output_stream(f"{bucket}/{key}") as out:
            out.write(b"forgesweep storage check\n")
    except Exception as exc:
        raise ConfigError(f"{FIELD}: Ray's filesystem (pyarrow S3) cannot write to {uri} "
                          f"(boto3 endpoint {endpoint}): {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
