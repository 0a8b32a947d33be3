"""Parquet manifests: one row per source object, the lineage audit and the resume state.

Status rows from the tasks are appended to a journal (`manifests/_journal/<table>/…parquet`,
one small file per flush, names sortable by time). `compact` folds the journal into
`manifests/<table>.parquet`, keeping the newest row per source object, and removes the journal
files it folded. A driver killed mid-way leaves journal files behind; the next run folds them in
first, so at most the rows of one unflushed buffer are lost, and those objects are redone
safely (every stage is idempotent).

The driver reads a table through its `Ledger` (`open`): the rows are streamed from the
manifest and the journal into it, row group by row group, and written back from it the same
way, so neither reading nor writing a manifest holds all its rows in memory.
"""

from __future__ import annotations

import io
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from migrator import heap
from migrator.errors import StagingError
from migrator.ledger import Ledger
from migrator.parquet_parts import PartsWriter, read_row_groups
from migrator.staging import Staging
from migrator.workdirs import Workdir

log = logging.getLogger(__name__)

Row = dict[str, Any]

TS = pa.timestamp("ms", tz="UTC")
TAGS = pa.map_(pa.string(), pa.string())
#: Every artifact file of a run as exported: the reference `verify` checks the target against.
ARTIFACT_FILES = pa.list_(
    pa.struct([("path", pa.string()), ("size", pa.int64()), ("sha256", pa.string())])
)

#: A run's links to MLflow 3 logged models: `input` (it read the model) or `output` (it logged
#: the model, at `step`). Remapped to the target's logged models by the tag stage.
MODEL_LINKS = pa.list_(
    pa.struct([("model_id", pa.string()), ("kind", pa.string()), ("step", pa.int64())])
)

# States a run passes through; `failed` records the stage in `failed_stage`; `skipped`: a kind
# the target cannot take (the reason in `error`).
EXPORTED, IMPORTED, TAGGED, FAILED, SKIPPED = "exported", "imported", "tagged", "failed", "skipped"

RUNS_SCHEMA = pa.schema(
    [
        ("source_experiment_id", pa.string()),
        ("source_run_id", pa.string()),
        ("target_experiment_id", pa.string()),
        ("target_run_id", pa.string()),
        ("run_name", pa.string()),
        ("user_id", pa.string()),
        ("status", pa.string()),
        ("lifecycle_stage", pa.string()),
        ("start_time", TS),
        ("end_time", TS),
        ("artifact_uri", pa.string()),
        ("source_parent_run_id", pa.string()),
        ("mlflow_tags", TAGS),
        ("n_params", pa.int64()),
        ("n_metric_points", pa.int64()),
        ("n_artifacts", pa.int64()),
        ("artifact_bytes", pa.int64()),
        ("artifact_files", ARTIFACT_FILES),
        ("model_links", MODEL_LINKS),
        ("source_fingerprint", pa.string()),
        ("state", pa.string()),
        ("error", pa.string()),
        ("failed_stage", pa.string()),
        ("updated_at", TS),
    ]
)

EXPERIMENTS_SCHEMA = pa.schema(
    [
        ("source_experiment_id", pa.string()),
        ("target_experiment_id", pa.string()),
        ("name", pa.string()),
        ("artifact_location", pa.string()),
        ("lifecycle_stage", pa.string()),
        ("creation_time", TS),
        ("last_update_time", TS),
        ("tags", TAGS),
        ("state", pa.string()),
        ("error", pa.string()),
        ("failed_stage", pa.string()),
        ("updated_at", TS),
    ]
)


#: Registered models: one row per source model (the name is its id on both servers).
MODELS_SCHEMA = pa.schema(
    [
        ("name", pa.string()),
        ("target_name", pa.string()),
        ("description", pa.string()),
        ("creation_timestamp", TS),
        ("last_updated_timestamp", TS),
        ("tags", TAGS),
        ("aliases", TAGS),
        ("n_versions", pa.int64()),
        ("source_fingerprint", pa.string()),
        ("state", pa.string()),
        ("error", pa.string()),
        ("failed_stage", pa.string()),
        ("updated_at", TS),
    ]
)

