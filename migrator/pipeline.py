"""The driver: orders the stages of a command, and sums up.

Each kind of object has a driver of its own (`ExperimentDriver`, `RunDriver`,
`LoggedModelDriver`, the registry's, the `ObjectDriver`s), which decides from its manifest's
ledger what is left to do for each object in scope and sends the work through the fan-out.
Resume rule (as dlt's): first finish what the manifests say is pending, then new work.

Order: experiments (inline, a hundred at a time) → per run export → import (the runs of each
hundred experiments through the fan-out while the next hundred are made) → logged models (need
their runs' target ids) → prompts → traces → datasets → scorers → tag (needs every parent's and
logged model's target id) → registered models and versions (need the runs and logged models
they point at) → finish experiments (delete those deleted at source, once nothing more goes
into them).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

import pyarrow as pa

from migrator import (
    artifact_store,
    capabilities,
    credentials,
    heap,
    inventory,
    mlflow_io,
    scope,
)
from migrator.background import ahead, aside
from migrator.config import Options
from migrator.dataset_driver import DatasetDriver
from migrator.errors import ConfigError, Interrupted, PermanentError, TransientError
from migrator.experiment_driver import ExperimentDriver
from migrator.fanout import FLUSH, Executor, Flush, describe
from migrator.layout import check_staging_format
from migrator.lease import Lease
from migrator.logged_model_driver import LoggedModelDriver
from migrator.manifest import FAILED, ManifestTable, Row
from migrator.progress import Progress
from migrator.reconcile import reconcile
from migrator.registry import MODELS, PROMPTS
from migrator.registry_driver import RegistryDriver
from migrator.run_driver import RunDriver
from migrator.scorer_driver import ScorerDriver
from migrator.staging import open_staging
from migrator.states import still_moving
from migrator.summary import Summary
from migrator.trace_driver import TraceDriver
from migrator.verify import verify_migration
from migrator.watch import ServerWatch

log = logging.getLogger(__name__)


@contextlib.contextmanager
def timed(label: str) -> Iterator[None]:
    """Log (debug) how long a step of the command took: where a migration's wall time goes."""
    t0 = time.monotonic()
    try:
        yield
    finally:
        log.debug("step %s: %.2f s", label, time.monotonic() - t0)


class Link(NamedTuple):
    """A reference to another object, as `Migration.link` finds it."""

    target: str | None
    """The object's target id, where it has one."""
    waits: bool
    """Without one: what points at it waits for it (it may still get one)."""


