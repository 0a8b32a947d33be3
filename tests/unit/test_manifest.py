"""Parquet manifests (migrator.manifest): journal, compaction, newest-row-wins, types."""

from __future__ import annotations

import io
import itertools
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from migrator import manifest
from migrator.errors import StagingError
from migrator.manifest import (
    EXPERIMENTS_SCHEMA,
    RUNS_SCHEMA,
    TS,
    ManifestTable,
    experiments_table,
    rows_to_table,
    runs_table,
    table_to_rows,
)
from migrator.staging import LocalStaging

JOURNAL = "manifests/_journal/runs"


@pytest.fixture
def staging(tmp_path: Path) -> LocalStaging:
    return LocalStaging(str(tmp_path))


def _row(run_id: str, state: str = "exported", **kw: object) -> dict:
    return {"source_run_id": run_id, "source_experiment_id": "1", "state": state, **kw}


def _journal(staging: LocalStaging) -> list[str]:
    return sorted(staging.list_keys(JOURNAL))


# ---- journal ---------------------------------------------------------------------------


def test_append_buffers_until_flush_rows(staging: LocalStaging) -> None:
    t = runs_table(staging, flush_rows=3)
    t.append([_row("a"), _row("b")])
    assert _journal(staging) == []
    t.append([_row("c")])
    assert len(_journal(staging)) == 1
    t.append([_row("d")])
    assert len(_journal(staging)) == 1  # d is still buffered
    t.flush()
    assert len(_journal(staging)) == 2
    assert set(t.load()) == {"a", "b", "c", "d"}


def test_flush_of_empty_buffer_writes_nothing(staging: LocalStaging) -> None:
    t = runs_table(staging)
    t.flush()
    assert _journal(staging) == []
    t.append([_row("a")])
    t.flush()
    t.flush()
    assert len(_journal(staging)) == 1


def test_buffered_rows_are_not_visible_until_flushed(staging: LocalStaging) -> None:
    t = runs_table(staging, flush_rows=100)
    t.append([_row("a")])
    assert t.load() == {}
    t.flush()
    assert set(t.load()) == {"a"}


def test_journal_files_are_parquet_with_the_schema(staging: LocalStaging) -> None:
    t = runs_table(staging)
    t.append([_row("a")])
    t.flush()
    (key,) = _journal(staging)
    assert key.startswith(JOURNAL + "/") and key.endswith(".parquet")
    table = pq.read_table(io.BytesIO(staging.read_bytes(key)))
    assert table.schema.equals(RUNS_SCHEMA)


# ---- newest row wins -------------------------------------------------------------------


def test_newest_row_wins_across_journal_files(staging: LocalStaging) -> None:
    t = runs_table(staging)
    t.append([_row("a", "exported"), _row("b", "exported")])
    t.flush()
    t.append([_row("a", "imported", target_run_id="t-a")])
    t.flush()
    t.append([_row("a", "tagged", target_run_id="t-a")])
    t.flush()
    rows = t.load()
    assert rows["a"]["state"] == "tagged"
    assert rows["a"]["target_run_id"] == "t-a"
    assert rows["b"]["state"] == "exported"
    assert len(rows) == 2
    assert t.read_table().num_rows == 2


def test_newest_row_wins_within_one_file(staging: LocalStaging) -> None:
    t = runs_table(staging)
    t.append([_row("a", "exported"), _row("b", "exported"), _row("a", "failed", error="E: x"),
              _row("a", "imported")])
    t.flush()
    assert len(_journal(staging)) == 1
    rows = t.load()
    assert rows["a"]["state"] == "imported"
    assert rows["a"]["error"] is None  # the whole newest row, not a merge
    assert rows["b"]["state"] == "exported"


def test_journal_rows_override_compacted_rows(staging: LocalStaging) -> None:
    t = runs_table(staging)
    t.append([_row("a", "exported"), _row("b", "exported")])
    t.compact()
    t.append([_row("a", "imported")])
    t.flush()
    rows = t.load()
    assert rows["a"]["state"] == "imported"
    assert rows["b"]["state"] == "exported"


