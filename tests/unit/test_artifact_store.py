"""Artifacts without the servers (migrator.artifact_store, migrator.artifacts): MLflow's mapping
of proxied URIs to the destination, traversal refused, the choice between a server-side copy
and streaming, and the SHA-256 each way records; on moto's server in this process."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from migrator import artifact_store
from migrator.artifact_store import (
    RepoStore,
    S3Object,
    S3Store,
    Side,
    check_destination,
    direct_uri,
    open_store,
    proxied_path,
    server_side,
    sha256_of_checksum,
)
from migrator.artifacts import from_keep, from_staging, stage_artifacts, upload_artifacts
from migrator.errors import ConfigError, PermanentError
from migrator.staging import LocalStaging, S3Staging

RUN = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"


# ---- the mapping ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri, path",
    [
        (f"mlflow-artifacts:/1/{RUN}/artifacts", f"1/{RUN}/artifacts"),
        (f"mlflow-artifacts://host:5000/1/{RUN}/artifacts", f"1/{RUN}/artifacts"),
        (f"mlflow-artifacts:///1/{RUN}/artifacts/", f"1/{RUN}/artifacts"),
        ("mlflow-artifacts:/3/models/m-abc/artifacts", "3/models/m-abc/artifacts"),
        ("mlflow-artifacts:/a%20b/./c", "a b/c"),  # decoded as the server decodes it
        ("mlflow-artifacts:/", ""),
        (
            f"http://old:5000/api/2.0/mlflow-artifacts/artifacts/1/{RUN}/artifacts",
            f"1/{RUN}/artifacts",
        ),
        ("https://h/prefix/api/2.0/mlflow-artifacts/artifacts/x", "x"),
    ],
)
def test_proxied_uris_map_to_their_path_below_the_destination(uri: str, path: str) -> None:
    assert proxied_path(uri) == path


@pytest.mark.parametrize(
    "uri",
    [f"s3://bucket/1/{RUN}/artifacts", "/srv/mlruns/1/x", "file:///srv/x", "http://h:5000/x"],
)
def test_other_uris_are_not_proxied(uri: str) -> None:
    assert proxied_path(uri) is None


@pytest.mark.parametrize(
    "uri",
    [
        "mlflow-artifacts:/../x",
        "mlflow-artifacts:/1/../../x",
        "mlflow-artifacts://host:5000/../../etc",
        "mlflow-artifacts:/1/%2e%2e/%2E%2E/x",  # encoded: the server would decode it
        "mlflow-artifacts:/1/a%5c..%5cb",  # a backslash
        "http://h/api/2.0/mlflow-artifacts/artifacts/../x",
    ],
)
def test_a_path_out_of_the_destination_is_refused(uri: str) -> None:
    with pytest.raises(PermanentError, match="outside the server's artifacts destination"):
        proxied_path(uri)
    with pytest.raises(PermanentError):
        direct_uri(Side("http://src:5000", "s3://bucket/mlflow"), uri)


def test_direct_uri_joins_the_destination_and_the_path() -> None:
    uri = f"mlflow-artifacts:/1/{RUN}/artifacts"
    assert direct_uri(Side("http://s", "s3://b/p"), uri) == f"s3://b/p/1/{RUN}/artifacts"
    assert direct_uri(Side("http://s", "s3://b/p/"), uri) == f"s3://b/p/1/{RUN}/artifacts"
    assert direct_uri(Side("http://s", "s3://b"), uri) == f"s3://b/1/{RUN}/artifacts"
    assert direct_uri(Side("http://s", "/srv/art"), uri) == f"/srv/art/1/{RUN}/artifacts"
    assert direct_uri(Side("http://s", "file:///srv/art"), uri) == (
        f"file:///srv/art/1/{RUN}/artifacts"
    )


def test_without_a_destination_proxied_files_go_through_the_server() -> None:
    assert direct_uri(Side("http://s"), f"mlflow-artifacts:/1/{RUN}/artifacts") is None


def test_an_s3_artifact_uri_is_its_store_with_or_without_the_flags() -> None:
    uri = f"s3://direct/exp/{RUN}/artifacts"
    assert direct_uri(Side("http://s"), uri) == uri
    assert direct_uri(Side("http://s", "s3://other/p"), uri) == uri


def test_open_store_picks_the_store(tmp_path: Path) -> None:
    uri = f"mlflow-artifacts:/1/{RUN}/artifacts"
    s3 = open_store(Side("http://s", "s3://b/p"), uri)
    assert isinstance(s3, S3Store) and (s3.bucket, s3.prefix) == ("b", f"p/1/{RUN}/artifacts")
    local = open_store(Side("http://s", str(tmp_path)), uri)
    assert isinstance(local, RepoStore) and local.s3_object("x") is None
    assert type(local.repo).__name__ == "LocalArtifactRepository"
    proxied = open_store(Side("http://s:5000"), uri)
    assert isinstance(proxied, RepoStore)
    assert type(proxied.repo).__name__ == "MlflowArtifactsRepository"


def test_a_local_destination_is_read_and_written_directly(tmp_path: Path) -> None:
    root = tmp_path / "dest" / "1" / RUN / "artifacts"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "c.txt").write_bytes(b"deep")
    (root / "top.txt").write_bytes(b"top")
    store = open_store(Side("http://s", str(tmp_path / "dest")), f"mlflow-artifacts:/1/{RUN}/artifacts")
    assert store.files() == [("a/b/c.txt", 4), ("top.txt", 3)]
    assert store.size_of("a/b/c.txt") == 4 and store.size_of("nope") is None


# ---- choosing the copy ------------------------------------------------------------------------


def test_server_side_only_between_s3_objects_on_one_endpoint() -> None:
    a = S3Object("src", "k", "http://127.0.0.1:9000")
    assert server_side(a, S3Object("dst", "k", "http://127.0.0.1:9000/"))
    assert not server_side(a, S3Object("dst", "k", "http://localhost:9000"))
    assert not server_side(a, None) and not server_side(None, a)


def test_only_a_full_object_checksum_is_a_sha256() -> None:
    digest = hashlib.sha256(b"x").digest()
    assert sha256_of_checksum(base64.b64encode(digest).decode()) == digest.hex()
    assert sha256_of_checksum(base64.b64encode(digest).decode() + "-4") is None  # composite
    assert sha256_of_checksum(None) is None


# ---- the preflight ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri, says",
    [
        ("s3:///prefix", "has no bucket"),
        ("relative/folder", "relative path"),
        ("mlflow-artifacts:/", "not a store"),
        ("http://server:5000", "not a store"),
        ("nosuch://x/y", "not usable"),
    ],
)
def test_a_malformed_destination_is_refused_naming_it(uri: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as e:
        check_destination(uri, "--source-artifacts-destination")
    assert "--source-artifacts-destination" in str(e.value) and uri in str(e.value)


def test_a_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such folder"):
        check_destination(str(tmp_path / "nope"), "--target-artifacts-destination")
    check_destination(str(tmp_path), "--target-artifacts-destination")
    check_destination(f"file://{tmp_path}", "--target-artifacts-destination")


# ---- copies on moto ---------------------------------------------------------------------------


FILES = {"MLmodel": b"flavors: {}\n", "a/b/c.bin": os.urandom(300_000), "empty": b""}


class Calls:
    """The S3 operations boto3 clients send, by name."""

    def __init__(self) -> None:
        self.ops: list[str] = []

    def __call__(self, model: Any, **_: Any) -> None:
        self.ops.append(model.name)

    def watch(self, client: Any) -> None:
        client.meta.events.register("before-call.s3", self)


@pytest.fixture()
def world(moto: str) -> Iterator[dict[str, Any]]:
    """Source files under s3://src/mlflow/1/<run>/artifacts, an S3 staging, calls recorded."""
    import uuid

    run = uuid.uuid4().hex
    src = S3Store(f"s3://src/mlflow/1/{run}/artifacts")
    for path, data in FILES.items():
        src.client.put_object(Bucket="src", Key=src._key(path), Body=data)
    staging = S3Staging(f"s3://stage/{run}")
    calls = Calls()
    calls.watch(artifact_store.s3_client(moto))
    calls.watch(staging._client)
    yield {"run": run, "staging": staging, "calls": calls, "url": moto}
    calls.ops.clear()


