"""``s3://`` objects fetched with boto3 into a local cache keyed by bucket, key and ETag.

Wherever a manifest, frame, mask or video path may be ``s3://bucket/key``, readers call
:func:`local_path` (or :meth:`ObjectCache.fetch_many` for many objects at once, downloaded in
parallel). An object already cached under the same ETag is never downloaded again; a changed
object (new ETag) is fetched into a new cache entry. Downloads land in a temporary file that is
renamed into place, so an interrupted download never looks complete.

Credentials and endpoint come from the standard AWS chain only (environment, shared
config/credentials profile, instance or pod role; ``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3``
for S3-compatible servers such as MinIO or moto), never from experiment configs, and never
appear in messages.

The cache folder is ``$FORGESWEEP_CACHE/s3`` (default ``~/.cache/forgesweep/s3``).
"""

from __future__ import annotations

import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from forgesweep.errors import DataError

SCHEME = "s3://"


@dataclass(frozen=True)
class S3Uri:
    """A parsed ``s3://bucket/key``."""

    bucket: str
    key: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"


def is_s3(path: object) -> bool:
    """Whether ``path`` is an ``s3://`` URI."""
    return isinstance(path, str) and path.startswith(SCHEME)


def parse_s3_uri(uri: str, require_key: bool = True) -> S3Uri:
    """Split ``s3://bucket/key``.

    Args:
        require_key: an object URI needs a key; a storage prefix (``s3://bucket`` or
            ``s3://bucket/prefix/``) may have none (its key is then ``""``).

    Raises:
        DataError: not an s3 URI, or the bucket (or a required key) is empty.
    """
    if not is_s3(uri):
        raise DataError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len(SCHEME):].partition("/")
    if not bucket or (require_key and not key):
        raise DataError(f"s3 URI {uri!r} must name a bucket and a key: s3://bucket/path/to/object")
    return S3Uri(bucket, key)


def default_cache_root() -> Path:
    """``$FORGESWEEP_CACHE/s3``, else ``~/.cache/forgesweep/s3``."""
    base = os.environ.get("FORGESWEEP_CACHE") or str(Path.home() / ".cache" / "forgesweep")
    return Path(base).expanduser() / "s3"


_loader = None
_loader_lock = threading.Lock()


