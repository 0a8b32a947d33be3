"""Export one run: metadata, every metric point and every artifact, into the staging store."""

from __future__ import annotations

from typing import Any, NamedTuple

from migrator import scope
from migrator.artifact_store import source_side
from migrator.artifacts import stage_artifacts
from migrator.capabilities import BULK_METRIC_HISTORY, source_has
from migrator.config import Options
from migrator.fanout import ReadAhead
from migrator.layout import (
    RUN_FORMAT,
    artifact_key,
    dump_doc,
    metrics_to_parquet,
    run_key,
)
from migrator.lineage import PARENT_RUN_ID_TAG, RUN_INFO_FIELDS, SYSTEM_TAG_PREFIX
from migrator.manifest import EXPORTED, Row, now_ms
from migrator.mlflow_io import (
    client,
    get_run_or_none,
    metric_history_bulk,
    run_fingerprint,
    search_runs_by_id,
    translate_errors,
)
from migrator.staging import Staging, open_staging
from migrator.workdirs import Workdir

STAGE = "export"


def run_info_dict(info: Any) -> dict[str, Any]:
    return {f: getattr(info, f) for f in RUN_INFO_FIELDS}


def _inputs(run: Any) -> dict[str, Any]:
    """The run's inputs as MLflow shapes them: dataset inputs (with their tags) and, in
    MLflow 3, the logged models it read."""
    inputs = getattr(run, "inputs", None)
    datasets = []
    for di in getattr(inputs, "dataset_inputs", None) or []:
        d = di.dataset
        datasets.append(
            {
                "dataset": {
                    "name": d.name,
                    "digest": d.digest,
                    "source_type": d.source_type,
                    "source": d.source,
                    "schema": d.schema,
                    "profile": d.profile,
                },
                "tags": {t.key: t.value for t in di.tags},
            }
        )
    models = [{"model_id": m.model_id} for m in getattr(inputs, "model_inputs", None) or []]
    return {"dataset_inputs": datasets, "model_inputs": models}


def _outputs(run: Any) -> dict[str, Any]:
    """The logged models a run produced (MLflow 3), with the step they were logged at."""
    outputs = getattr(run, "outputs", None)
    models = getattr(outputs, "model_outputs", None) or []
    return {"model_outputs": [{"model_id": m.model_id, "step": m.step} for m in models]}


def _metric_links(metrics: list[Any]) -> list[dict[str, Any]]:
    """Points linked to a logged model or a dataset (MLflow 3), which metrics.parquet's four
    columns do not hold."""
    return [
        {
            "key": m.key,
            "step": m.step,
            "timestamp": m.timestamp,
            "model_id": m.model_id,
            "dataset_name": m.dataset_name,
            "dataset_digest": m.dataset_digest,
        }
        for m in metrics
        if getattr(m, "model_id", None) or getattr(m, "dataset_name", None)
    ]


