"""Import one staged run into the target: create (or find) it, then its data and artifacts.

Creation is the only step that is not naturally idempotent, so the created run carries its
source run id as a tag from the first call, and creation goes through `once.create_once`: sent
once, and after an ambiguous failure or an earlier attempt's intent, looked up and adopted.
The intent is a conditional write to staging just before the create: its own object in
`import`; in `migrate`, the run's run.json, which the export in the same task writes just
before (a run.json that was there already means an earlier attempt got that far).
Everything after creation is safe to repeat: params with equal values are accepted, equal
metric points are de-duplicated by the server, artifacts are overwritten.
"""

from __future__ import annotations

from typing import Any

from mlflow.entities import RunTag

from migrator.artifact_store import target_side
from migrator.artifacts import Fetch, from_keep, from_staging, upload_artifacts
from migrator.config import Options
from migrator.errors import PermanentError
from migrator.layout import (
    RUN_FORMAT,
    artifact_key,
    load_doc,
    metrics_from_parquet,
    run_key,
    validate_run_doc,
)
from migrator.lineage import (
    MAX_PARAM_VALUE_LENGTH,
    PARENT_RUN_ID_TAG,
    SOURCE_RUN_ID_TAG,
    SYSTEM_TAG_PREFIX,
    fit,
    run_source_tags,
)
from migrator.manifest import FAILED, IMPORTED, Row, now_ms
from migrator.mlflow_io import (
    client,
    discard_run,
    find_runs_by_source_id,
    log_batch_chunked,
    tag_key_loggable,
    translate_errors,
)
from migrator.once import Lineage, create_once
from migrator.stages.export_runs import row_fields
from migrator.staging import Staging, open_staging
from migrator.workdirs import Workdir

STAGE = "import"


def read_run_doc(staging: Staging, run_id: str) -> dict[str, Any]:
    what = f"run {run_id}"
    doc = load_doc(staging.read_bytes(run_key(run_id, "run.json")), RUN_FORMAT, what)
    validate_run_doc(doc, run_id)
    return doc


def _creation_tags(doc: dict[str, Any], opts: Options) -> dict[str, str]:
    """Tags set with create_run: all the source's tags (create_run accepts keys that log_batch
    refuses) without the parent link (remapped by the tag stage), and the lineage: every
    source tag when they are on, else just the marker a resumed import finds the run by.
    Set at creation, a run never exists on the target without its lineage."""
    tags = {k: v for k, v in doc["tags"].items() if k != PARENT_RUN_ID_TAG}
    if opts.import_source_tags:
        system = {k: v for k, v in doc["tags"].items() if k.startswith(SYSTEM_TAG_PREFIX)}
        tags.update(run_source_tags(doc["info"], system))
    tags[SOURCE_RUN_ID_TAG] = doc["info"]["run_id"]
    return fit(tags)


def _changed_tags(
    doc: dict[str, Any], opts: Options, have: dict[str, str], obj: str
) -> list[RunTag]:
    """Tags that differ from the target run's (a re-synced run whose source moved on).

    Raises:
        PermanentError: a changed tag has a key that MLflow takes only at run creation.
    """
    changed = {k: v for k, v in _creation_tags(doc, opts).items() if have.get(k) != v}
    refused = sorted(k for k in changed if not tag_key_loggable(k))
    if refused:
        raise PermanentError(
            f"tag keys {refused} changed, and MLflow accepts such keys only when a run is created",
            obj=obj,
            stage=STAGE,
        )
    return [RunTag(k, v) for k, v in changed.items()]


def intent_key(source_run_id: str) -> str:
    """Written to staging just before `import` creates a run: an attempt that finds it knows an
    earlier one may have created the run, and looks it up by its lineage tag. Without it
    there is nothing to look up, which spares the target a search per run.

    It names no target: the same target reached by another URL (a proxy, another host name)
    must still find its intents, or an ambiguous create would be made twice."""
    return f"manifests/_journal/intents/{source_run_id}"


def run_lineage(opts: Options, target_exp: str, source_run_id: str, create: Any) -> Lineage:
    """How a source run's target run is found (its lineage tag), made and discarded."""
    return Lineage(
        kind="run",
        obj=f"run {source_run_id}",
        find=lambda: find_runs_by_source_id(opts.target, target_exp, source_run_id),
        create=create,
        order=lambda r: r.info.run_id,
        target_id=lambda r: str(r.info.run_id),
        discard=lambda r, kept: discard_run(opts.target, r, kept),
        stage=STAGE,
    )


def _find_or_create(
    opts: Options, staging: Staging, item: Row, doc: dict[str, Any], earlier: bool | None
) -> Any:
    """The run's target run: the one the row names, or found by its lineage tag, or created.

    `earlier`: whether an earlier attempt may have created it, where the caller knows (in
    `migrate`, run.json was staged before: `export_runs.write_run_doc`). Otherwise (`import`):
    a row that failed before may have (a `migrate` whose import part failed leaves no intent
    object); else the intent tells, one conditional write that fails when an earlier attempt
    left it (a row still `exported` after a killed import)."""
    c = client(opts.target)
    info = doc["info"]
    target_exp = item["target_experiment_id"]
    if item.get("target_run_id"):
        run = c.get_run(item["target_run_id"])
    else:
        if earlier is None:
            earlier = (
                item.get("state") == FAILED
                or staging.put_if(intent_key(info["run_id"]), b"", None) is None
            )

        def create() -> Any:
            return c._tracking_client.store.create_run(
                experiment_id=target_exp,
                user_id=info.get("user_id") or "",  # as on the source: a REST client may name none
                start_time=info["start_time"],
                tags=[RunTag(k, v) for k, v in _creation_tags(doc, opts).items()],
                run_name=info.get("run_name"),
            )

        run = create_once(run_lineage(opts, target_exp, info["run_id"], create), look_first=earlier)
    if run.info.lifecycle_stage != "active":
        c.restore_run(run.info.run_id)  # left deleted by an interrupted tag stage
    return run


