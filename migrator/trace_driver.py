"""The driver's part for traces (an `ObjectDriver`): every trace of the migrated experiments,
`manifests/traces.parquet`.

Traces go after the runs and logged models they point at (`mlflow.sourceRun`,
`mlflow.modelId`) and the prompt versions they link to: a trace whose run or logged model is
still moving is written all the same and marked failed, "waits for …", and the next run links
it. A trace nothing changed on since it moved (tags, metadata, state, assessments:
`trace_fingerprint`) is not written again; new traces and new assessments move incrementally.
Experiments with tens of thousands of traces are listed page by page and sent in small jobs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from migrator import scope, traces_io
from migrator.capabilities import TRACES
from migrator.fanout import Stage
from migrator.ledger import Targets
from migrator.manifest import Row, traces_table
from migrator.object_driver import ObjectDriver
from migrator.stages import traces as stage
from migrator.stages.verify_traces import prefetch as prefetch_verify
from migrator.stages.verify_traces import verify_trace
from migrator.traces_io import MODEL_ID_KEY, SOURCE_RUN_KEY

if TYPE_CHECKING:
    from migrator.pipeline import Migration


class TraceDriver(ObjectDriver):
    key = "source_trace_id"
    object_type = "trace"
    feature = TRACES
    label = "traces"
    per_batch = 4  # small objects: a job's reads are one or two `batchGet` calls
    migrate = Stage("migrate", stage.migrate_trace, stage.prefetch_migrate, inputs=("_waits_for",))
    export = Stage("export", stage.export_trace, stage.prefetch)
    import_ = Stage("import", stage.import_trace, stage.prefetch_held, inputs=("_waits_for",))
    verify_stage = Stage("verify", verify_trace, prefetch_verify)

    def __init__(self, m: Migration) -> None:
        super().__init__(m, traces_table(m.staging, m.opts.manifest_flush_rows))

    def source_objects(self, exps: dict[str, Row]) -> Iterator[tuple[Any, Row]]:
        stages = scope.lifecycle_stages(exps)
        for info in scope.source_traces(self.m.opts, stages):
            yield (
                info,
                {
                    "source_trace_id": info.trace_id,
                    "source_experiment_id": info.experiment_id,
                    "source_run_id": info.trace_metadata.get(SOURCE_RUN_KEY),
                    "source_model_id": info.trace_metadata.get(MODEL_ID_KEY),
                    "source_fingerprint": stage.trace_fingerprint(info),
                },
            )

    def in_scope(self, row: Row, experiment_ids: set[str]) -> bool:
        return row["source_experiment_id"] in experiment_ids

    def item(self, row: Row, exps: dict[str, Row]) -> Row:
        """The row with the target experiment, run and logged model, and what it waits for."""
        m = self.m
        run, model = row.get("source_run_id"), row.get("source_model_id")
        run_link, model_link = m.link(m.runs, run), m.link(m.logged, model)
        waits = [f"run {run}"] if run_link.waits else []
        waits += [f"logged model {model}"] if model_link.waits else []
        return {
            **row,
            "target_experiment_id": exps[row["source_experiment_id"]]["target_experiment_id"],
            "target_run_id": run_link.target,
            "target_model_id": model_link.target,
            "_waits_for": waits,
        }

    def link_runs(self, exp_rows: list[Row]) -> None:
        """Traces linked to a run by `link_traces_to_run` (an association the trace itself does
        not show, unlike `mlflow.sourceRun`): found on the source run by run, in the
        experiments that have traces, and linked again on the target (a link made twice is
        one link). Done when a run or trace moved in this command."""
        m = self.m
        if not (self.found["new"] or self.found["changed"] or m.summary.actions["imported"]):
            return  # nothing moved in this command: the links made before stand
        with_traces = {
            e["source_experiment_id"]
            for e in exp_rows
            if self.rows.counts([e["source_experiment_id"]])
        }
        targets = Targets(self.rows, "target_trace_id")
        for exp in exp_rows:
            exp_id = exp["source_experiment_id"]
            if exp_id not in with_traces or exp.get("lifecycle_stage") == "deleted":
                continue
            for row in m.runs.rows.rows(groups=[exp_id]):
                run_id = row["source_run_id"]
                if not row.get("target_run_id"):
                    continue
                if row.get("lifecycle_stage") == "deleted":
                    continue
                linked = [
                    targets[info.trace_id]
                    for info in traces_io.iter_trace_infos(m.opts.source, [exp_id], run_id)
                    if info.trace_id in targets
                    and info.trace_metadata.get(SOURCE_RUN_KEY) != run_id
                ]
                if linked:
                    traces_io.link_traces_to_run(m.opts.target, linked, row["target_run_id"])
