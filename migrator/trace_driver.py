"""The driver's part for traces: which traces of the migrated experiments move, in jobs
through the fan-out, and their manifest (`manifests/traces.parquet`).

Traces go after the runs and logged models they point at (`mlflow.sourceRun`,
`mlflow.modelId`): a trace whose run or logged model is still moving is written all the same
and marked failed, "waits for …", and the next run links it. A trace nothing changed on since
it moved (tags, metadata, state, assessments: `trace_fingerprint`) is not written again; new
traces and new assessments on the source move incrementally. Experiments with tens of
thousands of traces are listed page by page and sent in small jobs, never read whole.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from migrator import scope
from migrator.capabilities import TRACES, of
from migrator.fanout import Job, Stage, jobs_of
from migrator.manifest import (
    EXPORTED,
    FAILED,
    IMPORTED,
    SKIPPED,
    Row,
    now_ms,
    table_to_rows,
    traces_table,
)
from migrator.stages import traces as stage
from migrator.states import still_moving
from migrator.traces_io import MODEL_ID_KEY, SOURCE_RUN_KEY

if TYPE_CHECKING:
    from migrator.pipeline import Migration

MIGRATE = Stage("migrate", stage.migrate_trace, stage.prefetch_migrate)
EXPORT = Stage("export", stage.export_trace, stage.prefetch)
IMPORT = Stage("import", stage.import_trace, stage.prefetch_held)
#: Traces per job (they are small: a job's reads are one or two `batchGet` calls).
TRACES_PER_BATCH = 4


class TraceDriver:
    """Traces of one migration: the rows the manifest knows, and the stage order for them."""

    def __init__(self, m: Migration) -> None:
        self.m = m
        self.table = traces_table(m.staging, m.opts.manifest_flush_rows)
        self.rows: dict[str, Row] = {
            r["source_trace_id"]: r for r in table_to_rows(self.table.compact())
        }

    def _item(self, row: Row, exps: dict[str, Row], logged: dict[str, str]) -> Row:
        """A trace's row with the target ids its import needs, and what it waits for."""
        m = self.m
        run, model = row.get("source_run_id"), row.get("source_model_id")
        target_run, target_model = m._target_run(run), logged.get(model or "")
        waits = []
        if run and not target_run and still_moving(m.runs.get(run), m.scope_complete):
            waits.append(f"run {run}")
        if model and not target_model and still_moving(m.logged.get(model), m.scope_complete):
            waits.append(f"logged model {model}")
        return {
            **row,
            "target_experiment_id": exps[row["source_experiment_id"]]["target_experiment_id"],
            "target_run_id": target_run,
            "target_model_id": target_model,
            "run_id_map": {},
            "waits_for": waits,
        }

    def _source_items(self, exps: dict[str, Row], do_import: bool) -> Iterator[Row]:
        """New and changed traces of the migrated experiments, from the source."""
        logged = self.m.logged_model_ids()
        for exp_id in exps:
            for info in scope.source_traces(self.m.opts, exp_id):
                known = self.rows.get(info.trace_id)
                digest = stage.trace_fingerprint(info)
                done = (IMPORTED,) if do_import else (EXPORTED, IMPORTED)
                if (
                    known
                    and known.get("state") in done
                    and known.get("source_fingerprint") == digest
                ):
                    self.m.summary.found_traces["unchanged"] += 1
                    continue
                self.m.summary.found_traces["changed" if known else "new"] += 1
                row = {
                    **(known or {}),
                    "source_trace_id": info.trace_id,
                    "source_experiment_id": exp_id,
                    "source_run_id": info.trace_metadata.get(SOURCE_RUN_KEY),
                    "source_model_id": info.trace_metadata.get(MODEL_ID_KEY),
                    "source_fingerprint": digest,
                }
                yield self._item(row, exps, logged) if do_import else row

    def _staged_items(self, exps: dict[str, Row]) -> Iterator[Row]:
        """Traces exported (by `export`) and not imported yet, for `import`."""
        logged = self.m.logged_model_ids()
        for row in list(self.rows.values()):
            todo = row["state"] == EXPORTED or (
                row["state"] == FAILED and row.get("failed_stage") == "import"
            )
            if todo and row["source_experiment_id"] in exps:
                yield self._item(row, exps, logged)

    def transfer(self, exp_rows: list[Row], do_export: bool, do_import: bool) -> None:
        """Move the traces of every migrated experiment (see the module docstring)."""
        m, opts = self.m, self.m.opts
        exps = {e["source_experiment_id"]: e for e in exp_rows if e.get("state") != FAILED}
        if do_import and not of(opts, opts.target).has(TRACES):
            self._skip(exps, do_export)
            return
        if do_export:
            items = self._source_items(exps, do_import)
            step = MIGRATE if do_import else EXPORT
        else:
            items, step = self._staged_items(exps), IMPORT

        def on_done(job: Job, results: list[Row]) -> list[Job]:
            self.record(results)
            m._checkpoint(results)
            return []

        size = max(1, opts.batch_size) * TRACES_PER_BATCH
        m.executor.run(jobs_of(step, items, size), opts, on_done)
        if do_import and do_export:  # traces exported by an earlier `export`, not yet imported
            m.executor.run(jobs_of(IMPORT, self._staged_items(exps), size), opts, on_done)

    def _skip(self, exps: dict[str, Row], from_source: bool) -> None:
        """The target cannot take traces: every trace in scope is `skipped`, with the reason."""
        opts = self.m.opts
        why = f"the target ({of(opts, opts.target).describe()}) has no MLflow 3 traces API"
        found = (
            (info.trace_id, exp_id)
            for exp_id in exps
            for info in (scope.source_traces(opts, exp_id) if from_source else ())
        )
        staged = ((k, r["source_experiment_id"]) for k, r in self.rows.items() if not from_source)
        rows = [
            {
                **self.rows.get(trace_id, {}),
                "source_trace_id": trace_id,
                "source_experiment_id": exp_id,
                "state": SKIPPED,
                "error": why,
                "failed_stage": None,
                "updated_at": now_ms(),
            }
            for trace_id, exp_id in (*found, *staged)
            if exp_id in exps
        ]
        self.record(rows)

    def record(self, rows: list[Row]) -> None:
        for r in rows:
            r.pop("run_id_map", None)
            r.pop("waits_for", None)
            self.rows[r["source_trace_id"]] = r
        self.table.append(rows)

    def in_scope(self, experiment_ids: set[str]) -> list[Row]:
        return [r for r in self.rows.values() if r["source_experiment_id"] in experiment_ids]

    def counts(self, experiment_ids: set[str]) -> tuple[Counter[str], list[Row]]:
        """The final state of every trace in scope, and the failed ones."""
        rows = self.in_scope(experiment_ids)
        return Counter(r["state"] for r in rows), [r for r in rows if r["state"] == FAILED]

    def verify_items(self, exps: dict[str, Row], experiment_ids: set[str]) -> Iterator[Row]:
        """Every migrated trace in scope, with the target ids its verification expects."""
        logged = self.m.logged_model_ids()
        for r in self.in_scope(experiment_ids):
            if r.get("target_trace_id") and r["state"] != SKIPPED:
                yield self._item(r, exps, logged)
