"""Verify logged models, registered models and model versions against their sources.

What is compared is what the migration promises: user attributes as they are, the source tags
(when on), the remapped links (a logged model's run, a version's source, run and logged model),
the version numbers and aliases, and the files recorded at export.
"""

from __future__ import annotations

from typing import Any

from migrator.config import Options
from migrator.lineage import is_source_tag
from migrator.manifest import DIFFER, MATCH, MISSING_ON_SOURCE, MISSING_ON_TARGET, Row, now_ms
from migrator.mlflow_io import client, or_none, translate_errors
from migrator.registry import MODELS, RegistryKind
from migrator.stages.export_models import version_fields
from migrator.stages.logged_models import (
    MODEL_VERSIONS_TAG,
    logged_model_fields,
    wanted_tags,
)
from migrator.stages.model_sources import rewrite_source
from migrator.stages.models import artifact_roots, holder_source, model_tags, version_tags
from migrator.stages.verify_runs import compare_artifacts, compare_map

_MAX_DETAIL = 6


def result(
    object_type: str,
    source_id: str,
    target_id: str | None,
    name: str | None,
    outcome: str,
    diffs: dict[str, list[str]] | None = None,
) -> Row:
    """A row of `verify.parquet`."""
    diffs = diffs or {}
    return {
        "object_type": object_type,
        "source_id": source_id,
        "target_id": target_id,
        "name": name,
        "outcome": DIFFER if outcome == MATCH and diffs else outcome,
        "differences": sorted(diffs),
        "details": "; ".join(f"{k}: {', '.join(v[:_MAX_DETAIL])}" for k, v in sorted(diffs.items()))
        or None,
        "verified_at": now_ms(),
    }


def _differs(diffs: dict[str, list[str]], field: str, want: Any, have: Any) -> None:
    if want != have:
        diffs[field] = [f"{want!r} != {have!r}"]


def _without_marker(tags: dict[str, str], opts: Options) -> dict[str, str]:
    """The tags a logged model keeps: its resume marker goes when source tags are off."""
    return (
        tags if opts.import_source_tags else {k: v for k, v in tags.items() if not is_source_tag(k)}
    )


# ---- logged models ------------------------------------------------------------------------------


def verify_logged_model(item: Row, opts: Options) -> Row:
    """Verify one logged model.

    Args:
        item: its manifest row, with `target_run_id` (the expected target of its source run)
            and `run_id_map` (source → target ids of the runs its metrics are logged against).
    """
    source_id = item["source_model_id"]
    target_id = item.get("target_model_id")
    with translate_errors(f"logged model {source_id}", "verify"):
        source = or_none(client(opts.source).get_logged_model, source_id)
        if source is None:
            return result("logged_model", source_id, target_id, item.get("name"), MISSING_ON_SOURCE)
        target = or_none(client(opts.target).get_logged_model, target_id) if target_id else None
        if target is None:
            return result("logged_model", source_id, target_id, source.name, MISSING_ON_TARGET)
        diffs: dict[str, list[str]] = {}
        for f in ("name", "model_type"):
            _differs(diffs, f, getattr(source, f), getattr(target, f))
        _differs(diffs, "status", str(source.status), str(target.status))
        # No source run reads back as None on one side and "" on the other.
        _differs(
            diffs, "source_run_id", item.get("target_run_id") or None, target.source_run_id or None
        )
        compare_map("params", dict(source.params), dict(target.params), diffs)
        doc = {"fields": logged_model_fields(source), "tags": dict(source.tags)}
        want = _without_marker(wanted_tags(doc, opts), opts)
        have = {k: v for k, v in target.tags.items() if k != MODEL_VERSIONS_TAG}
        compare_map("tags", want, have, diffs)
        runs = item.get("run_id_map") or {}

        def points(model: Any, remap: bool) -> list[tuple[Any, ...]]:
            return sorted(
                (
                    m.key,
                    m.step,
                    m.timestamp,
                    repr(m.value),
                    runs.get(m.run_id) if remap else m.run_id,
                    m.dataset_name,
                    m.dataset_digest,
                )
                for m in model.metrics or []
                if not remap or m.run_id in runs
            )

        if points(source, True) != points(target, False):
            diffs["metrics"] = [f"{len(source.metrics or [])} points on source"]
        compare_artifacts(opts, item.get("artifact_files"), target.artifact_location, diffs)
    return result("logged_model", source_id, target.model_id, source.name, MATCH, diffs)


