"""The staging store: a local folder or an S3 prefix, addressed by '/'-separated keys.

Every key is checked by `safe_key` before it touches storage, so a name read from a staging
file (an artifact path, say) can never reach outside the staging root or a run's own place.
Writes are atomic per object: a reader sees the old object or the new one, never half.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlparse

from migrator.errors import ConfigError, MigratorError, PermanentError, StagingError, TransientError

log = logging.getLogger(__name__)

_FORBIDDEN_CHARS = ("#", "\\", "\x00")
_MULTIPART_FROM = 8 << 20  # boto3's own multipart threshold
_SINGLE_PUT_MAX = 5 << 30  # S3's largest object in one PUT
#: Attempts of one S3 request by the migrator, on top of boto3's own retries (which skip some
#: transient answers, e.g. a bare 429).
S3_ATTEMPTS = 4
_S3_MISSING = {"404", "NoSuchKey", "NotFound"}
_S3_TRANSIENT = {
    "429",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "TooManyRequests",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
}
T = TypeVar("T")


def file_sha256(path: str) -> str:
    """SHA-256 of a local file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def safe_key(*parts: str) -> str:
    """Join parts into a staging key, refusing anything that could escape its place.

    Raises:
        StagingError: on an absolute path, a `..` or `.` segment, an empty segment,
            or a character that storage or URLs treat specially (`#`, backslash, NUL).
    """
    segments: list[str] = []
    for part in parts:
        if part.startswith("/"):
            raise StagingError(f"absolute path refused: {part!r}")
        for seg in part.split("/"):
            if seg in ("", ".", ".."):
                raise StagingError(f"unsafe path segment {seg!r} in {part!r}")
            if any(c in seg for c in _FORBIDDEN_CHARS):
                raise StagingError(f"unsafe character in path {part!r}")
            segments.append(seg)
    return "/".join(segments)


class Staging(Protocol):
    """What the stages need from a staging store."""

    uri: str

    def read_bytes(self, key: str) -> bytes: ...
    def write_bytes(self, key: str, data: bytes) -> None: ...
    def upload_file(self, local_path: str, key: str, *, parallel: bool = True) -> None: ...
    def download_file(self, key: str, local_path: str) -> None: ...
    def exists(self, key: str) -> bool: ...
    def list_keys(self, prefix: str) -> Iterator[str]: ...
    def delete(self, key: str) -> None: ...
    def delete_many(self, keys: Iterable[str]) -> int: ...
    def read_versioned(self, key: str) -> tuple[bytes, str] | None: ...
    def put_if(self, key: str, data: bytes, etag: str | None) -> str | None: ...


