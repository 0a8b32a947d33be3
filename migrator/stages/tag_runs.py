"""Finish one imported run: source tags, the remapped parent link, and its deleted state.

Runs after every import, because only then is every parent's target id known (parents may sit
in other experiments). Deleting the run comes last: MLflow refuses tags on a deleted run.
"""

from __future__ import annotations

from typing import Any

from mlflow.entities import RunTag

from migrator.config import Options
from migrator.lineage import PARENT_RUN_ID_TAG, SOURCE_RUN_ID_TAG, fit, run_source_tags
from migrator.manifest import TAGGED, Row, now_ms
from migrator.mlflow_io import client, log_batch_chunked, translate_errors

STAGE = "tag"


def run_info_from_row(row: Row) -> dict[str, Any]:
    """The source RunInfo fields as the manifest holds them."""
    return {
        "run_id": row["source_run_id"],
        "experiment_id": row["source_experiment_id"],
        "user_id": row.get("user_id"),
        "status": row.get("status"),
        "start_time": row.get("start_time"),
        "end_time": row.get("end_time"),
        "lifecycle_stage": row.get("lifecycle_stage"),
        "artifact_uri": row.get("artifact_uri"),
        "run_name": row.get("run_name"),
    }


def with_target_parent(row: Row, runs: dict[str, Row]) -> Row:
    """The row plus `target_parent_run_id` when its source parent was migrated (in `runs`)."""
    item = dict(row)
    parent = runs.get(row.get("source_parent_run_id") or "")
    if parent and parent.get("target_run_id"):
        item["target_parent_run_id"] = parent["target_run_id"]
    return item


def tags_for(row: Row, opts: Options) -> dict[str, str]:
    """The tags this stage sets: source tags (if on) and the remapped parent link."""
    tags: dict[str, str] = {}
    if opts.import_source_tags:
        tags.update(fit(run_source_tags(run_info_from_row(row), row.get("mlflow_tags") or {})))
    if row.get("target_parent_run_id"):
        tags[PARENT_RUN_ID_TAG] = row["target_parent_run_id"]
    return tags


def _delete_marker(c: Any, run_id: str) -> None:
    """Remove the resume marker (source tags off); already gone is fine."""
    from mlflow.exceptions import MlflowException

    try:
        c.delete_tag(run_id, SOURCE_RUN_ID_TAG)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise


def tag_run(item: Row, opts: Options) -> Row:
    """Apply source tags and the parent link, then delete the run if the source's is deleted.

    Args:
        item: a manifest row in state `imported`; `target_parent_run_id` filled in by the
            driver when the source run has a migrated parent.
    Returns:
        The row in state `tagged`.
    """
    from mlflow.exceptions import MlflowException

    target_id = item["target_run_id"]
    c = client(opts.target)
    tags = [RunTag(k, v) for k, v in tags_for(item, opts).items()]
    with translate_errors(f"run {item['source_run_id']}", STAGE):
        try:  # one call on the usual path: equal tags are simply written again
            log_batch_chunked(opts.target, target_id, tags=tags)
        except MlflowException:
            if c.get_run(target_id).info.lifecycle_stage == "active":
                raise
            c.restore_run(target_id)  # an earlier attempt got as far as deleting it
            log_batch_chunked(opts.target, target_id, tags=tags)
        if not opts.import_source_tags:
            _delete_marker(c, target_id)
        if item.get("lifecycle_stage") == "deleted":
            c.delete_run(target_id)
    row = {k: v for k, v in item.items() if k != "target_parent_run_id"}
    return {**row, "state": TAGGED, "error": None, "failed_stage": None, "updated_at": now_ms()}
