"""Finish one imported run: the remapped parent link, its links to logged models, and its
deleted state.

Runs after every import, because only then is every parent's target id known (parents may sit
in other experiments). Deleting the run comes last: MLflow refuses tags on a deleted run.
`tags_for` also tells `verify` which lineage tags a migrated run must carry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from migrator.config import Options
from migrator.lineage import PARENT_RUN_ID_TAG, SOURCE_RUN_ID_TAG, fit, run_source_tags
from migrator.manifest import TAGGED, Row, now_ms
from migrator.mlflow_io import client, or_none, translate_errors

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


def with_targets(row: Row, runs: Mapping[str, str], logged: Mapping[str, str] | None = None) -> Row:
    """The row plus what the tag stage links it to on the target: `target_parent_run_id` when
    its source parent was migrated (`runs`: source → target run id), and `target_model_links`
    for its links to logged models that were migrated (`logged`: source → target model id)."""
    item = dict(row)
    logged = logged or {}
    parent = runs.get(row.get("source_parent_run_id") or "")
    if parent:
        item["target_parent_run_id"] = parent
    links = [
        {**link, "model_id": logged[link["model_id"]]}
        for link in row.get("model_links") or []
        if link["model_id"] in logged
    ]
    if links:
        item["target_model_links"] = links
    return item


def link_key(link: Row) -> tuple[str, str, int]:
    """A link to a logged model as `(kind, model id, step)`; an input has no step (0)."""
    return (
        link["kind"],
        link["model_id"],
        (link.get("step") or 0) if link["kind"] == "output" else 0,
    )


def run_model_links(run: Any) -> list[tuple[str, str, int]]:
    """A run's links to logged models, as `link_key` writes them (none before MLflow 3)."""
    inputs = getattr(run.inputs, "model_inputs", None) or []
    outputs = getattr(getattr(run, "outputs", None), "model_outputs", None) or []
    return [("input", m.model_id, 0) for m in inputs] + [
        ("output", m.model_id, m.step or 0) for m in outputs
    ]


def _link_models(c: Any, target_id: str, links: list[Row]) -> None:
    """Log the run's links to its target logged models that it does not have yet (MLflow
    adds a link per call, even an equal one)."""
    from mlflow.entities import LoggedModelInput, LoggedModelOutput

    have = set(run_model_links(c.get_run(target_id)))
    missing = [key for key in map(link_key, links) if key not in have]
    inputs = [LoggedModelInput(model_id) for kind, model_id, _ in missing if kind == "input"]
    outputs = [
        LoggedModelOutput(model_id, step) for kind, model_id, step in missing if kind == "output"
    ]
    if inputs:
        on_active_run(c, target_id, lambda: c.log_inputs(target_id, models=inputs))
    if outputs:
        on_active_run(c, target_id, lambda: c.log_outputs(target_id, outputs))


def tags_for(row: Row, opts: Options) -> dict[str, str]:
    """The tags this stage sets: source tags (if on) and the remapped parent link."""
    tags: dict[str, str] = {}
    if opts.import_source_tags:
        tags.update(fit(run_source_tags(run_info_from_row(row), row.get("mlflow_tags") or {})))
    if row.get("target_parent_run_id"):
        tags[PARENT_RUN_ID_TAG] = row["target_parent_run_id"]
    return tags


def on_active_run(c: Any, run_id: str, write: Callable[[], None]) -> None:
    """Write to a run that may be deleted (MLflow refuses writes to a deleted run): on
    refusal, restore it, write, and delete it again."""
    from mlflow.exceptions import MlflowException

    try:  # one call on the usual path
        write()
    except MlflowException:
        if c.get_run(run_id).info.lifecycle_stage == "active":
            raise
        c.restore_run(run_id)
        try:
            write()
        finally:
            c.delete_run(run_id)


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
            on_active_run(c, target_id, lambda: c.set_tag(target_id, PARENT_RUN_ID_TAG, parent))
        if not opts.import_source_tags:
            # the resume marker; already gone is fine
            on_active_run(c, target_id, lambda: or_none(c.delete_tag, target_id, SOURCE_RUN_ID_TAG))
        if item.get("target_model_links"):
            _link_models(c, target_id, item["target_model_links"])
        if item.get("lifecycle_stage") == "deleted":
            c.delete_run(target_id)
    row = {k: v for k, v in item.items() if k not in ("target_parent_run_id", "target_model_links")}
    return {**row, "state": TAGGED, "error": None, "failed_stage": None, "updated_at": now_ms()}
