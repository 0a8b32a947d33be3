"""The staging store (migrator.staging): key safety and the local folder backend."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from migrator.errors import ConfigError, StagingError
from migrator.staging import LocalStaging, open_staging, safe_key


def _all_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


# ---- safe_key --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "..",
        "../x",
        "a/../../x",
        "a/..",
        "/etc/passwd",
        "/",
        "a#b",
        "runs/r1/artifacts/#frag",
        "a\\b",
        "..\\..\\x",
        "a//b",
        "a/",
        "",
        ".",
        "a/./b",
        "a\x00b",
    ],
)
def test_safe_key_refuses(key: str) -> None:
    with pytest.raises(StagingError):
        safe_key(key)


def test_safe_key_refuses_bad_part_among_good_ones() -> None:
    with pytest.raises(StagingError):
        safe_key("runs", "r1", "../../escape")
    with pytest.raises(StagingError):
        safe_key("runs", "/abs")
    with pytest.raises(StagingError):
        safe_key("runs", "")


@pytest.mark.parametrize(
    "key",
    [
        "a b/c d.txt",
        "données/模型/ファイル.bin",
        "x..y/...z/.hidden",
        "a-b_c/1.2.3",
        "emoji/🙂.png",
    ],
)
def test_safe_key_accepts(key: str) -> None:
    assert safe_key(key) == key


def test_safe_key_joins_parts() -> None:
    assert safe_key("runs", "r1/artifacts", "model/MLmodel") == "runs/r1/artifacts/model/MLmodel"


# ---- LocalStaging ----------------------------------------------------------------------


def test_bytes_round_trip(tmp_path: Path) -> None:
    st = LocalStaging(str(tmp_path))
    data = bytes(range(256)) * 10
    st.write_bytes("runs/r1/run.json", data)
    assert st.read_bytes("runs/r1/run.json") == data
    assert (tmp_path / "runs" / "r1" / "run.json").read_bytes() == data
    assert st.exists("runs/r1/run.json")
    assert not st.exists("runs/r1/other.json")
    assert not st.exists("runs/r1")  # a folder is not an object


def test_overwrite_replaces_and_leaves_no_temp_files(tmp_path: Path) -> None:
    st = LocalStaging(str(tmp_path))
    st.write_bytes("a/b", b"old content, longer")
    st.write_bytes("a/b", b"new")
    assert st.read_bytes("a/b") == b"new"
    assert _all_files(tmp_path) == {"a/b"}


def test_file_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "root"
    st = LocalStaging(str(root))
    src = tmp_path / "src.bin"
    src.write_bytes(b"\x00\x01payload" * 1000)
    st.upload_file(str(src), "runs/r1/artifacts/dir with space/é.bin")
    out = tmp_path / "out.bin"
    st.download_file("runs/r1/artifacts/dir with space/é.bin", str(out))
    assert out.read_bytes() == src.read_bytes()
    assert st.read_bytes("runs/r1/artifacts/dir with space/é.bin") == src.read_bytes()


def test_list_keys_nested(tmp_path: Path) -> None:
    st = LocalStaging(str(tmp_path))
    keys = {
        "runs/r1/run.json",
        "runs/r1/artifacts/a.txt",
        "runs/r1/artifacts/deep/er/b.txt",
        "runs/r2/run.json",
    }
    for k in keys:
        st.write_bytes(k, k.encode())
    st.write_bytes("experiments/1/experiment.json", b"{}")
    assert set(st.list_keys("runs")) == keys
    assert set(st.list_keys("runs/r1/artifacts")) == {
        "runs/r1/artifacts/a.txt",
        "runs/r1/artifacts/deep/er/b.txt",
    }
    assert list(st.list_keys("nothing/here")) == []
    # keys listed are usable as-is
    for k in st.list_keys("runs"):
        assert st.read_bytes(k) == k.encode()


def test_list_keys_hides_temp_files(tmp_path: Path) -> None:
    st = LocalStaging(str(tmp_path))
    st.write_bytes("m/real.parquet", b"x")
    (tmp_path / "m" / ".tmp-abc").write_bytes(b"half")
    assert list(st.list_keys("m")) == ["m/real.parquet"]


def test_delete(tmp_path: Path) -> None:
    st = LocalStaging(str(tmp_path))
    st.write_bytes("a/b", b"x")
    st.delete("a/b")
    assert not st.exists("a/b")
    st.delete("a/b")  # missing is fine
    with pytest.raises(StagingError):
        st.delete("../a/b")


@pytest.mark.parametrize("key", ["../escape.txt", "a/../../escape.txt", "ABS",
                                 "..\\escape.txt", "a/../escape.txt"])
def test_traversal_never_writes_outside_root(tmp_path: Path, key: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    if key == "ABS":
        key = str(tmp_path / "escape.txt")  # an absolute path that would land outside the root
    st = LocalStaging(str(root))
    src = tmp_path / "src.bin"
    src.write_bytes(b"evil")
    before = _all_files(tmp_path)
    with pytest.raises(StagingError):
        st.write_bytes(key, b"evil")
    with pytest.raises(StagingError):
        st.upload_file(str(src), key)
    with pytest.raises(StagingError):
        st.read_bytes(key)
    with pytest.raises(StagingError):
        st.download_file(key, str(tmp_path / "dl.bin"))
    assert _all_files(tmp_path) == before
    assert not (tmp_path / "escape.txt").exists()
    assert not (root / "escape.txt").exists()


def test_missing_key_raises_staging_error(tmp_path: Path) -> None:
    st = LocalStaging(str(tmp_path))
    with pytest.raises(StagingError, match="missing"):
        st.read_bytes("runs/nope/run.json")
    with pytest.raises(StagingError, match="missing"):
        st.download_file("runs/nope/run.json", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_relative_root_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    st = LocalStaging("rel")
    assert Path(st.uri).is_absolute()
    assert st.root == tmp_path / "rel"


# ---- open_staging ----------------------------------------------------------------------


@pytest.mark.parametrize("uri", ["ftp://host/path", "gs://bucket/prefix", "http://x/y"])
def test_open_staging_refuses_unknown_scheme(uri: str) -> None:
    with pytest.raises(ConfigError, match="unsupported staging scheme"):
        open_staging(uri)


def test_open_staging_s3_without_bucket_is_config_error() -> None:
    with pytest.raises(ConfigError, match="no bucket"):
        open_staging("s3:///prefix")


def test_open_staging_local_folder_and_file_uri(tmp_path: Path) -> None:
    st = open_staging(str(tmp_path / "plain"))
    assert isinstance(st, LocalStaging)
    assert st.root == tmp_path / "plain"
    st2 = open_staging(f"file://{tmp_path / 'viafile'}")
    assert isinstance(st2, LocalStaging)
    assert st2.root == tmp_path / "viafile"
    st2.write_bytes("k", b"v")
    assert (tmp_path / "viafile" / "k").read_bytes() == b"v"


def test_delete_many_on_s3_deletes_in_batches_and_only_what_it_is_given(
    moto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uuid

    from migrator import staging as staging_mod
    from migrator.staging import S3Staging

    assert staging_mod._DELETE_BATCH == 1000  # the most one DeleteObjects takes
    monkeypatch.setattr(staging_mod, "_DELETE_BATCH", 10)  # the same, on fewer keys
    st = S3Staging(f"s3://stage/{uuid.uuid4().hex[:8]}")
    keys = [f"manifests/_journal/runs/{i:05d}.parquet" for i in range(25)]
    for k in keys:
        st.write_bytes(k, b"x")
    st.write_bytes("manifests/runs.parquet", b"keep")
    requests: list[str] = []
    st._client.meta.events.register(
        "before-call.s3.DeleteObjects", lambda **_: requests.append("DeleteObjects")
    )
    assert st.delete_many(iter(keys[:21])) == 21
    assert len(requests) == 3  # one per batch, not one per key
    left = sorted(st.list_keys("manifests"))
    assert left == sorted([*keys[21:], "manifests/runs.parquet"])
    assert st.delete_many([]) == 0 and len(requests) == 3


def test_delete_many_local(tmp_path: Path) -> None:
    st = LocalStaging(str(tmp_path))
    for k in ("a/1", "a/2", "b/3"):
        st.write_bytes(k, b"x")
    assert st.delete_many(["a/1", "b/3", "never-there"]) == 3
    assert list(st.list_keys("a")) == ["a/2"] and not st.exists("b/3")


@pytest.mark.parametrize(
    ("parallel", "single_put_max", "calls"),
    [
        (True, None, ["CreateMultipartUpload", "UploadPart", "UploadPart", "CompleteMultipartUpload"]),
        (False, None, ["PutObject"]),  # the driver's way: one streamed PUT
        (False, 1, ["CreateMultipartUpload", "UploadPart", "UploadPart", "CompleteMultipartUpload"]),
    ],
    ids=["tasks: parallel multipart", "driver: one PUT", "driver: above S3's PUT limit"],
)
def test_upload_file_on_s3_for_a_large_file(
    moto: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    parallel: bool,
    single_put_max: int | None,
    calls: list[str],
) -> None:
    import uuid

    from migrator import staging as staging_mod
    from migrator.staging import S3Staging

    if single_put_max is not None:
        monkeypatch.setattr(staging_mod, "_SINGLE_PUT_MAX", single_put_max)
    src = tmp_path / "big.parquet"
    data = uuid.uuid4().bytes * ((staging_mod._MULTIPART_FROM + (1 << 20)) // 16)
    src.write_bytes(data)
    st = S3Staging(f"s3://stage/{uuid.uuid4().hex[:8]}")
    seen: list[str] = []
    st._client.meta.events.register("before-call.s3.*", lambda model, **_: seen.append(model.name))

    st.upload_file(str(src), "manifests/runs.parquet", parallel=parallel)

    assert sorted(seen) == sorted(calls)
    assert st.read_bytes("manifests/runs.parquet") == data


def test_importing_the_package_picks_the_system_allocator_for_arrow() -> None:
    code = "import migrator, pyarrow; print(pyarrow.default_memory_pool().backend_name)"
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "system", out.stderr


def test_absent_only_writes_race_to_one_winner_and_leave_nothing_beside(tmp_path: Path) -> None:
    """`put_if(key, data, None)` on a folder: of many writers at once exactly one lands, whole;
    no lock or temporary file is left in the object's folder."""
    from concurrent.futures import ThreadPoolExecutor

    staging = LocalStaging(str(tmp_path))
    bodies = [bytes([i]) * 100_000 for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        tags = list(pool.map(lambda b: staging.put_if("runs/r1/run.json", b, None), bodies))
    won = [i for i, t in enumerate(tags) if t is not None]
    assert len(won) == 1
    assert staging.read_bytes("runs/r1/run.json") == bodies[won[0]]
    assert _all_files(tmp_path) == {"runs/r1/run.json"}


def test_absent_only_write_takes_the_lock_where_hard_links_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(src: str, dst: str) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    staging = LocalStaging(str(tmp_path))
    assert staging.put_if("k/a", b"one", None) is not None
    assert staging.put_if("k/a", b"two", None) is None
    assert staging.read_bytes("k/a") == b"one"
    assert not [p for p in (tmp_path / "k").iterdir() if p.name.startswith(".tmp-")]
