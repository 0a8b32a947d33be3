"""Evaluation datasets (MLflow 3): every dataset with its tags, schema, experiment links
(remapped) and every record (inputs, outputs, expectations, tags, source; a record whose source
is a trace points at the migrated trace).

The target gives a dataset, and each record, ids and times of its own; the dataset carries its
source id as the tag `mlflow_exim.field.dataset_id` from its creation (kept with source tags
off too: it is how a re-run finds it, names not being unique), and records are upserted by
their inputs, so a re-run writes nothing twice. Staged as
`evaluation_datasets/<source_dataset_id>/dataset.json`.
"""

from __future__ import annotations

import json
from typing import Any

from migrator.config import Options
from migrator.errors import StagingError
from migrator.layout import DATASET_FORMAT, dataset_key, dump_doc, load_doc
from migrator.lineage import DATASET_FIELDS, DATASET_ID_TAG, field_source_tags, fit
from migrator.manifest import (
    EXPORTED,
    IMPORTED,
    MATCH,
    MISSING_ON_SOURCE,
    MISSING_ON_TARGET,
    Row,
    in_state,
    now_ms,
    traces_table,
)
from migrator.mlflow_io import fingerprint, matching, or_none, tracking_store, translate_errors
from migrator.once import Lineage, create_once
from migrator.stages.verify_models import result
from migrator.stages.verify_runs import compare_map
from migrator.staging import open_staging

_RECORD_FIELDS = ("inputs", "outputs", "expectations", "tags", "source")


def dataset_fields(ds: Any) -> dict[str, Any]:
    return {f: getattr(ds, f, None) for f in DATASET_FIELDS}


def dataset_fingerprint(ds: Any) -> str:
    """What changes when a dataset or its records do (the digest follows its records)."""
    return fingerprint({**dataset_fields(ds), "tags": _str_map(ds.tags)})


def _str_map(tags: Any) -> dict[str, str]:
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (tags or {}).items()}


def _record(r: Any) -> dict[str, Any]:
    d = r.to_dict()
    return {k: d[k] for k in _RECORD_FIELDS if d.get(k) is not None}


def export_dataset(item: Row, opts: Options) -> Row:
    """Stage one dataset with every record."""
    row, _ = export_dataset_keeping(item, opts)
    return row


def export_dataset_keeping(item: Row, opts: Options) -> tuple[Row, dict[str, Any]]:
    source_id = item["source_dataset_id"]
    store = tracking_store(opts.source)
    with translate_errors(f"evaluation dataset {source_id}", "export"):
        ds = store.get_dataset(source_id)
        records, _ = store._load_dataset_records(source_id, max_results=None)
        experiments = list(store.get_dataset_experiment_ids(source_id))
    doc = {
        "exported_at": now_ms(),
        "fields": dataset_fields(ds),
        "tags": _str_map(ds.tags),
        "experiment_ids": experiments,
        "records": [_record(r) for r in records],
    }
    open_staging(opts.staging).write_bytes(dataset_key(source_id), dump_doc(DATASET_FORMAT, doc))
    fingerprint = item.get("source_fingerprint") or dataset_fingerprint(ds)
    row = in_state({**item, **row_fields(doc), "source_fingerprint": fingerprint}, EXPORTED)
    return row, doc


def row_fields(doc: dict[str, Any]) -> Row:
    f = doc["fields"]
    return {
        "name": f["name"],
        "experiment_ids": doc["experiment_ids"],
        "tags": doc["tags"],
        "digest": f.get("digest"),
        "schema": f.get("schema"),
        "profile": f.get("profile"),
        "created_time": f.get("created_time"),
        "last_update_time": f.get("last_update_time"),
        "created_by": f.get("created_by"),
        "last_updated_by": f.get("last_updated_by"),
        "n_records": len(doc["records"]),
    }


def read_dataset_doc(opts: Options, source_id: str) -> dict[str, Any]:
    """The staged dataset, checked.

    Raises:
        StagingError: not there, corrupt, or another dataset's.
    """
    what = f"evaluation dataset {source_id}"
    doc = load_doc(
        open_staging(opts.staging).read_bytes(dataset_key(source_id)), DATASET_FORMAT, what
    )
    fields = doc.get("fields")
    if not isinstance(fields, dict) or fields.get("dataset_id") != source_id:
        raise StagingError("dataset.json does not describe this dataset", obj=what)
    if not isinstance(doc.get("records"), list) or not all(
        isinstance(r, dict) and isinstance(r.get("inputs"), dict) for r in doc["records"]
    ):
        raise StagingError("field 'records' is not a list of records", obj=what)
    if not isinstance(doc.get("experiment_ids"), list):
        raise StagingError("field 'experiment_ids' is not a list", obj=what)
    return doc


def wanted_tags(doc: dict[str, Any], opts: Options) -> dict[str, str]:
    tags = dict(doc["tags"])
    if opts.import_source_tags:
        tags.update(field_source_tags(doc["fields"], DATASET_FIELDS))
    tags[DATASET_ID_TAG] = doc["fields"]["dataset_id"]
    return fit(tags)


def _record_trace(record: dict[str, Any]) -> str | None:
    trace_id = ((record.get("source") or {}).get("source_data") or {}).get("trace_id")
    return trace_id if isinstance(trace_id, str) else None


def migrated_traces(opts: Options, doc: dict[str, Any]) -> dict[str, str]:
    """Source → target id of the migrated traces the dataset's records come from, looked up
    in the traces manifest in staging (the driver compacts it before datasets move): only
    those, however many traces the server has."""
    wanted = {t for r in doc["records"] if (t := _record_trace(r))}
    if not wanted:
        return {}
    return traces_table(open_staging(opts.staging)).lookup("target_trace_id", wanted)