# ---- registered models and versions ----------------------------------------------------------


def verify_model(item: Row, opts: Options, kind: RegistryKind = MODELS) -> Row:
    """Verify one registered model (or prompt) and its versions; the version rows come back
    under `_versions`.

    Args:
        item: the model's manifest row, with `_versions` (its version rows) and `refs` (the
            target ids the versions must point at, as the import got them).
    """
    name = item["name"]
    src, tgt = kind.client(opts.source), kind.client(opts.target)
    what = kind.object_type
    with translate_errors(f"{kind.label} {name!r}", "verify"):
        source = or_none(src.get_registered_model, name)
        if source is None:
            return result(what, name, name, name, MISSING_ON_SOURCE)
        target = or_none(tgt.get_registered_model, name)
        if target is None:
            return result(what, name, None, name, MISSING_ON_TARGET)
        diffs: dict[str, list[str]] = {}
        _differs(diffs, "description", source.description or "", target.description or "")
        doc = {
            "fields": {
                "name": name,
                **{f: getattr(source, f) for f in ("creation_timestamp", "last_updated_timestamp")},
            },
            "tags": dict(source.tags),
        }
        want = model_tags(doc, opts, item["refs"].get("experiments"))
        compare_map("tags", want, dict(target.tags), diffs)
        compare_map(
            "aliases",
            {a: str(v) for a, v in (source.aliases or {}).items()},
            {a: str(v) for a, v in (target.aliases or {}).items()},
            diffs,
        )
        source_versions = {int(v.version): v for v in kind.versions(opts.source, name)}
        target_versions = {int(v.version): v for v in kind.versions(opts.target, name)}
        extra = sorted(set(target_versions) - set(source_versions))
        if extra:
            diffs["versions"] = [f"extra version {n}" for n in extra]
        rows = {int(r["version"]): r for r in item.get("_versions") or []}
        out = [
            _verify_version(
                opts, name, v, target_versions.get(n), rows.get(n) or {}, item["refs"], kind
            )
            for n, v in sorted(source_versions.items())
        ]
    return {**result(what, name, name, name, MATCH, diffs), "_versions": out}


def _verify_version(
    opts: Options, name: str, source: Any, target: Any, row: Row, refs: Row, kind: RegistryKind
) -> Row:
    n = int(source.version)
    sid = f"{name}/{n}"
    if target is None:
        return result(kind.version_object_type, sid, None, name, MISSING_ON_TARGET)
    tgt = client(opts.target)
    diffs: dict[str, list[str]] = {}
    _differs(diffs, "description", source.description or "", target.description or "")
    _differs(diffs, "current_stage", source.current_stage, target.current_stage)
    vdoc = {"fields": version_fields(source), "tags": dict(source.tags)}
    compare_map("tags", version_tags(vdoc, opts), dict(target.tags), diffs)

    expected = rewrite_source(source.source or "", source.run_id, refs, artifact_roots(tgt))
    if expected is None:  # registered from a logged model holding its staged files
        holder = row.get("target_model_id")
        run = refs["runs"].get(source.run_id or "")
        expected = (f"models:/{holder}", run, holder)
        if holder:
            lm = tgt.get_logged_model(holder)
            compare_artifacts(opts, row.get("artifact_files"), lm.artifact_location, diffs)
            expected = (holder_source(lm, row.get("source_file")), run, holder)
    _differs(diffs, "source", expected[0], target.source)
    _differs(diffs, "run_id", expected[1] or "", target.run_id or "")
    target_id = f"{name}/{target.version}"
    return result(kind.version_object_type, sid, target_id, name, MATCH, diffs)
