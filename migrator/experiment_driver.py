"""The driver's part for experiments: staged and created first (everything else goes into
them), finished last (an experiment deleted at the source is deleted on the target once
nothing more goes into it), and `experiments.parquet`.

Experiments are few: each goes through the fan-out's retries in this process, `--concurrency`
at a time (`run_each`: every run waits for them, so none waits for another).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from migrator import scope
from migrator.config import Options
from migrator.fanout import Stage, run_each
from migrator.manifest import FAILED, ManifestTable, Row, experiments_table
from migrator.stages import experiments as stage
from migrator.states import failed_at

if TYPE_CHECKING:
    from migrator.pipeline import Migration

FINISH = Stage("finish", stage.finish_experiment)


class ExperimentDriver:
    """The experiments of one migration: their ledger, and their stages."""

    def __init__(self, m: Migration) -> None:
        self.m = m
        self.table = experiments_table(m.staging)
        self.rows = self.table.open()

    @property
    def tables(self) -> tuple[ManifestTable]:
        return (self.table,)

    def export(self) -> list[Row]:
        """Stage every source experiment in scope; returns their rows."""
        m = self.m
        work = []
        for exp in scope.source_experiments(m.opts):

            def export(row: Row, opts: Options, exp: Any = exp) -> Row:
                out = stage.export_experiment(exp, m.staging)
                if row.get("target_experiment_id"):
                    out["target_experiment_id"] = row["target_experiment_id"]
                return out

            known = self.rows.get(exp.experiment_id) or {}
            row = {
                "source_experiment_id": exp.experiment_id,
                "name": exp.name,
                "target_experiment_id": known.get("target_experiment_id"),
            }
            work.append((Stage("export", export), row))
        return [self._record(row) for row in run_each(work, m.opts)]

    def staged(self) -> list[Row]:
        """Experiments in scope as the manifest knows them (for `import`, which has no source)."""
        return scope.staged_experiments(self.m.opts, self.rows.values())

    def import_(self, rows: list[Row]) -> list[Row]:
        m = self.m
        imp = Stage("import", lambda row, opts: stage.import_experiment(row, opts, m.staging))

        def exported(r: Row) -> bool:
            return not failed_at(r, "export")

        return self._each(imp, rows, exported)

    def finish(self, rows: list[Row]) -> None:
        summary = self.m.summary
        for row in self._each(FINISH, rows, lambda r: r.get("state") != FAILED):
            if row["state"] == FAILED:
                summary.add_failed([row])
            summary.experiments[row["state"]] += 1

    def _each(self, step: Stage, rows: list[Row], wanted: Callable[[Row], bool]) -> list[Row]:
        """`rows` in their order: each `wanted` one through `step` (`run_each`) and recorded,
        the others as they are."""
        done = iter(run_each([(step, r) for r in rows if wanted(r)], self.m.opts))
        return [self._record(next(done)) if wanted(r) else r for r in rows]

    def count(self, rows: list[Row]) -> None:
        """The state of each experiment, into the summary (a command that does not import)."""
        summary = self.m.summary
        for e in rows:
            summary.experiments[e["state"]] += 1
            if e["state"] == FAILED:
                summary.add_failed([e])

    def _record(self, row: Row) -> Row:
        self.table.append([row])
        return row