def model_links(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's links to logged models, from its document, as the runs manifest holds them."""
    links = [
        {"model_id": m["model_id"], "kind": "input", "step": None}
        for m in (doc.get("inputs") or {}).get("model_inputs", [])
    ]
    links += [
        {"model_id": m["model_id"], "kind": "output", "step": m.get("step")}
        for m in (doc.get("outputs") or {}).get("model_outputs", [])
    ]
    return links


#: The task input (`Stage.inputs`) that carries a run as the driver's enumeration found it, so
#: the task need not search for it again (`_read_runs`).
SOURCE_RUN = "source_run"

#: Runs and metric histories read ahead for a job by `prefetch`, taken by `export_run` (a row
#: finds its entry, or reads for itself).
_PREFETCHED: ReadAhead[tuple[Any, list[Any]]] = ReadAhead("runs")


def prefetch(rows: list[Row], opts: Options) -> None:
    """Read a job's runs (`_read_runs`: one search where it gives all a run holds) and their
    histories with one bulk call per metric key, instead of a history call per key for every
    run."""
    runs = _read_runs(rows, opts)
    # The bulk answer lacks a point's links to logged models and datasets, and older servers
    # have no bulk endpoint: such runs read their histories key by key.
    per_key = {
        rid
        for rid, r in runs.items()
        if any(m.model_id or m.dataset_name for m in r.data._metric_objs)
    }
    if not source_has(opts, BULK_METRIC_HISTORY):
        per_key = set(runs)
    by_key: dict[str, list[str]] = {}
    for rid, run in runs.items():
        for key in run.data.metrics if rid not in per_key else ():
            by_key.setdefault(key, []).append(rid)
    points: dict[str, list[Any]] = {rid: [] for rid in runs}
    for key, rids in sorted(by_key.items()):
        got = metric_history_bulk(opts.source, rids, key)
        if got is None:
            per_key.update(rids)
            continue
        for rid in rids:
            points[rid].extend(got[rid])
    for rid in per_key:
        points[rid] = _history(opts.source, runs[rid])
    _PREFETCHED.job().update({rid: (run, points[rid]) for rid, run in runs.items()})


def _read_runs(rows: list[Row], opts: Options) -> dict[str, Any]:
    """A job's runs, by id (a run the source no longer has is left out: its row reads for
    itself and fails naming it).

    A search leaves out the logged models a run read (MLflow 3), which may be any experiment's.
    Where some experiment in scope holds one, every run is read with `get_run` and no search.
    Else a run is what the driver's enumeration found (`SOURCE_RUN`: a search's answer, so a
    search here would read the same again), and one search reads the rows that came without
    it; then, where the source has logged models at all, the runs of an experiment that holds
    one since the driver looked are read again in full (asked after the enumeration, so a
    model made in between is seen)."""
    ids = [r["source_run_id"] for r in rows]
    if opts.runs_read_in_full:
        read = (get_run_or_none(opts.source, rid) for rid in ids)
        return {r.info.run_id: r for r in read if r is not None}
    exps = sorted({r["source_experiment_id"] for r in rows})
    runs = {r["source_run_id"]: r[SOURCE_RUN] for r in rows if r.get(SOURCE_RUN) is not None}
    unread = [rid for rid in ids if rid not in runs]
    if unread:
        runs.update((r.info.run_id, r) for r in search_runs_by_id(opts.source, exps, unread))
    with_models = _holding_logged_models(opts, exps)
    for rid, run in runs.items():
        if run.info.experiment_id in with_models:
            runs[rid] = client(opts.source).get_run(rid)
    return runs


def _holding_logged_models(opts: Options, exps: list[str]) -> set[str]:
    """Which of a job's experiments hold a logged model: one search for them all (a job's
    runs may come from several experiments, and most hold none), then one per experiment only
    when some does."""
    if not scope.holds_logged_models(opts, exps):
        return set()
    if len(exps) == 1:
        return set(exps)
    return {e for e in exps if scope.holds_logged_models(opts, [e])}


def _history(uri: str, run: Any) -> list[Any]:
    """Every point of every metric of a run, one call per key."""
    c, run_id = client(uri), run.info.run_id
    return [m for key in sorted(run.data.metrics) for m in c.get_metric_history(run_id, key)]


def _metric_points(metrics: list[Any]) -> list[dict[str, Any]]:
    return [
        {"key": m.key, "step": m.step, "timestamp": m.timestamp, "value": m.value} for m in metrics
    ]


def _read_run(uri: str, run_id: str) -> tuple[Any, list[Any]]:
    """The run and every point of every metric: read ahead by `prefetch`, or read now."""
    cached = _PREFETCHED.job().pop(run_id, None)
    if cached is not None:
        return cached
    run = client(uri).get_run(run_id)
    return run, _history(uri, run)


def export_run(item: Row, opts: Options) -> Row:
    """Stage one run; the run.json is written last and marks the export complete.

    Args:
        item: a manifest row with at least `source_run_id`.
    Returns:
        The manifest row in state `exported`, with every original system attribute.
    Raises:
        TransientError, PermanentError: naming the run.
    """
    with Workdir("export") as keep:
        return export_run_keeping(item, opts, keep).row


def row_fields(doc: dict[str, Any]) -> Row:
    """The manifest fields a staged run document (checked by `validate_run_doc`) gives, all
    but the fingerprint and state:
    the export writes them, and an import from staging writes them again, so a row is whole
    whichever stage wrote it last."""
    info, tags, artifacts = doc["info"], doc["tags"], doc["artifacts"]
    return {
        "source_experiment_id": info.get("experiment_id"),
        "run_name": info.get("run_name"),
        "user_id": info.get("user_id"),
        "status": info.get("status"),
        "lifecycle_stage": info.get("lifecycle_stage"),
        "start_time": info.get("start_time"),
        "end_time": info.get("end_time"),
        "artifact_uri": info.get("artifact_uri"),
        "source_parent_run_id": tags.get(PARENT_RUN_ID_TAG),
        "mlflow_tags": {k: v for k, v in tags.items() if k.startswith(SYSTEM_TAG_PREFIX)},
        "n_params": len(doc["params"]),
        "n_metric_points": (doc.get("metrics") or {}).get("points"),
        "n_artifacts": len(artifacts),
        "artifact_bytes": sum(a["size"] for a in artifacts),
        "artifact_files": artifacts,
        "model_links": model_links(doc),
    }


class Exported(NamedTuple):
    """What `export_run_keeping` staged, for an import in the same task."""

    row: Row
    """The manifest row in state `exported`."""
    doc: dict[str, Any]
    """The run document (run.json)."""
    points: list[dict[str, Any]]
    """Every metric point (metrics.parquet)."""
    staged_before: bool
    """run.json was there already: an earlier export (see `write_run_doc`)."""


def export_run_keeping(item: Row, opts: Options, keep: str) -> Exported:
    """`export_run`, also returning the run document and metric points it staged; the
    artifact files it streamed stay in `keep` (see `stage_artifacts`)."""
    run_id = item["source_run_id"]
    obj = f"run {run_id}"
    staging = open_staging(opts.staging)
    with translate_errors(obj, STAGE):
        run, metrics = _read_run(opts.source, run_id)
        info = run_info_dict(run.info)
        points = _metric_points(metrics)
        artifacts = stage_artifacts(
            source_side(opts),
            run.info.artifact_uri,
            staging,
            lambda path: artifact_key(run_id, path),
            keep,
        )
    tags = dict(run.data.tags)
    params = dict(run.data.params)
    staging.write_bytes(run_key(run_id, "metrics.parquet"), metrics_to_parquet(points))
    doc = {
        "exported_at": now_ms(),
        "source_tracking_uri_scheme": opts.source.split(":", 1)[0],
        "info": info,
        "params": params,
        "tags": tags,
        "inputs": _inputs(run),
        "outputs": _outputs(run),
        "metrics": {
            "keys": sorted(run.data.metrics),
            "points": len(points),
            "links": _metric_links(metrics),
        },
        "artifacts": artifacts,
    }
    staged_before = write_run_doc(staging, run_id, dump_doc(RUN_FORMAT, doc))
    row = {
        **item,
        **row_fields(doc),
        "source_fingerprint": run_fingerprint(run, [(a["path"], a["size"]) for a in artifacts]),
        "state": EXPORTED,
        "error": None,
        "failed_stage": None,
        "updated_at": now_ms(),
    }
    return Exported(row, doc, points, staged_before)


def write_run_doc(staging: Staging, run_id: str, data: bytes) -> bool:
    """Write a run's run.json (last: it marks the export complete) and say whether an earlier
    export had written it already.

    The first write is conditional (absent only), so the answer costs no request of its own:
    in `migrate`, where the import follows in the same task, a run.json that was there before
    is the run's create intent (an earlier attempt may have created the target run, so it is
    looked up first; `import_runs`). A second write replaces the old document."""
    key = run_key(run_id, "run.json")
    if staging.put_if(key, data, None) is not None:
        return False
    staging.write_bytes(key, data)
    return True