def target_records(doc: dict[str, Any], trace_ids: dict[str, str]) -> list[dict[str, Any]]:
    """The records to upsert: a trace source pointing at the migrated trace; those with dict
    outputs first (MLflow 3.17 fails an upsert whose first record has a plain-text output)."""
    out = []
    for r in doc["records"]:
        r = json.loads(json.dumps(r))  # a copy
        data = (r.get("source") or {}).get("source_data") or {}
        if data.get("trace_id") in trace_ids:
            data["trace_id"] = trace_ids[data["trace_id"]]
        out.append(r)
    return sorted(out, key=lambda r: not isinstance(r.get("outputs"), dict) or not r["outputs"])


def _find(opts: Options, source_id: str) -> list[Any]:
    store = tracking_store(opts.target)
    # No backticks: a backticked key in a dataset filter silently matches nothing.
    found = store.search_datasets(filter_string=matching(f"tags.{DATASET_ID_TAG}", source_id))
    return [d for d in found if (d.tags or {}).get(DATASET_ID_TAG) == source_id]


def import_dataset_doc(item: Row, opts: Options, doc: dict[str, Any]) -> Row:
    """Create (or find) the target dataset, and bring its tags, experiments and records up to
    the source's.

    Args:
        item: the manifest row, with `_experiments` (source → target experiment ids).
    """
    source_id = doc["fields"]["dataset_id"]
    obj = f"evaluation dataset {source_id} ({doc['fields']['name']})"
    store = tracking_store(opts.target)
    exps = item.get("_experiments") or {}
    wanted_exps = sorted({exps[e] for e in doc["experiment_ids"] if e in exps})
    tags = wanted_tags(doc, opts)
    with translate_errors(obj, "import"):
        spec = Lineage(
            kind="evaluation dataset",
            obj=obj,
            find=lambda: _find(opts, source_id),
            create=lambda: store.create_dataset(doc["fields"]["name"], tags, wanted_exps),
            order=lambda d: (d.created_time, d.dataset_id),
            target_id=lambda d: str(d.dataset_id),
            discard=lambda d, _kept: or_none(store.delete_dataset, d.dataset_id),
        )
        ds = create_once(spec, look_first=True)  # few: always look first (a kill leaves no intent)
        changed = {k: v for k, v in tags.items() if _str_map(ds.tags).get(k) != v}
        if changed:
            store.set_dataset_tags(ds.dataset_id, changed)
        have = set(store.get_dataset_experiment_ids(ds.dataset_id))
        if missing := [e for e in wanted_exps if e not in have]:
            store.add_dataset_to_experiments(ds.dataset_id, missing)
        records = target_records(doc, migrated_traces(opts, doc))
        for k in range(0, len(records), 500):
            store.upsert_dataset_records(ds.dataset_id, records[k : k + 500])
    row = {k: v for k, v in item.items() if not k.startswith("_")}
    return in_state({**row, "target_dataset_id": ds.dataset_id}, IMPORTED)


def import_dataset(item: Row, opts: Options) -> Row:
    doc = read_dataset_doc(opts, item["source_dataset_id"])
    return import_dataset_doc({**item, **row_fields(doc)}, opts, doc)


def migrate_dataset(item: Row, opts: Options) -> Row:
    exported, doc = export_dataset_keeping(item, opts)
    return import_dataset_doc(exported, opts, doc)


def _comparable(records: list[dict[str, Any]]) -> list[str]:
    return sorted(
        json.dumps({k: r.get(k) for k in _RECORD_FIELDS}, sort_keys=True) for r in records
    )


def verify_dataset(item: Row, opts: Options) -> Row:
    """Name, tags, schema, experiment links and every record against the source's."""
    source_id, target_id = item["source_dataset_id"], item.get("target_dataset_id")
    src, tgt = tracking_store(opts.source), tracking_store(opts.target)
    with translate_errors(f"evaluation dataset {source_id}", "verify"):
        source = or_none(src.get_dataset, source_id)
        if source is None:
            return result(
                "evaluation_dataset", source_id, target_id, item.get("name"), MISSING_ON_SOURCE
            )
        target = or_none(tgt.get_dataset, target_id) if target_id else None
        if target is None:
            return result(
                "evaluation_dataset", source_id, target_id, source.name, MISSING_ON_TARGET
            )
        diffs: dict[str, list[str]] = {}
        doc = {
            "fields": dataset_fields(source),
            "tags": _str_map(source.tags),
            "experiment_ids": list(src.get_dataset_experiment_ids(source_id)),
            "records": [
                _record(r) for r in src._load_dataset_records(source_id, max_results=None)[0]
            ],
        }
        for f in ("name", "schema", "profile"):
            if getattr(source, f) != getattr(target, f):
                diffs[f] = [f"{getattr(source, f)!r} != {getattr(target, f)!r}"]
        compare_map("tags", wanted_tags(doc, opts), _str_map(target.tags), diffs)
        exps = item.get("_experiments") or {}
        want_exps = sorted({exps[e] for e in doc["experiment_ids"] if e in exps})
        have_exps = sorted(tgt.get_dataset_experiment_ids(target_id))
        if want_exps != have_exps:
            diffs["experiment_ids"] = [f"{want_exps} != {have_exps}"]
        want = _comparable(target_records(doc, migrated_traces(opts, doc)))
        have = _comparable(
            [_record(r) for r in tgt._load_dataset_records(target_id, max_results=None)[0]]
        )
        if want != have:
            diffs["records"] = [
                f"{len(want)} on source, {len(have)} on target, or their fields differ"
            ]
    return result("evaluation_dataset", source_id, target_id, source.name, MATCH, diffs)
