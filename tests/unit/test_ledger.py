"""The driver's state ledger (migrator.ledger) and the manifests read and written through it
(`ManifestTable.open`, streamed compaction)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from migrator import manifest
from migrator.errors import StagingError
from migrator.ledger import Column, Ledger, Targets
from migrator.staging import LocalStaging


@pytest.fixture
def ledger() -> Iterator[Ledger]:
    led = Ledger("runs", "source_run_id", "source_experiment_id")
    yield led
    led.close()


def run(i: int, exp: str = "1", state: str = "imported", **kw: object) -> dict[str, object]:
    return {
        "source_run_id": f"r{i:05d}",
        "source_experiment_id": exp,
        "state": state,
        "target_run_id": f"t{i}" if state != "failed" else None,
        **kw,
    }


def test_newest_row_wins_and_moves_to_the_end(ledger: Ledger) -> None:
    ledger.put([run(1), run(2), run(3)])
    ledger.put([{**run(1), "state": "tagged", "mlflow_tags": {"a": "b"}}])
    assert ledger["r00001"]["state"] == "tagged"
    assert ledger["r00001"]["mlflow_tags"] == {"a": "b"}
    assert [r["source_run_id"] for r in ledger.ordered()] == ["r00002", "r00003", "r00001"]
    assert len(ledger) == 3 and "r00002" in ledger and "r9" not in ledger
    assert ledger.get("r9") is None and ledger.get(None) is None


def test_filtered_pages_are_stable_while_written(ledger: Ledger) -> None:
    """A stage that records results while it reads the ledger sees every row once."""
    ledger.put([run(i, exp=str(i % 3)) for i in range(1234)])
    seen = []
    for row in ledger.rows(groups=["0", "2"], states=["imported"]):
        seen.append(row["source_run_id"])
        ledger.put([{**row, "state": "tagged"}])  # moves it to the end of the write order
    assert len(seen) == len(set(seen)) == sum(1 for i in range(1234) if i % 3 != 1)
    assert ledger.counts() == {"tagged": len(seen), "imported": 1234 - len(seen)}
    assert ledger.counts(["1"]) == {"imported": 1234 - len(seen)}
    assert list(ledger.rows(groups=[])) == []


def test_many_groups_are_filtered_too(ledger: Ledger) -> None:
    ledger.put([run(i, exp=str(i)) for i in range(700)])
    wanted = [str(i) for i in range(0, 700, 2)] + [f"x{i}" for i in range(400)]
    assert len(list(ledger.rows(groups=wanted))) == 350


def test_rows_without_state(ledger: Ledger) -> None:
    ledger.put([run(1), {"source_run_id": "r2", "source_experiment_id": "1"}])
    assert [r["source_run_id"] for r in ledger.rows(states=[None])] == ["r2"]


def test_composite_keys() -> None:
    led = Ledger("versions", ("name", "version"), "name")
    try:
        led.put([{"name": "m", "version": v, "state": "imported"} for v in (1, 2, 10)])
        assert led[("m", 10)]["version"] == 10
        assert ("m", 3) not in led
        assert sorted(v["version"] for v in led.rows(groups=["m"])) == [1, 2, 10]
        with pytest.raises(KeyError):
            led[("m", 2)] = {"name": "m", "version": 3}
    finally:
        led.close()


def test_target_and_column_views(ledger: Ledger) -> None:
    ledger.put([run(1), run(2, state="failed")])
    targets = Targets(ledger, "target_run_id")
    assert targets["r00001"] == "t1" and "r00002" not in targets and targets.get("r00002") is None
    assert dict(targets) == {"r00001": "t1"}
    column = Column(ledger, "target_run_id")
    assert "r00002" in column and column["r00002"] is None and len(column) == 2


def test_close_removes_its_folder() -> None:
    led = Ledger("runs", "source_run_id")
    folder = Path(led._folder)
    assert folder.exists()
    led.close()
    assert not folder.exists()


# ---- manifests through the ledger -------------------------------------------------------------


def full_run(i: int, state: str = "exported") -> dict[str, object]:
    return {
        **run(i, state=state),
        "start_time": 1_700_000_000_000 + i,
        "mlflow_tags": {"mlflow.user": "u"},
        "artifact_files": [{"path": "a/b.txt", "size": 3, "sha256": "ab"}],
        "model_links": [],
        "updated_at": manifest.now_ms(),
    }


def test_open_folds_the_journal_and_compacts_in_row_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manifest, "_ROW_GROUP", 100)
    staging = LocalStaging(str(tmp_path))
    t = manifest.runs_table(staging, flush_rows=50)
    t.append([full_run(i) for i in range(450)])
    t.append([full_run(7, state="tagged")])
    t.flush()  # a killed driver: journal only
    t2 = manifest.runs_table(staging)
    led = t2.open()
    try:
        assert len(led) == 450 and led["r00007"]["state"] == "tagged"
        assert not list(staging.list_keys(t2.journal_prefix))  # folded
        f = pq.ParquetFile(str(tmp_path / "manifests" / "runs.parquet"))
        groups = -(-450 // (100 * manifest._GROUPED))  # rows per group: batches of 100 grouped
        assert f.metadata.num_rows == 450 and f.metadata.num_row_groups == groups > 1
        t2.append([full_run(8, state="tagged")])
        t2.compact()
    finally:
        t2.close()
    rows = manifest.runs_table(staging).load()
    assert rows["r00008"]["state"] == "tagged" and rows["r00007"]["state"] == "tagged"
    assert rows["r00001"]["artifact_files"] == [{"path": "a/b.txt", "size": 3, "sha256": "ab"}]
    assert rows["r00001"]["mlflow_tags"] == {"mlflow.user": "u"}


def test_an_empty_table_is_written_with_its_schema(tmp_path: Path) -> None:
    staging = LocalStaging(str(tmp_path))
    t = manifest.experiments_table(staging)
    t.open()
    t.close()
    table = pq.read_table(str(tmp_path / "manifests" / "experiments.parquet"))
    assert table.num_rows == 0 and table.schema.names == manifest.EXPERIMENTS_SCHEMA.names


def test_a_corrupt_manifest_names_itself(tmp_path: Path) -> None:
    staging = LocalStaging(str(tmp_path))
    staging.write_bytes("manifests/runs.parquet", b"PAR1 not parquet")
    with pytest.raises(StagingError, match="manifests/runs.parquet"):
        manifest.runs_table(staging).open()


def test_keys_that_are_not_columns_are_refused(tmp_path: Path) -> None:
    """A task's input left on a result row would be dropped silently by the writer."""
    t = manifest.runs_table(LocalStaging(str(tmp_path)))
    with pytest.raises(ValueError, match="target_parent_run_id"):
        t.append([{**full_run(1), "target_parent_run_id": "x"}])


def test_the_page_cache_is_capped_small(ledger: Ledger) -> None:
    """SQLite's cache fills as a ledger grows, so its size is part of the driver's growth
    per run: a ledger keeps to `_CACHE_KIB` (a negative cache_size is KiB)."""
    from migrator.ledger import _CACHE_KIB

    assert _CACHE_KIB <= 256
    assert ledger._db.execute("PRAGMA cache_size").fetchone()[0] == -_CACHE_KIB
