"""The driver's part for experiments: staged and created first (everything else goes into
them), finished last (an experiment deleted at the source is deleted on the target once
nothing more goes into it), and `experiments.parquet`.

Experiments are few next to runs: each goes through the fan-out's retries in this process,
`--concurrency` at a time (`run_each`: no job, no Ray), a hundred at a time (`move`); the runs
of each hundred move while the next hundred are made (`pipeline`), so a server of thousands of
experiments does not hold its first run back until the last experiment is made.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from migrator import scope
from migrator.fanout import Stage, run_each
from migrator.manifest import FAILED, ManifestTable, Row, experiments_table
from migrator.mlflow_io import EXPERIMENTS_PER_SEARCH
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

    def plan(self, do_export: bool, do_import: bool) -> list[tuple[Stage | None, Row]]:
        """Every experiment in scope with the stage that moves it: listed on the source
        (`export`, or `migrate`: export and import in one call), or as staged (`import`; one
        whose export failed goes with no stage: it stays as it is)."""
        m = self.m
        if not do_export:
            imp = Stage("import", lambda row, opts: stage.import_experiment(row, opts, m.staging))
            return [(None if failed_at(r, "export") else imp, r) for r in self.staged()]
        work: list[tuple[Stage | None, Row]] = []
        for exp in scope.source_experiments(m.opts):
            row = stage.experiment_row(exp, self.rows.get(exp.experiment_id))
            work.append((self._source_stage(exp, do_import), row))
        return work

    def _source_stage(self, exp: Any, do_import: bool) -> Stage:
        staging = self.m.staging
        if do_import:
            return Stage(
                "migrate", lambda row, opts: stage.migrate_experiment(exp, row, opts, staging)
            )
        return Stage("export", lambda row, opts: stage.export_experiment(exp, staging, row))

    def move(
        self, work: list[tuple[Stage | None, Row]], stopped: threading.Event | None = None
    ) -> Iterator[list[Row]]:
        """The planned experiments, a hundred at a time (what one search for their runs
        names): each hundred through its stages (`_through`), then yielded, so that its runs
        can move while the next hundred are made. Nothing is recorded here: the caller
        records each hundred as it takes it (`record`), in its own thread. Once `stopped` is
        set (the caller's loop ended early), no experiment is started: a command that stops
        does not wait for the rest of a hundred nobody will take."""
        for i in range(0, len(work), EXPERIMENTS_PER_SEARCH):
            if stopped is not None and stopped.is_set():
                return
            yield self._through(work[i : i + EXPERIMENTS_PER_SEARCH], stopped)

    def _through(
        self, work: list[tuple[Stage | None, Row]], stopped: threading.Event | None = None
    ) -> list[Row]:
        """The rows in their order: each with a stage through it (`run_each`), the others as
        they are."""
        with_stage = [(s, r) for s, r in work if s is not None]
        done = iter(run_each(with_stage, self.m.opts, stopped))
        return [next(done) if s is not None else r for s, r in work]

    def record(self, rows: list[Row]) -> list[Row]:
        """Record the rows `move` gave (those it left as they were too: harmless)."""
        self.table.append(rows)
        return rows

    def staged(self) -> list[Row]:
        """Experiments in scope as the manifest knows them (for `import`, which has no source)."""
        return scope.staged_experiments(self.m.opts, self.rows.values())

    def finish(self, rows: list[Row]) -> None:
        summary = self.m.summary
        for row in self._each(FINISH, rows, lambda r: r.get("state") != FAILED):
            if row["state"] == FAILED:
                summary.add_failed([row])
            summary.experiments[row["state"]] += 1

    def _each(self, step: Stage, rows: list[Row], wanted: Callable[[Row], bool]) -> list[Row]:
        """`rows` in their order: each `wanted` one through `step` and recorded, the others
        as they are."""
        work = [(step if wanted(r) else None, r) for r in rows]
        out = self._through(work)
        self.record([o for o, (s, _) in zip(out, work, strict=True) if s is not None])
        return out

    def count(self, rows: list[Row]) -> None:
        """The state of each experiment, into the summary (a command that does not import)."""
        summary = self.m.summary
        for e in rows:
            summary.experiments[e["state"]] += 1
            if e["state"] == FAILED:
                summary.add_failed([e])
