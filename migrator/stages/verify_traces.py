"""Verify one migrated trace against its source: the trace info, every span and every
assessment, as the import promises to write them (`stages.traces.target_info`).

- info: request time, duration, state, client request id, previews, tags and metadata (the
  run and logged model remapped, source tags added; the keys the server owns left out);
- spans: every span's dict (`Span.to_dict`: name, ids, parent, nanosecond times, status,
  attributes, events, links), the trace id and the attribute naming it aside;
- assessments: each by its (kept or derived) id: name, value, error, rationale, source,
  metadata, span, the assessment it overrides (mapped), validity and both times.
"""

from __future__ import annotations

from typing import Any

from migrator.config import Options
from migrator.fanout import ReadAhead
from migrator.manifest import MATCH, MISSING_ON_SOURCE, MISSING_ON_TARGET, Row
from migrator.mlflow_io import translate_errors
from migrator.stages.traces import assessment_runs, target_info
from migrator.stages.verify_models import result
from migrator.stages.verify_runs import compare_map
from migrator.traces_io import (
    ASSESSMENT_RUN_KEY,
    SERVER_OWNED_METADATA,
    SERVER_OWNED_TAGS,
    derived_assessment_id,
    read_traces,
    trace_infos,
)

_PAIRS: ReadAhead[tuple[Any, Any]] = ReadAhead("verify traces")
_INFO_FIELDS = (
    "request_time",
    "execution_duration",
    "state",
    "client_request_id",
    "request_preview",
    "response_preview",
)


def prefetch(rows: list[Row], opts: Options) -> None:
    """Read a job's traces on both sides in `batchGet` calls."""
    source = read_traces(
        opts.source, list(trace_infos(opts.source, [r["source_trace_id"] for r in rows]).values())
    )
    ids = [r["target_trace_id"] for r in rows]
    target = read_traces(opts.target, list(trace_infos(opts.target, ids).values()))
    pairs = _PAIRS.job()
    for r in rows:
        pairs[r["source_trace_id"]] = (
            source.get(r["source_trace_id"]),
            target.get(r["target_trace_id"]),
        )


def _span(span: Any) -> dict[str, Any]:
    d = span.to_dict()
    d.pop("trace_id", None)
    d["attributes"] = {
        k: v for k, v in (d.get("attributes") or {}).items() if k != "mlflow.traceRequestId"
    }
    return dict(d)


def _assessment(a: Any) -> dict[str, Any]:
    d = a.to_dictionary()
    for key in ("trace_id", "assessment_id"):
        d.pop(key, None)
    return dict(d)


def compare_traces(item: Row, opts: Options, source: Any, target: Any) -> dict[str, list[str]]:
    """The differences between the target trace and what the import writes from the source."""
    diffs: dict[str, list[str]] = {}
    want = target_info(source, item, opts, target.info.trace_id)
    for f in _INFO_FIELDS:
        if getattr(want, f) != getattr(target.info, f):
            diffs[f] = [f"{getattr(want, f)!r} != {getattr(target.info, f)!r}"]
    have_tags = {k: v for k, v in target.info.tags.items() if k not in SERVER_OWNED_TAGS}
    compare_map("tags", want.tags, have_tags, diffs)
    have_md = {
        k: v for k, v in target.info.trace_metadata.items() if k not in SERVER_OWNED_METADATA
    }
    compare_map("metadata", want.trace_metadata, have_md, diffs)
    a = {s.span_id: _span(s) for s in source.data.spans}
    b = {s.span_id: _span(s) for s in target.data.spans}
    bad = [f"missing span {k}" for k in sorted(set(a) - set(b))]
    bad += [f"extra span {k}" for k in sorted(set(b) - set(a))]
    bad += [
        f"span {k} ({a[k].get('name')}) differs" for k in sorted(set(a) & set(b)) if a[k] != b[k]
    ]
    if bad:
        diffs["spans"] = bad
    _compare_assessments(source, target, item, diffs)
    return diffs


def _compare_assessments(source: Any, target: Any, item: Row, diffs: dict[str, list[str]]) -> None:
    kept = target.info.trace_id == source.info.trace_id
    runs = assessment_runs(item)

    def target_id(source_id: str) -> str:
        return source_id if kept else derived_assessment_id(target.info.trace_id, source_id)

    want = {}
    for a in source.info.assessments or []:
        d = _assessment(a)
        if d.get("overrides"):
            d["overrides"] = target_id(d["overrides"])
        metadata = d.get("metadata") or {}
        if metadata.get(ASSESSMENT_RUN_KEY) in runs:
            d["metadata"] = {**metadata, ASSESSMENT_RUN_KEY: runs[metadata[ASSESSMENT_RUN_KEY]]}
        want[target_id(a.assessment_id)] = d
    have = {a.assessment_id: _assessment(a) for a in target.info.assessments or []}
    bad = [f"missing {k}" for k in sorted(set(want) - set(have))]
    bad += [f"extra {k}" for k in sorted(set(have) - set(want))]
    for k in sorted(set(want) & set(have)):
        fields = sorted(f for f in set(want[k]) | set(have[k]) if want[k].get(f) != have[k].get(f))
        if fields:
            bad.append(f"{k} ({want[k].get('assessment_name')}): {', '.join(fields)}")
    if bad:
        diffs["assessments"] = bad


def verify_trace(item: Row, opts: Options) -> Row:
    """One verify row for a migrated trace (`match`, `differ`, `missing_on_*`)."""
    source_id, target_id = item["source_trace_id"], item.get("target_trace_id")
    with translate_errors(f"trace {source_id}", "verify"):
        pair = _PAIRS.job().pop(source_id, None)
        if pair is None:
            infos = trace_infos(opts.source, [source_id])
            source = read_traces(opts.source, list(infos.values())).get(source_id)
            infos = trace_infos(opts.target, [target_id]) if target_id else {}
            target = read_traces(opts.target, list(infos.values())).get(target_id or "")
        else:
            source, target = pair
        if source is None:
            return result("trace", source_id, target_id, None, MISSING_ON_SOURCE)
        name = source.info.tags.get("mlflow.traceName")
        if target is None:
            return result("trace", source_id, target_id, name, MISSING_ON_TARGET)
        return result(
            "trace", source_id, target_id, name, MATCH, compare_traces(item, opts, source, target)
        )