class LocalStaging:
    """A folder on a local or shared file system."""

    def __init__(self, root: str) -> None:
        self.root = Path(root).absolute()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / safe_key(key)

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StagingError(f"missing staging object {key!r}") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def upload_file(self, local_path: str, key: str, *, parallel: bool = True) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        os.close(fd)
        shutil.copyfile(local_path, tmp)
        os.replace(tmp, path)

    def download_file(self, key: str, local_path: str) -> None:
        try:
            shutil.copyfile(self._path(key), local_path)
        except FileNotFoundError:
            raise StagingError(f"missing staging object {key!r}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_keys(self, prefix: str) -> Iterator[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return
        for dirpath, _dirs, files in os.walk(base):
            for name in sorted(files):
                if not name.startswith((".tmp-", ".lock")):
                    yield Path(dirpath, name).relative_to(self.root).as_posix()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_many(self, keys: Iterable[str]) -> int:
        n = 0
        for key in keys:
            self.delete(key)
            n += 1
        return n

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The object and its version tag (a digest of its bytes), or None when absent."""
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def put_if(self, key: str, data: bytes, etag: str | None) -> str | None:
        """Write only if the object is absent (`etag` None) or still at version `etag`, as one
        step; returns the new version tag, or None when the condition failed.

        An absent-only write publishes a complete temporary file with a hard link, which fails
        when the name exists: atomic, and no lock file is left beside a run's files. A version
        compare, and an absent-only write on a file system without hard links, hold a lock file
        in the folder."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        if etag is None:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.link(tmp, path)
                return hashlib.sha256(data).hexdigest()
            except FileExistsError:
                return None
            except OSError as e:  # a file system without hard links
                log.debug("%s: no hard links here (%s), taking the folder's lock", key, e)
            finally:
                os.unlink(tmp)
        return self._put_if_locked(path, key, data, etag)

    def _put_if_locked(self, path: Path, key: str, data: bytes, etag: str | None) -> str | None:
        import fcntl

        with open(path.parent / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self.read_versioned(key)
            if (current[1] if current else None) != etag:
                return None
            self.write_bytes(key, data)
            return hashlib.sha256(data).hexdigest()


def s3_endpoint_url() -> str | None:
    """The S3 endpoint, as boto3 and MLflow read it from the environment."""
    return os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None


def s3_error(e: Exception, key: str) -> MigratorError:
    """An S3 failure as the migrator's error: a missing object is a `StagingError`, throttling,
    5xx and lost connections are transient, anything else refused (403, …) is permanent."""
    from botocore.exceptions import ClientError

    if not isinstance(e, ClientError):  # BotoCoreError: no answer (after boto3's retries)
        return TransientError(f"S3 request failed: {type(e).__name__}: {e}", obj=key)
    err = e.response.get("Error", {})
    code = str(err.get("Code") or "")
    status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    if code in _S3_MISSING or status == 404:
        return StagingError(f"missing staging object {key!r}", obj=key)
    text = f"S3 answered {status} {code}: {err.get('Message') or ''}".strip()
    if code in _S3_TRANSIENT or status == 429 or status >= 500:
        return TransientError(text, obj=key)
    return PermanentError(text, obj=key)


class S3Staging:
    """An `s3://bucket/prefix`; large objects go up in parallel multipart uploads.

    Every request goes through `_call`: errors are mapped by `s3_error`, and transient ones
    retried with backoff and jitter (each retry logged) after boto3's own retries.
    """

    def __init__(self, uri: str) -> None:
        import boto3
        from botocore.config import Config

        parsed = urlparse(uri)
        self.uri = uri.rstrip("/")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        # A session of its own: credentials are read now, not from a process-wide cache.
        self._client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=s3_endpoint_url(),
            config=Config(retries={"max_attempts": 5, "mode": "standard"}),
        )

    def check(self) -> None:
        """Fail fast when the bucket is missing or the credentials are refused."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            raise ConfigError(
                f"bucket {self.bucket!r} not usable ({code or e}); endpoint {s3_endpoint_url()}",
                obj=self.uri,
            ) from None
        except BotoCoreError as e:
            raise ConfigError(f"S3 not reachable: {e}", obj=self.uri) from None

    def _key(self, key: str) -> str:
        key = safe_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, key: str, request: Callable[[], T]) -> T:
        from botocore.exceptions import BotoCoreError, ClientError

        for attempt in range(1, S3_ATTEMPTS + 1):
            try:
                return request()
            except (ClientError, BotoCoreError) as e:
                err = s3_error(e, key)
                if not isinstance(err, TransientError) or attempt == S3_ATTEMPTS:
                    raise err from None
                delay = min(2.0**attempt, 20.0) * (0.5 + random.random())
                log.warning("S3 %s (attempt %d of %d, retrying)", err, attempt, S3_ATTEMPTS)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def read_bytes(self, key: str) -> bytes:
        def get() -> bytes:
            obj = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            data: bytes = obj["Body"].read()
            return data

        return self._call(key, get)

    def write_bytes(self, key: str, data: bytes) -> None:
        self._call(
            key, lambda: self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        )

    def upload_file(self, local_path: str, key: str, *, parallel: bool = True) -> None:
        """Small files in one PUT; large ones through boto3's parallel multipart transfer
        (whose thread pool costs more CPU than a small file's whole upload).

        `parallel=False` is for the driver (a manifest of millions of rows): one PUT streamed
        from the file up to S3's single-PUT limit, then a multipart of one part at a time.
        boto3's parallel transfer holds parts in memory (+3 MB for a 9 MB file), which would
        make the driver's memory grow with the number of runs."""

        def put() -> None:
            size = os.path.getsize(local_path)
            if size < _MULTIPART_FROM or (not parallel and size <= _SINGLE_PUT_MAX):
                with open(local_path, "rb") as f:
                    self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=f)
            elif parallel:
                self._client.upload_file(local_path, self.bucket, self._key(key))
            else:
                from boto3.s3.transfer import TransferConfig

                one_at_a_time = TransferConfig(use_threads=False, max_concurrency=1)
                self._client.upload_file(
                    local_path, self.bucket, self._key(key), Config=one_at_a_time
                )

        self._call(key, put)

    def download_file(self, key: str, local_path: str) -> None:
        def get() -> None:
            obj = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            with open(local_path, "wb") as f:
                for chunk in obj["Body"].iter_chunks(1 << 20):
                    f.write(chunk)

        self._call(key, get)

    def exists(self, key: str) -> bool:
        """Whether the object is there. Only a real "not found" is absence: a refusal or a
        server error raises (it must never make a run look new)."""

        full = self._key(key)  # an unsafe key raises here, never reads as absent

        def head() -> bool:
            self._client.head_object(Bucket=self.bucket, Key=full)
            return True

        try:
            return self._call(key, head)
        except StagingError:
            return False

    def list_keys(self, prefix: str) -> Iterator[str]:
        full = self._key(prefix) + "/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        token: str | None = None
        while True:
            args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full}
            if token:
                args["ContinuationToken"] = token
            page: dict[str, Any] = self._call(prefix, functools.partial(self._list, args))
            for obj in page.get("Contents", []):
                yield obj["Key"][strip:]
            token = page.get("NextContinuationToken")
            if not token:
                return

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The object and its ETag, or None when absent."""

        def get() -> tuple[bytes, str]:
            obj = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            return obj["Body"].read(), str(obj["ETag"])

        try:
            return self._call(key, get)
        except StagingError:
            return None

    def put_if(self, key: str, data: bytes, etag: str | None) -> str | None:
        """S3's conditional write: only if absent (`If-None-Match: *`) or still at `etag`
        (`If-Match`); returns the new ETag, or None when the condition failed (412)."""
        from botocore.exceptions import ClientError

        cond = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}

        def put() -> str | None:
            try:
                out = self._client.put_object(
                    Bucket=self.bucket, Key=self._key(key), Body=data, **cond
                )
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") == "PreconditionFailed":
                    return None
                raise
            return str(out["ETag"])

        return self._call(key, put)

    def _list(self, args: dict[str, Any]) -> dict[str, Any]:
        page: dict[str, Any] = self._client.list_objects_v2(**args)
        return page

    def delete(self, key: str) -> None:
        self._call(key, lambda: self._client.delete_object(Bucket=self.bucket, Key=self._key(key)))

    def delete_many(self, keys: Iterable[str]) -> int:
        """Delete keys 1,000 to a request (S3 `DeleteObjects`): a compaction folds thousands
        of journal files. Returns how many were asked for.

        Raises:
            StagingError: S3 refused some of them (the first is named).
        """
        n = 0
        for batch in _batches(keys, _DELETE_BATCH):
            n += len(batch)
            objects = [{"Key": self._key(k)} for k in batch]

            def delete(objects: list[dict[str, str]] = objects) -> Any:
                return self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}
                )

            errors = self._call(batch[0], delete).get("Errors") or []
            if errors:
                first = errors[0]
                raise StagingError(
                    f"S3 did not delete {len(errors)} of {len(batch)} objects: "
                    f"{first.get('Code')}: {first.get('Message')}",
                    obj=first.get("Key"),
                )
        return n


#: Keys per S3 `DeleteObjects` request (its limit).
_DELETE_BATCH = 1000


def _batches(items: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


@functools.lru_cache(maxsize=8)
def open_staging(uri: str) -> Staging:
    """The staging store for a URI, one per process (clients and their sessions are reused).

    Raises:
        ConfigError: on an unknown scheme, a missing bucket or refused credentials.
    """
    scheme = urlparse(uri).scheme
    if scheme == "s3":
        if not urlparse(uri).netloc:
            raise ConfigError("staging URI has no bucket", obj=uri)
        s3 = S3Staging(uri)
        s3.check()
        return s3
    if scheme in ("", "file"):
        return LocalStaging(urlparse(uri).path if scheme == "file" else uri)
    raise ConfigError(f"unsupported staging scheme {scheme!r} (use s3:// or a folder)", obj=uri)
