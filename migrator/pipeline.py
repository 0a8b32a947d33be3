"""The driver: orders the stages, decides per object what is left to do, and sums up.

Resume rule (as dlt's): first finish what the manifests say is pending, then new work. Every
run is in one state — absent, exported, imported, tagged or failed (with the stage) — and the
next stage follows from it, so re-running the same command does only what is missing.

Order: experiments (inline: few) → per run export → import (pipelined through the fan-out)
→ logged models (need their runs' target ids) → tag (needs every parent's and logged model's
target id) → registered models and versions (need the runs and logged models they point at)
→ finish experiments (delete those deleted at source, once nothing more goes into them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from migrator import capabilities, credentials, inventory, mlflow_io, scope
from migrator.config import Options
from migrator.dataset_driver import DatasetDriver
from migrator.errors import ConfigError, Interrupted, PermanentError, TransientError
from migrator.fanout import Executor, Job, Stage, describe, failed_row, jobs_of, run_one
from migrator.faults import crash_point
from migrator.layout import check_staging_format
from migrator.lease import Lease
from migrator.manifest import (
    EXPORTED,
    FAILED,
    IMPORTED,
    TAGGED,
    ManifestTable,
    Row,
    experiments_table,
    logged_models_table,
    runs_table,
    table_to_rows,
)
from migrator.reconcile import reconcile
from migrator.registry import MODELS, PROMPTS
from migrator.registry_driver import RegistryDriver
from migrator.scope import matches
from migrator.scorer_driver import ScorerDriver
from migrator.stages import experiments as exp_stage
from migrator.stages import logged_models as lm_stage
from migrator.stages import models as models_stage
from migrator.stages.export_models import export_model
from migrator.stages.export_runs import export_run, prefetch
from migrator.stages.import_runs import import_run, migrate_run
from migrator.stages.tag_runs import tag_run, with_targets
from migrator.staging import open_staging
from migrator.states import next_step, still_moving
from migrator.summary import Summary, format_counts
from migrator.trace_driver import TraceDriver
from migrator.verify import VERIFY, VERIFY_LOGGED, verify_migration
from migrator.watch import ServerWatch

log = logging.getLogger(__name__)

EXPORT = Stage("export", export_run, prefetch)
#: `migrate`: export and import a run in one task (the import reuses the export's local copies).
MIGRATE = Stage("migrate", migrate_run, prefetch)
IMPORT = Stage("import", import_run)
TAG = Stage("tag", tag_run)
EXPORT_LOGGED = Stage("export", lm_stage.export_logged_model)
IMPORT_LOGGED = Stage("import", lm_stage.import_logged_model)
MIGRATE_LOGGED = Stage("migrate", lm_stage.migrate_logged_model)
TAG_LOGGED = Stage("tag", lm_stage.tag_logged_model)
EXPORT_MODEL = Stage("export", export_model)
FINISH_EXPERIMENT = Stage("finish", exp_stage.finish_experiment)
IMPORT_MODEL = Stage("import", models_stage.import_model)
PROGRESS_EVERY_S = 5.0
_DONE = {
    "export": ("exported",),
    "import": ("imported",),
    "migrate": ("exported", "imported"),
    "tag": ("tagged",),
}
#: Run statuses that mean "not finished": such runs are exported again by the next `migrate`.
UNFINISHED = ("RUNNING", "SCHEDULED")
RESYNC = "_resync"


def _waits(parent: str) -> str:
    return (
        f"waits for its parent run {parent}, which has not migrated yet (it failed): the next "
        "run links it"
    )


def _found_as(known: Row | None, row: Row, step: str) -> str:
    """How a run in scope stood before this command: new, re-synced, unchanged or resumed."""
    if known is None:
        return "new"
    if row.get(RESYNC):
        return "re-synced"
    return "unchanged" if step == "done" else "resumed"


class Migration:
    """One staging URI: the manifests, the fan-out, and the order of the stages."""

    def __init__(self, opts: Options, executor: Executor, command: str) -> None:
        self.opts = opts
        self.executor = executor
        self.staging = open_staging(opts.staging)
        self.runs_m: ManifestTable = runs_table(self.staging, opts.manifest_flush_rows)
        self.exps_m: ManifestTable = experiments_table(self.staging)
        self.summary = Summary(command, staging=self.staging.uri)
        #: Every experiment in scope is in (none failed): an object the manifests do not know
        #: is then outside the scope, not merely not reached yet (`still_moving`).
        self.scope_complete = True
        self.lease: Lease | None = None
        uses_source = command in ("migrate", "export", "verify")
        uses_target = command in ("migrate", "import", "verify")
        self.watch = ServerWatch(
            {
                "source": opts.source if uses_source else "",
                "target": opts.target if uses_target else "",
            },
            opts.server_grace_s,
        )
        self._last_progress = time.monotonic()
        # Fold what a killed driver left in the journal before deciding anything.
        self.runs = {r["source_run_id"]: r for r in table_to_rows(self.runs_m.compact())}
        self.exps = {r["source_experiment_id"]: r for r in table_to_rows(self.exps_m.compact())}
        self.logged_m = logged_models_table(self.staging)
        self.logged = {r["source_model_id"]: r for r in table_to_rows(self.logged_m.compact())}
        self.traces = TraceDriver(self)
        self.datasets = DatasetDriver(self)
        self.scorers = ScorerDriver(self)
        self.objects = (self.traces, self.datasets, self.scorers)
        self.models = RegistryDriver(self, MODELS)
        self.prompts = RegistryDriver(self, PROMPTS)
        self.registries = (self.models, self.prompts)

    # ---- experiments -------------------------------------------------------------------

    def export_experiments(self) -> list[Row]:
        """Stage every source experiment in scope; returns their rows. Experiments are few:
        in this process, one at a time, with the fan-out's retries (`run_one`)."""
        rows = []
        for exp in scope.source_experiments(self.opts):

            def export(row: Row, opts: Options, exp: Any = exp) -> Row:
                out = exp_stage.export_experiment(exp, self.staging)
                if row.get("target_experiment_id"):
                    out["target_experiment_id"] = row["target_experiment_id"]
                return out

            known = self.exps.get(exp.experiment_id) or {}
            row = {
                "source_experiment_id": exp.experiment_id,
                "name": exp.name,
                "target_experiment_id": known.get("target_experiment_id"),
            }
            rows.append(self._record_experiment(run_one(Stage("export", export), row, self.opts)))
        return rows

    def staged_experiments(self) -> list[Row]:
        """Experiments in scope as the manifest knows them (for `import`, which has no source)."""
        return [
            r
            for r in self.exps.values()
            if matches(self.opts.experiments, r["source_experiment_id"], r.get("name") or "")
        ]

    def import_experiments(self, rows: list[Row]) -> list[Row]:
        stage = Stage(
            "import", lambda row, opts: exp_stage.import_experiment(row, opts, self.staging)
        )
        out = []
        for row in rows:
            if row.get("state") == FAILED and row.get("failed_stage") == "export":
                out.append(row)
                continue
            out.append(self._record_experiment(run_one(stage, row, self.opts)))
        return out

    def finish_experiments(self, rows: list[Row]) -> None:
        for row in rows:
            if row.get("state") != FAILED:
                row = self._record_experiment(run_one(FINISH_EXPERIMENT, row, self.opts))
            if row["state"] == FAILED:
                self.summary.failed.append(row)
            self.summary.experiments[row["state"]] += 1

    def _record_experiment(self, row: Row) -> Row:
        self.exps[row["source_experiment_id"]] = row
        self.exps_m.append([row])
        return row

    # ---- runs ----------------------------------------------------------------------------

    def source_runs(self, exp_rows: list[Row]) -> Iterator[Row]:
        """Every source run in scope, paged, as a manifest row (the known one, or a new one)."""
        for exp in exp_rows:
            if exp.get("state") == FAILED:
                continue
            for run in scope.source_runs(self.opts, exp["source_experiment_id"]):
                known = self.runs.get(run.info.run_id)
                row = (
                    dict(known)
                    if known
                    else {
                        "source_run_id": run.info.run_id,
                        "source_experiment_id": exp["source_experiment_id"],
                    }
                )
                row["target_experiment_id"] = exp.get("target_experiment_id")
                if (
                    known
                    and known.get("state") in (IMPORTED, TAGGED)
                    and known.get("status") in UNFINISHED
                    and known.get("source_fingerprint") != self._fingerprint(run)
                ):
                    row[RESYNC] = True  # unfinished at the last export, changed since
                crash_point("runs-found")
                yield row

    def _fingerprint(self, run: Any) -> str:
        sizes = mlflow_io.artifact_sizes(self.opts.source, run.info.artifact_uri)
        return mlflow_io.run_fingerprint(run, sizes)

    def staged_runs(self, exp_rows: list[Row], only_state: str | None = None) -> Iterator[Row]:
        """Runs in scope as the manifest knows them (for `import`), optionally in one state."""
        targets = {
            e["source_experiment_id"]: e.get("target_experiment_id")
            for e in exp_rows
            if e.get("state") != FAILED
        }
        for row in list(self.runs.values()):
            if only_state and row.get("state") != only_state:
                continue
            if row["source_experiment_id"] in targets:
                yield {**row, "target_experiment_id": targets[row["source_experiment_id"]]}

    def transfer(self, rows: Iterable[Row], do_export: bool, do_import: bool) -> None:
        """Export and/or import runs through the fan-out; when both are asked for, one task
        does both for a run (`migrate_run`)."""
        size = max(1, self.opts.batch_size)
        first = MIGRATE if do_import else EXPORT

        def jobs() -> Iterator[Job]:
            pending: dict[str, list[Row]] = {"export": [], "import": []}
            for row in rows:
                known = self.runs.get(row["source_run_id"])
                step = "export" if row.get(RESYNC) else next_step(known)
                self.summary.found[_found_as(known, row, step)] += 1
                if step == "export" and not do_export:
                    continue
                if step == "import" and not do_import:
                    continue
                if step not in pending:
                    continue
                pending[step].append(row)
                if len(pending[step]) >= size:
                    yield Job(first if step == "export" else IMPORT, pending[step])
                    pending[step] = []
            for step, batch in pending.items():
                if batch:
                    yield Job(first if step == "export" else IMPORT, batch)

        def on_done(job: Job, results: list[Row]) -> list[Job]:
            self._record_runs(job.stage.name, results)
            return []

        self.executor.run(jobs(), self.opts, on_done)

    def tag_all(self, exp_rows: list[Row]) -> None:
        """Apply source tags and parent links to every imported run in scope."""
        crash_point("before-tags")
        in_scope = {e["source_experiment_id"] for e in exp_rows if e.get("state") != FAILED}
        size = max(1, self.opts.batch_size) * 4
        missing_parents = 0
        logged = self.logged_model_ids()

        def items() -> Iterator[Row]:
            nonlocal missing_parents
            for row in list(self.runs.values()):
                if row["source_experiment_id"] in in_scope and next_step(row) == "tag":
                    item = with_targets(row, self.runs, logged)
                    parent = row.get("source_parent_run_id")
                    if parent and not item.get("target_parent_run_id"):
                        if still_moving(
                            self.runs.get(parent), self.scope_complete
                        ):  # link it later
                            self._record_runs("tag", [failed_row(row, "tag", _waits(parent))])
                            continue
                        missing_parents += 1
                    yield item

        def on_done(job: Job, results: list[Row]) -> list[Job]:
            self._record_runs("tag", results)
            return []

        self.executor.run(jobs_of(TAG, items(), size), self.opts, on_done)
        if missing_parents:
            log.warning(
                "%d runs have a parent that was not migrated (filtered out or failed): their "
                "mlflow.parentRunId is left unset; the source value is in "
                "mlflow_exim.mlflow_tag.parentRunId",
                missing_parents,
            )

    def _record_runs(self, stage: str, rows: list[Row]) -> None:
        for r in rows:
            crash_point("run-tagged" if stage == "tag" else "run-done")
            r.pop(RESYNC, None)
            self.runs[r["source_run_id"]] = r
            if r["state"] == FAILED:
                self.summary.actions[f"{r.get('failed_stage') or stage} failed"] += 1
            else:
                self.summary.actions.update(_DONE[stage])
        self.runs_m.append(rows)
        self._checkpoint(rows)
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_EVERY_S:
            self._last_progress = now
            log.info("progress: %s", format_counts(self.summary.actions))

    # ---- logged models (MLflow 3) ---------------------------------------------------------

    def logged_model_ids(self) -> dict[str, str]:
        """Source → target id of every migrated logged model."""
        return {k: r["target_model_id"] for k, r in self.logged.items() if r.get("target_model_id")}

    def _target_run(self, source_run_id: str | None) -> str | None:
        row = self.runs.get(source_run_id or "")
        return row.get("target_run_id") if row else None

    def _logged_item(self, row: Row, exps: dict[str, Row], run_ids: Iterable[str]) -> Row:
        """A logged model's row with the target ids its import needs, and the runs its metrics
        were logged against that are still moving (`still_moving`: its import waits)."""
        run_ids = set(run_ids)
        ids = {r: t for r in run_ids if (t := self._target_run(r))}
        waits = [
            r
            for r in sorted(run_ids - set(ids))
            if still_moving(self.runs.get(r), self.scope_complete)
        ]
        return {
            **row,
            "target_experiment_id": exps[row["source_experiment_id"]]["target_experiment_id"],
            "target_run_id": self._target_run(row.get("source_run_id")),
            "run_id_map": ids,
            "waits_for_runs": waits,
        }

    def transfer_logged_models(self, exp_rows: list[Row], do_export: bool, do_import: bool) -> None:
        """Every logged model of the migrated experiments: new and changed ones from the
        source, or (for `import`) the staged ones not yet imported."""
        exps = {e["source_experiment_id"]: e for e in exp_rows if e.get("state") != FAILED}

        def items() -> Iterator[Row]:
            if do_export:
                for exp_id in exps:
                    for lm in scope.source_logged_models(self.opts, exp_id):
                        known = self.logged.get(lm.model_id)
                        if (
                            known
                            and known.get("state") in (IMPORTED, TAGGED)
                            and known.get("last_updated_timestamp") == lm.last_updated_timestamp
                        ):
                            continue
                        row = {
                            **(known or {}),
                            "source_model_id": lm.model_id,
                            "source_experiment_id": exp_id,
                            "source_run_id": lm.source_run_id,
                        }
                        runs = {m.run_id for m in lm.metrics or [] if m.run_id}
                        yield self._logged_item(row, exps, runs) if do_import else row
                return
            for row in list(self.logged.values()):
                todo = row["state"] == EXPORTED or (
                    row["state"] == FAILED and row.get("failed_stage") == "import"
                )
                if todo and row["source_experiment_id"] in exps:
                    yield self._logged_item(row, exps, row.get("metric_run_ids") or [])

        stage = (
            MIGRATE_LOGGED
            if do_export and do_import
            else EXPORT_LOGGED
            if do_export
            else IMPORT_LOGGED
        )

        def on_done(job: Job, results: list[Row]) -> list[Job]:
            for r in results:
                r.pop("run_id_map", None)
                r.pop("waits_for_runs", None)
                self.logged[r["source_model_id"]] = r
            self.logged_m.append(results)
            self._checkpoint(results)
            return []

        size = max(1, self.opts.batch_size)
        self.executor.run(jobs_of(stage, items(), size), self.opts, on_done)
        if do_import:
            self.logged_m.flush()  # target ids recorded before the markers go
            todo = [
                r
                for r in self.logged.values()
                if r["source_experiment_id"] in exps
                and (r["state"] == IMPORTED or r.get("failed_stage") == "tag")
            ]
            if self.opts.import_source_tags:  # nothing to call: no need for the fan-out
                on_done(
                    Job(TAG_LOGGED, todo), [lm_stage.tag_logged_model(r, self.opts) for r in todo]
                )
            else:
                self.executor.run(jobs_of(TAG_LOGGED, todo, size * 4), self.opts, on_done)

    def verify(self) -> Any:
        """Verify every experiment and run in scope (the manifests say what moved where)."""
        exp_rows = self.staged_experiments()
        in_scope = {e["source_experiment_id"] for e in exp_rows if e.get("target_experiment_id")}
        logged = self.logged_model_ids()
        exps = {e["source_experiment_id"]: e for e in exp_rows}
        runs = (
            with_targets(r, self.runs, logged)
            for r in list(self.runs.values())
            if r["source_experiment_id"] in in_scope
        )
        logged_models = (
            self._logged_item(r, exps, r.get("metric_run_ids") or [])
            for r in list(self.logged.values())
            if r["source_experiment_id"] in in_scope and r["state"] != FAILED
        )
        work: list[tuple[str, Stage, Iterable[Row]]] = [
            ("run", VERIFY, runs),
            ("logged_model", VERIFY_LOGGED, logged_models),
            *((r.kind.object_type, r.verify_stage, r.verify_items()) for r in self.registries),
            *(
                (d.object_type, d.verify_stage, d.verify_items(exps, in_scope))
                for d in self.objects
            ),
        ]

        def other_sides() -> list[Row]:
            registries = [(r.kind, r.models) for r in self.registries]
            return reconcile(self.opts, self.exps, self.runs, self.logged, registries, self.objects)

        return verify_migration(self.opts, self.executor, self.staging, exp_rows, work, other_sides)

    def kind(self, label: str, stage: Callable[[], None]) -> None:
        """Run the stage of one kind of object. A server that refuses the driver's own calls
        for it (a listing, a permission) fails that kind alone: named in the summary (exit 1),
        what points at its objects waits (`scope_complete`), and every other kind moves."""
        try:
            with mlflow_io.translate_errors("server", "driver"):
                stage()
        except PermanentError as e:
            log.warning("%s: %s", label, e)
            self.scope_complete = False
            self.summary.failed.append(
                {"object": label, "state": FAILED, "failed_stage": "list", "error": describe(e)}
            )

    def _checkpoint(self, rows: list[Row]) -> None:
        """After each batch of results: stop when a server went away or the lease was lost."""
        self.watch.check(rows)
        if self.lease is not None:
            self.lease.check()

    def flush(self) -> None:
        """Write every buffered manifest row to the journal (before the command ends early)."""
        for table in self._tables():
            table.flush()

    def _tables(self) -> tuple[ManifestTable, ...]:
        return (
            self.runs_m,
            self.exps_m,
            self.logged_m,
            *self.models.tables,
            *self.prompts.tables,
            *(d.table for d in self.objects),
        )

    def close(self, exp_rows: list[Row]) -> Summary:
        """Write the manifests and count the final state of every run in scope."""
        for table in self._tables():
            table.compact()
        in_scope = {e["source_experiment_id"] for e in exp_rows}
        models, prompts = self.models.final_rows(), self.prompts.final_rows()
        scoped = (
            (
                self.summary.runs,
                [r for r in self.runs.values() if r["source_experiment_id"] in in_scope],
            ),
            (
                self.summary.logged_models,
                [r for r in self.logged.values() if r["source_experiment_id"] in in_scope],
            ),
            *zip((self.summary.models, self.summary.versions), models, strict=True),
            *zip((self.summary.prompts, self.summary.prompt_versions), prompts, strict=True),
        )
        for counter, rows in scoped:
            for r in rows:
                counter[r["state"]] += 1
                if r["state"] == FAILED:
                    self.summary.failed.append(r)
        for driver in self.objects:
            counts, failed = driver.counts(in_scope)
            self.summary.objects[driver.label] = counts
            self.summary.objects_found[driver.label] = driver.found
            self.summary.failed += failed
        self.summary.elapsed = time.monotonic() - self.summary.started
        return self.summary


