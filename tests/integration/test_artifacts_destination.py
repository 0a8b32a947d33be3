"""Artifacts that do not go through the MLflow servers, on real parts.

A source and a target `mlflow server` keep their proxied artifacts in S3 (moto, the session's,
which holds the staging bucket too). `migrate --source-artifacts-destination …
--target-artifacts-destination …` moves runs with nested folders, a logged model and model
versions (one staged from its own source), `verify` reads every target file back through the
target server, and moto's request recorder shows that every artifact byte was copied by S3
itself (CopyObject / UploadPartCopy): no object read from the source's store, no object
written to staging or to the target's store by a plain PUT, so through neither the servers nor
the migrator. A run whose experiment keeps its artifacts in S3 directly is copied the same way
without the flags, and a bad destination is refused before any work.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import boto3
import pytest
import requests
from mlflow import MlflowClient

from migrator import artifact_store, services
from migrator.cli import main
from migrator.config import Options
from migrator.fanout import make_executor
from migrator.pipeline import run_command

from .conftest import s3_staging

SRC_BUCKET, TGT_BUCKET = "src-artifacts", "tgt-artifacts"
DIRECT_SRC, DIRECT_TGT = "direct-src", "direct-tgt"
MODEL = "dest-model"
BIG = 12 << 20  # above the (lowered) single-copy limit: copied in parts


def _files(i: int) -> dict[str, bytes]:
    return {
        "top.txt": f"run {i}\n".encode() * 40,
        "plots/loss curve ü.csv": b"step,loss\n" + b"".join(b"%d,%d\n" % (s, s * i) for s in range(50)),
        "plots/deep/deeper/random.bin": os.urandom(5000 + i),
        "plots/deep/empty.txt": b"",
    }


def _log(c: MlflowClient, run_id: str, files: dict[str, bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for path, data in files.items():
            os.makedirs(os.path.dirname(os.path.join(tmp, path)), exist_ok=True)
            Path(tmp, path).write_bytes(data)
        c.log_artifacts(run_id, tmp)


@pytest.fixture(scope="module")
def parts(s3: services.Service, workdir: Path) -> Iterator[dict[str, Any]]:
    """Source and target servers whose proxied artifacts are in S3; the source seeded."""
    s3c = boto3.client("s3", endpoint_url=s3.url)
    for b in (SRC_BUCKET, TGT_BUCKET, DIRECT_SRC, DIRECT_TGT):
        with contextlib.suppress(s3c.exceptions.BucketAlreadyOwnedByYou):
            s3c.create_bucket(Bucket=b)
    src_dest, tgt_dest = f"s3://{SRC_BUCKET}/mlflow", f"s3://{TGT_BUCKET}/store"
    with contextlib.ExitStack() as stack:
        src = stack.enter_context(
            services.mlflow_server("src-s3", services.MYSQL, workdir, artifacts_destination=src_dest)
        )
        tgt = stack.enter_context(
            services.mlflow_server("tgt-s3", services.POSTGRES, workdir, artifacts_destination=tgt_dest)
        )
        yield {"src": src, "tgt": tgt, "src_dest": src_dest, "tgt_dest": tgt_dest,
               "seeded": _seed(src.url), "s3": s3}


def _seed(url: str) -> dict[str, Any]:
    from mlflow.entities import LoggedModelStatus

    c = MlflowClient(url)
    exp = c.create_experiment("dest/runs")
    runs, files = [], {}
    for i in range(3):
        rid = c.create_run(exp, run_name=f"run {i}").info.run_id
        files[rid] = _files(i)
        if i == 0:
            files[rid]["blobs/big.bin"] = os.urandom(BIG)
        _log(c, rid, files[rid])
        c.set_terminated(rid)
        runs.append(rid)
    lm = c.create_logged_model(exp, name="clf", source_run_id=runs[0])
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "MLmodel").write_text("flavors: {}\n")
        os.makedirs(Path(tmp, "data"))
        Path(tmp, "data", "weights.bin").write_bytes(os.urandom(2048))
        c.log_model_artifacts(lm.model_id, tmp)
    c.finalize_logged_model(lm.model_id, LoggedModelStatus.READY)
    gone = c.create_run(exp, run_name="deleted later").info.run_id
    _log(c, gone, {"model/MLmodel": b"flavors: {}\n", "model/w.bin": os.urandom(999)})
    c.create_registered_model(MODEL)
    c.create_model_version(MODEL, f"models:/{lm.model_id}", run_id=runs[0], model_id=lm.model_id)
    art = c.get_run(runs[1]).info.artifact_uri
    c.create_model_version(MODEL, f"{art}/plots", run_id=runs[1])
    gone_art = c.get_run(gone).info.artifact_uri
    c.create_model_version(MODEL, f"{gone_art}/model", run_id=gone)
    c.delete_run(gone)  # not migrated: version 3's files are staged from the version itself
    return {"experiment": exp, "runs": runs, "files": files, "logged_model": lm.model_id}


@contextlib.contextmanager
def recording(s3_url: str) -> Iterator[list[dict[str, Any]]]:
    """moto's request recorder around a block; the list is filled with its requests after it."""
    requests.post(f"{s3_url}/moto-api/recorder/reset-recording", timeout=10).raise_for_status()
    requests.post(f"{s3_url}/moto-api/recorder/start-recording", timeout=10).raise_for_status()
    out: list[dict[str, Any]] = []
    try:
        yield out
    finally:
        requests.post(f"{s3_url}/moto-api/recorder/stop-recording", timeout=10).raise_for_status()
        text = requests.get(f"{s3_url}/moto-api/recorder/download-recording", timeout=60).text
        for line in text.splitlines():
            e = json.loads(line)
            url = urlparse(e["url"])
            bucket, _, key = unquote(url.path).lstrip("/").partition("/")
            headers = {k.lower(): v for k, v in e["headers"].items()}
            out.append({"method": e["method"], "bucket": bucket, "key": key, "query": url.query,
                        "copy": "x-amz-copy-source" in headers})


