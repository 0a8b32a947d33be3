"""`verify`: reconcile every migrated object with its source and report by category.

Like `rclone check`: each object ends in one of `match`, `differ` (with the fields that
differ), `missing_on_target`, `missing_on_source` or `error`. Runs are verified in parallel
through the same fan-out as the migration; experiments (few) inline. The rows replace
`manifests/verify.parquet`.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from migrator.config import Options
from migrator.errors import MigratorError
from migrator.fanout import Executor, Job, Stage, describe, jobs_of
from migrator.manifest import ERROR, MATCH, Row, now_ms, write_verify
from migrator.stages.experiments import verify_experiment
from migrator.stages.tag_runs import with_target_parent
from migrator.stages.verify_runs import verify_row, verify_run
from migrator.staging import Staging

VERIFY = Stage("verify", verify_run)
OUTCOMES = (MATCH, "differ", "missing_on_target", "missing_on_source", ERROR)
_SHOWN = 50


@dataclass
class VerifyReport:
    rows: list[Row] = field(default_factory=list)
    elapsed: float = 0.0
    path: str = ""

    @property
    def ok(self) -> bool:
        return all(r["outcome"] == MATCH for r in self.rows)

    def counts(self) -> Counter[tuple[str, str]]:
        return Counter((r["object_type"], r["outcome"]) for r in self.rows)

    def render(self) -> str:
        n_runs = sum(r["object_type"] == "run" for r in self.rows)
        rate = n_runs / self.elapsed if self.elapsed > 0 else 0.0
        counts = self.counts()
        lines = [
            f"verify: {len(self.rows)} objects in {self.elapsed:.1f} s ({rate:.1f} runs/s)",
            "  " + f"{'':12}" + "".join(f"{o:>19}" for o in OUTCOMES),
        ]
        for kind in ("experiment", "run"):
            lines.append(
                "  " + f"{kind:12}" + "".join(f"{counts[(kind, o)]:>19}" for o in OUTCOMES)
            )
        bad = [r for r in self.rows if r["outcome"] != MATCH]
        for r in bad[:_SHOWN]:
            what = f"{r['object_type']} {r['source_id']} ({r.get('name')})"
            why = r.get("details") or r.get("error") or ""
            lines.append(f"    {what}: {r['outcome']}" + (f": {why}" if why else ""))
        if len(bad) > _SHOWN:
            lines.append(f"    … and {len(bad) - _SHOWN} more (see {self.path})")
        lines.append(f"  result: {'all match' if self.ok else 'DIFFERENCES FOUND'}  ({self.path})")
        return "\n".join(lines)


def verify_migration(
    opts: Options,
    executor: Executor,
    staging: Staging,
    exp_rows: list[Row],
    runs: dict[str, Row],
) -> VerifyReport:
    """Verify the experiments in `exp_rows` and their runs (manifest rows by source id)."""
    started = time.monotonic()
    rows: list[Row] = []
    for e in exp_rows:
        try:
            rows.append(verify_experiment(e, opts))
        except MigratorError as err:
            rows.append(
                {
                    "object_type": "experiment",
                    "source_id": e["source_experiment_id"],
                    "target_id": e.get("target_experiment_id"),
                    "name": e.get("name"),
                    "outcome": ERROR,
                    "error": describe(err),
                    "verified_at": now_ms(),
                }
            )
    in_scope = {e["source_experiment_id"] for e in exp_rows}
    size = max(1, opts.batch_size)

    items = (
        with_target_parent(row, runs)
        for row in list(runs.values())
        if row["source_experiment_id"] in in_scope
    )

    def on_done(job: Job, results: list[Row]) -> list[Job]:
        for r in results:
            # A row that raised comes back from the fan-out as a failed manifest row.
            rows.append(r if "object_type" in r else verify_row(r, ERROR, error=r.get("error")))
        return []

    executor.run(jobs_of(VERIFY, items, size), opts, on_done)
    path = write_verify(staging, rows)
    return VerifyReport(rows, time.monotonic() - started, f"{staging.uri}/{path}")