def preflight(opts: Options, *, source: bool, target: bool, staging: bool = True) -> Options:
    """Fail fast, before any work: URIs well-formed, servers answering, staging usable; then
    ask each server what it offers.

    Returns:
        The options carrying both servers' capabilities (`migrator.capabilities`).
    """
    credentials.bind(opts.source, opts.target)
    if source:
        if not opts.source:
            raise ConfigError("--source is required")
        mlflow_io.check_tracking_uri(opts.source, "source")
    if target:
        if not opts.target:
            raise ConfigError("--target is required")
        mlflow_io.check_tracking_uri(opts.target, "target")
    if staging:
        check_staging_format(open_staging(opts.staging), write=False)
    return capabilities.with_capabilities(
        opts, opts.source if source else "", opts.target if target else ""
    )


def run_command(command: str, opts: Options, executor_factory: Any) -> Summary:
    """`migrate`, `export`, `import` or `verify` end to end; returns the summary.

    Raises:
        ConfigError: bad options, a server or the staging store unusable at the start, or
            another driver holding the staging store's lease.
        Interrupted: a server stopped answering part way (the driver's own calls, after
            their retries, or `ServerWatch`), or the lease was lost; what was done is recorded.
        PermanentError: a server refused one of the driver's own calls.
    """
    uses_source = command in ("migrate", "export", "verify")
    uses_target = command in ("migrate", "import", "verify")
    opts = preflight(opts, source=uses_source, target=uses_target)
    lease = Lease(open_staging(opts.staging), command, opts.lease_ttl_s)
    lease.acquire()
    try:
        check_staging_format(lease.staging, write=True)
    except BaseException:
        lease.release()
        raise
    m: Migration | None = None
    try:
        executor: Executor = executor_factory(opts)
        try:
            m = Migration(opts, executor, command)
            m.lease = lease
            with mlflow_io.translate_errors("server", "driver"):
                return _run_stages(m, command)
        except TransientError as e:  # the driver's own calls: spent their retries
            raise Interrupted(
                f"{e}. What was done is recorded in the manifests: run the same command "
                "again to resume"
            ) from e
        except BaseException:
            if m is not None:  # a command that ends early keeps what it recorded
                m.flush()
            raise
        finally:
            executor.close()
    finally:
        lease.release()