#: Model versions: one row per source version; `version` equals `target_version` when imported.
MODEL_VERSIONS_SCHEMA = pa.schema(
    [
        ("name", pa.string()),
        ("version", pa.int64()),
        ("target_name", pa.string()),
        ("target_version", pa.int64()),
        ("source", pa.string()),
        ("target_source", pa.string()),
        ("run_id", pa.string()),
        ("target_run_id", pa.string()),
        ("model_id", pa.string()),
        ("target_model_id", pa.string()),
        ("description", pa.string()),
        ("current_stage", pa.string()),
        ("status", pa.string()),
        ("status_message", pa.string()),
        ("user_id", pa.string()),
        ("run_link", pa.string()),
        ("creation_timestamp", TS),
        ("last_updated_timestamp", TS),
        ("tags", TAGS),
        ("aliases", pa.list_(pa.string())),
        ("n_artifacts", pa.int64()),
        ("artifact_bytes", pa.int64()),
        ("artifact_files", ARTIFACT_FILES),
        ("source_experiment_id", pa.string()),
        ("source_file", pa.string()),
        ("source_fingerprint", pa.string()),
        ("state", pa.string()),
        ("error", pa.string()),
        ("failed_stage", pa.string()),
        ("updated_at", TS),
    ]
)

#: MLflow 3 logged models: one row per source logged model of a migrated experiment.
LOGGED_MODELS_SCHEMA = pa.schema(
    [
        ("source_experiment_id", pa.string()),
        ("source_model_id", pa.string()),
        ("target_experiment_id", pa.string()),
        ("target_model_id", pa.string()),
        ("name", pa.string()),
        ("model_type", pa.string()),
        ("source_run_id", pa.string()),
        ("target_run_id", pa.string()),
        ("status", pa.string()),
        ("status_message", pa.string()),
        ("artifact_location", pa.string()),
        ("creation_timestamp", TS),
        ("last_updated_timestamp", TS),
        ("tags", TAGS),
        ("n_params", pa.int64()),
        ("n_metric_points", pa.int64()),
        ("metric_run_ids", pa.list_(pa.string())),
        ("n_artifacts", pa.int64()),
        ("artifact_bytes", pa.int64()),
        ("artifact_files", ARTIFACT_FILES),
        ("state", pa.string()),
        ("error", pa.string()),
        ("failed_stage", pa.string()),
        ("updated_at", TS),
    ]
)


#: Traces: one row per source trace of a migrated experiment (`trace_state` is the trace's own
#: OK/ERROR/IN_PROGRESS; `state` is the migration's, as for every object).
TRACES_SCHEMA = pa.schema(
    [
        ("source_trace_id", pa.string()),
        ("target_trace_id", pa.string()),
        ("source_experiment_id", pa.string()),
        ("target_experiment_id", pa.string()),
        ("request_time", TS),
        ("execution_duration", pa.int64()),
        ("trace_state", pa.string()),
        ("client_request_id", pa.string()),
        ("tags", TAGS),
        ("trace_metadata", TAGS),
        ("source_run_id", pa.string()),
        ("target_run_id", pa.string()),
        ("source_model_id", pa.string()),
        ("target_model_id", pa.string()),
        ("n_spans", pa.int64()),
        ("n_assessments", pa.int64()),
        ("source_fingerprint", pa.string()),
        ("state", pa.string()),
        ("error", pa.string()),
        ("failed_stage", pa.string()),
        ("updated_at", TS),
    ]
)


#: Evaluation datasets: one row per source dataset.
EVALUATION_DATASETS_SCHEMA = pa.schema(
    [
        ("source_dataset_id", pa.string()),
        ("target_dataset_id", pa.string()),
        ("name", pa.string()),
        ("experiment_ids", pa.list_(pa.string())),
        ("tags", TAGS),
        ("digest", pa.string()),
        ("schema", pa.string()),
        ("profile", pa.string()),
        ("created_time", TS),
        ("last_update_time", TS),
        ("created_by", pa.string()),
        ("last_updated_by", pa.string()),
        ("n_records", pa.int64()),
        ("source_fingerprint", pa.string()),
        ("state", pa.string()),
        ("error", pa.string()),
        ("failed_stage", pa.string()),
        ("updated_at", TS),
    ]
)


