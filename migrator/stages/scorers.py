"""Registered scorers (MLflow 3): each scorer of a migrated experiment with every version, as
its serialized form (LLM judges, built-in and code scorers alike), and its online sampling
configuration (sample rate and filter), onto the migrated experiment.

A scorer is one row (`experiment/name`), its versions written in order: the target numbers a
new version max(versions)+1, so a version the source deleted is re-made as a placeholder,
built on, and deleted again, as for model versions. What the target refuses (a judge on an AI
gateway endpoint the target does not have, a code scorer on a server without
`MLFLOW_SERVER_ENABLE_CUSTOM_SCORERS`) fails that scorer with the target's reason. Staged as
`scorers/<experiment id>/<quoted name>/scorer.json`.
"""

from __future__ import annotations

from typing import Any

from migrator.config import Options
from migrator.errors import PermanentError, StagingError
from migrator.layout import SCORER_FORMAT, dump_doc, load_doc, scorer_key
from migrator.manifest import (
    EXPORTED,
    IMPORTED,
    MATCH,
    MISSING_ON_SOURCE,
    MISSING_ON_TARGET,
    Row,
    in_state,
    now_ms,
)
from migrator.mlflow_io import tracking_store, translate_errors
from migrator.stages.verify_models import result
from migrator.staging import open_staging


def scorer_versions(uri: str, experiment_id: str, name: str) -> dict[int, Any]:
    """Every version of a scorer, by number (none when the server does not know the name)."""
    from mlflow.exceptions import MlflowException

    try:
        found = tracking_store(uri).list_scorer_versions(experiment_id, name)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    return {int(v.scorer_version): v for v in found}


def _serialized(v: Any) -> str:
    return str(getattr(v, "_serialized_scorer", None) or v.serialized_scorer)


def scorer_key_of(experiment_id: str, name: str) -> str:
    return f"{experiment_id}/{name}"


def export_scorer(item: Row, opts: Options) -> Row:
    row, _ = export_scorer_keeping(item, opts)
    return row


def export_scorer_keeping(item: Row, opts: Options) -> tuple[Row, dict[str, Any]]:
    exp, name = item["source_experiment_id"], item["name"]
    with translate_errors(f"scorer {name!r} of experiment {exp}", "export"):
        versions = scorer_versions(opts.source, exp, name)
        latest = versions[max(versions)] if versions else None
        configs = (
            tracking_store(opts.source).get_online_scoring_configs([latest.scorer_id])
            if latest is not None and latest.scorer_id
            else []
        )
    config = configs[0] if configs else None
    doc = {
        "exported_at": now_ms(),
        "experiment_id": exp,
        "name": name,
        "versions": [
            {"version": n, "serialized": _serialized(v), "creation_time": v.creation_time}
            for n, v in sorted(versions.items())
        ],
        "sample_rate": getattr(config, "sample_rate", None),
        "filter_string": getattr(config, "filter_string", None),
    }
    open_staging(opts.staging).write_bytes(scorer_key(exp, name), dump_doc(SCORER_FORMAT, doc))
    return in_state({**item, **row_fields(doc)}, EXPORTED), doc


def row_fields(doc: dict[str, Any]) -> Row:
    return {
        "versions": [v["version"] for v in doc["versions"]],
        "sample_rate": doc.get("sample_rate"),
        "filter_string": doc.get("filter_string"),
    }


def read_scorer_doc(opts: Options, experiment_id: str, name: str) -> dict[str, Any]:
    what = f"scorer {name!r} of experiment {experiment_id}"
    data = open_staging(opts.staging).read_bytes(scorer_key(experiment_id, name))
    doc = load_doc(data, SCORER_FORMAT, what)
    if doc.get("name") != name or doc.get("experiment_id") != experiment_id:
        raise StagingError("scorer.json does not describe this scorer", obj=what)
    versions = doc.get("versions")
    if not isinstance(versions, list) or not all(
        isinstance(v, dict)
        and type(v.get("version")) is int
        and isinstance(v.get("serialized"), str)
        for v in versions
    ):
        raise StagingError("field 'versions' is not a list of versions", obj=what)
    return doc


