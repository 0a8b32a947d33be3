"""Where an artifact URI's bytes are, and how they move without the MLflow servers.

The one place that maps an artifact URI (of a run, a logged model, a model version) to the
store holding its files, and lists, reads, writes and copies them there.

**The mapping.** A server started with `mlflow server --artifacts-destination D` proxies
artifacts: runs get `mlflow-artifacts:/<path>` URIs (or `mlflow-artifacts://host:port/<path>`,
or `http(s)://host/api/2.0/mlflow-artifacts/artifacts/<path>`), and the server keeps the files
at `D/<path>` (MLflow's `_get_proxied_run_artifact_destination_path`: the URI's path, leading
`/` stripped, below the destination). Given `D` (`--source-artifacts-destination`,
`--target-artifacts-destination`), the migrator reads and writes `D/<path>` itself instead of
streaming every byte through the server's single Python process. The path is percent-decoded
as the server decodes it; a `..` segment is refused (it would leave `D`). Without `D`, a proxied
URI goes through the server as before. A URI that names a store already (`s3://…`: an
experiment created with an S3 `artifact_location`, or a server that does not proxy) is that
store, with or without the flags.

**The copy.** When both ends of a copy are S3 on the same endpoint, the copy is server-side:
`CopyObject` (S3 copies the bytes inside the store; they pass through neither the MLflow
servers nor the migrator), or, above 5 GiB (the most one `CopyObject` may copy), boto3's
managed copy, which sends `UploadPartCopy` per part. The migrator holds one set of S3
credentials (the process's AWS credential chain, as MLflow's S3 client and the staging store
read it), so "same endpoint" is "same endpoint and credentials"; an artifact store is on
MLflow's endpoint (`MLFLOW_S3_ENDPOINT_URL`, else `AWS_ENDPOINT_URL`), staging on the
migrator's (`AWS_ENDPOINT_URL`, else `MLFLOW_S3_ENDPOINT_URL`). Any other pair of stores
(a folder, another endpoint, a store without the shortcut) streams the file through the
migrator, store to store, still skipping the servers where the flags say where the files are.
A store that does not implement `CopyObject` (501 `NotImplemented`) is streamed too.

**The SHA-256 the manifests promise** (`artifact_files`: path, size, sha256, which `verify`
compares with the target's files read through the target server). A server-side copy never
shows the bytes to the migrator, so the hash comes from S3: `CopyObject` is sent with
`ChecksumAlgorithm=SHA256`, and S3 computes the SHA-256 of the object it wrote and returns it
(`CopyObjectResult.ChecksumSHA256`, base64). That is a full-object hash only for a single
`CopyObject`: a multipart copy gets a *composite* checksum (a hash of the parts' hashes, `…-N`
on AWS; moto returns one without the suffix), which is not the file's SHA-256; AWS offers
full-object checksums of multipart objects only for the CRC algorithms. So an object copied
in parts (above 5 GiB), or copied by a store that returns no `ChecksumSHA256`, is hashed by
reading the staged copy once through the migrator (a GET: the servers still see nothing).
The copy from staging to the target is checked the same way: the SHA-256 S3 computes of the
target's object must equal the one recorded at export (or, for a part-wise copy, its size
the recorded size); `verify --artifacts hash` then reads every target file through the target
server, so the shortcut is proven end to end.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import os
import posixpath
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import unquote, urlparse

from migrator.errors import ConfigError, MigratorError, PermanentError, TransientError
from migrator.staging import S3_ATTEMPTS, S3Staging, Staging, s3_endpoint_url, s3_error, safe_key

if TYPE_CHECKING:
    from migrator.config import Options

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The most one `CopyObject` may copy (S3's limit); larger objects are copied part by part.
COPY_OBJECT_MAX = 5 << 30
#: Part size of a part-wise copy (`UploadPartCopy`); boto3 raises it when 10,000 parts would
#: not be enough.
COPY_PART_SIZE = 512 << 20
#: Uploads from a local file: one PUT below this, boto3's multipart upload above (as staging).
_MULTIPART_FROM = 8 << 20
#: MLflow's route for proxied artifacts, under which an `http(s)` artifact URI names its path.
PROXY_ROUTE = "/api/2.0/mlflow-artifacts/artifacts/"
PROXIED_SCHEMES = ("mlflow-artifacts",)
#: Not stores: URIs a server answers for, never the value of `--artifacts-destination`.
_NOT_STORES = ("mlflow-artifacts", "http", "https", "runs", "models")


@dataclass(frozen=True)
class Side:
    """One server as its artifacts are reached: its tracking URI, and the `--artifacts-
    destination` it was started with ("" when not given: proxied files go through it)."""

    tracking_uri: str
    destination: str = ""


def source_side(opts: Options) -> Side:
    return Side(opts.source, opts.source_artifacts_destination)


def target_side(opts: Options) -> Side:
    return Side(opts.target, opts.target_artifacts_destination)


# ---- the mapping ------------------------------------------------------------------------------


def proxied_path(artifact_uri: str) -> str | None:
    """The path below the server's artifacts destination that a proxied artifact URI names
    (MLflow's mapping), or None when the URI is not a proxied one.

    Raises:
        PermanentError: the path has a `..` segment (it would name a place outside the
            destination), percent-encoded or not.
    """
    parsed = urlparse(artifact_uri)
    if parsed.scheme in PROXIED_SCHEMES:
        path = parsed.path
    elif parsed.scheme in ("http", "https") and PROXY_ROUTE in parsed.path + "/":
        path = (parsed.path + "/").split(PROXY_ROUTE, 1)[1]
    else:
        return None
    segments = [s for s in unquote(path).split("/") if s not in ("", ".")]
    if ".." in segments or any("\\" in s or "\x00" in s for s in segments):
        raise PermanentError(
            f"artifact URI {artifact_uri!r} names a path outside the server's artifacts "
            "destination: refused"
        )
    return "/".join(segments)


def direct_uri(side: Side, artifact_uri: str) -> str | None:
    """The URI of the store that holds the files of `artifact_uri`, when the migrator can
    reach it itself: a proxied URI below the side's destination, or a URI that names an S3
    store already. None: through the server (or MLflow's own repository for that URI)."""
    path = proxied_path(artifact_uri)
    if path is not None:
        if not side.destination:
            return None
        base = side.destination.rstrip("/")
        return f"{base}/{path}" if path else base
    if urlparse(artifact_uri).scheme == "s3":
        return artifact_uri
    return None


# ---- S3 ---------------------------------------------------------------------------------------


def artifact_endpoint() -> str | None:
    """The endpoint of artifact stores on S3, as MLflow's S3 repository reads it."""
    return os.environ.get("MLFLOW_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL") or None


def _norm(endpoint: str | None) -> str:
    return (endpoint or "").rstrip("/")


_CLIENT_LOCK = threading.Lock()


@functools.lru_cache(maxsize=8)
def _cached_client(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint or None,
        config=Config(retries={"max_attempts": 5, "mode": "standard"}),
    )


def s3_client(endpoint: str | None) -> Any:
    """One boto3 client per endpoint and process (clients are thread-safe; making one is not)."""
    with _CLIENT_LOCK:
        return _cached_client(_norm(endpoint))


@dataclass(frozen=True)
class S3Object:
    """An object in S3, and the endpoint it is reached at."""

    bucket: str
    key: str
    endpoint: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def server_side(src: S3Object | None, dst: S3Object | None) -> bool:
    """Whether a copy from `src` to `dst` can be done by S3 itself: both in S3, on one
    endpoint (and so with the one set of credentials the migrator holds)."""
    return src is not None and dst is not None and _norm(src.endpoint) == _norm(dst.endpoint)


def _call(what: str, request: Callable[[], T]) -> T:
    """One S3 request, transient failures retried after boto3's own retries (as staging)."""
    from botocore.exceptions import BotoCoreError, ClientError

    for attempt in range(1, S3_ATTEMPTS + 1):
        try:
            return request()
        except (ClientError, BotoCoreError) as e:
            err = s3_error(e, what)
            if not isinstance(err, TransientError):
                raise _named(err, what) from None
            if attempt == S3_ATTEMPTS:
                raise err from None
            delay = min(2.0**attempt, 20.0) * (0.5 + random.random())
            log.warning("S3 %s (attempt %d of %d, retrying)", err, attempt, S3_ATTEMPTS)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _named(err: MigratorError, what: str) -> MigratorError:
    """`s3_error` calls every missing object a staging object: say which object it is."""
    if err.message.startswith("missing staging object"):
        return PermanentError(f"S3 object {what} is missing", obj=what)
    return err


def _not_implemented(e: BaseException) -> bool:
    from botocore.exceptions import ClientError

    if not isinstance(e, ClientError):
        return False
    code = str(e.response.get("Error", {}).get("Code") or "")
    status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return code == "NotImplemented" or status == 501


def copy_object(src: S3Object, dst: S3Object, size: int) -> str | None:
    """Copy inside S3 (see the module's docstring).

    Returns:
        The SHA-256 (hex) S3 computed of the copy, or None when it gave no full-object one
        (a part-wise copy, or a store that ignores `ChecksumAlgorithm`).
    Raises:
        NotImplementedError: the store does not implement server-side copy (stream instead).
    """
    client = s3_client(dst.endpoint)
    source = {"Bucket": src.bucket, "Key": src.key}
    what = f"{src.uri} -> {dst.uri}"
    try:
        if size <= COPY_OBJECT_MAX:
            out = _call(
                what,
                lambda: _raw(
                    client.copy_object,
                    Bucket=dst.bucket,
                    Key=dst.key,
                    CopySource=source,
                    ChecksumAlgorithm="SHA256",
                ),
            )
            return sha256_of_checksum(out.get("CopyObjectResult", {}).get("ChecksumSHA256"))
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(
            multipart_threshold=COPY_OBJECT_MAX, multipart_chunksize=COPY_PART_SIZE
        )
        _call(what, lambda: _raw(client.copy, source, dst.bucket, dst.key, Config=config))
        return None
    except _NotImplemented as e:
        raise NotImplementedError(str(e)) from None


class _NotImplemented(Exception):
    pass


def _raw(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A boto3 call whose "not implemented" answer is not retried (the caller streams)."""
    from botocore.exceptions import ClientError

    try:
        return call(*args, **kwargs)
    except ClientError as e:
        if _not_implemented(e):
            raise _NotImplemented(str(e)) from e
        raise


def sha256_of_checksum(checksum: str | None) -> str | None:
    """The hex SHA-256 of a base64 `ChecksumSHA256`, or None for none or a composite one."""
    if not checksum or "-" in checksum:
        return None
    raw = base64.b64decode(checksum)
    return raw.hex() if len(raw) == 32 else None


def read_sha256(obj: S3Object) -> str:
    """The SHA-256 of an object, read through the migrator (no server-side hash for it)."""
    client = s3_client(obj.endpoint)

    def read() -> str:
        h = hashlib.sha256()
        body = client.get_object(Bucket=obj.bucket, Key=obj.key)["Body"]
        for chunk in body.iter_chunks(1 << 20):
            h.update(chunk)
        return h.hexdigest()

    return _call(obj.uri, read)


def object_size(obj: S3Object) -> int | None:
    """The size of an object, or None when there is none."""
    client = s3_client(obj.endpoint)
    try:
        head = _call(obj.uri, lambda: client.head_object(Bucket=obj.bucket, Key=obj.key))
    except PermanentError as e:
        if "is missing" in e.message:
            return None
        raise
    return int(head["ContentLength"])


def staging_object(staging: Staging, key: str) -> S3Object | None:
    """Where a staging key's object is in S3, or None for a staging store in a folder."""
    if not isinstance(staging, S3Staging):
        return None
    return S3Object(staging.bucket, staging._key(key), _norm(s3_endpoint_url()))


# ---- stores -----------------------------------------------------------------------------------


class Store(Protocol):
    """The files under one artifact root, by path relative to it."""

    uri: str

    def files(self) -> list[tuple[str, int]]:
        """(path, size) of every file, depth first in name order."""
        ...

    def size_of(self, path: str) -> int | None:
        """The size of one file, None when there is none."""
        ...

    def download(self, path: str, local: str) -> None: ...

    def upload(self, local: str, path: str) -> None:
        """Write a local file (named as the file it becomes) at `path`."""
        ...

    def s3_object(self, path: str) -> S3Object | None:
        """Where the file at `path` is in S3, or None for a store that is not S3."""
        ...


class S3Store:
    """An artifact root in S3, read and written with boto3."""

    def __init__(self, uri: str, endpoint: str | None = None) -> None:
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise PermanentError(f"not an S3 URI with a bucket: {uri!r}")
        self.uri = uri.rstrip("/")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.endpoint = _norm(endpoint if endpoint is not None else artifact_endpoint())
        self.client = s3_client(self.endpoint)

    def _key(self, path: str) -> str:
        return f"{self.prefix}/{path}" if self.prefix else path

    def s3_object(self, path: str) -> S3Object:
        return S3Object(self.bucket, self._key(safe_key(path)), self.endpoint)

    def files(self) -> list[tuple[str, int]]:
        prefix = f"{self.prefix}/" if self.prefix else ""
        out: list[tuple[str, int]] = []
        token: str | None = None
        while True:
            args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            if token:
                args["ContinuationToken"] = token
            page: dict[str, Any] = _call(self.uri, lambda a=args: self.client.list_objects_v2(**a))  # type: ignore[misc]
            for obj in page.get("Contents", []):
                path = obj["Key"][len(prefix) :]
                if path and not path.endswith("/"):  # a folder marker is no file
                    out.append((path, int(obj["Size"])))
            token = page.get("NextContinuationToken")
            if not token:
                return sorted(out)

    def size_of(self, path: str) -> int | None:
        return object_size(self.s3_object(path))

    def download(self, path: str, local: str) -> None:
        obj = self.s3_object(path)

        def get() -> None:
            body = self.client.get_object(Bucket=obj.bucket, Key=obj.key)["Body"]
            with open(local, "wb") as f:
                for chunk in body.iter_chunks(1 << 20):
                    f.write(chunk)

        _call(obj.uri, get)

    def upload(self, local: str, path: str) -> None:
        obj = self.s3_object(path)

        def put() -> None:
            if os.path.getsize(local) < _MULTIPART_FROM:
                with open(local, "rb") as f:
                    self.client.put_object(Bucket=obj.bucket, Key=obj.key, Body=f)
            else:
                self.client.upload_file(local, obj.bucket, obj.key)

        _call(obj.uri, put)


class RepoStore:
    """An artifact root through MLflow's own repository for its URI: the server's proxy
    (`mlflow-artifacts:`, without a destination), or a destination MLflow reaches (a folder,
    `gs://`, `wasbs://`, …)."""

    def __init__(self, repo: Any, uri: str) -> None:
        self.repo = repo
        self.uri = uri

    def files(self) -> list[tuple[str, int]]:
        from migrator.mlflow_io import iter_artifact_files

        # REST leaves out a zero size
        return [(f.path, f.file_size or 0) for f in iter_artifact_files(self.repo)]

    def size_of(self, path: str) -> int | None:
        parent = posixpath.dirname(path)
        for f in self.repo.list_artifacts(parent or None):
            if f.path == path and not f.is_dir:
                return int(f.file_size or 0)
        return None

    def download(self, path: str, local: str) -> None:
        self.repo._download_file(path, local)

    def upload(self, local: str, path: str) -> None:
        self.repo.log_artifact(local, posixpath.dirname(path) or None)

    def s3_object(self, path: str) -> S3Object | None:
        return None


def open_store(side: Side, artifact_uri: str) -> Store:
    """The store holding the files of `artifact_uri` on this side (see the module docstring).

    Raises:
        PermanentError: a proxied path outside the destination.
    """
    from migrator.mlflow_io import apply_client_env, artifact_repo

    direct = direct_uri(side, artifact_uri)
    if direct is None:
        return RepoStore(artifact_repo(side.tracking_uri, artifact_uri), artifact_uri)
    if urlparse(direct).scheme == "s3":
        return S3Store(direct)
    apply_client_env()
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return RepoStore(get_artifact_repository(direct), direct)


# ---- the preflight ----------------------------------------------------------------------------


def check_destination(uri: str, flag: str) -> None:
    """Fail fast, naming the flag and the value, on a destination that is malformed or that
    the migrator cannot reach.

    Raises:
        ConfigError: a relative or missing folder, an S3 URI without a bucket or whose bucket
            does not answer, a URI of a server rather than a store, a store MLflow cannot open.
    """
    parsed = urlparse(uri)
    scheme = parsed.scheme
    what = f"{flag} {uri!r}"
    if scheme in _NOT_STORES:
        raise ConfigError(
            f"{what} is not a store: give the value the server was started with "
            "(`mlflow server --artifacts-destination`, e.g. s3://bucket/prefix or a folder)"
        )
    if scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(f"{what} has no bucket (use s3://bucket/prefix)")
        _check_bucket(parsed.netloc, what)
        return
    if scheme in ("", "file"):
        path = unquote(parsed.path) if scheme == "file" else uri
        if not os.path.isabs(path):
            raise ConfigError(
                f"{what} is a relative path: give the folder's absolute path on this machine"
            )
        if not os.path.isdir(path):
            raise ConfigError(f"{what}: no such folder on this machine")
        return
    try:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        get_artifact_repository(uri).list_artifacts()
    except Exception as e:
        raise ConfigError(f"{what} is not usable: {type(e).__name__}: {e}") from None


def _check_bucket(bucket: str, what: str) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    endpoint = artifact_endpoint()
    try:
        s3_client(endpoint).head_bucket(Bucket=bucket)
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        raise ConfigError(
            f"{what}: bucket {bucket!r} not usable ({code or e}); endpoint {endpoint or 'AWS'}"
        ) from None
    except BotoCoreError as e:
        raise ConfigError(f"{what}: S3 not reachable ({e})") from None


def check_destinations(opts: Options, *, source: bool, target: bool) -> None:
    """The preflight of the two flags: each well formed and reachable; the source's also
    shown to hold what its server lists (`check_source_holds`).

    Raises:
        ConfigError: naming the flag and its value.
    """
    if source and opts.source_artifacts_destination:
        check_destination(opts.source_artifacts_destination, "--source-artifacts-destination")
        check_source_holds(opts)
    if target and opts.target_artifacts_destination:
        check_destination(opts.target_artifacts_destination, "--target-artifacts-destination")


#: Runs whose server listing `check_source_holds` compares, at most.
PROBE_RUNS = 20


def check_source_holds(opts: Options) -> None:
    """A wrong `--source-artifacts-destination` would make every run look as if it had no
    files. So the first source run (of a few) whose server lists files has its folder listed
    in the destination too; a destination that lacks them is refused. A server that does not
    answer here is left to the preflight of the tracking URI, which names it.

    Raises:
        ConfigError: the destination does not hold the files the server lists.
    """
    from migrator import credentials

    side = source_side(opts)
    credentials.bind(opts.source, opts.target)  # as the preflight does: each side's own
    try:
        probe = _listed_run(opts.source)
    except Exception as e:  # the tracking preflight reports an unusable server
        log.debug("artifacts destination probe skipped: %s", e)
        return
    if probe is None:
        return
    run_id, uri, listed = probe
    store = open_store(side, uri)
    try:
        held = {p.split("/", 1)[0] for p, _ in store.files()}
    except MigratorError as e:
        raise ConfigError(
            f"--source-artifacts-destination {opts.source_artifacts_destination!r}: "
            f"{store.uri} cannot be listed: {e.message}"
        ) from None
    files = {f.path for f in listed if not f.is_dir}
    if files - held or not held & {f.path for f in listed}:
        raise ConfigError(
            f"--source-artifacts-destination {opts.source_artifacts_destination!r} does not hold "
            f"the files the source server lists for run {run_id} "
            f"({', '.join(sorted(f.path for f in listed)[:3])}; {store.uri} has "
            f"{', '.join(sorted(held)[:3]) or 'nothing'}): is it the value the server was "
            "started with?"
        )


def _listed_run(tracking_uri: str) -> tuple[str, str, list[Any]] | None:
    """The first of a few runs with a proxied artifact URI whose server lists files:
    (run id, artifact URI, the top-level listing), or None."""
    from migrator.mlflow_io import artifact_repo, client

    c = client(tracking_uri)
    exps = [e.experiment_id for e in c.search_experiments(max_results=50)]
    for run in c.search_runs(exps, max_results=PROBE_RUNS) if exps else []:
        uri = run.info.artifact_uri
        if proxied_path(uri) is None:
            continue
        listed = list(artifact_repo(tracking_uri, uri).list_artifacts())
        if listed:
            return run.info.run_id, uri, listed
    return None
