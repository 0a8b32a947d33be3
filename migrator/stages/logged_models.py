"""MLflow 3 logged models: export with their files, import into the migrated experiment.

A logged model is created on the target with its name, type, params and tags, its
`source_run_id` remapped to the target run, then its files, its metrics (each logged against
the target run it was logged against on the source, keeping its dataset link) and its final
status. The source model id travels as a tag set at creation, so an interrupted attempt's model
is found again instead of made twice; with source tags off, a last `tag` step drops it once
the manifest holds the target id (as for runs). Runs' links to logged models (inputs and
outputs) are written by the runs' tag stage, once both ends exist.
"""

from __future__ import annotations

import logging
from typing import Any

from migrator.artifact_store import source_side, target_side
from migrator.artifacts import Fetch, from_keep, from_staging, stage_artifacts, upload_artifacts
from migrator.config import Options
from migrator.errors import PermanentError, StagingError
from migrator.fanout import failed_row
from migrator.layout import (
    LOGGED_MODEL_FORMAT,
    dump_doc,
    load_doc,
    logged_model_artifact_key,
    logged_model_key,
    validate_files,
    validate_string_map,
)
from migrator.lineage import (
    LOGGED_MODEL_FIELDS,
    SOURCE_MODEL_ID_TAG,
    fit,
    object_source_tags,
)
from migrator.manifest import EXPORTED, IMPORTED, TAGGED, Row, now_ms
from migrator.mlflow_io import (
    client,
    discard_logged_model,
    find_logged_models_by_tag,
    oldest_first,
    or_none,
    translate_errors,
)
from migrator.once import Lineage, create_once
from migrator.staging import open_staging
from migrator.states import WAITS_FOR
from migrator.workdirs import Workdir

log = logging.getLogger(__name__)

#: Written by the target server when a version is registered from the model: not copied (the
#: migrated versions write it again); the source value stays as a source tag.
MODEL_VERSIONS_TAG = "mlflow.modelVersions"
FINAL_STATUSES = ("READY", "FAILED")


def _status(value: Any) -> str:
    return str(getattr(value, "name", value))


def logged_model_fields(lm: Any) -> dict[str, Any]:
    out = {f: getattr(lm, f, None) for f in LOGGED_MODEL_FIELDS}
    out["status"] = _status(lm.status)
    return out


def _metric(m: Any) -> dict[str, Any]:
    return {
        "key": m.key,
        "value": m.value,
        "timestamp": m.timestamp,
        "step": m.step,
        "run_id": m.run_id,
        "dataset_name": m.dataset_name,
        "dataset_digest": m.dataset_digest,
    }


def export_logged_model_keeping(item: Row, opts: Options, keep: str) -> tuple[Row, dict[str, Any]]:
    """Stage one logged model (document written last); its files stay in `keep` too."""
    model_id = item["source_model_id"]
    staging = open_staging(opts.staging)
    obj = f"logged model {model_id}"
    with translate_errors(obj, "export"):
        lm = client(opts.source).get_logged_model(model_id)
        files = stage_artifacts(
            source_side(opts),
            lm.artifact_location,
            staging,
            lambda path: logged_model_artifact_key(model_id, path),
            keep,
        )
    fields = logged_model_fields(lm)
    doc: dict[str, Any] = {
        "exported_at": now_ms(),
        "fields": fields,
        "tags": dict(lm.tags),
        "params": dict(lm.params),
        "metrics": [_metric(m) for m in lm.metrics or []],
        "artifacts": files,
    }
    staging.write_bytes(
        logged_model_key(model_id, "logged_model.json"), dump_doc(LOGGED_MODEL_FORMAT, doc)
    )
    row = {
        **item,
        "source_experiment_id": fields["experiment_id"],
        "name": fields["name"],
        "model_type": fields["model_type"],
        "source_run_id": fields["source_run_id"],
        "status": fields["status"],
        "status_message": fields["status_message"],
        "artifact_location": fields["artifact_location"],
        "creation_timestamp": fields["creation_timestamp"],
        "last_updated_timestamp": fields["last_updated_timestamp"],
        "tags": doc["tags"],
        "n_params": len(doc["params"]),
        "n_metric_points": len(doc["metrics"]),
        "metric_run_ids": sorted({m["run_id"] for m in doc["metrics"] if m["run_id"]}),
        "n_artifacts": len(files),
        "artifact_bytes": sum(f["size"] for f in files),
        "artifact_files": files,
        "state": EXPORTED,
        "error": None,
        "failed_stage": None,
        "updated_at": now_ms(),
    }
    return row, doc


