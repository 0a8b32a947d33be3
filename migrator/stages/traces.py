"""Traces: every trace of a migrated experiment, with every span and assessment, onto the
target **under its own trace id** where the target lets it.

Applications keep trace ids to attach feedback later, so the source id is kept unless the
target holds it already for another trace (then a new id derived from the source id alone
is used: every attempt agrees on it). Both writes are upserts by id (spans, then the trace
info), so a trace written twice is still one trace: the id is the lineage key, and the trace
tag `mlflow_exim.field.trace_id` (with source tags on) names the source trace either way.

- the trace info keeps request time, duration, state, client request id, previews, tags and
  metadata; `mlflow.sourceRun` and `mlflow.modelId` point at the migrated run and logged model
  (the source values stay as `mlflow_exim.mlflow_tag.*` source tags);
- every span keeps its id, parent, nanosecond times, status, events and attributes;
- assessments keep their ids (derived ones with a new trace id), times, source, rationale,
  metadata, error, span and the assessment they override (written after it).

Staged as `traces/<source_trace_id>/trace.json` (MLflow's own `Trace.to_dict`).
"""

from __future__ import annotations

import re
from typing import Any

from migrator.config import Options
from migrator.errors import PermanentError, StagingError
from migrator.fanout import ReadAhead, failed_row
from migrator.layout import TRACE_FORMAT, dump_doc, load_doc, trace_key
from migrator.lineage import TRACE_FIELDS, TRACE_ID_TAG, fit, object_source_tags
from migrator.manifest import EXPORTED, IMPORTED, Row, in_state, now_ms
from migrator.mlflow_io import fingerprint, translate_errors
from migrator.staging import open_staging
from migrator.states import WAITS_FOR
from migrator.traces_io import (
    ASSESSMENT_RUN_KEY,
    LINKED_PROMPTS_TAG,
    MODEL_ID_KEY,
    SERVER_OWNED_METADATA,
    SERVER_OWNED_TAGS,
    SOURCE_RUN_KEY,
    create_assessment,
    derived_assessment_id,
    derived_trace_id,
    link_prompts,
    read_traces,
    spans_for,
    trace_infos,
    write_trace,
)

_OTEL_ID = re.compile(r"^tr-[0-9a-f]{32}$")

#: Traces read ahead for a job by `prefetch`, and what the target holds of their ids.
_PREFETCHED: ReadAhead[Any] = ReadAhead("traces")
_HELD: ReadAhead[Any] = ReadAhead("traces held")


def prefetch(rows: list[Row], opts: Options) -> None:
    """Read a job's traces in a few `batchGet` calls instead of one read per trace."""
    ids = [r["source_trace_id"] for r in rows]
    _PREFETCHED.job().update(read_traces(opts.source, list(trace_infos(opts.source, ids).values())))


def prefetch_held(rows: list[Row], opts: Options) -> None:
    """Ask the target once per job which of the ids these traces may take it holds already."""
    wanted = [i for r in rows for i in _candidates(r["source_trace_id"])]
    held = trace_infos(opts.target, wanted)
    _HELD.job().update({i: held.get(i) for i in wanted})


def prefetch_migrate(rows: list[Row], opts: Options) -> None:
    prefetch(rows, opts)
    prefetch_held(rows, opts)


def _candidates(source_id: str) -> list[str]:
    """The ids a trace may take on the target, in order: its own, then the derived one."""
    derived = derived_trace_id(source_id)
    return [source_id, derived] if _OTEL_ID.match(source_id) else [derived]


def trace_fields(info: Any) -> dict[str, Any]:
    """The trace's system fields, as its source tags and manifest row keep them."""
    return {
        "trace_id": info.trace_id,
        "experiment_id": _experiment_of(info),
        "request_time": info.request_time,
        "execution_duration": info.execution_duration,
        "state": str(getattr(info.state, "value", info.state)),
    }


def _experiment_of(info: Any) -> str | None:
    location = getattr(info, "trace_location", None)
    experiment = getattr(location, "mlflow_experiment", None)
    return getattr(experiment, "experiment_id", None)


def trace_fingerprint(info: Any) -> str:
    """A digest of what may change on a trace after it was written: tags, metadata, state,
    duration, and its assessments (added and edited later)."""
    return fingerprint(
        {
            "tags": {k: v for k, v in info.tags.items() if k not in SERVER_OWNED_TAGS},
            "metadata": info.trace_metadata,
            "state": str(getattr(info.state, "value", info.state)),
            "duration": info.execution_duration,
            "assessments": sorted(
                [a.assessment_id, a.last_update_time_ms, bool(a.valid)]
                for a in info.assessments or []
            ),
        }
    )


