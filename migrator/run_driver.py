"""The driver's part for runs: which runs in scope need which step, the jobs that move them
through the fan-out (export and import pipelined, one task per few runs), the tag stage that
links them once every parent has a target id, and their manifest (`runs.parquet`).

Every run is in one state — absent, exported, imported, tagged or failed (with the stage) —
and the next step follows from it (`states.next_step`), so re-running the same command does
only what is missing. A run unfinished at its last export (RUNNING, SCHEDULED) that changed
since is exported again (re-synced).

The rows live in the table's ledger (on disk), never all in memory: the source is enumerated
page by page, the staged runs are read page by page, and what comes back from the tasks is
recorded as it arrives.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from migrator import mlflow_io, scope
from migrator.fanout import Flush, Job, Stage, batched, failed_row, jobs_of
from migrator.faults import crash_point
from migrator.ledger import Ledger, Targets
from migrator.manifest import EXPORTED, FAILED, IMPORTED, TAGGED, ManifestTable, Row, runs_table
from migrator.progress import GroupTotal
from migrator.stages.export_runs import SOURCE_RUN, export_run, prefetch
from migrator.stages.import_runs import import_run, migrate_run
from migrator.stages.tag_runs import tag_run, with_targets
from migrator.states import WAITS_FOR, next_step
from migrator.verify import VERIFY

if TYPE_CHECKING:
    from migrator.pipeline import Migration

log = logging.getLogger(__name__)

#: What the tag stage (and verify) take besides the row: the target ids it links to.
LINKS = ("target_parent_run_id", "target_model_links")
EXPORT = Stage("export", export_run, prefetch, inputs=(SOURCE_RUN,))
#: `migrate`: export and import a run in one task (the import reuses the export's local copies).
MIGRATE = Stage("migrate", migrate_run, prefetch, inputs=(SOURCE_RUN,))
IMPORT = Stage("import", import_run)
TAG = Stage("tag", tag_run, inputs=LINKS)
_DONE = {
    "export": ("exported",),
    "import": ("imported",),
    "migrate": ("exported", "imported"),
    "tag": ("tagged",),
}
#: Run statuses that mean "not finished": such runs are exported again by the next `migrate`.
UNFINISHED = ("RUNNING", "SCHEDULED")


def _waits(what: str) -> str:
    return f"{WAITS_FOR} {what}, which has not migrated yet (it failed): the next run links it"


class RunDriver:
    """The runs of one migration: their ledger, and the stages that move them."""

    def __init__(self, m: Migration) -> None:
        self.m = m
        self.table = runs_table(m.staging, m.opts.manifest_flush_rows)
        self.rows: Ledger = self.table.open()
        #: Source → target run id, looked up in the ledger.
        self.targets: Targets = Targets(self.rows, "target_run_id")
        #: The runs in scope, for the progress display (`count_ahead`).
        self.total = GroupTotal(m.progress, "runs")

    @property
    def tables(self) -> tuple[ManifestTable]:
        return (self.table,)

    # ---- what is in scope ------------------------------------------------------------------

    def from_source(self, exp_rows: list[Row]) -> Iterator[tuple[Row, str]]:
        """Every source run in scope, paged, as its manifest row (the known one, or a new
        one) with the step it needs (`export` for a changed unfinished run). A run to export
        goes with the run the search found (`SOURCE_RUN`), unless tasks read every run in
        full (`Options.runs_read_in_full`)."""
        moving = scope.moving_experiments(exp_rows)
        for run in scope.source_runs(self.m.opts, list(moving)):
            exp = moving[run.info.experiment_id]
            known = self.rows.get(run.info.run_id)
            row = (
                known
                if known
                else {
                    "source_run_id": run.info.run_id,
                    "source_experiment_id": exp["source_experiment_id"],
                }
            )
            row["target_experiment_id"] = exp.get("target_experiment_id")
            step = next_step(known)
            if (
                known
                and known.get("state") in (IMPORTED, TAGGED)
                and known.get("status") in UNFINISHED
                and known.get("source_fingerprint") != self._fingerprint(run)
            ):
                step = "resync"  # unfinished at the last export, changed since
            if step in ("export", "resync") and not self.m.opts.runs_read_in_full:
                row[SOURCE_RUN] = run  # the task's export reads it from here
            crash_point("runs-found")
            yield row, step

    def _fingerprint(self, run: Any) -> str:
        sizes = mlflow_io.artifact_sizes(self.m.opts.source, run.info.artifact_uri)
        return mlflow_io.run_fingerprint(run, sizes)

    def staged(self, exp_rows: list[Row], states: Iterable[str] | None = None) -> Iterator[Row]:
        """Runs in scope as the manifest knows them (for `import`), optionally in some states."""
        targets = {
            k: e.get("target_experiment_id") for k, e in scope.moving_experiments(exp_rows).items()
        }
        for row in self.rows.rows(groups=targets, states=states):
            yield {**row, "target_experiment_id": targets[row["source_experiment_id"]]}

    def from_staging(self, exp_rows: list[Row]) -> Iterator[tuple[Row, str]]:
        return ((row, next_step(row)) for row in self.staged(exp_rows))

    def count_ahead(self, experiment_ids: list[str], from_source: bool) -> None:
        """The total of runs of these experiments for the progress display: counted on the
        source by a paged search in a thread of its own (for `import`: the manifest's)."""
        total = self.total
        if not from_source:
            wanted = set(experiment_ids)
            for experiment_id, n in self.rows.group_counts().items():
                if experiment_id in wanted:
                    total.add(experiment_id, n)
            total.final()
            return

        def count() -> None:
            for n, run in enumerate(scope.source_runs(self.m.opts, experiment_ids), 1):
                total.add(run.info.experiment_id, say=n % 1000 == 0)
            total.final()

        self.m.progress.count_ahead("runs", count)

    def leave_out(self, exp_rows: Iterable[Row]) -> None:
        """Runs of experiments that failed to move stay where they are: out of the total."""
        self.total.leave_out(
            e["source_experiment_id"] for e in exp_rows if e.get("state") == FAILED
        )

    # ---- moving them ---------------------------------------------------------------------

    def transfer(
        self, runs: Iterable[tuple[Row, str] | Flush], do_export: bool, do_import: bool
    ) -> None:
        """Export and/or import runs through the fan-out; when both are asked for, one task
        does both for a run (`migrate_run`). A `FLUSH` in `runs` goes on to `batched`."""
        m = self.m
        size = max(1, m.opts.batch_size)
        first = MIGRATE if do_import else EXPORT

        def items() -> Iterator[tuple[Stage, Row] | Flush]:
            for run in runs:
                if isinstance(run, Flush):
                    yield run
                    continue
                row, step = run
                m.summary.found[_found_as(row, step)] += 1
                step = "export" if step == "resync" else step
                if step == "export" and do_export:
                    yield first, row
                elif step == "import" and do_import:
                    yield IMPORT, row
                else:
                    m.progress.advance("runs", unchanged=1)

        def on_done(job: Job, results: list[Row]) -> list[Job]:
            self.record(job.stage.name, results)
            return []

        m.executor.run(batched(items(), size, m.opts.concurrency), m.opts, on_done)

    def tag_all(self, exp_rows: list[Row]) -> None:
        """Apply source tags and parent links to every imported run in scope."""
        m = self.m
        crash_point("before-tags")
        in_scope = list(scope.moving_experiments(exp_rows))
        size = max(1, m.opts.batch_size) * 4
        missing_parents = 0

        def items() -> Iterator[Row]:
            nonlocal missing_parents
            for row in self.rows.rows(groups=in_scope, states=(IMPORTED, FAILED)):
                if next_step(row) != "tag":
                    continue
                item, waits = self.linked(row)
                if waits:  # link it later: a tagged run is not visited again
                    self.record("tag", [failed_row(row, "tag", _waits(waits))])
                    continue
                if row.get("source_parent_run_id") and not item.get("target_parent_run_id"):
                    missing_parents += 1
                yield item

        def on_done(job: Job, results: list[Row]) -> list[Job]:
            self.record("tag", results)
            return []

        m.executor.run(jobs_of(TAG, items(), size, m.opts.concurrency), m.opts, on_done)
        if missing_parents:
            log.warning(
                "%d runs have a parent that was not migrated (filtered out or failed): their "
                "mlflow.parentRunId is left unset; the source value is in "
                "mlflow_exim.mlflow_tag.parentRunId",
                missing_parents,
            )

    def linked(self, row: Row) -> tuple[Row, str | None]:
        """The row with the target ids its links point at (`with_targets`), and what it waits
        for: its parent run, or a logged model it read or wrote, that has no target id yet but
        may get one (`Migration.link`); None: tag it now. One ledger read per link."""
        m = self.m
        parent_id = row.get("source_parent_run_id") or ""
        parent = m.link(self, parent_id)
        models = {
            k["model_id"]: m.link(m.logged, k["model_id"]) for k in row.get("model_links") or []
        }
        item = with_targets(
            row,
            {parent_id: parent.target} if parent.target else {},
            {mid: link.target for mid, link in models.items() if link.target},
        )
        if parent.waits:
            return item, f"its parent run {parent_id}"
        for mid, link in models.items():
            if link.waits:
                return item, f"its logged model {mid}"
        return item, None

    def record(self, stage: str, rows: list[Row]) -> None:
        m = self.m
        if stage != "tag":
            m.progress.advance("runs", rows)
        for r in rows:
            crash_point("run-tagged" if stage == "tag" else "run-done")
            if r["state"] == FAILED:
                m.summary.actions[f"{r.get('failed_stage') or stage} failed"] += 1
            else:
                m.summary.actions.update(_DONE[stage])
        self.table.append(rows)
        m.checkpoint(rows)

    # ---- verify and the summary --------------------------------------------------------------

    def verify_work(self, in_scope: list[str]) -> tuple[str, Stage, Iterable[Row]]:
        logged = self.m.logged.targets
        items = (with_targets(r, self.targets, logged) for r in self.rows.rows(groups=in_scope))
        return "run", VERIFY, items

    def final(self, in_scope: list[str]) -> None:
        """The final state of every run in scope, and the failed ones, into the summary."""
        summary = self.m.summary
        summary.runs.update(self.rows.counts(in_scope))
        summary.add_failed(self.rows.rows(groups=in_scope, states=(FAILED,)))

    def exported_not_imported(self, exp_rows: list[Row]) -> Iterator[tuple[Row, str]]:
        """Runs exported by an earlier `export`, not yet imported (for `migrate`)."""
        return ((row, "import") for row in self.staged(exp_rows, states=(EXPORTED,)))


def _found_as(known: Row, step: str) -> str:
    """How a run in scope stood before this command: new, re-synced, unchanged or resumed."""
    if not known.get("state"):
        return "new"
    if step == "resync":
        return "re-synced"
    return "unchanged" if step == "done" else "resumed"