def export_logged_model(item: Row, opts: Options) -> Row:
    with Workdir("export") as keep:
        return export_logged_model_keeping(item, opts, keep)[0]


def read_logged_model_doc(model_id: str, opts: Options) -> dict[str, Any]:
    staging = open_staging(opts.staging)
    what = f"logged model {model_id}"
    doc = load_doc(
        staging.read_bytes(logged_model_key(model_id, "logged_model.json")),
        LOGGED_MODEL_FORMAT,
        what,
    )
    validate_logged_model_doc(doc, model_id)
    return doc


def validate_logged_model_doc(doc: dict[str, Any], model_id: str) -> None:
    what = f"logged model {model_id}"
    fields = doc.get("fields")
    if not isinstance(fields, dict) or fields.get("model_id") != model_id:
        raise StagingError("logged_model.json does not describe this model", obj=what)
    validate_string_map(doc.get("tags"), "tags", what)
    validate_string_map(doc.get("params"), "params", what)
    validate_files(doc.get("artifacts"), what)
    metrics = doc.get("metrics")
    if not isinstance(metrics, list) or not all(
        isinstance(m, dict) and isinstance(m.get("key"), str) for m in metrics
    ):
        raise StagingError("field 'metrics' is not a list of metrics", obj=what)


def wanted_tags(doc: dict[str, Any], opts: Options) -> dict[str, str]:
    """The target model's tags: the source's (without the registry's back-links), its source
    tags when they are on, and always the source id it is found again by."""
    tags = {k: v for k, v in doc["tags"].items() if k != MODEL_VERSIONS_TAG}
    if opts.import_source_tags:
        tags.update(object_source_tags(doc["fields"], LOGGED_MODEL_FIELDS, doc["tags"]))
    tags[SOURCE_MODEL_ID_TAG] = doc["fields"]["model_id"]
    return fit(tags)


def logged_model_lineage(
    opts: Options, experiment_id: str, key: str, value: str, create: Any, obj: str
) -> Lineage:
    """How a target logged model marked `key = value` is found, made and discarded (a
    migrated logged model by its source id; a version's holder by its version)."""
    return Lineage(
        kind="logged model",
        obj=obj,
        find=lambda: find_logged_models_by_tag(opts.target, experiment_id, key, value),
        create=create,
        order=oldest_first,
        target_id=lambda m: str(m.model_id),
        discard=lambda m, kept: discard_logged_model(opts.target, m, key, kept),
    )


def _find_or_create(opts: Options, item: Row, doc: dict[str, Any]) -> Any:
    c = client(opts.target)
    if item.get("target_model_id"):
        return c.get_logged_model(item["target_model_id"])
    source_id = doc["fields"]["model_id"]
    exp = item["target_experiment_id"]

    def create() -> Any:
        return c.create_logged_model(
            experiment_id=exp,
            name=doc["fields"]["name"],
            source_run_id=item.get("target_run_id"),
            tags=wanted_tags(doc, opts),
            params=doc["params"],
            model_type=doc["fields"].get("model_type"),
        )

    spec = logged_model_lineage(
        opts, exp, SOURCE_MODEL_ID_TAG, source_id, create, f"logged model {source_id}"
    )
    # Logged models are few per experiment: always look first (a kill leaves no intent).
    return create_once(spec, look_first=True)


def _log_metrics(opts: Options, lm: Any, doc: dict[str, Any], run_ids: dict[str, str]) -> int:
    """Log each source metric against the target run it belongs to; returns how many points
    had no migrated run (a logged-model metric exists only through a run)."""
    from migrator.stages.tag_runs import on_active_run

    c = client(opts.target)
    have = {(m.key, m.step, m.timestamp, m.run_id) for m in lm.metrics or []}
    skipped = 0
    for m in doc["metrics"]:
        run_id = run_ids.get(m.get("run_id") or "")
        if run_id is None:
            skipped += 1
            continue
        if (m["key"], m["step"], m["timestamp"], run_id) in have:
            continue
        kwargs = {
            "timestamp": m["timestamp"],
            "step": m["step"],
            "synchronous": True,
            "dataset_name": m.get("dataset_name"),
            "dataset_digest": m.get("dataset_digest"),
            "model_id": lm.model_id,
        }

        def write(
            rid: str = run_id, key: str = m["key"], value: float = m["value"], kw: Any = kwargs
        ) -> None:
            c.log_metric(rid, key, value, **kw)

        on_active_run(c, run_id, write)
    return skipped


