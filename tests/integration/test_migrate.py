"""End to end on real parts: MariaDB source, PostgreSQL target, moto S3 staging, local Ray."""

from __future__ import annotations

import hashlib
import math
import tempfile
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from migrator.config import Options
from migrator.fanout import make_executor
from migrator.lineage import MAX_KEY_LENGTH, RUN_INFO_FIELDS
from migrator.manifest import RUNS_SCHEMA
from migrator.pipeline import Summary, run_command
from migrator.staging import open_staging

from .conftest import Source, folder_hashes, s3_staging


def all_runs(c: MlflowClient) -> list[Any]:
    exps = c.search_experiments(view_type=ViewType.ALL)
    return c.search_runs([e.experiment_id for e in exps], run_view_type=ViewType.ALL,
                         max_results=10000)


def history(c: MlflowClient, run_id: str, key: str) -> list[tuple[int, int, float]]:
    return sorted((m.step, m.timestamp, m.value) for m in c.get_metric_history(run_id, key))


def same_points(a: list[tuple[int, int, float]], b: list[tuple[int, int, float]]) -> bool:
    return len(a) == len(b) and all(
        x[:2] == y[:2] and (x[2] == y[2] or (math.isnan(x[2]) and math.isnan(y[2])))
        for x, y in zip(a, b, strict=True)
    )


def artifact_hashes(c: MlflowClient, run_id: str) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        return folder_hashes(c.download_artifacts(run_id, "", tmp))


@pytest.fixture(scope="module")
def migrated(source: Source, target_server_module: Any, ray_local: None) -> dict[str, Any]:
    target = target_server_module
    opts = Options(source=source.url, target=target.url, staging=s3_staging(),
                   include_deleted=True)
    first = run_command("migrate", opts, make_executor)
    second = run_command("migrate", opts, make_executor)
    src, tgt = MlflowClient(source.url), MlflowClient(target.url)
    manifest = pq.read_table(
        __import__("io").BytesIO(open_staging(opts.staging).read_bytes("manifests/runs.parquet"))
    )
    mapping = dict(zip(manifest["source_run_id"].to_pylist(),
                       manifest["target_run_id"].to_pylist(), strict=True))
    return {"opts": opts, "first": first, "second": second, "src": src, "tgt": tgt,
            "manifest": manifest, "mapping": mapping, "target": target}


@pytest.fixture(scope="module")
def target_server_module(workdir: Any) -> Any:
    from migrator import services

    with services.mlflow_server("target-main", services.POSTGRES, workdir) as svc:
        yield svc


def test_first_run_moves_everything_and_reports_it(migrated: dict[str, Any], source: Source) -> None:
    first: Summary = migrated["first"]
    assert first.ok, first.render()
    n_source = len(all_runs(migrated["src"]))
    assert first.runs == {"tagged": n_source}
    assert first.actions["exported"] == n_source
    assert first.actions["imported"] == n_source


def test_rerun_creates_no_duplicates_and_does_nothing(migrated: dict[str, Any]) -> None:
    second: Summary = migrated["second"]
    assert second.ok
    assert not second.actions  # no work at all
    assert second.found == {"unchanged": len(all_runs(migrated["src"]))}
    src_runs, tgt_runs = all_runs(migrated["src"]), all_runs(migrated["tgt"])
    assert len(tgt_runs) == len(src_runs)
    src_exps = migrated["src"].search_experiments(view_type=ViewType.ALL)
    tgt_exps = migrated["tgt"].search_experiments(view_type=ViewType.ALL)
    assert sorted(e.name for e in tgt_exps) == sorted(e.name for e in src_exps)


def test_experiments_keep_name_tags_description_and_deleted_state(migrated: dict[str, Any]) -> None:
    src, tgt = migrated["src"], migrated["tgt"]
    for se in src.search_experiments(view_type=ViewType.ALL):
        te = tgt.get_experiment("0") if se.experiment_id == "0" else tgt.get_experiment_by_name(se.name)
        assert te is not None, se.name
        assert te.lifecycle_stage == se.lifecycle_stage
        for k, v in se.tags.items():
            assert te.tags[k] == v
        assert te.tags["mlflow_exim.field.experiment_id"] == se.experiment_id
        assert te.tags["mlflow_exim.field.creation_time"] == str(se.creation_time)
        assert te.tags["mlflow_exim.field.name"] == se.name
        if "mlflow.note.content" in se.tags:
            assert te.tags["mlflow_exim.mlflow_tag.note.content"] == se.tags["mlflow.note.content"]
    assert tgt.get_experiment_by_name("demo/archived").lifecycle_stage == "deleted"


def test_runs_keep_every_user_attribute_and_their_times(migrated: dict[str, Any]) -> None:
    src, tgt, mapping = migrated["src"], migrated["tgt"], migrated["mapping"]
    for sr in all_runs(src):
        tr = tgt.get_run(mapping[sr.info.run_id])
        assert tr.info.run_name == sr.info.run_name
        assert tr.info.start_time == sr.info.start_time
        assert tr.info.end_time == sr.info.end_time
        assert tr.info.status == sr.info.status
        assert tr.info.lifecycle_stage == sr.info.lifecycle_stage
        assert tr.info.user_id == sr.info.user_id
        assert tr.data.params == sr.data.params
        for k, v in sr.data.tags.items():
            if k != "mlflow.parentRunId":
                assert tr.data.tags[k] == v[:8000], k[:40]
        s_inputs = sorted((d.dataset.name, d.dataset.digest, d.dataset.source)
                          for d in sr.inputs.dataset_inputs)
        t_inputs = sorted((d.dataset.name, d.dataset.digest, d.dataset.source)
                          for d in tr.inputs.dataset_inputs)
        assert t_inputs == s_inputs
        assert set(tr.data.metrics) == set(sr.data.metrics)