def object_writes(rec: list[dict[str, Any]], bucket: str) -> dict[str, list[bool]]:
    """Each key PUT to in `bucket`, and whether each PUT was a copy made by S3 itself."""
    out: dict[str, list[bool]] = {}
    for r in rec:
        if r["bucket"] == bucket and r["method"] == "PUT" and r["key"]:
            out.setdefault(r["key"], []).append(r["copy"])
    return out


def object_reads(rec: list[dict[str, Any]], bucket: str) -> list[str]:
    """Keys whose bytes were read (GetObject) from `bucket`."""
    return [r["key"] for r in rec if r["bucket"] == bucket and r["method"] == "GET" and r["key"]]


def tree(c: MlflowClient, run_id: str) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        root = c.download_artifacts(run_id, "", tmp)
        return {os.path.relpath(os.path.join(d, f), root): hashlib.sha256(
            Path(d, f).read_bytes()).hexdigest() for d, _, fs in os.walk(root) for f in fs}


@pytest.fixture(scope="module")
def migrated(parts: dict[str, Any], monkeypatch_module: pytest.MonkeyPatch) -> dict[str, Any]:
    # Copies above 5 MiB go in parts here (the real limit, 5 GiB, is too big for a test).
    monkeypatch_module.setattr(artifact_store, "COPY_OBJECT_MAX", 5 << 20)
    monkeypatch_module.setattr(artifact_store, "COPY_PART_SIZE", 5 << 20)
    staging = s3_staging()
    argv = ["--source", parts["src"].url, "--target", parts["tgt"].url, "--staging", staging,
            "--experiments", "dest/*", "--ray-address", "none"]
    flags = ["--source-artifacts-destination", parts["src_dest"],
             "--target-artifacts-destination", parts["tgt_dest"]]
    with recording(parts["s3"].url) as rec:
        code = main(["migrate", *argv, *flags])
    verified = main(["verify", *argv])
    again = run_command("migrate", Options(
        source=parts["src"].url, target=parts["tgt"].url, staging=staging,
        experiments=("dest/*",), ray_address="none",
        source_artifacts_destination=parts["src_dest"],
        target_artifacts_destination=parts["tgt_dest"]), make_executor)
    return {"code": code, "verified": verified, "again": again, "rec": rec,
            "staging": staging}


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_migrate_with_both_flags_moves_runs_models_and_versions(
    parts: dict[str, Any], migrated: dict[str, Any]
) -> None:
    assert migrated["code"] == 0
    src, tgt = MlflowClient(parts["src"].url), MlflowClient(parts["tgt"].url)
    seeded = parts["seeded"]
    by_source = {r.data.tags["mlflow_exim.run_info.run_id"]: r.info.run_id
                 for r in tgt.search_runs([e.experiment_id for e in tgt.search_experiments()])}
    for rid in seeded["runs"]:
        want = {p: hashlib.sha256(d).hexdigest() for p, d in seeded["files"][rid].items()}
        assert tree(tgt, by_source[rid]) == want == tree(src, rid)
        # the files are where the target server keeps them: its destination, by its mapping
        art = tgt.get_run(by_source[rid]).info.artifact_uri
        assert art.startswith("mlflow-artifacts:")
    versions = {int(v.version): v for v in tgt.search_model_versions(f"name = '{MODEL}'")}
    assert sorted(versions) == [1, 2, 3]
    holder = tgt.get_logged_model(versions[3].source.removeprefix("models:/"))
    assert holder.tags["mlflow_exim.model_version"] == f"{MODEL}/3"
    with tempfile.TemporaryDirectory() as tmp:
        got = tgt.download_artifacts(by_source[seeded["runs"][0]], "", tmp)
        assert os.path.getsize(os.path.join(got, "blobs", "big.bin")) == BIG
    assert migrated["again"].ok and not migrated["again"].actions