def import_logged_model_doc(item: Row, opts: Options, doc: dict[str, Any], fetch: Fetch) -> Row:
    """Create (or find) the target logged model and write everything it holds.

    Args:
        item: a manifest row with `target_experiment_id`, `target_run_id` (the remapped
            source run, if migrated) and `run_id_map` (source → target ids of the runs its
            metrics were logged against).
    """
    source_id = item["source_model_id"]
    obj = f"logged model {source_id} ({doc['fields'].get('name')})"
    validate_logged_model_doc(doc, source_id)
    c = client(opts.target)
    row = {k: v for k, v in item.items() if k not in ("run_id_map", "waits_for_runs")}
    waits = item.get("waits_for_runs") or []
    source_run = doc["fields"].get("source_run_id")
    if source_run in waits and not item.get("target_model_id"):
        # MLflow sets a model's source run only at creation: made now, it would lose the link
        why = f"{WAITS_FOR} its source run {source_run}, which this migration has not moved yet"
        return failed_row(row, "import", PermanentError(why, obj=obj, stage="import"))
    with translate_errors(obj, "import"):
        lm = _find_or_create(opts, item, doc)
        tags = wanted_tags(doc, opts)
        changed = {k: v for k, v in tags.items() if lm.tags.get(k) != v}
        if changed:
            c.set_logged_model_tags(lm.model_id, changed)
        upload_artifacts(target_side(opts), lm.artifact_location, doc["artifacts"], fetch, obj)
        skipped = _log_metrics(opts, lm, doc, item.get("run_id_map") or {})
        status = doc["fields"]["status"]
        if status in FINAL_STATUSES and _status(lm.status) != status:
            from mlflow.entities import LoggedModelStatus

            c.finalize_logged_model(lm.model_id, LoggedModelStatus[status])
    row["target_model_id"] = lm.model_id  # it is there: what points at it need not wait
    if waits:  # everything else is in; the next run logs the metrics of that run
        why = (
            f"{WAITS_FOR} run {waits[0]}, which this migration has not moved yet (it failed): "
            "the next run logs the metrics logged against it"
        )
        return failed_row(row, "import", PermanentError(why, obj=obj, stage="import"))
    if skipped:
        log.warning("%s: %d metric points belong to runs that were not migrated", obj, skipped)
    return {**row, "state": IMPORTED, "error": None, "failed_stage": None, "updated_at": now_ms()}


def tag_logged_model(item: Row, opts: Options) -> Row:
    """The last step, once the manifest holds the target id: drop the marker a resumed import
    finds the model by, when source tags are off (no call otherwise)."""
    if not opts.import_source_tags:
        with translate_errors(f"logged model {item['source_model_id']}", "tag"):
            delete = client(opts.target).delete_logged_model_tag
            or_none(delete, item["target_model_id"], SOURCE_MODEL_ID_TAG)  # gone is fine
    return {**item, "state": TAGGED, "error": None, "failed_stage": None, "updated_at": now_ms()}


def import_logged_model(item: Row, opts: Options) -> Row:
    """`import`: the staged document and files."""
    source_id = item["source_model_id"]
    doc = read_logged_model_doc(source_id, opts)
    fetch = from_staging(
        open_staging(opts.staging), lambda path: logged_model_artifact_key(source_id, path)
    )
    return import_logged_model_doc(item, opts, doc, fetch)


def migrate_logged_model(item: Row, opts: Options) -> Row:
    """`migrate`: export and import in one task, the import reading the export's local copies."""
    source_id = item["source_model_id"]
    with Workdir("migrate") as keep:
        exported, doc = export_logged_model_keeping(item, opts, keep)
        fetch = from_keep(
            keep,
            open_staging(opts.staging),
            lambda path: logged_model_artifact_key(source_id, path),
        )
        return import_logged_model_doc(exported, opts, doc, fetch)