def _key_of(run: str) -> Any:
    return lambda path: f"runs/{run}/artifacts/{path}"


def _expected() -> list[dict[str, Any]]:
    return sorted(
        ({"path": p, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for p, d in FILES.items()),
        key=lambda f: f["path"],
    )


def _read(url: str, bucket: str, key: str) -> bytes:
    body: bytes = artifact_store.s3_client(url).get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


def test_s3_to_s3_on_one_endpoint_is_copied_by_s3_with_its_sha256(
    world: dict[str, Any], tmp_path: Path
) -> None:
    run, staging, calls = world["run"], world["staging"], world["calls"]
    side = Side("http://src:5000", "s3://src/mlflow")
    files = stage_artifacts(side, f"mlflow-artifacts:/1/{run}/artifacts", staging, _key_of(run), str(tmp_path))
    assert files == _expected()
    assert set(calls.ops) == {"ListObjectsV2", "CopyObject"}  # no byte through the migrator
    assert os.listdir(tmp_path) == []  # nothing kept: the bytes never came here
    for path, data in FILES.items():
        assert staging.read_bytes(f"runs/{run}/artifacts/{path}") == data
    # the import (in the same task: nothing kept, so from staging) is a copy too
    calls.ops.clear()
    target = Side("http://tgt:5000", "s3://tgt/dest")
    fetch = from_keep(str(tmp_path), staging, _key_of(run))
    upload_artifacts(target, f"mlflow-artifacts:/7/{run}/artifacts", files, fetch, "run x")
    assert set(calls.ops) == {"CopyObject"}
    for path, data in FILES.items():
        assert _read(world["url"], "tgt", f"dest/7/{run}/artifacts/{path}") == data


def test_a_copy_whose_sha256_is_not_the_recorded_one_fails(world: dict[str, Any], tmp_path: Path) -> None:
    run, staging = world["run"], world["staging"]
    side = Side("http://src:5000", "s3://src/mlflow")
    files = stage_artifacts(side, f"mlflow-artifacts:/1/{run}/artifacts", staging, _key_of(run), str(tmp_path))
    staging.write_bytes(f"runs/{run}/artifacts/MLmodel", b"flavors: {}\r\n")  # same size, changed
    with pytest.raises(PermanentError, match="SHA-256"):
        upload_artifacts(Side("http://t", "s3://tgt/d"), f"mlflow-artifacts:/7/{run}/artifacts", files,
                         from_staging(staging, _key_of(run)), "run x")


def test_large_objects_are_copied_in_parts_and_hashed_by_reading_the_copy(
    world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, staging, calls = world["run"], world["staging"], world["calls"]
    big = os.urandom(11 << 20)
    src = S3Store(f"s3://src/mlflow/1/{run}/artifacts")
    src.client.put_object(Bucket="src", Key=src._key("big.bin"), Body=big)
    monkeypatch.setattr(artifact_store, "COPY_OBJECT_MAX", 5 << 20)
    monkeypatch.setattr(artifact_store, "COPY_PART_SIZE", 5 << 20)
    calls.ops.clear()
    files = stage_artifacts(Side("http://s", "s3://src/mlflow"), f"mlflow-artifacts:/1/{run}/artifacts",
                            staging, _key_of(run), str(tmp_path), only="big.bin")
    assert files == [{"path": "big.bin", "size": len(big), "sha256": hashlib.sha256(big).hexdigest()}]
    assert "UploadPartCopy" in calls.ops and "PutObject" not in calls.ops and "UploadPart" not in calls.ops
    assert calls.ops.count("GetObject") == 1  # the hash: one read of the staged copy
    calls.ops.clear()
    upload_artifacts(Side("http://t", "s3://tgt/d"), f"mlflow-artifacts:/7/{run}/artifacts", files,
                     from_staging(staging, _key_of(run)), "run x")
    assert "UploadPartCopy" in calls.ops and "GetObject" not in calls.ops
    assert _read(world["url"], "tgt", f"d/7/{run}/artifacts/big.bin") == big


def test_another_endpoint_streams_through_the_migrator(
    world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, staging, calls = world["run"], world["staging"], world["calls"]
    # the same moto reached by another name: another endpoint, as far as anyone can tell
    other = world["url"].replace("127.0.0.1", "localhost")
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", other)
    calls.watch(artifact_store.s3_client(other))
    files = stage_artifacts(Side("http://s", "s3://src/mlflow"), f"mlflow-artifacts:/1/{run}/artifacts",
                            staging, _key_of(run), str(tmp_path))
    assert files == _expected()
    assert "CopyObject" not in calls.ops and calls.ops.count("GetObject") == len(FILES)
    assert sorted(os.listdir(tmp_path)) == ["0", "1", "2"]  # kept for the import in this task


def test_a_folder_staging_streams_and_keeps_local_copies(world: dict[str, Any], tmp_path: Path) -> None:
    run, calls = world["run"], world["calls"]
    staging = LocalStaging(str(tmp_path / "staging"))
    keep = tmp_path / "keep"
    keep.mkdir()
    files = stage_artifacts(Side("http://s", "s3://src/mlflow"), f"mlflow-artifacts:/1/{run}/artifacts",
                            staging, _key_of(run), str(keep))
    assert files == _expected()
    assert "CopyObject" not in calls.ops
    calls.ops.clear()
    upload_artifacts(Side("http://t", "s3://tgt/d"), f"mlflow-artifacts:/8/{run}/artifacts", files,
                     from_keep(str(keep), staging, _key_of(run)), "run x")
    assert "CopyObject" not in calls.ops and "GetObject" not in calls.ops  # from the kept copies
    assert _read(world["url"], "tgt", f"d/8/{run}/artifacts/a/b/c.bin") == FILES["a/b/c.bin"]


def test_a_store_without_server_side_copy_is_streamed(
    world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, staging, calls = world["run"], world["staging"], world["calls"]

    def refuse(*_: Any, **__: Any) -> None:
        raise NotImplementedError("501 NotImplemented")

    monkeypatch.setattr("migrator.artifacts.copy_object", refuse)
    files = stage_artifacts(Side("http://s", "s3://src/mlflow"), f"mlflow-artifacts:/1/{run}/artifacts",
                            staging, _key_of(run), str(tmp_path))
    assert files == _expected() and "GetObject" in calls.ops


def test_a_copy_answered_not_implemented_is_not_retried_but_streamed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from botocore.exceptions import ClientError

    sent: list[str] = []

    class Refusing:
        def copy_object(self, **_: Any) -> None:
            sent.append("CopyObject")
            raise ClientError(
                {"Error": {"Code": "NotImplemented"}, "ResponseMetadata": {"HTTPStatusCode": 501}},  # type: ignore[typeddict-item]
                "CopyObject",
            )

    monkeypatch.setattr(artifact_store, "s3_client", lambda endpoint: Refusing())
    a, b = S3Object("a", "k", "http://e"), S3Object("b", "k", "http://e")
    with pytest.raises(NotImplementedError):
        artifact_store.copy_object(a, b, 10)
    assert sent == ["CopyObject"]  # once: a 5xx that means "never" is not waited out


def test_a_direct_s3_artifact_uri_is_copied_without_flags(world: dict[str, Any], tmp_path: Path) -> None:
    run, staging, calls = world["run"], world["staging"], world["calls"]
    files = stage_artifacts(Side("http://s"), f"s3://src/mlflow/1/{run}/artifacts", staging,
                            _key_of(run), str(tmp_path))
    assert files == _expected() and set(calls.ops) == {"ListObjectsV2", "CopyObject"}


def test_an_s3_destination_whose_bucket_does_not_answer_is_refused(moto: str) -> None:
    with pytest.raises(ConfigError, match="bucket 'no-such-bucket' not usable"):
        check_destination("s3://no-such-bucket/p", "--target-artifacts-destination")
    check_destination("s3://tgt/p", "--target-artifacts-destination")
