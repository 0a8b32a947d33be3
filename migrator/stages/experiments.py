"""Experiments: export to staging, import by name (reuse, never duplicate), finish.

Experiments are few, so the driver runs these inline. In `migrate`, one call does both
(`migrate_experiment`): the import takes the document the export just wrote. An experiment
that already exists on the target by name is reused; the source's Default experiment (id 0)
maps to the target's Default.
A deleted source experiment is deleted on the target only after its runs are in (MLflow refuses
new runs in a deleted experiment).
"""

from __future__ import annotations

from typing import Any

from migrator.capabilities import experiment_tag_value_limit
from migrator.config import Options
from migrator.errors import StagingError
from migrator.layout import EXPERIMENT_FORMAT, dump_doc, experiment_key, load_doc
from migrator.lineage import (
    EXPERIMENT_FIELDS,
    experiment_source_tags,
    fit,
)
from migrator.manifest import EXPORTED, IMPORTED, TAGGED, Row, now_ms
from migrator.mlflow_io import client, translate_errors
from migrator.once import Lineage, create_once
from migrator.staging import Staging

DEFAULT_EXPERIMENT_ID = "0"


def experiment_fields(exp: Any) -> dict[str, Any]:
    return {f: getattr(exp, f) for f in EXPERIMENT_FIELDS}


def export_experiment(exp: Any, staging: Staging, known: Row | None = None) -> Row:
    """Write experiment.json; returns the manifest row in state `exported`, keeping the
    target id of `known`, its manifest row (from an earlier command), for the import."""
    return _export(exp, staging, known)[0]


def experiment_row(exp: Any, known: Row | None = None) -> Row:
    """The manifest row's fields of a source experiment, with the target id of `known`, its
    manifest row from an earlier command. The driver plans with it, so a row that fails in
    its stage still says what the experiment was (its lifecycle stage, for `finish`)."""
    return {
        "source_experiment_id": exp.experiment_id,
        "name": exp.name,
        "artifact_location": exp.artifact_location,
        "lifecycle_stage": exp.lifecycle_stage,
        "creation_time": exp.creation_time,
        "last_update_time": exp.last_update_time,
        "tags": dict(exp.tags),
        "target_experiment_id": (known or {}).get("target_experiment_id") or None,
    }


def _export(exp: Any, staging: Staging, known: Row | None) -> tuple[Row, dict[str, Any]]:
    """`export_experiment`, also returning the document it wrote."""
    row = experiment_row(exp, known)
    doc = {"fields": experiment_fields(exp), "tags": row["tags"]}
    staging.write_bytes(experiment_key(exp.experiment_id), dump_doc(EXPERIMENT_FORMAT, doc))
    row.update(state=EXPORTED, error=None, failed_stage=None, updated_at=now_ms())
    return row, doc


def migrate_experiment(exp: Any, known: Row, opts: Options, staging: Staging) -> Row:
    """Export an experiment and import it in one call (`migrate`): staged as by `export`,
    imported from the document in memory instead of read back. `known` is its manifest row
    (its target id, from an earlier command). Returns the row in state `imported`."""
    row, doc = _export(exp, staging, known)
    return import_experiment(row, opts, staging, doc)


def read_experiment_doc(staging: Staging, experiment_id: str) -> dict[str, Any]:
    what = f"experiment {experiment_id}"
    doc = load_doc(staging.read_bytes(experiment_key(experiment_id)), EXPERIMENT_FORMAT, what)
    if not isinstance(doc.get("fields"), dict) or not isinstance(doc.get("tags"), dict):
        raise StagingError("experiment.json lacks fields or tags", obj=what)
    return doc


def experiment_lineage(
    c: Any, name: str, source_id: str, tags: dict[str, str] | None = None
) -> Lineage:
    """A target experiment is found by its name (unique on a server, deleted ones too); a new
    one is made with its `tags` in the same call."""

    def find() -> list[Any]:
        found = c.get_experiment_by_name(name)
        return [found] if found is not None and found.name == name else []

    return Lineage(
        kind="experiment",
        obj=f"experiment {name!r} ({source_id})",
        find=find,
        create=lambda: _made(c.create_experiment(name, tags=tags), name, tags),
        order=lambda e: e.experiment_id,
        target_id=lambda e: str(e.experiment_id),
    )


def _made(experiment_id: str, name: str, tags: dict[str, str] | None) -> Any:
    """The experiment a create just made, as the server holds it (active, with the tags the
    create sent), without a request to read it back: on a server of thousands of experiments
    that was one request in two of the experiments' own."""
    from mlflow.entities import Experiment, ExperimentTag

    made = [ExperimentTag(k, v) for k, v in (tags or {}).items()]
    return Experiment(experiment_id, name, "", "active", made)