#: Registered scorers: one row per scorer (`<source experiment id>/<name>`).
SCORERS_SCHEMA = pa.schema(
    [
        ("source_scorer_key", pa.string()),
        ("target_scorer_key", pa.string()),
        ("source_experiment_id", pa.string()),
        ("target_experiment_id", pa.string()),
        ("name", pa.string()),
        ("versions", pa.list_(pa.int64())),
        ("sample_rate", pa.float64()),
        ("filter_string", pa.string()),
        ("source_fingerprint", pa.string()),
        ("state", pa.string()),
        ("error", pa.string()),
        ("failed_stage", pa.string()),
        ("updated_at", TS),
    ]
)


#: The last verification, one row per object (`run`, `experiment`); rewritten by each `verify`.
VERIFY_SCHEMA = pa.schema(
    [
        ("object_type", pa.string()),
        ("source_id", pa.string()),
        ("target_id", pa.string()),
        ("name", pa.string()),
        ("outcome", pa.string()),
        ("differences", pa.list_(pa.string())),
        ("details", pa.string()),
        ("error", pa.string()),
        ("verified_at", TS),
    ]
)
MATCH, DIFFER, MISSING_ON_TARGET, MISSING_ON_SOURCE, ERROR = (
    "match",
    "differ",
    "missing_on_target",
    "missing_on_source",
    "error",
)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def in_state(row: Mapping[str, Any], state: str, error: str | None = None) -> Row:
    """The row in `state` (an earlier failure cleared; `error` says why of a `skipped` one),
    stamped now."""
    return {**row, "state": state, "error": error, "failed_stage": None, "updated_at": now_ms()}


