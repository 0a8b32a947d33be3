"""Export a registered model: its versions and aliases into `models/<name>/model.json`.

A version whose files no run or logged model of this migration carries (its run was filtered
out or deleted, or its source is elsewhere) has them staged from its own source under
`models/<name>/versions/<n>/artifacts/`. Rows of models and versions nothing changed on since
the last run are kept as they were, so they are not imported again.
"""

from __future__ import annotations

from typing import Any

from migrator.artifact_store import source_side
from migrator.artifacts import stage_artifacts
from migrator.config import Options
from migrator.errors import PermanentError
from migrator.layout import MODEL_FORMAT, dump_doc, model_key, version_artifact_key
from migrator.lineage import MODEL_VERSION_FIELDS, REGISTERED_MODEL_FIELDS
from migrator.manifest import EXPORTED, IMPORTED, Row, now_ms
from migrator.mlflow_io import (
    client,
    fingerprint,
    get_run_or_none,
    matching,
    translate_errors,
)
from migrator.registry import MODELS, RegistryKind
from migrator.stages.model_sources import model_id_of, staged_elsewhere
from migrator.staging import Staging, open_staging
from migrator.workdirs import Workdir


def version_fields(v: Any) -> dict[str, Any]:
    out = {f: getattr(v, f, None) for f in MODEL_VERSION_FIELDS}
    out["version"] = int(v.version)
    out["model_id"] = out.get("model_id") or model_id_of(v.source or "")  # REST leaves it out
    return out


def _stage_version_files(
    opts: Options, staging: Staging, name: str, v: Any
) -> tuple[list[Row], str | None]:
    """Copy a version's files from its own source (the registry resolves where they are).

    Returns:
        The staged files, and the file name when the source names one file, not a folder.
    """
    uri = client(opts.source).get_model_version_download_uri(name, v.version)
    n = int(v.version)
    with Workdir("export") as keep:

        def stage(root: str, only: str | None = None) -> list[Row]:
            key = lambda path: version_artifact_key(name, n, path)  # noqa: E731
            return stage_artifacts(source_side(opts), root, staging, key, keep, only)

        files = stage(uri)
        if files:
            return files, None
        parent, _, base = uri.rstrip("/").rpartition("/")
        return stage(parent, base), base


def _registered_model_of(uri: str, name: str, kind: RegistryKind) -> Any:
    """The source model by search, not `get`: a server refuses to `get` a name it would not
    accept today (an older server's `a/b`), yet lists it; such a model fails at import, where
    the target gives its reason."""
    found = [m for m in kind.search(uri, matching("name", name)) if m.name == name]
    if not found:
        raise PermanentError("not found on the source", obj=f"{kind.label} {name!r}")
    return found[0]


def _source_experiment(opts: Options, v: Any) -> str | None:
    """The source experiment a staged version's holder goes to: its run's, if it still exists."""
    if v.run_id and (run := get_run_or_none(opts.source, v.run_id)) is not None:
        return str(run.info.experiment_id)
    return None