def s3_client():
    """A boto3 S3 client from the standard AWS chain, failing fast on unreachable endpoints.

    Each client gets its own session: boto3's default session resolves credentials once per
    process and keeps them, so a client made later would not see the environment as it is now.
    The sessions share one loader of botocore's service descriptions (read once, not per client).
    """
    global _loader
    import boto3
    import botocore.loaders
    import botocore.session
    from botocore.config import Config

    with _loader_lock:
        if _loader is None:
            _loader = botocore.loaders.create_loader()
        core = botocore.session.Session()
        core.register_component("data_loader", _loader)
    return boto3.session.Session(botocore_session=core).client(
        "s3", config=Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"}))


def describe_s3_error(exc: Exception, uri: str, client=None) -> str:
    """One line saying what went wrong with ``uri`` (bucket, key, endpoint; no secrets)."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    endpoint = getattr(getattr(client, "meta", None), "endpoint_url", None) or "the default AWS endpoint"
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return (f"{uri}: no usable AWS credentials (looked in the environment, the shared "
                f"credentials/config profile and the instance role)")
    if isinstance(exc, EndpointConnectionError):
        return f"{uri}: cannot reach the S3 endpoint {endpoint}"
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        parsed = parse_s3_uri(uri, require_key=False)
        # A HEAD on a bucket has no error body: its 404 only says the bucket is missing.
        bucket_request = getattr(exc, "operation_name", "") == "HeadBucket" or not parsed.key
        if code == "NoSuchBucket" or (bucket_request and (code in ("404", "NotFound") or status == 404)):
            return f"{uri}: bucket {parsed.bucket!r} does not exist at {endpoint}"
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return f"{uri}: no object {parsed.key!r} in bucket {parsed.bucket!r} at {endpoint}"
        if code in ("AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch") \
                or status == 403:
            return (f"{uri}: access denied by {endpoint} ({code}); check the credentials of the "
                    f"standard AWS chain")
        return f"{uri}: S3 error {code or status} at {endpoint}"
    return f"{uri}: {type(exc).__name__}: {exc}"


class ObjectCache:
    """Local copies of S3 objects, one file per (bucket, key, ETag).

    Args:
        root: cache folder (default :func:`default_cache_root`).
        client: a boto3 S3 client (default :func:`s3_client`, created on first use).
        max_workers: parallel downloads in :meth:`fetch_many`.
    """

    def __init__(self, root: Optional[Path] = None, client=None, max_workers: int = 8) -> None:
        self.root = Path(root) if root is not None else default_cache_root()
        self._client = client
        self._lock = threading.Lock()
        self.max_workers = max_workers
        # Within one process a URI is resolved once: a run reads a consistent snapshot, and a
        # frame read many times costs one HEAD request, not one per read.
        self._resolved: dict[str, Path] = {}
        self.downloads = 0  # objects actually transferred by this instance (for tests/benchmarks)

    @property
    def client(self):
        with self._lock:
            if self._client is None:
                self._client = s3_client()
            return self._client

    def _entry(self, uri: S3Uri, etag: str) -> Path:
        # The ETag names a folder under the key, so the file keeps its name (and its suffix,
        # which decoders look at) and a changed object never overwrites the old copy in use.
        return self.root / uri.bucket / uri.key / etag / Path(uri.key).name

    def head(self, uri: str) -> str:
        """The object's ETag (without quotes).

        Raises:
            DataError: missing bucket/object, unreachable endpoint, bad credentials.
        """
        parsed = parse_s3_uri(uri)
        try:
            response = self.client.head_object(Bucket=parsed.bucket, Key=parsed.key)
        except Exception as exc:  # botocore raises several unrelated types: all become one line
            raise DataError(describe_s3_error(exc, uri, self._client)) from None
        return str(response["ETag"]).strip('"')

    def head_many(self, uris: Iterable[str]) -> dict[str, str]:
        """ETags of every distinct URI, checked in parallel (existence and access up front)."""
        unique = list(dict.fromkeys(uris))
        if not unique:
            return {}
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(unique))) as pool:
            futures = {u: pool.submit(self.head, u) for u in unique}
        return {u: f.result() for u, f in futures.items()}

    def fetch(self, uri: str) -> Path:
        """Local path of ``uri``'s current version, downloading it only if not cached."""
        known = self._resolved.get(uri)
        if known is not None and known.is_file():
            return known
        parsed = parse_s3_uri(uri)
        target = self._entry(parsed, self.head(uri))
        if target.is_file():
            self._resolved[uri] = target
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".partial-")
        os.close(fd)
        try:
            self.client.download_file(parsed.bucket, parsed.key, tmp)
            os.replace(tmp, target)
        except Exception as exc:
            Path(tmp).unlink(missing_ok=True)
            raise DataError(describe_s3_error(exc, uri, self._client)) from None
        with self._lock:
            self.downloads += 1
            self._resolved[uri] = target
        return target

    def fetch_many(self, uris: Iterable[str]) -> dict[str, Path]:
        """Fetch every distinct URI in parallel; the first failure is raised after all settle."""
        unique = list(dict.fromkeys(uris))
        if not unique:
            return {}
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(unique))) as pool:
            futures = {u: pool.submit(self.fetch, u) for u in unique}
        return {u: f.result() for u, f in futures.items()}

    def upload(self, path: Path, uri: str) -> None:
        """Upload a local file to ``uri``.

        Raises:
            DataError: as for :meth:`head`.
        """
        parsed = parse_s3_uri(uri)
        try:
            self.client.upload_file(str(path), parsed.bucket, parsed.key)
        except Exception as exc:
            raise DataError(describe_s3_error(exc, uri, self._client)) from None


_shared: Optional[ObjectCache] = None
_shared_lock = threading.Lock()


def shared_cache() -> ObjectCache:
    """The process-wide cache (created on first use)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ObjectCache()
        return _shared


def local_path(path: str) -> str:
    """``path`` itself for local files; the cached local copy for ``s3://`` URIs."""
    return str(shared_cache().fetch(path)) if is_s3(path) else path
