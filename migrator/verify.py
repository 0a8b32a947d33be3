"""`verify`: reconcile every migrated object with its source and report by category.

Like `rclone check`: each object (experiment, run, logged model, registered model, model
version, trace) ends in one of `match`, `differ` (with the fields that differ), `missing_on_target`,
`missing_on_source` or `error`; and from the other sides (`migrator.reconcile`), target objects
that carry a migrated source id but are not the manifest's (`duplicate`) and source objects in
scope that never moved (`not_migrated`). Runs, logged models and registered models are verified in
parallel through the same fan-out as the migration; experiments (few) inline. The rows replace
`manifests/verify.parquet`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from migrator.config import Options
from migrator.errors import MigratorError
from migrator.fanout import Executor, Job, Stage, describe, jobs_of
from migrator.manifest import (
    ERROR,
    FAILED,
    MATCH,
    VERIFY_KEY,
    VERIFY_SCHEMA,
    Row,
    RowsFile,
    now_ms,
)
from migrator.progress import Progress
from migrator.reconcile import DUPLICATE, NOT_MIGRATED
from migrator.stages.experiments import verify_experiment
from migrator.stages.verify_models import verify_logged_model
from migrator.stages.verify_runs import verify_row, verify_run
from migrator.staging import Staging
from migrator.summary import SHOWN as _SHOWN

VERIFY = Stage("verify", verify_run)
VERIFY_LOGGED = Stage("verify", verify_logged_model)
KINDS = (
    "experiment",
    "run",
    "logged_model",
    "registered_model",
    "model_version",
    "prompt",
    "prompt_version",
    "trace",
    "evaluation_dataset",
    "scorer",
)
#: Where a manifest row keeps the source and target id of each kind's object.
_IDS = {
    "run": ("source_run_id", "target_run_id"),
    "logged_model": ("source_model_id", "target_model_id"),
    "registered_model": ("name", "target_name"),
    "prompt": ("name", "target_name"),
    "trace": ("source_trace_id", "target_trace_id"),
    "evaluation_dataset": ("source_dataset_id", "target_dataset_id"),
    "scorer": ("source_scorer_key", "target_scorer_key"),
}
OUTCOMES = (
    MATCH,
    "differ",
    "missing_on_target",
    "missing_on_source",
    DUPLICATE,
    NOT_MIGRATED,
    ERROR,
)
_W = 18  # column width of the table


@dataclass
class VerifyReport:
    """What a verification found: counts per (object type, outcome), and the first `_SHOWN`
    objects that do not match (every row is in `manifests/verify.parquet`, not in memory)."""

    tally: Counter[tuple[str, str]] = field(default_factory=Counter)
    bad: list[Row] = field(default_factory=list)
    n_bad: int = 0
    elapsed: float = 0.0
    path: str = ""

    @classmethod
    def of(cls, rows: Iterable[Row], elapsed: float = 0.0, path: str = "") -> VerifyReport:
        report = cls(elapsed=elapsed, path=path)
        report.add(rows)
        return report

    def add(self, rows: Iterable[Row]) -> None:
        for r in rows:
            self.tally[(r["object_type"], r["outcome"])] += 1
            if r["outcome"] != MATCH:
                self.n_bad += 1
                if len(self.bad) < _SHOWN:
                    self.bad.append(r)

    @property
    def ok(self) -> bool:
        return self.n_bad == 0

    def counts(self) -> Counter[tuple[str, str]]:
        return self.tally

    def render(self) -> str:
        counts = self.tally
        n_runs = sum(n for (kind, _), n in counts.items() if kind == "run")
        rate = n_runs / self.elapsed if self.elapsed > 0 else 0.0
        lines = [
            f"verify: {sum(counts.values())} objects in {self.elapsed:.1f} s ({rate:.1f} runs/s)",
            "  " + f"{'':19}" + "".join(f"{o:>{_W}}" for o in OUTCOMES),
        ]
        for kind in KINDS:
            if kind not in ("experiment", "run") and not any(k == kind for k, _ in counts):
                continue
            lines.append(
                "  " + f"{kind:19}" + "".join(f"{counts[(kind, o)]:>{_W}}" for o in OUTCOMES)
            )
        for r in self.bad:
            what = f"{r['object_type']} {r['source_id']} ({r.get('name')})"
            why = r.get("details") or r.get("error") or ""
            lines.append(f"    {what}: {r['outcome']}" + (f": {why}" if why else ""))
        if self.n_bad > len(self.bad):
            lines.append(f"    … and {self.n_bad - len(self.bad)} more (see {self.path})")
        lines.append(f"  result: {'all match' if self.ok else 'DIFFERENCES FOUND'}  ({self.path})")
        return "\n".join(lines)


def verify_migration(
    opts: Options,
    executor: Executor,
    staging: Staging,
    exp_rows: list[Row],
    work: list[tuple[str, Stage, Iterable[Row]]],
    other_sides: Callable[[], list[Row]] = list,
    progress: Progress | None = None,
) -> VerifyReport:
    """Verify the experiments in `exp_rows` (inline) and the objects in `work` (each an object
    type, its verify stage and its items, through the fan-out); a model's version rows come
    back with it.
    `other_sides` gives the rows only the servers can show (duplicates, never moved)."""
    started = time.monotonic()
    report = VerifyReport()
    with RowsFile(VERIFY_SCHEMA) as out:

        def keep(rows: list[Row]) -> None:
            out.add(rows)
            report.add(rows)

        try:
            keep(other_sides())
        except MigratorError as err:
            keep(
                [
                    _error(
                        err.obj or "server",
                        "",
                        f"looking for duplicates and unmigrated objects: {describe(err)}",
                    )
                ]
            )
        for e in exp_rows:
            try:
                keep([verify_experiment(e, opts)])
            except MigratorError as err:
                row = _error("experiment", e["source_experiment_id"], describe(err))
                keep([{**row, "target_id": e.get("target_experiment_id"), "name": e.get("name")}])
        size = max(1, opts.batch_size)

        for object_type, stage, items in work:

            def on_done(job: Job, results: list[Row], object_type: str = object_type) -> list[Job]:
                done = [r if "object_type" in r else error_row(object_type, r) for r in results]
                for r in results:
                    # A row that raised comes back from the fan-out as a failed manifest row.
                    keep(r.pop("_versions", None) or [])
                keep(done)
                if progress is not None:  # what does not match counts as failed
                    progress.advance(
                        f"verify {object_type}s",
                        ({"state": "ok" if r["outcome"] == MATCH else FAILED} for r in done),
                    )
                return []

            executor.run(jobs_of(stage, items, size, opts.concurrency), opts, on_done)
        out.upload(staging, VERIFY_KEY)
    report.elapsed = time.monotonic() - started
    report.path = f"{staging.uri}/{VERIFY_KEY}"
    return report


def _error(object_type: str, source_id: str, error: str) -> Row:
    return {
        "object_type": object_type,
        "source_id": source_id,
        "outcome": ERROR,
        "error": error,
        "verified_at": now_ms(),
    }


def error_row(object_type: str, r: Row) -> Row:
    """The verify row of an object whose verification raised."""
    if object_type == "run":
        return verify_row(r, ERROR, error=r.get("error"))
    source_key, target_key = _IDS[object_type]
    return {
        "object_type": object_type,
        "source_id": r[source_key],
        "target_id": r.get(target_key),
        "name": r.get("name"),
        "outcome": ERROR,
        "error": r.get("error"),
        "verified_at": now_ms(),
    }
