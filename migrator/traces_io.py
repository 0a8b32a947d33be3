"""Everything the trace stages ask of an MLflow 3 server: listing, batched reads, writes that
keep every id and nanosecond, and the lookups that make a re-run harmless.

(The other kinds go through `mlflow_io`; traces have their own client, `TracingClient`, and
enough rules of their own to fill a module.)

What the server does, measured on MLflow 3.17 (see the README's *Traces*):
- spans live in the tracking store (tag `mlflow.trace.spansLocation = TRACKING_STORE`); older
  traces keep them in a `traces.json` artifact, read through the trace's artifact location;
- `batchGet` reads up to 100 traces per call, but one artifact-backed id fails the whole call;
- a trace is written spans first (OTLP `log_spans`, keeping span ids, parents, nanosecond
  times, status, events and attributes), then `start_trace` (StartTraceV3), which keeps the
  given trace id, times, state, previews, tags and metadata; both are upserts by id, so a
  trace written twice is one trace;
- a trace id the target holds in another experiment is *moved* by `start_trace`: ask first.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from migrator.mlflow_io import apply_client_env, client

#: Traces listed per page (the server refuses more than 500).
PAGE = 500
#: Traces read per `batchGet` call (fastest measured; the client's own default is 10).
BATCH_GET = 100
SPANS_LOCATION_TAG = "mlflow.trace.spansLocation"
IN_TRACKING_STORE = "TRACKING_STORE"
ARTIFACT_LOCATION_TAG = "mlflow.artifactLocation"
#: Set by the target server itself: never sent (the artifact location even fails a new trace).
SERVER_OWNED_TAGS = frozenset({ARTIFACT_LOCATION_TAG, SPANS_LOCATION_TAG})
SERVER_OWNED_METADATA = frozenset({"mlflow.trace.infoFinalized"})
SOURCE_RUN_KEY = "mlflow.sourceRun"
MODEL_ID_KEY = "mlflow.modelId"
ASSESSMENT_RUN_KEY = "mlflow.assessment.sourceRunId"
_NAMESPACE = uuid.UUID("8a6f2f5e-4b1c-4f53-9a51-6d6c666c6f77")


def tracing(uri: str) -> Any:
    """MLflow's TracingClient for a tracking URI (its store is the server's REST store)."""
    apply_client_env()
    client(uri)  # the process-wide settings `client` makes (request headers) apply here too
    from mlflow.tracing.client import TracingClient

    return TracingClient(uri)


def iter_trace_infos(
    uri: str, experiment_ids: Sequence[str], run_id: str | None = None
) -> Iterator[Any]:
    """Every trace of these experiments as its TraceInfo (no spans), oldest first, paged; with
    `run_id`, those `search_traces(run_id=…)` finds for that run (made in it, or linked)."""
    token = None
    while True:
        page = client(uri).search_traces(
            locations=list(experiment_ids),
            run_id=run_id,
            max_results=PAGE,
            page_token=token,
            include_spans=False,
            order_by=["timestamp_ms ASC"],
        )
        yield from (t.info for t in page)
        token = page.token
        if not token:
            return


def read_traces(uri: str, infos: Sequence[Any]) -> dict[str, Any]:
    """The full traces (info, spans, assessments) of these infos, by trace id: those whose
    spans are in the tracking store in `batchGet` calls, the others one by one from their
    `traces.json` artifact. A trace the server cannot give whole is left out."""
    from mlflow.entities import Trace, TraceData
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    store = tracing(uri).store
    in_store = [i.trace_id for i in infos if i.tags.get(SPANS_LOCATION_TAG) == IN_TRACKING_STORE]
    out: dict[str, Any] = {}
    for k in range(0, len(in_store), BATCH_GET):
        for t in store.batch_get_traces(in_store[k : k + BATCH_GET]):
            out[t.info.trace_id] = t
    for info in infos:
        if info.trace_id in out or info.tags.get(SPANS_LOCATION_TAG) == IN_TRACKING_STORE:
            continue
        location = info.tags.get(ARTIFACT_LOCATION_TAG)
        if location:  # the client's own reader resolves it against the global tracking URI
            repo = get_artifact_repository(location, tracking_uri=uri)
            out[info.trace_id] = Trace(info, TraceData.from_dict(repo.download_trace_data()))
    return out


def trace_infos(uri: str, trace_ids: Sequence[str]) -> dict[str, Any]:
    """The TraceInfos a server holds for these ids (any experiment), by id."""
    store = tracing(uri).store
    out: dict[str, Any] = {}
    for k in range(0, len(trace_ids), BATCH_GET):
        for info in store.batch_get_trace_infos(list(trace_ids[k : k + BATCH_GET])):
            out[info.trace_id] = info
    return out


def derived_trace_id(source_trace_id: str) -> str:
    """The id a trace gets where its own cannot be kept: a function of the source id alone, so
    every attempt and every re-run picks the same one (`tr-` and 32 hex, an OTel trace id)."""
    return "tr-" + uuid.uuid5(_NAMESPACE, source_trace_id).hex


def derived_assessment_id(target_trace_id: str, source_assessment_id: str) -> str:
    return "a-" + uuid.uuid5(_NAMESPACE, f"{target_trace_id}|{source_assessment_id}").hex


def spans_for(spans: Sequence[dict[str, Any]], trace_id: str) -> list[Any]:
    """Span objects from their dicts (`Span.to_dict`), moved to `trace_id`: its OTel id goes
    into every span (the server derives the trace id from it); ids and times stay."""
    from mlflow.entities import Span

    otel = base64.b64encode(bytes.fromhex(trace_id.removeprefix("tr-"))).decode()
    out = []
    for d in spans:
        d = {**d, "trace_id": otel, "attributes": {**(d.get("attributes") or {})}}
        d["attributes"]["mlflow.traceRequestId"] = json.dumps(trace_id)
        out.append(Span.from_dict(d))
    return out


def write_trace(uri: str, experiment_id: str, info: Any, spans: Sequence[Any]) -> None:
    """Spans first, then the trace info (the other order changes the duration by 1 ms)."""
    tc = tracing(uri)
    if spans:
        tc.log_spans(experiment_id, list(spans))
    tc.start_trace(info)


def create_assessment(uri: str, assessment: Any) -> Any:
    return tracing(uri).store.create_assessment(assessment)


def link_traces_to_run(uri: str, trace_ids: Sequence[str], run_id: str) -> None:
    c = client(uri)
    for k in range(0, len(trace_ids), 100):
        c.link_traces_to_run(list(trace_ids[k : k + 100]), run_id)


LINKED_PROMPTS_TAG = "mlflow.linkedPrompts"


def link_prompts(uri: str, trace_id: str, tag_value: str | None) -> None:
    """Link a trace to the prompt versions its `mlflow.linkedPrompts` tag names (the tag alone
    is not what `search_traces(filter_string='prompt = "name/1"')` reads: an association is)."""
    from types import SimpleNamespace

    try:
        refs = json.loads(tag_value or "[]")
    except ValueError:
        return
    versions = (
        [
            SimpleNamespace(name=str(r["name"]), version=str(r["version"]))
            for r in refs
            if isinstance(refs, list) and isinstance(r, dict) and {"name", "version"} <= set(r)
        ]
        if isinstance(refs, list)
        else []
    )
    if versions:
        tracing(uri).store.link_prompts_to_trace(trace_id, versions)
