"""One frozen set of options for every command; defaults live here and nowhere else."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from migrator.capabilities import ServerCapabilities


@dataclass(frozen=True, kw_only=True)
class Options:
    """What a migration does. The CLI and `jobs/migrate.py` both build one of these."""

    source: str = ""
    """Source tracking URI (`http(s)://…`, `sqlite:///…`, `postgresql://…`)."""
    target: str = ""
    """Target tracking URI."""
    staging: str = "migrator-staging"
    """`s3://bucket/prefix` or a local folder; one staging URI is one migration (resumable)."""
    experiments: tuple[str, ...] = ()
    """Experiment names, ids or globs to migrate; empty means all."""
    models: tuple[str, ...] = ()
    """Registered model names or globs; empty means all."""
    include_deleted: bool = False
    """Also migrate deleted experiments and runs; they end deleted on the target."""
    run_start_time: int | None = None
    """Only runs started at or after this time (epoch milliseconds)."""
    import_source_tags: bool = True
    """Keep every original system attribute as an `mlflow_exim.*` tag on the target."""
    source_artifacts_destination: str = ""
    """The source server's `mlflow server --artifacts-destination` (`s3://bucket/prefix`, a
    folder, …): its proxied files (`mlflow-artifacts:/<path>`) are read from `<that>/<path>`
    directly, not through the server; "" reads them through the server
    (`migrator.artifact_store`)."""
    target_artifacts_destination: str = ""
    """The target server's `--artifacts-destination`: proxied files are written there directly
    (server-side copies from S3 staging on the same endpoint); "" writes through the server."""
    ray_address: str | None = None
    """Ray cluster address; None starts a local Ray."""
    verify: bool = False
    """`migrate` only: verify every object at the end (as `verify` does)."""
    verify_artifacts: str = "hash"
    """How deep `verify` checks artifacts: `hash` (SHA-256 of every file), `size`, or `none`."""
    dry_run: bool = False
    """Plan only: enumerate and report, write nothing."""
    concurrency: int = 8
    """Runs in flight at once across the cluster: one task per CPU, each running its runs in
    `ceil(concurrency / CPUs)` threads (the stages wait on servers, not on the CPU)."""
    batch_size: int = 8
    """Runs per task: small runs are batched so each task is worth its overhead."""
    max_attempts: int = 3
    """Attempts per object for transient errors (connection resets, 5xx)."""
    server_grace_s: float = 60.0
    """How long a server may stop answering (after an object failed on it) before the command
    stops (`Interrupted`, exit 3) instead of failing every object in turn."""
    lease_ttl_s: float = 60.0
    """A driver whose lease on the staging store has had no heartbeat for this long is taken
    to be gone, and its lease is taken over (`migrator.lease`)."""
    progress: str = "auto"
    """`auto` (a live display on a terminal, log lines otherwise), `bar`, `log` or `none`."""
    manifest_flush_rows: int = 500
    """Status rows buffered by the driver before a journal file is written."""
    runs_read_in_full: bool = False
    """Set by the driver before the runs move, not a flag: some experiment in scope holds a
    logged model, and a run of any experiment may have read it, which a search of runs leaves
    out; so every run is read with `get_run` (`export_runs.prefetch`)."""
    capabilities: tuple[ServerCapabilities, ...] = ()
    """What the source and target offer, probed once by the driver's preflight
    (`migrator.capabilities`) and carried to every worker with the options; not a flag."""

    def replace(self, **changes: object) -> Options:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