def _prepare_data(doc: dict[str, Any], table: Any) -> tuple[list[Any], list[Any]]:
    """Params and metric points, checked against the target's limits before anything is
    created, so a run the target would refuse leaves nothing behind."""
    from mlflow.entities import Metric, Param

    what = f"run {doc['info']['run_id']}"
    params = [Param(k, v) for k, v in doc["params"].items()]
    for p in params:
        if len(p.value) > MAX_PARAM_VALUE_LENGTH:
            raise PermanentError(
                f"param {p.key!r} is {len(p.value)} chars, over the target's limit of "
                f"{MAX_PARAM_VALUE_LENGTH}",
                obj=what,
                stage=STAGE,
            )
    cols = table.to_pydict()
    metrics = [
        Metric(k, v, ts, st)
        for k, st, ts, v in zip(
            cols["key"], cols["step"], cols["timestamp"], cols["value"], strict=True
        )
    ]
    return params, metrics


def _log_inputs(opts: Options, run_id: str, doc: dict[str, Any]) -> None:
    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = [
        DatasetInput(
            dataset=Dataset(**i["dataset"]),
            tags=[InputTag(k, v) for k, v in i.get("tags", {}).items()],
        )
        for i in (doc.get("inputs") or {}).get("dataset_inputs", [])
    ]
    if inputs:
        client(opts.target).log_inputs(run_id, datasets=inputs)


def _finish(opts: Options, run_id: str, doc: dict[str, Any]) -> None:
    from mlflow.entities import RunStatus

    status, end_time = doc["info"]["status"], doc["info"].get("end_time")
    if status == "RUNNING" and end_time is None:
        return  # create_run left it RUNNING with no end time, as on the source
    # The store call sets status and end time in one request (set_terminated adds a get_run).
    client(opts.target)._tracking_client.store.update_run_info(
        run_id, RunStatus.from_string(status), end_time, None
    )


def import_run(item: Row, opts: Options) -> Row:
    """Write one staged run to the target experiment named in the row.

    Args:
        item: a manifest row in state `exported` with `target_experiment_id` filled in.
    Returns:
        The row in state `imported` with `target_run_id`.
    Raises:
        StagingError: the staged run is missing, corrupt or names unsafe paths.
        TransientError, PermanentError: from the target, naming the run.
    """
    source_id = item["source_run_id"]
    staging = open_staging(opts.staging)
    doc = read_run_doc(staging, source_id)
    what = f"run {source_id}"
    table = metrics_from_parquet(staging.read_bytes(run_key(source_id, "metrics.parquet")), what)
    fetch = from_staging(staging, lambda path: artifact_key(source_id, path))
    return import_document(item, opts, doc, table, fetch)


def import_document(
    item: Row,
    opts: Options,
    doc: dict[str, Any],
    metrics: Any,
    fetch: Fetch,
    earlier: bool | None = None,
) -> Row:
    """The import proper, from a run document, its metric table and a way to fetch its
    artifacts (from staging, or from the local copies of an export in the same task);
    `earlier` as `_find_or_create` takes it."""
    source_id = item["source_run_id"]
    obj = f"run {source_id}"
    staging = open_staging(opts.staging)
    validate_run_doc(doc, source_id)
    params, points = _prepare_data(doc, metrics)
    with translate_errors(obj, STAGE):
        run = _find_or_create(opts, staging, item, doc, earlier)
        target_id = run.info.run_id
        changed = _changed_tags(doc, opts, run.data.tags, obj)
        log_batch_chunked(opts.target, target_id, metrics=points, params=params, tags=changed)
        _log_inputs(opts, target_id, doc)
        upload_artifacts(target_side(opts), run.info.artifact_uri, doc["artifacts"], fetch, obj)
        _finish(opts, target_id, doc)
    return {
        **item,
        **row_fields(doc),  # whole even when an earlier task's row was lost with its failure
        "n_metric_points": len(points),
        "target_run_id": target_id,
        "state": IMPORTED,
        "error": None,
        "failed_stage": None,
        "updated_at": now_ms(),
    }


def migrate_run(item: Row, opts: Options) -> Row:
    """Export a run and import it in one task (`migrate`): the staging store is written as
    by `export`, but the import takes the document, points and artifact files from memory and
    local disk instead of reading them back (files copied into staging server-side are
    copied on from there the same way). Whether run.json was staged before is the create
    intent (`export_runs.write_run_doc`): no object of its own.

    Returns:
        The row in state `imported`; a failure names the stage it happened in.
    """
    from migrator.layout import metrics_table
    from migrator.stages.export_runs import export_run_keeping

    source_id = item["source_run_id"]
    with Workdir("migrate") as keep:
        exported = export_run_keeping(item, opts, keep)
        fetch = from_keep(
            keep, open_staging(opts.staging), lambda path: artifact_key(source_id, path)
        )
        return import_document(
            exported.row,
            opts,
            exported.doc,
            metrics_table(exported.points),
            fetch,
            earlier=exported.staged_before,
        )