class Migration:
    """One staging URI: the drivers of every kind, the fan-out, the watch on the servers and
    the lease, and the summary."""

    experiments: ExperimentDriver
    runs: RunDriver
    logged: LoggedModelDriver
    traces: TraceDriver
    datasets: DatasetDriver
    scorers: ScorerDriver
    models: RegistryDriver
    prompts: RegistryDriver

    def __init__(self, opts: Options, executor: Executor, command: str) -> None:
        self.opts = opts
        self.executor = executor
        self.staging = open_staging(opts.staging)
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
        self.progress = Progress(opts.progress)
        # Arrow's default allocator keeps what it freed: the driver's peak would follow its
        # largest manifest batch ever read; the system's gives it back, and its large blocks
        # are given back at once (`heap`).
        pa.set_memory_pool(pa.system_memory_pool())
        heap.keep_large_blocks_mapped()
        # Each driver loads its ledgers from the manifests, folding in what a killed driver
        # left: a few staging round trips each, so all of them side by side.
        self._drivers: list[Any] = self._load_drivers(
            lambda: ExperimentDriver(self),
            lambda: RunDriver(self),
            lambda: LoggedModelDriver(self),
            lambda: TraceDriver(self),
            lambda: DatasetDriver(self),
            lambda: ScorerDriver(self),
            lambda: RegistryDriver(self, MODELS),
            lambda: RegistryDriver(self, PROMPTS),
        )
        (
            self.experiments,
            self.runs,
            self.logged,
            self.traces,
            self.datasets,
            self.scorers,
            self.models,
            self.prompts,
        ) = self._drivers
        self.exps = self.experiments.rows
        self.objects = (self.traces, self.datasets, self.scorers)
        self.registries = (self.models, self.prompts)

    def _load_drivers(self, *makers: Callable[[], Any]) -> list[Any]:
        """The drivers, made side by side; when one fails (or the command is interrupted),
        those made are released."""
        made: list[Future[Any]] = []
        try:
            with ThreadPoolExecutor(len(makers), thread_name_prefix="ledgers") as pool:
                made = [pool.submit(make) for make in makers]  # the pool's exit waits for all
            errors = [e for f in made if (e := f.exception()) is not None]
            if errors:
                raise errors[0]
        except BaseException:
            self._drivers = [f.result() for f in made if f.done() and f.exception() is None]
            self.release()
            raise
        return [f.result() for f in made]

    def verify(self) -> Any:
        """Verify every object in scope (the manifests say what moved where)."""
        exp_rows = self.experiments.staged()
        in_scope = [e["source_experiment_id"] for e in exp_rows if e.get("target_experiment_id")]
        exps = {e["source_experiment_id"]: e for e in exp_rows}
        work: list[tuple[str, Any, Any]] = [
            self.runs.verify_work(in_scope),
            self.logged.verify_work(exps, in_scope),
            *((r.kind.object_type, r.verify_stage, r.verify_items()) for r in self.registries),
            *(
                (d.object_type, d.verify_stage, d.verify_items(exps, set(in_scope)))
                for d in self.objects
            ),
        ]

        def other_sides() -> list[Row]:
            registries = [(r.kind, r.models) for r in self.registries]
            return reconcile(
                self.opts, self.exps, self.runs.rows, self.logged.rows, registries, self.objects
            )

        return verify_migration(
            self.opts, self.executor, self.staging, exp_rows, work, other_sides, self.progress
        )

    def link(self, kind: RunDriver | LoggedModelDriver, source_id: str | None) -> Link:
        """Where the run or logged model `source_id` that something here points at (a child's
        parent, a run's or trace's link, a logged model's runs, a version's source) stands:
        its target id, or, without one, whether it may still get one (`still_moving`), so what
        points at it waits; an object that failed for good or lies outside the scope is done
        without. One read of the ledger: the row says both (its kind's target column, as
        `Targets` reads it)."""
        if not source_id:
            return Link(None, False)
        row = kind.rows.get(source_id)
        target = row.get(kind.targets.column) if row else None
        if target:
            return Link(str(target), False)
        return Link(None, still_moving(row, self.scope_complete))

    def kind(self, label: str, stage: Callable[[], None]) -> None:
        """Run the stage of one kind of object. A server that refuses the driver's own calls
        for it (a listing, a permission) fails that kind alone: named in the summary (exit 1),
        what points at its objects waits (`scope_complete`), and every other kind moves."""
        try:
            with timed(label), mlflow_io.translate_errors("server", "driver"):
                stage()
        except PermanentError as e:
            log.warning("%s: %s", label, e)
            self.scope_complete = False
            self.summary.add_failed(
                [{"object": label, "state": FAILED, "failed_stage": "list", "error": describe(e)}]
            )

    def checkpoint(self, rows: list[Row]) -> None:
        """After each batch of results: stop when a server went away or the lease was lost."""
        self.watch.check(rows)
        if self.lease is not None:
            self.lease.check()

    def flush(self) -> None:
        """Write every buffered manifest row to the journal (before the command ends early)."""
        for table in self._tables():
            table.flush()

    def _tables(self) -> list[ManifestTable]:
        return [t for d in self._drivers for t in d.tables]

    def release(self) -> None:
        """Remove the ledgers (the manifests in staging are the record)."""
        for table in self._tables():
            table.close()

    def close(self, exp_rows: list[Row]) -> Summary:
        """Write the manifests and count the final state of every object in scope."""
        for table in self._tables():
            table.compact()
        in_scope = [e["source_experiment_id"] for e in exp_rows]
        self.runs.final(in_scope)
        self.logged.final(in_scope)
        models, prompts = self.models.final_rows(), self.prompts.final_rows()
        scoped = (
            *zip((self.summary.models, self.summary.versions), models, strict=True),
            *zip((self.summary.prompts, self.summary.prompt_versions), prompts, strict=True),
        )
        for counter, rows in scoped:
            for r in rows:
                counter[r["state"]] += 1
                if r["state"] == FAILED:
                    self.summary.add_failed([r])
        for driver in self.objects:
            driver.final(self.summary, set(in_scope))
        self.summary.elapsed = time.monotonic() - self.summary.started
        return self.summary


def preflight(opts: Options, *, source: bool, target: bool, staging: bool = True) -> Options:
    """Fail fast, before any work: URIs well-formed, servers answering, staging usable; then
    ask each server what it offers. The checks of each side are made side by side (a few
    dozen round trips in all); when several fail, the first of source, target, artifact
    destinations, staging is named.

    Returns:
        The options carrying both servers' capabilities (`migrator.capabilities`).
    """
    credentials.bind(opts.source, opts.target)
    if source and not opts.source:
        raise ConfigError("--source is required")
    if target and not opts.target:
        raise ConfigError("--target is required")

    checks: list[Callable[[], object]] = [
        *([functools.partial(_check_server, opts, opts.source, "source")] if source else []),
        *([functools.partial(_check_server, opts, opts.target, "target")] if target else []),
        functools.partial(artifact_store.check_destinations, opts, source=source, target=target),
    ]
    if staging:
        checks.append(lambda: check_staging_format(open_staging(opts.staging), write=False))
    with ThreadPoolExecutor(len(checks), thread_name_prefix="preflight") as pool:
        done = [pool.submit(check) for check in checks]
        for future in done:
            future.result()
    return capabilities.with_capabilities(
        opts, opts.source if source else "", opts.target if target else ""
    )


