"""Finish one imported run: the remapped parent link and its deleted state.

Runs after every import, because only then is every parent's target id known (parents may sit
in other experiments). Deleting the run comes last: MLflow refuses tags on a deleted run.
`tags_for` also tells `verify` which lineage tags a migrated run must carry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from migrator.config import Options
from migrator.lineage import PARENT_RUN_ID_TAG, SOURCE_RUN_ID_TAG, fit, run_source_tags
from migrator.manifest import TAGGED, Row, now_ms
from migrator.mlflow_io import client, translate_errors

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


def _on_active_run(c: Any, run_id: str, write: Callable[[], None]) -> None:
    """Write to a run that an earlier, interrupted attempt may have left deleted."""
    from mlflow.exceptions import MlflowException

    try:  # one call on the usual path
        write()
    except MlflowException:
        if c.get_run(run_id).info.lifecycle_stage == "active":
            raise
        c.restore_run(run_id)
        write()


def _delete_marker(c: Any, run_id: str) -> None:
    """Remove the resume marker (source tags off); already gone is fine."""
    from mlflow.exceptions import MlflowException

    try:
        c.delete_tag(run_id, SOURCE_RUN_ID_TAG)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise


def tag_run(item: Row, opts: Options) -> Row:
    """Link the run to its target parent, drop the resume marker when source tags are off,
    and delete the run if the source's is deleted. The source tags themselves were written
    when the run was created; a run with none of this to do costs no call.

    Args:
        item: a manifest row in state `imported`; `target_parent_run_id` filled in by the
            driver when the source run has a migrated parent.
    Returns:
        The row in state `tagged`.
    """
    target_id = item["target_run_id"]
    c = client(opts.target)
    parent = item.get("target_parent_run_id")
    with translate_errors(f"run {item['source_run_id']}", STAGE):
        if parent:
            _on_active_run(c, target_id, lambda: c.set_tag(target_id, PARENT_RUN_ID_TAG, parent))
        if not opts.import_source_tags:
            _on_active_run(c, target_id, lambda: _delete_marker(c, target_id))
        if item.get("lifecycle_stage") == "deleted":
            c.delete_run(target_id)
    row = {k: v for k, v in item.items() if k != "target_parent_run_id"}
    return {**row, "state": TAGGED, "error": None, "failed_stage": None, "updated_at": now_ms()}