def row_fields(trace: Any) -> Row:
    """The manifest fields a trace gives (all but the target side, the fingerprint its listing
    gives, and the state)."""
    info = trace.info
    fields = trace_fields(info)
    return {
        "source_experiment_id": fields["experiment_id"],
        "request_time": fields["request_time"],
        "execution_duration": fields["execution_duration"],
        "trace_state": fields["state"],
        "client_request_id": info.client_request_id,
        "tags": dict(info.tags),  # the server-set ones too: the source's, as it had them
        "trace_metadata": dict(info.trace_metadata),
        "source_run_id": info.trace_metadata.get(SOURCE_RUN_KEY),
        "source_model_id": info.trace_metadata.get(MODEL_ID_KEY),
        "n_spans": len(trace.data.spans),
        "n_assessments": len(info.assessments or []),
    }


def export_trace(item: Row, opts: Options) -> Row:
    """Stage one trace (`traces/<id>/trace.json`).

    Raises:
        PermanentError: the source does not give the trace whole (its spans are missing).
    """
    row, _ = export_trace_keeping(item, opts)
    return row


def export_trace_keeping(item: Row, opts: Options) -> tuple[Row, Any]:
    """`export_trace`, also returning the trace for an import in the same task."""
    source_id = item["source_trace_id"]
    obj = f"trace {source_id}"
    with translate_errors(obj, "export"):
        trace = _PREFETCHED.job().pop(source_id, None)
        if trace is None:
            trace = read_traces(opts.source, list(trace_infos(opts.source, [source_id]).values()))
            trace = trace.get(source_id)
    if trace is None:
        raise PermanentError(
            "the source does not give this trace whole (its spans are missing)",
            obj=obj,
            stage="export",
        )
    doc = {"exported_at": now_ms(), "trace": trace.to_dict()}
    open_staging(opts.staging).write_bytes(trace_key(source_id), dump_doc(TRACE_FORMAT, doc))
    fingerprint = item.get("source_fingerprint") or trace_fingerprint(trace.info)
    return in_state(
        {**item, **row_fields(trace), "source_fingerprint": fingerprint}, EXPORTED
    ), trace


def read_trace_doc(opts: Options, source_id: str) -> Any:
    """The staged trace, checked.

    Raises:
        StagingError: not there, corrupt, or another trace's.
    """
    from mlflow.entities import Trace

    what = f"trace {source_id}"
    doc = load_doc(open_staging(opts.staging).read_bytes(trace_key(source_id)), TRACE_FORMAT, what)
    try:
        trace = Trace.from_dict(doc["trace"])
    except Exception as e:  # MLflow's parser raises anything from KeyError to its own errors
        raise StagingError(
            f"trace.json is not a trace: {type(e).__name__}: {e}", obj=what
        ) from None
    if trace.info.trace_id != source_id:
        raise StagingError("trace.json does not describe this trace", obj=what)
    return trace


def choose_trace_id(item: Row, opts: Options) -> str:
    """The id the trace takes on the target: the one an earlier attempt gave it, else its own
    unless the target holds that for another trace, else the derived one.

    Raises:
        PermanentError: the target holds both for other traces.
    """
    if item.get("target_trace_id"):
        return str(item["target_trace_id"])
    source_id = item["source_trace_id"]
    candidates = _candidates(source_id)
    ahead = _HELD.job()
    if all(i in ahead for i in candidates):  # asked for the whole job by `prefetch_held`
        held = {i: ahead.pop(i) for i in candidates}
    else:
        held = trace_infos(opts.target, candidates)
    for candidate in candidates:
        info = held.get(candidate)
        if info is None:
            return candidate
        ours = _experiment_of(info) == item["target_experiment_id"] and info.tags.get(
            TRACE_ID_TAG
        ) in (source_id, None)
        if ours:  # an earlier attempt of this migration wrote it (spans first: maybe untagged)
            return candidate
    raise PermanentError(
        f"the target holds the trace ids {' and '.join(candidates)} for other traces",
        obj=f"trace {source_id}",
        stage="import",
    )


def target_info(trace: Any, item: Row, opts: Options, target_id: str) -> Any:
    """The TraceInfo to send: the source's, moved to the target experiment and id, with the
    run and logged model it points at remapped and its source tags added."""
    from mlflow.entities import TraceInfo, TraceLocation

    info = trace.info
    metadata = {k: v for k, v in info.trace_metadata.items() if k not in SERVER_OWNED_METADATA}
    for key, mapped in (
        (SOURCE_RUN_KEY, item.get("target_run_id")),
        (MODEL_ID_KEY, item.get("target_model_id")),
    ):
        if key in metadata:
            if mapped:
                metadata[key] = mapped
            else:  # not migrated: no link to an object the target does not have
                del metadata[key]
    tags = {k: v for k, v in info.tags.items() if k not in SERVER_OWNED_TAGS}
    if opts.import_source_tags:
        fields = trace_fields(info)
        originals = {
            k: v for k, v in info.trace_metadata.items() if k in (SOURCE_RUN_KEY, MODEL_ID_KEY)
        }
        # every source system tag, the ones the target's server sets for itself too
        tags.update(object_source_tags(fields, TRACE_FIELDS, {**info.tags, **originals}))
    return TraceInfo(
        trace_id=target_id,
        trace_location=TraceLocation.from_experiment_id(item["target_experiment_id"]),
        request_time=info.request_time,
        execution_duration=info.execution_duration,
        state=info.state,
        request_preview=info.request_preview,
        response_preview=info.response_preview,
        client_request_id=info.client_request_id,
        trace_metadata=metadata,
        tags=fit(tags),
        assessments=[],
    )