def import_scorer_doc(item: Row, opts: Options, doc: dict[str, Any]) -> Row:
    """Register every version the target scorer lacks, at its source number, then its
    sampling configuration."""
    name, target_exp = doc["name"], item["target_experiment_id"]
    obj = f"scorer {name!r} of experiment {doc['experiment_id']}"
    store = tracking_store(opts.target)
    with translate_errors(obj, "import"):
        have = scorer_versions(opts.target, target_exp, name)
        placeholders: list[int] = []
        for v in doc["versions"]:
            n = v["version"]
            if n in have:
                if _serialized(have[n]) != v["serialized"]:
                    raise PermanentError(
                        f"the target already has a version {n} of it, another one",
                        obj=obj,
                        stage="import",
                    )
                continue
            while True:  # numbers are max + 1: what lands below n stands in for a deleted one
                got = int(store.register_scorer(target_exp, name, v["serialized"]).scorer_version)
                if got == n:
                    break
                if got > n:
                    raise PermanentError(
                        f"the target scorer already used numbers up to {got - 1}, so version "
                        f"{n} cannot keep its number",
                        obj=obj,
                        stage="import",
                    )
                placeholders.append(got)
        for n in placeholders:  # below the newest now: deleting them frees no number
            store.delete_scorer(target_exp, name, n)
        if doc.get("sample_rate"):
            store.upsert_online_scoring_config(
                target_exp, name, doc["sample_rate"], doc.get("filter_string")
            )
    row = {k: v for k, v in item.items() if not k.startswith("_")}
    row["target_scorer_key"] = scorer_key_of(target_exp, name)
    return in_state(row, IMPORTED)


def import_scorer(item: Row, opts: Options) -> Row:
    doc = read_scorer_doc(opts, item["source_experiment_id"], item["name"])
    return import_scorer_doc({**item, **row_fields(doc)}, opts, doc)


def migrate_scorer(item: Row, opts: Options) -> Row:
    exported, doc = export_scorer_keeping(item, opts)
    return import_scorer_doc(exported, opts, doc)


def verify_scorer(item: Row, opts: Options) -> Row:
    """Every version's serialized form and the sampling configuration against the source."""
    exp, name, key = item["source_experiment_id"], item["name"], item["source_scorer_key"]
    target_exp = item.get("target_experiment_id")
    target_key = scorer_key_of(target_exp or "", name)
    with translate_errors(f"scorer {name!r} of experiment {exp}", "verify"):
        source = scorer_versions(opts.source, exp, name)
        if not source:
            return result("scorer", key, target_key, name, MISSING_ON_SOURCE)
        target = scorer_versions(opts.target, target_exp, name) if target_exp else {}
        if not target:
            return result("scorer", key, target_key, name, MISSING_ON_TARGET)
        diffs: dict[str, list[str]] = {}
        bad = [f"missing version {n}" for n in sorted(set(source) - set(target))]
        bad += [f"extra version {n}" for n in sorted(set(target) - set(source))]
        bad += [
            f"version {n} differs"
            for n in sorted(set(source) & set(target))
            if _serialized(source[n]) != _serialized(target[n])
        ]
        if bad:
            diffs["versions"] = bad

        def config(uri: str, versions: dict[int, Any]) -> tuple[Any, Any]:
            latest = versions[max(versions)]
            found = tracking_store(uri).get_online_scoring_configs([latest.scorer_id])
            c = found[0] if found else None
            rate = getattr(c, "sample_rate", None) or None
            return rate, getattr(c, "filter_string", None) if rate else None

        if config(opts.source, source) != config(opts.target, target):
            diffs["online_config"] = [
                f"{config(opts.source, source)} != {config(opts.target, target)}"
            ]
    return result("scorer", key, target_key, name, MATCH, diffs)