def _check_server(opts: Options, uri: str, role: str) -> None:
    """One side's preflight: the URI answers as a tracking server; then what it offers is
    probed (`capabilities.probe` keeps it for the options `preflight` returns)."""
    mlflow_io.check_tracking_uri(uri, role)
    capabilities.with_capabilities(opts, uri)


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
    with timed("preflight"):
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
            with timed("ledgers"):
                m = Migration(opts, executor, command)
            m.lease = lease
            with m.progress, mlflow_io.translate_errors("server", "driver"):
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
            if m is not None:
                m.release()
    finally:
        lease.release()


def _unmoved(opts: Options) -> list[str]:
    """The summary's lines on what the source holds that this version does not move."""
    with timed("inventory"):
        experiments = (
            e.experiment_id
            for e in scope.source_experiments(opts)
            if e.lifecycle_stage != "deleted"
        )
        return inventory.unmoved_lines(opts, experiments)


def _inventory_lines(unmoved: Future[list[str]] | None) -> list[str]:
    """The inventory's lines for the summary. A count the source kept failing (its retries
    spent) is said there, not raised: the work it ran beside is done and recorded, and a
    blip the runs rode out must not fail the command at its end."""
    if unmoved is None:
        return []
    try:
        return unmoved.result()
    except TransientError as e:
        return [
            f"not migrated by this version: not counted ({e.message}); `migrator plan` counts them"
        ]


def _run_stages(m: Migration, command: str) -> Summary:
    """The stages of a command, in order (see the module docstring)."""
    opts = m.opts
    do_export = command in ("migrate", "export")
    do_import = command in ("migrate", "import")
    m.summary.servers = capabilities.notes(
        opts, source=command != "import", target=command != "export"
    )
    # What the source holds that does not move: list calls on the source (per experiment for
    # some kinds), made in a thread of its own while everything else moves, and waited for
    # only by the summary: a server of thousands of experiments does not hold the runs up.
    unmoved = aside(_unmoved, opts) if command != "import" else None
    if command == "verify":
        m.summary.servers += _inventory_lines(unmoved)
        m.summary.verify = m.verify()
        return m.summary
    work = m.experiments.plan(do_export, do_import)
    ids = [row["source_experiment_id"] for step, row in work if step is not None]
    if do_export:
        m.opts = opts = opts.replace(runs_read_in_full=scope.holds_logged_models(opts, ids))
    m.runs.count_ahead(ids, from_source=do_export)
    exp_rows: list[Row] = []

    def runs() -> Generator[tuple[Row, str] | Flush, None, None]:
        """The runs of each hundred experiments, once those are made (`ExperimentDriver.move`,
        the next hundred made in a thread of its own while this hundred's runs move); `FLUSH`
        where the next hundred is not made yet, so the runs held for the tail do not wait."""
        stopped = threading.Event()  # set when the loop ends early: the hundred being made stops
        not_made: list[Row] = []
        made = ahead(
            m.experiments.move(work, stopped), "experiments", stopped=stopped, idle=not_made
        )
        with contextlib.closing(made):
            for chunk in made:
                if chunk is not_made:
                    yield FLUSH
                    continue
                exp_rows.extend(m.experiments.record(chunk))
                m.runs.leave_out(chunk)
                yield from (m.runs.from_source(chunk) if do_export else m.runs.from_staging(chunk))

    # Closed when the transfer stops early (an error, an interrupt): so is `ahead`'s thread.
    with timed("experiments and runs"), contextlib.closing(runs()) as moving:
        m.runs.transfer(moving, do_export, do_import)
        m.scope_complete = all(e.get("state") != FAILED for e in exp_rows)
        if do_import and do_export:  # runs exported by an earlier `export`, not yet imported
            m.runs.transfer(m.runs.exported_not_imported(exp_rows), False, True)
    # Each kind on its own: one the source or target refuses fails alone, said in the summary.
    m.kind("logged models", lambda: m.logged.transfer(exp_rows, do_export, do_import))
    m.kind("prompts", lambda: m.prompts.transfer(do_export, do_import))
    m.kind("traces", lambda: m.traces.transfer(exp_rows, do_export, do_import))
    if do_export and do_import:
        m.kind("trace links to runs", lambda: m.traces.link_runs(exp_rows))
    m.kind("evaluation datasets", lambda: m.datasets.transfer(exp_rows, do_export, do_import))
    m.kind("scorers", lambda: m.scorers.transfer(exp_rows, do_export, do_import))
    if do_import:
        with timed("run tags"):
            m.runs.tag_all(exp_rows)
    m.kind("registered models", lambda: m.models.transfer(do_export, do_import))
    if do_import:
        m.experiments.finish(exp_rows)
    else:
        m.experiments.count(exp_rows)
    m.summary.servers += _inventory_lines(unmoved)
    with timed("manifests"):
        summary = m.close(exp_rows)
    if opts.verify and command == "migrate":
        summary.verify = m.verify()
    return summary
