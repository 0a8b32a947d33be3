"""`audit`: lineage questions answered from the manifests alone (no server needed).

Where did a source run or logged model go (and the reverse), what were its original system
attributes, which versions does a registered model have and where did each one's files come
from, and how many objects are in each state.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections import Counter
from datetime import datetime, timezone
from typing import Any

from migrator.layout import check_staging_format
from migrator.manifest import (
    MATCH,
    Row,
    experiments_table,
    logged_models_table,
    model_versions_table,
    models_table,
    read_verify,
    runs_table,
)
from migrator.staging import open_staging

_TIME_FIELDS = (
    "start_time",
    "end_time",
    "updated_at",
    "creation_time",
    "last_update_time",
    "creation_timestamp",
    "last_updated_timestamp",
)


def _iso(ms: int | None) -> str:
    if ms is None:
        return ""
    t = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def run_record(row: Row, experiments: dict[str, Row]) -> dict[str, Any]:
    """A run's lineage: source and target ids and every original system attribute."""
    exp = experiments.get(row["source_experiment_id"], {})
    rec = {"source_experiment_name": exp.get("name"), **row}
    rec["artifact_files"] = len(row.get("artifact_files") or [])
    return rec


def summary_counts(
    runs: dict[str, Row],
    exps: dict[str, Row],
    verify: list[Row],
    models: dict[Any, dict[Any, Row]] | None = None,
) -> dict[str, Any]:
    models = models or {}
    return {
        "experiments": dict(Counter(r["state"] for r in exps.values())),
        "runs": dict(Counter(r["state"] for r in runs.values())),
        **{kind: dict(Counter(r["state"] for r in rows.values())) for kind, rows in models.items()},
        "verified": dict(Counter(r["object_type"] for r in verify if r["outcome"] == MATCH)),
        "artifact_bytes": sum(r.get("artifact_bytes") or 0 for r in runs.values()),
    }


def _render_record(rec: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rec, indent=2, default=str)
    if fmt == "csv":
        buf = io.StringIO()
        flat = {k: json.dumps(v) if isinstance(v, dict) else v for k, v in rec.items()}
        w = csv.DictWriter(buf, fieldnames=list(flat))
        w.writeheader()
        w.writerow(flat)
        return buf.getvalue().rstrip("\n")
    lines = []
    for k, v in rec.items():
        if k in _TIME_FIELDS and isinstance(v, int):
            v = f"{_iso(v)} ({v})"
        elif isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in sorted(v.items())) or "-"
        lines.append(f"{k:24} {'' if v is None else v}")
    return "\n".join(lines)


def _render_summary(counts: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(counts, indent=2)
    rows = [("experiment", s, n) for s, n in sorted(counts["experiments"].items())]
    rows += [("run", s, n) for s, n in sorted(counts["runs"].items())]
    for kind in ("logged_models", "registered_models", "model_versions"):
        rows += [(kind[:-1], s, n) for s, n in sorted(counts.get(kind, {}).items())]
    rows += [(f"{t}", "verified", n) for t, n in sorted(counts["verified"].items())]
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["object_type", "state", "count"])
        w.writerows(rows)
        w.writerow(["run", "artifact_bytes", counts["artifact_bytes"]])
        return buf.getvalue().rstrip("\n")
    lines = [f"{'object':17} {'state':10} {'count':>8}"]
    lines += [f"{t:17} {s:10} {n:>8}" for t, s, n in rows]
    lines.append(f"artifact bytes: {counts['artifact_bytes']:,}")
    return "\n".join(lines)


def _render_records(recs: list[dict[str, Any]], fmt: str) -> str:
    """Several records (a model and its versions): a JSON list, CSV rows, or tables."""
    if fmt == "json":
        return json.dumps(recs, indent=2, default=str)
    if fmt == "csv":
        buf = io.StringIO()
        keys = list(dict.fromkeys(k for r in recs for k in r))
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        for r in recs:
            w.writerow({k: json.dumps(v) if isinstance(v, dict) else v for k, v in r.items()})
        return buf.getvalue().rstrip("\n")
    return "\n\n".join(_render_record(r, fmt) for r in recs)


def _version_record(row: Row) -> dict[str, Any]:
    return {**row, "artifact_files": len(row.get("artifact_files") or [])}


def run_audit(
    staging_uri: str,
    *,
    source_run_id: str | None = None,
    target_run_id: str | None = None,
    model: str | None = None,
    version: int | None = None,
    source_model_id: str | None = None,
    target_model_id: str | None = None,
    fmt: str = "table",
) -> int:
    """Print the answer; returns the exit code (1 when the object is not in the manifests)."""
    staging = open_staging(staging_uri)
    check_staging_format(staging, write=False)

    def not_found(what: str) -> int:
        print(f"migrator: no {what} in {staging.uri}/manifests/", file=sys.stderr)
        return 1

    if model is not None:
        row = models_table(staging).load().get(model)
        versions = [
            _version_record(v)
            for (name, n), v in sorted(model_versions_table(staging).load().items())
            if name == model and version in (None, n)
        ]
        if row is None or (version is not None and not versions):
            which = f"version {version} of model {model!r}" if version else f"model {model!r}"
            return not_found(which)
        print(_render_records(versions if version is not None else [row, *versions], fmt))
        return 0
    if source_model_id or target_model_id:
        logged = logged_models_table(staging).load()
        found = logged.get(source_model_id or "") or next(
            (r for r in logged.values() if r.get("target_model_id") == target_model_id), None
        )
        if found is None:
            return not_found(f"logged model {source_model_id or target_model_id}")
        print(_render_record(_version_record(found), fmt))
        return 0
    runs = runs_table(staging).load()
    exps = experiments_table(staging).load()
    if source_run_id or target_run_id:
        if source_run_id:
            run = runs.get(source_run_id)
        else:
            run = next((r for r in runs.values() if r.get("target_run_id") == target_run_id), None)
        if run is None:
            which = f"source id {source_run_id}" if source_run_id else f"target id {target_run_id}"
            return not_found(f"run with {which}")
        print(_render_record(run_record(run, exps), fmt))
        return 0
    models = {
        "logged_models": logged_models_table(staging).load(),
        "registered_models": models_table(staging).load(),
        "model_versions": model_versions_table(staging).load(),
    }
    print(_render_summary(summary_counts(runs, exps, read_verify(staging), models), fmt))
    return 0