def import_experiment(
    row: Row, opts: Options, staging: Staging, doc: dict[str, Any] | None = None
) -> Row:
    """Find or create the target experiment, set its tags; returns the row in state `imported`.
    The staged document is read unless given (`migrate_experiment`)."""
    source_id = row["source_experiment_id"]
    if doc is None:
        doc = read_experiment_doc(staging, source_id)
    fields, tags = doc["fields"], doc["tags"]
    c = client(opts.target)
    with translate_errors(f"experiment {fields['name']!r} ({source_id})", "import"):
        wanted = dict(tags)
        if opts.import_source_tags:
            wanted.update(experiment_source_tags(fields, tags))
        wanted = fit(wanted, experiment_tag_value_limit(opts))
        if source_id == DEFAULT_EXPERIMENT_ID:
            target = c.get_experiment(DEFAULT_EXPERIMENT_ID)
        else:
            # Names are unique on a server (deleted experiments' too): a create of one that
            # is there already is refused as such, and `create_once` then finds it by name,
            # so a first migration spends no lookup per experiment (as registered models).
            # One an earlier command made (the manifest knows its target) is looked up
            # first: a re-run spends no refused create on it.
            lineage = experiment_lineage(c, fields["name"], source_id, wanted)
            target = create_once(lineage, look_first=bool(row.get("target_experiment_id")))
        if target.lifecycle_stage != "active":
            c.restore_experiment(target.experiment_id)  # runs can only go into an active one
        for k, v in wanted.items():
            if target.tags.get(k) != v:
                c.set_experiment_tag(target.experiment_id, k, v)
    return {
        **row,
        "target_experiment_id": target.experiment_id,
        "state": IMPORTED,
        "error": None,
        "failed_stage": None,
        "updated_at": now_ms(),
    }


def finish_experiment(row: Row, opts: Options) -> Row:
    """Delete the target experiment when the source's is deleted (never the Default)."""
    target_id = row["target_experiment_id"]
    if row.get("lifecycle_stage") == "deleted" and target_id != DEFAULT_EXPERIMENT_ID:
        c = client(opts.target)
        with translate_errors(f"experiment {row['name']!r}", "finish"):
            if c.get_experiment(target_id).lifecycle_stage == "active":
                c.delete_experiment(target_id)
    return {**row, "state": TAGGED, "updated_at": now_ms()}


def verify_experiment(row: Row, opts: Options) -> Row:
    """Compare a source experiment with its target: name, tags, lifecycle stage, source tags."""
    from migrator.manifest import DIFFER, MATCH, MISSING_ON_SOURCE, MISSING_ON_TARGET
    from migrator.mlflow_io import get_experiment_or_none

    out: Row = {
        "object_type": "experiment",
        "source_id": row["source_experiment_id"],
        "target_id": row.get("target_experiment_id"),
        "name": row.get("name"),
        "verified_at": now_ms(),
    }
    with translate_errors(f"experiment {row.get('name')!r}", "verify"):
        source = get_experiment_or_none(opts.source, row["source_experiment_id"])
        if source is None:
            return {**out, "outcome": MISSING_ON_SOURCE}
        target = (
            get_experiment_or_none(opts.target, row["target_experiment_id"])
            if row.get("target_experiment_id")
            else None
        )
        if target is None:
            return {**out, "outcome": MISSING_ON_TARGET}
    diffs: dict[str, str] = {}
    if source.name != target.name:
        diffs["name"] = f"{source.name!r} != {target.name!r}"
    if source.lifecycle_stage != target.lifecycle_stage:
        diffs["lifecycle_stage"] = f"{source.lifecycle_stage} != {target.lifecycle_stage}"
    want = dict(source.tags)
    if opts.import_source_tags:
        want.update(experiment_source_tags(experiment_fields(source), source.tags))
    want = fit(want, experiment_tag_value_limit(opts))
    bad = [k for k, v in want.items() if target.tags.get(k) != v]
    if not opts.import_source_tags:
        bad += [k for k in target.tags if k.startswith("mlflow_exim.")]
    if bad:
        diffs["tags"] = ", ".join(repr(k) for k in sorted(bad)[:6])
    return {
        **out,
        "outcome": DIFFER if diffs else MATCH,
        "differences": sorted(diffs),
        "details": "; ".join(f"{k}: {v}" for k, v in sorted(diffs.items())) or None,
    }