def _run_stages(m: Migration, command: str) -> Summary:
    """The stages of a command, in order (see the module docstring)."""
    opts = m.opts
    do_export = command in ("migrate", "export")
    do_import = command in ("migrate", "import")
    m.summary.servers = capabilities.notes(
        opts, source=command != "import", target=command != "export"
    )
    if command != "import":
        experiments = (
            e.experiment_id
            for e in scope.source_experiments(opts)
            if e.lifecycle_stage != "deleted"
        )
        m.summary.servers += inventory.unmoved_lines(opts, experiments)
    if command == "verify":
        m.summary.verify = m.verify()
        return m.summary
    exp_rows = m.export_experiments() if do_export else m.staged_experiments()
    if do_import:
        exp_rows = m.import_experiments(exp_rows)
    m.scope_complete = all(e.get("state") != FAILED for e in exp_rows)
    runs = m.source_runs(exp_rows) if do_export else m.staged_runs(exp_rows)
    m.transfer(runs, do_export, do_import)
    if do_import and do_export:  # runs exported by an earlier `export`, not yet imported
        m.transfer(m.staged_runs(exp_rows, only_state=EXPORTED), False, True)
    # Each kind on its own: one the source or target refuses fails alone, said in the summary.
    m.kind("logged models", lambda: m.transfer_logged_models(exp_rows, do_export, do_import))
    m.kind("prompts", lambda: m.prompts.transfer(do_export, do_import))
    m.kind("traces", lambda: m.traces.transfer(exp_rows, do_export, do_import))
    if do_export and do_import:
        m.kind("trace links to runs", lambda: m.traces.link_runs(exp_rows))
    m.kind("evaluation datasets", lambda: m.datasets.transfer(exp_rows, do_export, do_import))
    m.kind("scorers", lambda: m.scorers.transfer(exp_rows, do_export, do_import))
    if do_import:
        m.tag_all(exp_rows)
    m.kind("registered models", lambda: m.models.transfer(do_export, do_import))
    if do_import:
        m.finish_experiments(exp_rows)
    else:
        for e in exp_rows:
            m.summary.experiments[e["state"]] += 1
            if e["state"] == FAILED:
                m.summary.failed.append(e)
    summary = m.close(exp_rows)
    if opts.verify and command == "migrate":
        summary.verify = m.verify()
    return summary