def test_verify_reads_every_file_through_the_target_server_and_matches(
    migrated: dict[str, Any],
) -> None:
    assert migrated["verified"] == 0


def test_no_artifact_byte_went_through_the_servers_or_the_migrator(
    parts: dict[str, Any], migrated: dict[str, Any]
) -> None:
    rec = migrated["rec"]
    staging_prefix = urlparse(migrated["staging"]).path.strip("/")
    stage_bucket = urlparse(migrated["staging"]).netloc
    # nothing read from the source's store (listings only)
    assert object_reads(rec, SRC_BUCKET) == []
    # every file on the target's store was written by S3 copying it
    written = object_writes(rec, TGT_BUCKET)
    n_files = sum(len(f) for f in parts["seeded"]["files"].values())
    assert len(written) == n_files + 2 + 2  # + the logged model's 2, version 3's 2
    assert all(all(copies) for copies in written.values()), written
    # so was every artifact in staging (documents and manifests are the migrator's own PUTs)
    staged = {k: v for k, v in object_writes(rec, stage_bucket).items()
              if k.startswith(staging_prefix) and "/artifacts/" in k}
    assert len(staged) == len(written)
    assert all(all(copies) for copies in staged.values()), staged
    # the big file went in parts (UploadPartCopy), and only it was read back, to be hashed
    parts_copied = [r for r in rec if r["copy"] and "partNumber" in r["query"]]
    assert parts_copied and {r["key"].rsplit("/", 1)[-1] for r in parts_copied} == {"big.bin"}
    reads = object_reads(rec, stage_bucket)
    assert [k for k in reads if "/artifacts/" in k] == [
        k for k in staged if k.endswith("big.bin")]
    assert object_reads(rec, TGT_BUCKET) == []


def test_a_direct_s3_artifact_location_is_copied_by_s3_without_flags(
    parts: dict[str, Any], target_server: Any
) -> None:
    src = MlflowClient(parts["src"].url)
    exp = src.create_experiment("direct/s3", artifact_location=f"s3://{DIRECT_SRC}/exp")
    rid = src.create_run(exp).info.run_id
    files = _files(9)
    _log(src, rid, files)  # the client writes to S3 itself: this server does not proxy it
    assert src.get_run(rid).info.artifact_uri.startswith(f"s3://{DIRECT_SRC}/")
    tgt_svc = target_server()
    tgt = MlflowClient(tgt_svc.url)
    tgt.create_experiment("direct/s3", artifact_location=f"s3://{DIRECT_TGT}/exp")  # reused
    opts = Options(source=parts["src"].url, target=tgt_svc.url, staging=s3_staging(),
                   experiments=("direct/*",), models=("none-such",), ray_address="none")
    with recording(parts["s3"].url) as rec:
        summary = run_command("migrate", opts, make_executor)
    assert summary.ok, summary.render()
    (target_run,) = tgt.search_runs([tgt.get_experiment_by_name("direct/s3").experiment_id])
    assert tree(tgt, target_run.info.run_id) == {
        p: hashlib.sha256(d).hexdigest() for p, d in files.items()}
    assert object_reads(rec, DIRECT_SRC) == []
    written = object_writes(rec, DIRECT_TGT)
    assert len(written) == len(files) and all(all(c) for c in written.values())
    assert run_command("verify", opts, make_executor).verify.ok


def test_a_bad_destination_is_refused_before_any_work(
    parts: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["migrate", "--source", parts["src"].url, "--target", parts["tgt"].url,
            "--staging", s3_staging(), "--ray-address", "none"]
    cases = [
        (["--source-artifacts-destination", "s3://no-such-bucket/mlflow"], "no-such-bucket"),
        (["--target-artifacts-destination", "s3:///nobucket"], "has no bucket"),
        (["--target-artifacts-destination", "relative/folder"], "relative path"),
        (["--source-artifacts-destination", "mlflow-artifacts:/"], "not a store"),
        # reachable, but not where the source server keeps its files
        (["--source-artifacts-destination", f"s3://{TGT_BUCKET}/elsewhere-{uuid.uuid4().hex}"],
         "does not hold the files"),
    ]
    for flags, says in cases:
        capsys.readouterr()
        assert main([*base, *flags]) == 2, flags
        err = capsys.readouterr().err.strip()
        assert says in err and flags[0] in err and err.count("\n") == 0, err
    assert main(["export", "--source", parts["src"].url, "--staging", s3_staging(),
                 "--source-artifacts-destination", "s3://no-such-bucket/x"]) == 2