def _by_dependency(assessments: list[Any]) -> list[Any]:
    """Assessments with each after the one it overrides (the server checks it exists)."""
    by_id = {a.assessment_id: a for a in assessments}
    done: set[str] = set()
    out: list[Any] = []

    def visit(a: Any, seen: tuple[str, ...] = ()) -> None:
        if a.assessment_id in done or a.assessment_id in seen:
            return
        if a.overrides in by_id:
            visit(by_id[a.overrides], (*seen, a.assessment_id))
        done.add(a.assessment_id)
        out.append(a)

    for a in sorted(assessments, key=lambda a: (a.create_time_ms or 0, a.assessment_id)):
        visit(a)
    return out


def write_assessments(opts: Options, trace: Any, target_id: str, run_ids: dict[str, str]) -> int:
    """Every assessment the target trace does not have yet; returns how many were written."""
    import copy

    if not trace.info.assessments:
        return 0
    kept = target_id == trace.info.trace_id
    have = trace_infos(opts.target, [target_id]).get(target_id)
    existing = {a.assessment_id for a in getattr(have, "assessments", None) or []}
    ids = {
        a.assessment_id: a.assessment_id
        if kept
        else derived_assessment_id(target_id, a.assessment_id)
        for a in trace.info.assessments or []
    }
    written = 0
    for a in _by_dependency(list(trace.info.assessments or [])):
        if ids[a.assessment_id] in existing:
            continue
        b = copy.deepcopy(a)
        b.trace_id, b.assessment_id = target_id, ids[a.assessment_id]
        if b.overrides:
            b.overrides = ids.get(b.overrides, b.overrides)
        metadata = dict(b.metadata or {})
        if metadata.get(ASSESSMENT_RUN_KEY) in run_ids:
            metadata[ASSESSMENT_RUN_KEY] = run_ids[metadata[ASSESSMENT_RUN_KEY]]
        b.metadata = metadata or None
        create_assessment(opts.target, b)
        written += 1
    return written


def import_trace_doc(item: Row, opts: Options, trace: Any) -> Row:
    """Write one trace to the target experiment (an upsert: safe to repeat).

    Args:
        item: the manifest row with `target_experiment_id`, `target_run_id` and
            `target_model_id` (the migrated run and logged model it points at, if any), and
            `_waits_for` (what it points at that is still moving).
    Returns:
        The row `imported`, or `failed` naming what it waits for (written all the same: the
        next run writes it again with the link).
    """
    source_id = trace.info.trace_id
    obj = f"trace {source_id}"
    with translate_errors(obj, "import"):
        target_id = choose_trace_id(item, opts)
        spans = [s.to_dict() for s in trace.data.spans]
        write_trace(
            opts.target,
            item["target_experiment_id"],
            target_info(trace, item, opts, target_id),
            spans_for(spans, target_id),
        )
        write_assessments(opts, trace, target_id, assessment_runs(item))
        link_prompts(opts.target, target_id, trace.info.tags.get(LINKED_PROMPTS_TAG))
    row = {k: v for k, v in item.items() if not k.startswith("_")}
    row["target_trace_id"] = target_id
    if waits := item.get("_waits_for"):
        why = (
            f"{WAITS_FOR} {waits[0]}, which this migration has not moved yet (it failed): the "
            "next run links the trace to it"
        )
        return failed_row(row, "import", PermanentError(why, obj=obj, stage="import"))
    return in_state(row, IMPORTED)


def assessment_runs(item: Row) -> dict[str, str]:
    """Source → target id of the run its assessments may name (the trace's own run)."""
    run, target = item.get("source_run_id"), item.get("target_run_id")
    return {run: target} if run and target else {}


def import_trace(item: Row, opts: Options) -> Row:
    """`import`: the staged trace."""
    trace = read_trace_doc(opts, item["source_trace_id"])
    return import_trace_doc({**item, **row_fields(trace)}, opts, trace)


def migrate_trace(item: Row, opts: Options) -> Row:
    """`migrate`: export and import in one task (the import uses the trace just read)."""
    exported, trace = export_trace_keeping(item, opts)
    return import_trace_doc(exported, opts, trace)