def test_every_metric_point_moves_including_nan_inf_and_long_histories(
    migrated: dict[str, Any], source: Source
) -> None:
    src, tgt, mapping = migrated["src"], migrated["tgt"], migrated["mapping"]
    for sr in all_runs(src):
        for key in sr.data.metrics:
            a = history(src, sr.info.run_id, key)
            b = history(tgt, mapping[sr.info.run_id], key)
            assert same_points(a, b), (sr.info.run_name, key)
    hard = mapping[source.extra["hard_run"]]
    assert len(history(tgt, hard, "long")) == 10_500
    # SQL stores keep ±inf as ±float max (MLflow's own clamping); NaN stays NaN.
    odd = [p[2] for p in history(tgt, mapping[source.seeded.run_ids[0]], "odd")]
    assert math.isnan(odd[0]) and odd[1] >= 1.7e308 and odd[2] <= -1.7e308


def test_nested_runs_point_to_target_parents_across_experiments(
    migrated: dict[str, Any], source: Source
) -> None:
    tgt, mapping = migrated["tgt"], migrated["mapping"]
    assert source.seeded.parent_child
    crossed = 0
    for parent, child in source.seeded.parent_child:
        tc = tgt.get_run(mapping[child])
        assert tc.data.tags["mlflow.parentRunId"] == mapping[parent]
        assert tc.data.tags["mlflow_exim.mlflow_tag.parentRunId"] == parent
        crossed += tgt.get_run(mapping[parent]).info.experiment_id != tc.info.experiment_id
    assert crossed, "the seed must nest across experiments"


def test_artifacts_are_byte_for_byte_including_large_and_awkward_names(
    migrated: dict[str, Any], source: Source
) -> None:
    src, tgt, mapping = migrated["src"], migrated["tgt"], migrated["mapping"]
    sample = [source.seeded.run_ids[0], source.extra["hard_run"]]
    for rid in sample:
        a, b = artifact_hashes(src, rid), artifact_hashes(tgt, mapping[rid])
        assert a == b and a
    hard = artifact_hashes(tgt, mapping[source.extra["hard_run"]])
    assert hard["blobs/large files/big.bin"] == source.extra["big_sha256"]
    first = artifact_hashes(tgt, mapping[source.seeded.run_ids[0]])
    assert "plots/loss curve ü.csv" in first
    assert first["plots/deep/empty.txt"] == hashlib.sha256(b"").hexdigest()


def test_source_tags_follow_the_lineage_rules(migrated: dict[str, Any], source: Source) -> None:
    src, tgt, mapping = migrated["src"], migrated["tgt"], migrated["mapping"]
    for sr in all_runs(src):
        tags = tgt.get_run(mapping[sr.info.run_id]).data.tags
        for f in RUN_INFO_FIELDS:
            value = getattr(sr.info, f)
            key = f"mlflow_exim.run_info.{f}"
            if value is None:
                assert key not in tags
            else:
                assert tags[key] == str(value), f
        for k, v in sr.data.tags.items():
            if k.startswith("mlflow."):
                copy = ("mlflow_exim.mlflow_tag." + k[len("mlflow."):])[:MAX_KEY_LENGTH]
                assert tags[copy] == v[:8000]
        assert not any(k.startswith("mlflow_exim.") and k not in _expected(sr) for k in tags)
    long_key = "mlflow_exim.mlflow_tag." + "x" * 236
    hard = tgt.get_run(mapping[source.extra["hard_run"]]).data.tags
    assert hard[long_key[:MAX_KEY_LENGTH]] == "long key"


def _expected(sr: Any) -> set[str]:
    keys = {f"mlflow_exim.run_info.{f}" for f in RUN_INFO_FIELDS}
    keys |= {("mlflow_exim.mlflow_tag." + k[7:])[:MAX_KEY_LENGTH]
             for k in sr.data.tags if k.startswith("mlflow.")}
    return keys


def test_manifest_has_the_documented_columns_and_one_row_per_run(migrated: dict[str, Any]) -> None:
    m: pa.Table = migrated["manifest"]
    for f in RUNS_SCHEMA:
        assert m.schema.field(f.name).type == f.type, f.name
    assert m.schema.field("start_time").type == pa.timestamp("ms", tz="UTC")
    n = len(all_runs(migrated["src"]))
    assert m.num_rows == n
    assert len(set(m["source_run_id"].to_pylist())) == n
    assert set(m["state"].to_pylist()) == {"tagged"}
    rows = m.to_pylist()
    hard = [r for r in rows if r["run_name"] == "big history"][0]
    assert dict(hard["mlflow_tags"])["mlflow." + "x" * 236] == "long key"
    assert hard["n_metric_points"] == 10_500
    assert hard["artifact_bytes"] == 64 << 20
    # one line of DuckDB over the manifest (as the README shows)
    with tempfile.NamedTemporaryFile(suffix=".parquet") as f:
        pq.write_table(m, f.name)
        got = duckdb.sql(
            f"select count(*) from '{f.name}' where state = 'tagged'"
        ).fetchall()
    assert got == [(n,)]
