"""The driver's part for MLflow 3 logged models: every logged model of the migrated
experiments, after the runs they came from and logged metrics against (their target ids are
needed), and `logged_models.parquet`.

A logged model nothing changed on since it moved (`last_updated_timestamp`) is not read again;
one whose metric runs are still moving waits (`Migration.link`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from migrator import scope
from migrator.fanout import Job, Stage, jobs_of
from migrator.ledger import Ledger, Targets
from migrator.manifest import (
    EXPORTED,
    FAILED,
    IMPORTED,
    TAGGED,
    ManifestTable,
    Row,
    logged_models_table,
)
from migrator.stages import logged_models as stage
from migrator.states import failed_at
from migrator.verify import VERIFY_LOGGED

if TYPE_CHECKING:
    from migrator.pipeline import Migration

#: What an import (and verify) takes besides the row: the target runs its metrics remap to,
#: and the runs it waits for.
INPUTS = ("run_id_map", "waits_for_runs")
EXPORT = Stage("export", stage.export_logged_model)
IMPORT = Stage("import", stage.import_logged_model, inputs=INPUTS)
MIGRATE = Stage("migrate", stage.migrate_logged_model, inputs=INPUTS)
TAG = Stage("tag", stage.tag_logged_model)


class LoggedModelDriver:
    """The logged models of one migration: their ledger, and the stages that move them."""

    def __init__(self, m: Migration) -> None:
        self.m = m
        self.table = logged_models_table(m.staging)
        self.rows: Ledger = self.table.open()
        #: Source → target logged model id, looked up in the ledger.
        self.targets: Targets = Targets(self.rows, "target_model_id")

    @property
    def tables(self) -> tuple[ManifestTable]:
        return (self.table,)

    def item(self, row: Row, exps: dict[str, Row], run_ids: Iterable[str]) -> Row:
        """A logged model's row with the target ids its import needs, and the runs it points
        at that are still moving (its import waits): the runs its metrics were logged against,
        and its own source run (MLflow takes that link only when the model is created)."""
        m = self.m
        own = row.get("source_run_id")
        links = {r: m.link(m.runs, r) for r in set(run_ids) | ({own} if own else set())}
        return {
            **row,
            "target_experiment_id": exps[row["source_experiment_id"]]["target_experiment_id"],
            "target_run_id": links[own].target if own else None,
            "run_id_map": {r: link.target for r, link in links.items() if link.target},
            "waits_for_runs": sorted(r for r, link in links.items() if link.waits),
        }

    def _from_source(self, exps: dict[str, Row], do_import: bool) -> Iterator[Row]:
        for lm in scope.source_logged_models(self.m.opts, list(exps)):
            known = self.rows.get(lm.model_id)
            if (
                known
                and known.get("state") in (IMPORTED, TAGGED)
                and known.get("last_updated_timestamp") == lm.last_updated_timestamp
            ):
                continue
            row = {
                **(known or {}),
                "source_model_id": lm.model_id,
                "source_experiment_id": lm.experiment_id,
                "source_run_id": lm.source_run_id,
            }
            runs = {mt.run_id for mt in lm.metrics or [] if mt.run_id}
            yield self.item(row, exps, runs) if do_import else row

    def _staged(self, exps: dict[str, Row]) -> Iterator[Row]:
        for row in self.rows.rows(groups=list(exps), states=(EXPORTED, FAILED)):
            if row["state"] == EXPORTED or failed_at(row, "import"):
                yield self.item(row, exps, row.get("metric_run_ids") or [])

    def transfer(self, exp_rows: list[Row], do_export: bool, do_import: bool) -> None:
        """Every logged model of the migrated experiments: new and changed ones from the
        source, or (for `import`) the staged ones not yet imported."""
        m, opts = self.m, self.m.opts
        exps = scope.moving_experiments(exp_rows)
        items = self._from_source(exps, do_import) if do_export else self._staged(exps)
        step = MIGRATE if do_export and do_import else EXPORT if do_export else IMPORT

        def on_done(job: Job, results: list[Row]) -> list[Job]:
            self.table.append(results)
            if job.stage is not TAG:
                m.progress.advance("logged models", results)
            m.checkpoint(results)
            return []

        size = max(1, opts.batch_size)
        m.executor.run(jobs_of(step, items, size, opts.concurrency), opts, on_done)
        if not do_import:
            return
        self.table.flush()  # target ids recorded before the markers go
        todo = (
            r
            for r in self.rows.rows(groups=list(exps), states=(IMPORTED, FAILED))
            if r["state"] == IMPORTED or failed_at(r, "tag")
        )
        if opts.import_source_tags:  # nothing to call: no need for the fan-out
            for job in jobs_of(TAG, todo, 500):
                on_done(job, [stage.tag_logged_model(r, opts) for r in job.rows])
        else:
            m.executor.run(jobs_of(TAG, todo, size * 4, opts.concurrency), opts, on_done)

    def verify_work(
        self, exps: dict[str, Row], in_scope: list[str]
    ) -> tuple[str, Stage, Iterator[Row]]:
        items = (
            self.item(r, exps, r.get("metric_run_ids") or [])
            for r in self.rows.rows(groups=in_scope)
            if r["state"] != FAILED
        )
        return "logged_model", VERIFY_LOGGED, items

    def final(self, in_scope: list[str]) -> None:
        summary = self.m.summary
        summary.logged_models.update(self.rows.counts(in_scope))
        summary.add_failed(self.rows.rows(groups=in_scope, states=(FAILED,)))