def export_model(item: Row, opts: Options, kind: RegistryKind = MODELS) -> Row:
    """Write model.json for one registered model (or prompt), staging the files of versions
    that no run or logged model of this migration carries.

    Args:
        item: `name`, and `known_versions` (version → manifest row) from earlier runs.
    Returns:
        The model's manifest row in state `exported`, its version rows under `_versions`.
    """
    name = item["name"]
    staging = open_staging(opts.staging)
    known: dict[int, Row] = {int(k): v for k, v in (item.get("known_versions") or {}).items()}
    versions_doc: list[dict[str, Any]] = []
    version_rows: list[Row] = []
    with translate_errors(f"{kind.label} {name!r}", "export"):
        rm = _registered_model_of(opts.source, name, kind)
        aliases = {str(a): str(n) for a, n in (rm.aliases or {}).items()}
        for v in kind.versions(opts.source, name):
            fields = version_fields(v)
            vdoc: dict[str, Any] = {
                "fields": fields,
                "description": v.description or "",
                "tags": dict(v.tags),
                "experiment_id": None,
                "artifacts": [],
                "file": None,
            }
            vdoc["fingerprint"] = fingerprint(
                {k: vdoc[k] for k in ("fields", "tags", "description")}
            )
            old = known.get(fields["version"])
            reuse = old if old is not None and _unchanged(old, vdoc["fingerprint"]) else None
            if reuse is not None:
                vdoc["artifacts"] = reuse["artifact_files"] or []
                vdoc["file"] = reuse.get("source_file")
                vdoc["experiment_id"] = reuse.get("source_experiment_id")
            elif not staged_elsewhere(staging, v.source or "", v.run_id):
                vdoc["artifacts"], vdoc["file"] = _stage_version_files(opts, staging, name, v)
                vdoc["experiment_id"] = _source_experiment(opts, v)
            versions_doc.append(vdoc)
            new = _version_row(
                name, vdoc, sorted(a for a, n in aliases.items() if n == str(fields["version"]))
            )
            # An imported version nothing changed on keeps its row (and is not imported again).
            keep = reuse is not None and reuse["aliases"] == new["aliases"]
            version_rows.append(reuse if keep and reuse is not None else new)
    doc: dict[str, Any] = {
        "exported_at": now_ms(),
        "fields": {f: getattr(rm, f, None) for f in REGISTERED_MODEL_FIELDS},
        "description": rm.description or "",
        "tags": dict(rm.tags),
        "aliases": aliases,
        "versions": versions_doc,
    }
    row = {
        "name": name,
        "description": doc["description"],
        "creation_timestamp": doc["fields"]["creation_timestamp"],
        "last_updated_timestamp": doc["fields"]["last_updated_timestamp"],
        "tags": doc["tags"],
        "aliases": aliases,
        "n_versions": len(versions_doc),
        "source_fingerprint": fingerprint({k: doc[k] for k in ("fields", "tags", "aliases")}),
        "state": EXPORTED,
        "error": None,
        "failed_stage": None,
        "updated_at": now_ms(),
    }
    before = item.get("known_model")
    if _unchanged(before, row["source_fingerprint"]):
        row = before  # type: ignore[assignment]
    kept = row is before and all(v is known.get(v["version"]) for v in version_rows)
    if not kept or len(known) != len(version_rows):  # staged as it stands, unless unchanged
        staging.write_bytes(model_key(name, kind.folder), dump_doc(MODEL_FORMAT, doc))
    return {**row, "_versions": version_rows}


def _unchanged(old: Row | None, digest: str) -> bool:
    """Whether a manifest row from an earlier run still describes the source object."""
    return (
        old is not None
        and old.get("source_fingerprint") == digest
        and old.get("state") in (EXPORTED, IMPORTED)
    )


def _version_row(name: str, v: dict[str, Any], aliases: list[str]) -> Row:
    f = v["fields"]
    files = v["artifacts"]
    return {
        "name": name,
        "version": f["version"],
        "source": f["source"],
        "run_id": f["run_id"] or None,
        "model_id": f["model_id"] or None,
        "description": v["description"],
        "current_stage": f["current_stage"],
        "status": f["status"],
        "status_message": f["status_message"],
        "user_id": f["user_id"],
        "run_link": f["run_link"],
        "creation_timestamp": f["creation_timestamp"],
        "last_updated_timestamp": f["last_updated_timestamp"],
        "tags": v["tags"],
        "aliases": aliases,
        "n_artifacts": len(files),
        "artifact_bytes": sum(a.get("size") or 0 for a in files),
        "artifact_files": files,
        "source_experiment_id": v["experiment_id"],
        "source_file": v.get("file"),
        "source_fingerprint": v["fingerprint"],
        "state": EXPORTED,
        "error": None,
        "failed_stage": None,
        "updated_at": now_ms(),
    }
