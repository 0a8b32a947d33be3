"""The driver: orders the stages, decides per object what is left to do, and sums up.

Resume rule (as dlt's): first finish what the manifests say is pending, then new work. Every
run is in one state — absent, exported, imported, tagged or failed (with the stage) — and the
next stage follows from it, so re-running the same command does only what is missing.

Order: experiments (inline: few) → per run export → import (pipelined through the fan-out)
→ tag (needs every parent's target id) → finish experiments (delete those deleted at source).
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from migrator import mlflow_io
from migrator.config import Options
from migrator.errors import ConfigError, MigratorError
from migrator.fanout import Executor, Job, Stage, failed_row, jobs_of
from migrator.manifest import (
    EXPORTED,
    FAILED,
    IMPORTED,
    TAGGED,
    ManifestTable,
    Row,
    experiments_table,
    runs_table,
    table_to_rows,
)
from migrator.stages import experiments as exp_stage
from migrator.stages.export_runs import export_run, prefetch
from migrator.stages.import_runs import import_run, migrate_run
from migrator.stages.tag_runs import tag_run, with_target_parent
from migrator.staging import open_staging
from migrator.verify import verify_migration

log = logging.getLogger(__name__)

EXPORT = Stage("export", export_run, prefetch)
#: `migrate`: export and import a run in one task (the import reuses the export's local copies).
MIGRATE = Stage("migrate", migrate_run, prefetch)
IMPORT = Stage("import", import_run)
TAG = Stage("tag", tag_run)
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


def matches(patterns: tuple[str, ...], experiment_id: str, name: str) -> bool:
    """True when no filter is set, or a pattern equals the id or name, or globs the name."""
    if not patterns:
        return True
    return any(p in (experiment_id, name) or fnmatch.fnmatchcase(name, p) for p in patterns)


def next_step(row: Row | None) -> str:
    """What a run needs next, from its manifest row: export, import, tag or nothing."""
    if row is None:
        return "export"
    state = row.get("state")
    if state == FAILED:
        return {"export": "export", "import": "import", "tag": "tag"}.get(
            row.get("failed_stage") or "", "export"
        )
    return {EXPORTED: "import", IMPORTED: "tag", TAGGED: "done"}.get(state or "", "export")


@dataclass
class Summary:
    """What a command did, for the closing table and the exit code."""

    command: str
    started: float = field(default_factory=time.monotonic)
    elapsed: float = 0.0
    experiments: Counter[str] = field(default_factory=Counter)
    runs: Counter[str] = field(default_factory=Counter)
    actions: Counter[str] = field(default_factory=Counter)
    found: Counter[str] = field(default_factory=Counter)
    """Runs in scope by what the manifests knew: new, re-synced, resumed, unchanged."""
    failed: list[Row] = field(default_factory=list)
    staging: str = ""
    verify: Any = None
    """The VerifyReport of `verify`, or of `migrate --verify`."""

    @property
    def ok(self) -> bool:
        return not self.failed and (self.verify is None or self.verify.ok)

    def render(self) -> str:
        if self.command == "verify" and self.verify is not None:
            return str(self.verify.render())
        n_runs = sum(self.runs.values())
        rate = n_runs / self.elapsed if self.elapsed > 0 else 0.0
        lines = [
            f"{self.command}: {sum(self.experiments.values())} experiments, {n_runs} runs "
            f"in {self.elapsed:.1f} s ({rate:.1f} runs/s)",
            "  experiments: " + _counts(self.experiments),
            "  runs:        " + _counts(self.runs),
            "  runs found:  " + _counts(self.found),
            "  work done:   " + _counts(self.actions),
        ]
        if self.failed:
            lines.append(f"  FAILED ({len(self.failed)}):")
            for r in self.failed[:50]:
                what = (
                    f"run {r['source_run_id']}"
                    if "source_run_id" in r
                    else f"experiment {r.get('name')!r} ({r.get('source_experiment_id')})"
                )
                lines.append(f"    {what}: {r.get('failed_stage')}: {r.get('error')}")
            if len(self.failed) > 50:
                lines.append(f"    … and {len(self.failed) - 50} more (see manifests)")
        lines.append(f"  manifests:   {self.staging}/manifests/")
        if self.verify is not None:
            lines.append(self.verify.render())
        return "\n".join(lines)


def _found_as(known: Row | None, row: Row, step: str) -> str:
    """How a run in scope stood before this command: new, re-synced, unchanged or resumed."""
    if known is None:
        return "new"
    if row.get(RESYNC):
        return "re-synced"
    return "unchanged" if step == "done" else "resumed"


def _counts(c: Counter[str]) -> str:
    return ", ".join(f"{v} {k}" for k, v in sorted(c.items())) or "none"


class Migration:
    """One staging URI: the manifests, the fan-out, and the order of the stages."""

    def __init__(self, opts: Options, executor: Executor, command: str) -> None:
        self.opts = opts
        self.executor = executor
        self.staging = open_staging(opts.staging)
        self.runs_m: ManifestTable = runs_table(self.staging, opts.manifest_flush_rows)
        self.exps_m: ManifestTable = experiments_table(self.staging)
        self.summary = Summary(command, staging=self.staging.uri)
        self._last_progress = time.monotonic()
        # Fold what a killed driver left in the journal before deciding anything.
        self.runs = {r["source_run_id"]: r for r in table_to_rows(self.runs_m.compact())}
        self.exps = {r["source_experiment_id"]: r for r in table_to_rows(self.exps_m.compact())}

    # ---- experiments -------------------------------------------------------------------

    def export_experiments(self) -> list[Row]:
        """Stage every source experiment in scope; returns their rows."""
        from mlflow.entities import ViewType

        view = ViewType.ALL if self.opts.include_deleted else ViewType.ACTIVE_ONLY
        rows = []
        for exp in mlflow_io.iter_experiments(self.opts.source, view):
            if not matches(self.opts.experiments, exp.experiment_id, exp.name):
                continue
            try:
                row = exp_stage.export_experiment(exp, self.staging)
                old = self.exps.get(exp.experiment_id)
                if old and old.get("target_experiment_id"):
                    row["target_experiment_id"] = old["target_experiment_id"]
            except MigratorError as e:
                row = failed_row(
                    {"source_experiment_id": exp.experiment_id, "name": exp.name}, "export", e
                )
            rows.append(self._record_experiment(row))
        return rows

    def staged_experiments(self) -> list[Row]:
        """Experiments in scope as the manifest knows them (for `import`, which has no source)."""
        return [
            r
            for r in self.exps.values()
            if matches(self.opts.experiments, r["source_experiment_id"], r.get("name") or "")
        ]

    def import_experiments(self, rows: list[Row]) -> list[Row]:
        out = []
        for row in rows:
            if row.get("state") == FAILED and row.get("failed_stage") == "export":
                out.append(row)
                continue
            try:
                row = exp_stage.import_experiment(row, self.opts, self.staging)
            except MigratorError as e:
                row = failed_row(row, "import", e)
            out.append(self._record_experiment(row))
        return out

    def finish_experiments(self, rows: list[Row]) -> None:
        for row in rows:
            if row.get("state") == FAILED:
                self.summary.failed.append(row)
                self.summary.experiments[FAILED] += 1
                continue
            try:
                row = exp_stage.finish_experiment(row, self.opts)
            except MigratorError as e:
                row = failed_row(row, "finish", e)
                self.summary.failed.append(row)
            self._record_experiment(row)
            self.summary.experiments[row["state"]] += 1

    def _record_experiment(self, row: Row) -> Row:
        self.exps[row["source_experiment_id"]] = row
        self.exps_m.append([row])
        return row

    # ---- runs ----------------------------------------------------------------------------

    def source_runs(self, exp_rows: list[Row]) -> Iterator[Row]:
        """Every source run in scope, paged, as a manifest row (the known one, or a new one)."""
        from mlflow.entities import ViewType

        view = ViewType.ALL if self.opts.include_deleted else ViewType.ACTIVE_ONLY
        flt = ""
        if self.opts.run_start_time is not None:
            flt = f"attributes.start_time >= {int(self.opts.run_start_time)}"
        for exp in exp_rows:
            if exp.get("state") == FAILED:
                continue
            for run in mlflow_io.iter_runs(
                self.opts.source, [exp["source_experiment_id"]], view, flt
            ):
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
        in_scope = {e["source_experiment_id"] for e in exp_rows if e.get("state") != FAILED}
        size = max(1, self.opts.batch_size) * 4
        missing_parents = 0

        def items() -> Iterator[Row]:
            nonlocal missing_parents
            for row in list(self.runs.values()):
                if row["source_experiment_id"] in in_scope and next_step(row) == "tag":
                    item = with_target_parent(row, self.runs)
                    if row.get("source_parent_run_id") and not item.get("target_parent_run_id"):
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
            r.pop(RESYNC, None)
            self.runs[r["source_run_id"]] = r
            if r["state"] == FAILED:
                self.summary.actions[f"{r.get('failed_stage') or stage} failed"] += 1
            else:
                self.summary.actions.update(_DONE[stage])
        self.runs_m.append(rows)
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_EVERY_S:
            self._last_progress = now
            log.info("progress: %s", _counts(self.summary.actions))

    def verify(self) -> Any:
        """Verify every experiment and run in scope (the manifests say what moved where)."""
        return verify_migration(
            self.opts, self.executor, self.staging, self.staged_experiments(), self.runs
        )

    def close(self, exp_rows: list[Row]) -> Summary:
        """Write the manifests and count the final state of every run in scope."""
        self.runs_m.compact()
        self.exps_m.compact()
        in_scope = {e["source_experiment_id"] for e in exp_rows}
        for r in self.runs.values():
            if r["source_experiment_id"] in in_scope:
                self.summary.runs[r["state"]] += 1
                if r["state"] == FAILED:
                    self.summary.failed.append(r)
        self.summary.elapsed = time.monotonic() - self.summary.started
        return self.summary


def preflight(opts: Options, *, source: bool, target: bool, staging: bool = True) -> None:
    """Fail fast, before any work: URIs well-formed, servers answering, staging usable."""
    if source:
        if not opts.source:
            raise ConfigError("--source is required")
        mlflow_io.check_tracking_uri(opts.source, "source")
    if target:
        if not opts.target:
            raise ConfigError("--target is required")
        mlflow_io.check_tracking_uri(opts.target, "target")
    if staging:
        open_staging(opts.staging)


def run_command(command: str, opts: Options, executor_factory: Any) -> Summary:
    """`migrate`, `export`, `import` or `verify` end to end; returns the summary."""
    do_export = command in ("migrate", "export")
    do_import = command in ("migrate", "import")
    preflight(
        opts, source=do_export or command == "verify", target=do_import or command == "verify"
    )
    executor: Executor = executor_factory(opts)
    try:
        m = Migration(opts, executor, command)
        if command == "verify":
            m.summary.verify = m.verify()
            return m.summary
        exp_rows = m.export_experiments() if do_export else m.staged_experiments()
        if do_import:
            exp_rows = m.import_experiments(exp_rows)
        runs = m.source_runs(exp_rows) if do_export else m.staged_runs(exp_rows)
        m.transfer(runs, do_export, do_import)
        if do_import:
            if do_export:  # runs exported by an earlier `export` and not yet imported
                m.transfer(m.staged_runs(exp_rows, only_state=EXPORTED), False, True)
            m.tag_all(exp_rows)
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
    finally:
        executor.close()