def rows_to_table(rows: Iterable[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Build a table from row dicts (times as epoch ms, maps as dicts); unknown keys are dropped."""
    rows = list(rows)
    columns = {}
    for f in schema:
        values = [r.get(f.name) for r in rows]
        if pa.types.is_map(f.type):
            values = [list(v.items()) if v is not None else None for v in values]
        columns[f.name] = pa.array(values, type=f.type)
    return pa.table(columns, schema=schema)


def table_to_rows(table: pa.Table) -> list[Row]:
    """The inverse of `rows_to_table`: times back to epoch ms, maps back to dicts."""
    for i, f in enumerate(table.schema):
        if pa.types.is_timestamp(f.type):
            table = table.set_column(i, f.name, table.column(i).cast(pa.int64()))
    rows: list[Row] = table.to_pylist()
    maps = [f.name for f in table.schema if pa.types.is_map(f.type)]
    for r in rows:
        for m in maps:
            if r[m] is not None:
                r[m] = dict(r[m])
    return rows


def _to_parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _conformed(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A manifest table read back, in `schema`: columns added by later versions are
    tolerated, missing ones filled with nulls."""
    for f in schema:
        if f.name not in table.column_names:
            table = table.append_column(f, pa.nulls(len(table), f.type))
    return table.select(schema.names).cast(schema)


def _from_parquet(data: bytes, what: str, schema: pa.Schema) -> pa.Table:
    try:
        return _conformed(pq.read_table(io.BytesIO(data)), schema)
    except (pa.ArrowException, OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise StagingError(f"corrupt manifest file: {type(e).__name__}: {e}", obj=what) from None


class ManifestTable:
    """One manifest (`runs`, `experiments`, …): a compacted Parquet file plus a journal."""

    def __init__(
        self,
        staging: Staging,
        name: str,
        schema: pa.Schema,
        key: str | tuple[str, ...],
        flush_rows: int = 500,
        flush_seconds: float = 2.0,
        group: str | None = None,
    ) -> None:
        self.staging = staging
        self.name = name
        self.schema = schema
        self.key = key
        #: The column the ledger indexes besides the state (the experiment, the model name).
        self.group = group
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self._buffer: list[Row] = []
        self._oldest = 0.0
        self._last_seq = 0
        self.ledger: Ledger | None = None

    @property
    def path(self) -> str:
        return f"manifests/{self.name}.parquet"

    @property
    def journal_prefix(self) -> str:
        return f"manifests/_journal/{self.name}"

    def append(self, rows: Iterable[Row]) -> None:
        """Record rows: in the ledger when it is open (what the driver decides from), and in
        the journal, once `flush_rows` have gathered or the oldest buffered row is
        `flush_seconds` old (a killed driver loses at most that much state).

        Keys of a row that are not columns of the manifest (a task's inputs) are an error:
        nothing is dropped silently."""
        rows = list(rows)
        unknown = {k for r in rows for k in r} - set(self.schema.names)
        if unknown:
            raise ValueError(f"{self.name}: not columns of the manifest: {sorted(unknown)}")
        if self.ledger is not None:
            self.ledger.put(rows)
        if not self._buffer:
            self._oldest = time.monotonic()
        self._buffer.extend(rows)
        if (
            len(self._buffer) >= self.flush_rows
            or time.monotonic() - self._oldest >= self.flush_seconds
        ):
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        name = f"{self._next_seq():020d}-{uuid.uuid4().hex[:8]}.parquet"
        self.staging.write_bytes(
            f"{self.journal_prefix}/{name}", _to_parquet(rows_to_table(self._buffer, self.schema))
        )
        self._buffer.clear()

    def _next_seq(self) -> int:
        """Journal file order: the clock, but never behind a file already written (a clock
        that steps back must not let an older row win)."""
        if not self._last_seq:
            existing = [k.rsplit("/", 1)[-1].split("-", 1)[0] for k in self._journal_keys()]
            self._last_seq = max((int(x) for x in existing if x.isdigit()), default=0)
        self._last_seq = max(time.time_ns(), self._last_seq + 1)
        return self._last_seq

    def _journal_keys(self) -> list[str]:
        return sorted(self.staging.list_keys(self.journal_prefix))

    def read_table(self) -> pa.Table:
        """The newest row per key, from the compacted file and any journal files."""
        parts = []
        if self.staging.exists(self.path):
            parts.append(_from_parquet(self.staging.read_bytes(self.path), self.path, self.schema))
        for k in self._journal_keys():
            try:
                parts.append(_from_parquet(self.staging.read_bytes(k), k, self.schema))
            except StagingError as e:
                # A journal file cut short by a crash: its objects are redone, nothing is lost.
                log.warning("skipping %s", e)
        if not parts:
            return self.schema.empty_table()
        table = pa.concat_tables(parts)
        return _newest_per_key(table, self.key)

    def compact(self) -> pa.Table | None:
        """Fold the journal into the compacted file. Without a ledger, returns the compacted
        table; with one, the file is written from the ledger, streamed, and None returned."""
        self.flush()
        journal = self._journal_keys()
        if self.ledger is not None:
            if journal or not self.staging.exists(self.path):
                self._write_from(self.ledger)
                self.staging.delete_many(journal)
            return None
        table = self.read_table()
        if journal or not self.staging.exists(self.path):
            self.staging.write_bytes(self.path, _to_parquet(table))
            self.staging.delete_many(journal)
        return table

    def open(self, fold: bool = True) -> Ledger:
        """The table's ledger, loaded from the compacted file and then the journal (newest
        row per key wins), and (`fold`) the journal folded in (what a killed driver left);
        row groups at a time. Later `append`s go to it too; `close` removes it. Without
        `fold` nothing is written (`plan`)."""
        if self.ledger is not None:
            return self.ledger
        ledger = Ledger(self.name, self.key, self.group)
        try:
            with Workdir("manifest") as tmp:
                local = os.path.join(tmp, "table.parquet")
                if self.staging.exists(self.path):
                    self.staging.download_file(self.path, local)
                    for batch in _read_batches(local, self.path, self.schema):
                        ledger.put(batch)
            for k in self._journal_keys():
                try:
                    data = self.staging.read_bytes(k)
                    ledger.put(table_to_rows(_from_parquet(data, k, self.schema)))
                except StagingError as e:
                    # A journal file cut short by a crash: its objects are redone.
                    log.warning("skipping %s", e)
        except BaseException:
            ledger.close()
            raise
        self.ledger = ledger
        heap.trim()  # what the read held is not kept for the rest of the command
        if fold:
            self.compact()
        return ledger

    def lookup(self, column: str, keys: set[str]) -> dict[str, Any]:
        """Key → `column`, where it is set, of the rows whose key is in `keys`: read from the
        compacted file in staging a row group at a time, two columns only. For a task (which
        has no ledger) that needs a few rows of another kind's manifest: an evaluation
        dataset's records point at traces. Rows still in the journal are not seen: the driver
        compacts first."""
        if not isinstance(self.key, str):
            raise TypeError(f"{self.name}: lookup needs a single key column")
        found: dict[str, Any] = {}
        for batch in column_batches(self.staging, self.path, [self.key, column]):
            for k, v in zip(batch[0].to_pylist(), batch[1].to_pylist(), strict=True):
                if k in keys and v is not None:
                    found[k] = v
        return found

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()
            self.ledger = None

    def _write_from(self, ledger: Ledger) -> None:
        """Write the compacted file from the ledger, streamed (`RowsFile`)."""
        heap.trim()  # the write's row group and footer start from what the driver holds
        with RowsFile(self.schema) as out:
            out.add(ledger.ordered())
            out.upload(self.staging, self.path)

    def load(self) -> dict[Any, Row]:
        """Newest row per key as dicts (times as epoch ms); a composite key is a tuple."""
        return {row_key(r, self.key): r for r in table_to_rows(self.read_table())}


#: Rows per batch of a manifest read into, or written from, a ledger (one thread, no
#: read-ahead): with `_GROUPED` batches per Parquet row group, what the driver holds of a
#: manifest at any time. The writer and the readers hold one row group's metadata, not the
#: file's (`parquet_parts`): the number of row groups costs no memory.
_ROW_GROUP = 500
_GROUPED = 2


class RowsFile:
    """A Parquet file written from rows pushed to it, `_ROW_GROUP` rows converted at a time and
    `_GROUPED` such batches per row group, in a local temporary folder; `upload` puts it in
    staging whole (one atomic replace). What it holds is one row group, whatever the number
    of rows: the compaction of a manifest and the rows of a verification both go through it."""

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.rows = 0
        self._tmp = Workdir("manifest")
        self._local = os.path.join(self._tmp.name, "table.parquet")
        self._writer: PartsWriter | None = PartsWriter(self._local, schema, compression="zstd")
        self._batch: list[Row] = []
        self._group: list[pa.Table] = []

    def add(self, rows: Iterable[Row]) -> None:
        for row in rows:
            self._batch.append(row)
            self.rows += 1
            if len(self._batch) >= _ROW_GROUP:
                self._convert()

    def _convert(self) -> None:
        if self._batch:
            self._group.append(rows_to_table(self._batch, self.schema))
            self._batch = []
        if len(self._group) >= _GROUPED:
            self._write_group()

    def _write_group(self) -> None:
        assert self._writer is not None
        if self._group:
            self._writer.write(pa.concat_tables(self._group))
            self._group = []

    def upload(self, staging: Staging, key: str) -> None:
        """Finish the file (an empty one still has its schema) and put it at `key`."""
        if self._writer is None:
            raise ValueError(f"{key}: the rows file was already uploaded")
        if self._batch:
            self._convert()
        self._write_group()
        self._writer.close()
        self._writer = None
        staging.upload_file(self._local, key, parallel=False)  # the driver's memory stays flat

    def close(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
        self._tmp.cleanup()

    def __enter__(self) -> RowsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_batches(local: str, what: str, schema: pa.Schema) -> Iterable[list[Row]]:
    """A manifest file's rows, `_ROW_GROUP` at a time, a row group read at a time."""
    try:
        for group in read_row_groups(local, what, use_threads=False):
            group = _conformed(group, schema)
            for start in range(0, group.num_rows, _ROW_GROUP):
                yield table_to_rows(group.slice(start, _ROW_GROUP))
    except (pa.ArrowException, OSError, ValueError) as e:  # ThriftError is a ValueError
        raise StagingError(f"corrupt manifest file: {type(e).__name__}: {e}", obj=what) from None


def row_key(row: Mapping[str, Any], key: str | tuple[str, ...]) -> Any:
    """A row's key: the value of the key column, or a tuple for a composite key."""
    return row[key] if isinstance(key, str) else tuple(row[k] for k in key)


def _newest_per_key(table: pa.Table, key: str | tuple[str, ...]) -> pa.Table:
    """Keep the last row of each key (journal order is time order)."""
    if table.num_rows == 0:
        return table
    idx = pa.array(range(table.num_rows), type=pa.int64())
    t = table.append_column("__i", idx)
    keys = [key] if isinstance(key, str) else list(key)
    last = t.group_by(keys, use_threads=False).aggregate([("__i", "max")])
    keep = pc.sort_indices(last["__i_max"])
    return table.take(pc.take(last["__i_max"], keep))


def runs_table(staging: Staging, flush_rows: int = 500) -> ManifestTable:
    return ManifestTable(
        staging, "runs", RUNS_SCHEMA, "source_run_id", flush_rows, group="source_experiment_id"
    )


def experiments_table(staging: Staging) -> ManifestTable:
    return ManifestTable(staging, "experiments", EXPERIMENTS_SCHEMA, "source_experiment_id")


def models_table(staging: Staging) -> ManifestTable:
    return ManifestTable(staging, "models", MODELS_SCHEMA, "name")


def model_versions_table(staging: Staging) -> ManifestTable:
    return ManifestTable(
        staging, "model_versions", MODEL_VERSIONS_SCHEMA, ("name", "version"), group="name"
    )


def logged_models_table(staging: Staging) -> ManifestTable:
    return ManifestTable(
        staging,
        "logged_models",
        LOGGED_MODELS_SCHEMA,
        "source_model_id",
        group="source_experiment_id",
    )


def traces_table(staging: Staging, flush_rows: int = 500) -> ManifestTable:
    return ManifestTable(
        staging,
        "traces",
        TRACES_SCHEMA,
        "source_trace_id",
        flush_rows,
        group="source_experiment_id",
    )


def evaluation_datasets_table(staging: Staging) -> ManifestTable:
    return ManifestTable(
        staging, "evaluation_datasets", EVALUATION_DATASETS_SCHEMA, "source_dataset_id"
    )


def scorers_table(staging: Staging) -> ManifestTable:
    return ManifestTable(staging, "scorers", SCORERS_SCHEMA, "source_scorer_key")


VERIFY_KEY = "manifests/verify.parquet"


def write_verify(staging: Staging, rows: Iterable[Row]) -> str:
    """Replace `manifests/verify.parquet` with these rows; returns its key."""
    with RowsFile(VERIFY_SCHEMA) as out:
        out.add(rows)
        out.upload(staging, VERIFY_KEY)
    return VERIFY_KEY


def read_verify(staging: Staging) -> list[Row]:
    if not staging.exists(VERIFY_KEY):
        return []
    return table_to_rows(_from_parquet(staging.read_bytes(VERIFY_KEY), VERIFY_KEY, VERIFY_SCHEMA))


def verify_counts(staging: Staging) -> Counter[tuple[str, str]]:
    """(object type, outcome) → objects of the last verification, two columns read a row
    group at a time: what a report needs of a verification of millions of objects."""
    counts: Counter[tuple[str, str]] = Counter()
    for batch in column_batches(staging, VERIFY_KEY, ["object_type", "outcome"]):
        counts.update(zip(batch[0].to_pylist(), batch[1].to_pylist(), strict=True))
    return counts


def column_batches(staging: Staging, key: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """Some columns of a manifest file in staging, a row group's worth at a time (nothing
    when it is not there): for readers that need a few columns of many rows."""
    if not staging.exists(key):
        return
    with Workdir("manifest") as tmp:
        local = os.path.join(tmp, "table.parquet")
        staging.download_file(key, local)
        try:
            for group in read_row_groups(local, key, columns=columns, use_threads=False):
                yield from group.to_batches()
        except (pa.ArrowException, OSError, ValueError) as e:
            raise StagingError(f"corrupt manifest file: {type(e).__name__}: {e}", obj=key) from None