def test_newest_wins_with_many_keys_and_files(staging: LocalStaging) -> None:
    t = runs_table(staging, flush_rows=7)
    expected = {}
    for i, state in zip(range(60), itertools.cycle(["exported", "imported", "tagged"])):
        key = f"r{i % 13}"
        t.append([_row(key, state, n_params=i)])
        expected[key] = (state, i)
    t.flush()
    assert len(_journal(staging)) > 5
    got = {k: (r["state"], r["n_params"]) for k, r in t.load().items()}
    assert got == expected
    t.compact()
    got = {k: (r["state"], r["n_params"]) for k, r in runs_table(staging).load().items()}
    assert got == expected


# ---- compaction ------------------------------------------------------------------------


def test_compact_removes_journal_and_writes_compacted_file(staging: LocalStaging) -> None:
    t = runs_table(staging)
    t.append([_row("a"), _row("b")])
    t.flush()
    t.append([_row("a", "imported")])  # still buffered: compact flushes it first
    table = t.compact()
    assert _journal(staging) == []
    assert staging.exists("manifests/runs.parquet")
    assert table.num_rows == 2
    on_disk = pq.read_table(io.BytesIO(staging.read_bytes("manifests/runs.parquet")))
    assert on_disk.num_rows == 2
    assert dict(zip(on_disk["source_run_id"].to_pylist(), on_disk["state"].to_pylist(), strict=True)) == {
        "a": "imported", "b": "exported"}
    # a fresh reader (another process, a resumed driver) sees the same
    assert {k: r["state"] for k, r in runs_table(staging).load().items()} == {
        "a": "imported", "b": "exported"}


def test_compact_of_nothing_writes_an_empty_manifest(staging: LocalStaging) -> None:
    t = runs_table(staging)
    table = t.compact()
    assert table.num_rows == 0
    assert staging.exists("manifests/runs.parquet")
    on_disk = pq.read_table(io.BytesIO(staging.read_bytes("manifests/runs.parquet")))
    assert on_disk.num_rows == 0
    assert on_disk.schema.equals(RUNS_SCHEMA)


def test_compact_is_repeatable(staging: LocalStaging) -> None:
    t = runs_table(staging)
    t.append([_row("a")])
    t.compact()
    first = staging.read_bytes("manifests/runs.parquet")
    t.compact()
    assert staging.read_bytes("manifests/runs.parquet") == first  # nothing new: not rewritten
    assert t.load()["a"]["state"] == "exported"


