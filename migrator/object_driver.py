"""The driver's part for the kinds that move object by object with a manifest of their own and
no ordering among themselves — traces, evaluation datasets: which objects move, in jobs
through the fan-out, their rows, and what the summary and `verify` get of them.

One `ObjectDriver`, told by an `ObjectKind` (its subclass) how to list the source, what the
import of a row needs, and which stage functions do the work. The rules are the same for every
kind: an object nothing changed on since it moved (its fingerprint) is not written again; new
and changed ones move incrementally; the source is listed page by page and sent in small jobs,
never read whole; a kind the target cannot take is `skipped` with the reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from itertools import islice
from typing import TYPE_CHECKING, Any

from migrator import scope
from migrator.capabilities import of
from migrator.fanout import Job, Stage, jobs_of
from migrator.manifest import (
    EXPORTED,
    FAILED,
    IMPORTED,
    SKIPPED,
    ManifestTable,
    Row,
    in_state,
)
from migrator.states import failed_at

if TYPE_CHECKING:
    from migrator.pipeline import Migration
    from migrator.summary import Summary

_SKIPPED_BATCH = 500


class ObjectDriver:
    """One kind of object of one migration: the rows the manifest knows, and the stages."""

    #: The manifest's key column (`source_trace_id`).
    key = ""
    #: Its verify rows' `object_type` (`trace`).
    object_type = ""
    #: The capability both servers need (`capabilities.TRACES`).
    feature = ""
    #: How the summary names the kind (`traces`).
    label = ""
    #: Objects per job, times `--batch-size`.
    per_batch = 1
    migrate: Stage
    export: Stage
    import_: Stage
    verify_stage: Stage

    @property
    def tables(self) -> tuple[ManifestTable]:
        return (self.table,)

    def __init__(self, m: Migration, table: ManifestTable) -> None:
        self.m = m
        self.table = table
        self.rows = table.open()
        self.found: Counter[str] = Counter()
        """Objects on the source by what the manifest knew: new, changed, unchanged."""

    # ---- what a kind says ------------------------------------------------------------------

    def source_objects(self, exps: dict[str, Row]) -> Iterator[tuple[Any, Row]]:
        """Every object in scope on the source, with the row fields its listing gives (the
        key, the source experiment, `source_fingerprint`)."""
        raise NotImplementedError

    def item(self, row: Row, exps: dict[str, Row]) -> Row:
        """A row with what its import (and verification) needs besides the row itself."""
        return row

    def in_scope(self, row: Row, experiment_ids: set[str]) -> bool:
        return True

    # ---- the same for every kind -------------------------------------------------------------

    def _source_items(self, exps: dict[str, Row], do_import: bool) -> Iterator[Row]:
        done = (IMPORTED,) if do_import else (EXPORTED, IMPORTED)
        for _, fields in self.source_objects(exps):
            known = self.rows.get(fields[self.key])
            if (
                known
                and known.get("state") in done
                and known.get("source_fingerprint") == fields["source_fingerprint"]
            ):
                self.found["unchanged"] += 1
                self.m.progress.advance(self.label, unchanged=1)
                continue
            self.found["changed" if known else "new"] += 1
            row = {**(known or {}), **fields}
            yield self.item(row, exps) if do_import else row

    def _staged_items(self, exps: dict[str, Row]) -> Iterator[Row]:
        """Objects exported (by `export`) and not imported yet, for `import`."""
        experiment_ids = set(exps)
        for row in self.rows.rows(states=(EXPORTED, FAILED)):
            todo = row["state"] == EXPORTED or failed_at(row, "import")
            if todo and self.in_scope(row, experiment_ids):
                yield self.item(row, exps)

    def transfer(self, exp_rows: list[Row], do_export: bool, do_import: bool) -> None:
        """Move every object of the kind in scope (see the module docstring)."""
        m, opts = self.m, self.m.opts
        exps = scope.moving_experiments(exp_rows)
        if do_import and not of(opts, opts.target).has(self.feature):
            self._skip(exps, do_export)
            return
        if do_export:
            items = self._source_items(exps, do_import)
            step = self.migrate if do_import else self.export
        else:
            items, step = self._staged_items(exps), self.import_

        def on_done(job: Job, results: list[Row]) -> list[Job]:
            self.record(results)
            m.checkpoint(results)
            return []

        size = max(1, opts.batch_size) * self.per_batch
        m.executor.run(jobs_of(step, items, size, opts.concurrency), opts, on_done)
        if do_import and do_export:  # exported by an earlier `export`, not yet imported
            m.executor.run(
                jobs_of(self.import_, self._staged_items(exps), size, opts.concurrency),
                opts,
                on_done,
            )

    def _skip(self, exps: dict[str, Row], from_source: bool) -> None:
        """The target cannot take this kind: every object in scope is `skipped`, with why."""
        opts = self.m.opts
        why = f"the target cannot take {self.label}: {of(opts, opts.target).why_not(self.feature)}"
        listed = (fields for _, fields in self.source_objects(exps)) if from_source else ()
        staged = (r for r in self.rows.values() if self.in_scope(r, set(exps)))
        rows = (
            in_state({**(self.rows.get(fields[self.key]) or {}), **fields}, SKIPPED, why)
            for fields in (listed if from_source else staged)
        )
        while batch := list(islice(rows, _SKIPPED_BATCH)):  # a server's traces: maybe millions
            self.record(batch)

    def record(self, rows: list[Row]) -> None:
        self.table.append(rows)
        self.m.progress.advance(self.label, rows)

    def final(self, summary: Summary, experiment_ids: set[str]) -> None:
        """The final state of every object in scope, and the failed ones, into the summary
        (a pass over the ledger: nothing collected)."""
        counts: Counter[str] = Counter()
        for r in self.rows.values():
            if self.in_scope(r, experiment_ids):
                counts[r["state"]] += 1
                if r["state"] == FAILED:
                    summary.add_failed([r])
        summary.objects[self.label] = counts
        summary.objects_found[self.label] = self.found

    def verify_items(self, exps: dict[str, Row], experiment_ids: set[str]) -> Iterator[Row]:
        """Every migrated object in scope, as its verification takes it."""
        target_key = "target" + self.key[len("source") :]
        for r in self.rows.values():
            if r.get(target_key) and r["state"] != SKIPPED and self.in_scope(r, experiment_ids):
                yield self.item(r, exps)