def test_corrupt_journal_file_is_skipped_with_warning(
    staging: LocalStaging, caplog: pytest.LogCaptureFixture
) -> None:
    t = runs_table(staging)
    t.append([_row("a", "tagged"), _row("b", "imported")])
    t.compact()
    t.append([_row("c", "exported")])
    t.flush()
    (good,) = _journal(staging)
    data = staging.read_bytes(good)
    # a later journal file cut short by a crash, and one that is not Parquet at all
    staging.write_bytes(f"{JOURNAL}/99999999999999999998-deadbeef.parquet", data[: len(data) // 2])
    staging.write_bytes(f"{JOURNAL}/99999999999999999999-cafebabe.parquet", b"")
    with caplog.at_level(logging.WARNING, logger="migrator.manifest"):
        rows = runs_table(staging).load()
    assert {k: r["state"] for k, r in rows.items()} == {
        "a": "tagged", "b": "imported", "c": "exported"}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert all("corrupt manifest file" in r.getMessage() for r in warnings)
    # compaction folds the good rows and drops the broken files
    table = runs_table(staging).compact()
    assert table.num_rows == 3
    assert _journal(staging) == []
    assert set(runs_table(staging).load()) == {"a", "b", "c"}


def test_journal_file_with_damaged_footer_is_skipped(staging: LocalStaging) -> None:
    t = runs_table(staging)
    t.append([_row("a", "tagged")])
    t.compact()
    t.append([_row("b", "exported")])
    t.flush()
    (key,) = _journal(staging)
    data = staging.read_bytes(key)
    footer_len = int.from_bytes(data[-8:-4], "little")
    footer_start = len(data) - 8 - footer_len
    i = data.index(b"source_run_id", footer_start)  # the column name in the Thrift schema
    staging.write_bytes(key, data[:i] + b"\x8c" + data[i + 1:])
    rows = runs_table(staging).load()
    assert rows["a"]["state"] == "tagged"


def test_newest_row_wins_even_if_clock_steps_back(
    staging: LocalStaging, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a wall clock that steps back by one second at every reading
    ticks = itertools.count()
    monkeypatch.setattr(manifest.time, "time_ns",
                        lambda: 2_000_000_000_000_000_000 - next(ticks) * 1_000_000_000)
    t = runs_table(staging)
    t.append([_row("a", "imported")])
    t.flush()
    t.append([_row("a", "tagged")])
    t.flush()
    assert t.load()["a"]["state"] == "tagged"


def test_corrupt_compacted_file_is_an_error_not_silently_empty(staging: LocalStaging) -> None:
    staging.write_bytes("manifests/runs.parquet", b"garbage")
    with pytest.raises(StagingError, match="corrupt manifest file"):
        runs_table(staging).load()


# ---- types -----------------------------------------------------------------------------


def test_times_round_trip_as_epoch_ms_and_column_type(staging: LocalStaging) -> None:
    t = runs_table(staging)
    t.append([_row("a", start_time=1670836055960, end_time=1670836099001, updated_at=0),
              _row("b", start_time=1, end_time=None)])
    t.compact()
    rows = runs_table(staging).load()
    assert rows["a"]["start_time"] == 1670836055960
    assert rows["a"]["end_time"] == 1670836099001
    assert rows["a"]["updated_at"] == 0
    assert isinstance(rows["a"]["start_time"], int)
    assert rows["b"]["start_time"] == 1
    assert rows["b"]["end_time"] is None
    on_disk = pq.read_table(io.BytesIO(staging.read_bytes("manifests/runs.parquet")))
    for col in ("start_time", "end_time", "updated_at"):
        typ = on_disk.schema.field(col).type
        assert typ == pa.timestamp("ms", tz="UTC"), (col, typ)
        assert str(typ) == "timestamp[ms, tz=UTC]"
    assert on_disk.column("start_time")[0].value == 1670836055960


def test_map_column_round_trips_as_dict(staging: LocalStaging) -> None:
    tags = {"mlflow.user": "andre", "mlflow.source.name": "train.py", "mlflow.note": "é 模型"}
    t = runs_table(staging)
    t.append([_row("a", mlflow_tags=tags), _row("b", mlflow_tags={}), _row("c")])
    t.compact()
    rows = runs_table(staging).load()
    assert rows["a"]["mlflow_tags"] == tags
    assert isinstance(rows["a"]["mlflow_tags"], dict)
    assert rows["b"]["mlflow_tags"] == {}
    assert rows["c"]["mlflow_tags"] is None
    on_disk = pq.read_table(io.BytesIO(staging.read_bytes("manifests/runs.parquet")))
    assert pa.types.is_map(on_disk.schema.field("mlflow_tags").type)


def test_rows_to_table_drops_unknown_keys_and_fills_missing() -> None:
    table = rows_to_table([{"source_run_id": "a", "bogus": 1, "n_params": 3}], RUNS_SCHEMA)
    assert table.schema.equals(RUNS_SCHEMA)
    assert "bogus" not in table.column_names
    (row,) = table_to_rows(table)
    assert row["n_params"] == 3
    assert row["state"] is None
    assert set(row) == set(RUNS_SCHEMA.names)


def test_old_file_missing_columns_is_read_with_nulls(staging: LocalStaging) -> None:
    old = pa.table({"source_run_id": ["a"], "state": ["exported"], "extra_future": [1]})
    buf = io.BytesIO()
    pq.write_table(old, buf)
    staging.write_bytes("manifests/runs.parquet", buf.getvalue())
    rows = runs_table(staging).load()
    assert rows["a"]["state"] == "exported"
    assert rows["a"]["target_run_id"] is None
    assert "extra_future" not in rows["a"]


def test_runs_schema_has_the_documented_columns() -> None:
    documented = {
        "source_experiment_id", "source_run_id", "target_experiment_id", "target_run_id",
        "run_name", "user_id", "status", "lifecycle_stage", "start_time", "end_time",
        "artifact_uri", "source_parent_run_id", "mlflow_tags", "n_params", "n_metric_points",
        "n_artifacts", "artifact_bytes", "state", "error", "updated_at",
    }
    assert documented <= set(RUNS_SCHEMA.names)
    assert RUNS_SCHEMA.field("mlflow_tags").type == pa.map_(pa.string(), pa.string())
    assert TS == pa.timestamp("ms", tz="UTC")


def test_experiments_table_keyed_by_source_experiment_id(staging: LocalStaging) -> None:
    t = experiments_table(staging)
    assert isinstance(t, ManifestTable)
    assert t.path == "manifests/experiments.parquet"
    t.append([{"source_experiment_id": "1", "name": "a", "creation_time": 1670474737597,
               "tags": {"k": "v"}, "state": "exported"},
              {"source_experiment_id": "1", "name": "a", "state": "imported",
               "target_experiment_id": "9", "creation_time": 1670474737597}])
    t.compact()
    rows = experiments_table(staging).load()
    assert list(rows) == ["1"]
    assert rows["1"]["state"] == "imported"
    assert rows["1"]["target_experiment_id"] == "9"
    assert rows["1"]["creation_time"] == 1670474737597
    assert set(rows["1"]) == set(EXPERIMENTS_SCHEMA.names)


# ---- registered models: a composite key --------------------------------------------------


def _version_row(name: str, version: int, state: str = "exported", **kw: object) -> dict:
    return {"name": name, "version": version, "state": state, **kw}


def test_model_versions_newest_row_per_name_and_version(staging: LocalStaging) -> None:
    t = manifest.model_versions_table(staging)
    assert t.key == ("name", "version")
    t.append([_version_row("m", 1), _version_row("m", 2, source="runs:/r/model")])
    t.flush()
    t.append([_version_row("m", 1, "imported", target_version=1, aliases=["prod"])])
    t.flush()
    t.append([_version_row("n", 1, "failed", error="boom")])
    table = t.compact()
    assert table.num_rows == 3
    assert sorted(staging.list_keys("manifests/_journal/model_versions")) == []
    rows = manifest.model_versions_table(staging).load()
    assert set(rows) == {("m", 1), ("m", 2), ("n", 1)}
    assert all(isinstance(k, tuple) and isinstance(k[1], int) for k in rows)
    assert rows[("m", 1)]["state"] == "imported"
    assert rows[("m", 1)]["target_version"] == 1
    assert rows[("m", 1)]["aliases"] == ["prod"]
    assert rows[("m", 2)]["state"] == "exported"
    assert rows[("m", 2)]["source"] == "runs:/r/model"
    assert rows[("n", 1)]["error"] == "boom"
    assert set(rows[("m", 1)]) == set(manifest.MODEL_VERSIONS_SCHEMA.names)


def test_model_versions_same_version_of_two_models_are_two_rows(staging: LocalStaging) -> None:
    t = manifest.model_versions_table(staging)
    # newest wins within one journal file too, per (name, version) and not per name
    t.append([_version_row("a", 1), _version_row("b", 1), _version_row("a", 1, "imported"),
              _version_row("a", 2, "failed")])
    t.flush()
    rows = t.load()
    assert {k: r["state"] for k, r in rows.items()} == {
        ("a", 1): "imported", ("b", 1): "exported", ("a", 2): "failed"}


def test_row_key() -> None:
    row = {"name": "m", "version": 3, "source_run_id": "r"}
    assert manifest.row_key(row, "source_run_id") == "r"
    assert manifest.row_key(row, ("name", "version")) == ("m", 3)
    assert manifest.row_key(row, ("version", "name")) == (3, "m")


def test_model_and_logged_model_tables_round_trip(staging: LocalStaging) -> None:
    m = manifest.models_table(staging)
    m.append([{"name": "a/b", "state": "exported", "aliases": {"prod": "2"}, "tags": {"t": "v"},
               "creation_timestamp": 1670836055960, "n_versions": 2},
              {"name": "a/b", "state": "imported", "target_name": "a/b", "aliases": {"prod": "2"}}])
    m.compact()
    rows = manifest.models_table(staging).load()
    assert list(rows) == ["a/b"]
    assert rows["a/b"]["state"] == "imported"
    assert rows["a/b"]["aliases"] == {"prod": "2"}
    assert rows["a/b"]["creation_timestamp"] is None  # the newest row is the whole row
    assert set(rows["a/b"]) == set(manifest.MODELS_SCHEMA.names)

    lm = manifest.logged_models_table(staging)
    files = [{"path": "MLmodel", "size": 3, "sha256": "ab"}]
    lm.append([{"source_model_id": "m-1", "state": "exported", "metric_run_ids": ["r1", "r2"],
                "artifact_files": files, "creation_timestamp": 1670836055960}])
    lm.compact()
    (row,) = manifest.logged_models_table(staging).load().values()
    assert row["metric_run_ids"] == ["r1", "r2"]
    assert row["artifact_files"] == files
    assert row["creation_timestamp"] == 1670836055960
    assert set(row) == set(manifest.LOGGED_MODELS_SCHEMA.names)


# ---- RowsFile: a manifest written from rows pushed to it ---------------------------------


def test_rows_file_writes_every_row_in_order_in_bounded_row_groups(staging: LocalStaging) -> None:
    n = manifest._ROW_GROUP * manifest._GROUPED * 2 + 7
    with manifest.RowsFile(RUNS_SCHEMA) as out:
        for i in range(0, n, 100):
            out.add(_row(f"r{j:05d}") for j in range(i, min(n, i + 100)))
        out.upload(staging, "manifests/x.parquet")
    assert out.rows == n
    f = pq.ParquetFile(str(staging.root / "manifests/x.parquet"))
    assert f.metadata.num_rows == n
    assert max(f.metadata.row_group(i).num_rows for i in range(f.num_row_groups)) == (
        manifest._ROW_GROUP * manifest._GROUPED
    )
    ids = f.read(columns=["source_run_id"]).column(0).to_pylist()
    assert ids == [f"r{j:05d}" for j in range(n)]


def test_rows_file_of_no_rows_is_an_empty_manifest_with_its_schema(staging: LocalStaging) -> None:
    with manifest.RowsFile(RUNS_SCHEMA) as out:
        out.upload(staging, "manifests/empty.parquet")
        with pytest.raises(ValueError, match="already uploaded"):
            out.upload(staging, "manifests/empty.parquet")
    table = pq.read_table(str(staging.root / "manifests/empty.parquet"))
    assert table.num_rows == 0 and table.schema.names == RUNS_SCHEMA.names


def test_rows_file_left_without_upload_writes_nothing_to_staging(staging: LocalStaging) -> None:
    with pytest.raises(RuntimeError):
        with manifest.RowsFile(RUNS_SCHEMA) as out:
            out.add([_row("r1")])
            raise RuntimeError("the command stopped")
    assert not staging.exists("manifests/x.parquet")
    assert not list(staging.list_keys("manifests"))


def test_verify_counts_of_a_corrupt_verify_manifest_names_it(staging: LocalStaging) -> None:
    staging.write_bytes(manifest.VERIFY_KEY, b"PAR1 not really")
    with pytest.raises(StagingError, match="verify.parquet"):
        manifest.verify_counts(staging)
    assert manifest.verify_counts(LocalStaging(str(staging.root / "none"))) == {}


def test_lookup_reads_one_column_of_the_wanted_keys_from_the_compacted_file(
    staging: LocalStaging,
) -> None:
    table = runs_table(staging)
    table.open()
    rows = [_row(f"r{i}", target_run_id=None if i % 3 == 0 else f"t{i}") for i in range(2500)]
    table.append(rows)
    table.compact()
    wanted = {"r1", "r2", "r3", "r2498", "nope"}
    assert table.lookup("target_run_id", wanted) == {"r1": "t1", "r2": "t2", "r2498": "t2498"}
    table.append([_row("r1", target_run_id="newer")])
    table.flush()
    # journal rows are the driver's until it compacts
    assert table.lookup("target_run_id", {"r1"}) == {"r1": "t1"}
    table.compact()
    assert table.lookup("target_run_id", {"r1"}) == {"r1": "newer"}
    table.close()
    assert runs_table(LocalStaging(str(staging.root / "none"))).lookup("target_run_id", {"r1"}) == {}
