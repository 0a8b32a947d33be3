"""`audit`: lineage questions answered from the manifests alone (no server needed).

Where did a source run, logged model or trace go (and the reverse), what were its original
system attributes, which versions does a registered model or prompt have and where did each
one's files come from, and how many objects are in each state.
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
    traces_table,
)
from migrator.registry import MODELS, PROMPTS
from migrator.registry_driver import registry_tables
from migrator.staging import open_staging

_TIME_FIELDS = (
    "start_time",
    "end_time",
    "updated_at",
    "creation_time",
    "last_update_time",
    "creation_timestamp",
    "last_updated_timestamp",
    "request_time",
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
    for kind in (
        "logged_models",
        "registered_models",
        "model_versions",
        "prompts",
        "prompt_versions",
        "traces",
    ):
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


def _either_side(
    rows: dict[Any, Row], source_id: str | None, target_key: str, target_id: str | None
) -> Row | None:
    """The row of a source id (the manifest's key), or of a target id (a column)."""
    if source_id:
        return rows.get(source_id)
    return next((r for r in rows.values() if r.get(target_key) == target_id), None)


def run_audit(
    staging_uri: str,
    *,
    source_run_id: str | None = None,
    target_run_id: str | None = None,
    model: str | None = None,
    prompt: str | None = None,
    version: int | None = None,
    source_model_id: str | None = None,
    target_model_id: str | None = None,
    source_trace_id: str | None = None,
    target_trace_id: str | None = None,
    fmt: str = "table",
) -> int:
    """Print the answer; returns the exit code (1 when the object is not in the manifests)."""
    staging = open_staging(staging_uri)
    check_staging_format(staging, write=False)

    def not_found(what: str) -> int:
        print(f"migrator: no {what} in {staging.uri}/manifests/", file=sys.stderr)
        return 1

    for kind, name in ((MODELS, model), (PROMPTS, prompt)):
        if name is None:
            continue
        row = registry_tables(staging, kind)[0].load().get(name)
        versions = [
            _version_record(v)
            for (n_, n), v in sorted(registry_tables(staging, kind)[1].load().items())
            if n_ == name and version in (None, n)
        ]
        if row is None or (version is not None and not versions):
            which = (
                f"version {version} of {kind.name} {name!r}" if version else f"{kind.name} {name!r}"
            )
            return not_found(which)
        print(_render_records(versions if version is not None else [row, *versions], fmt))
        return 0
    lookups = (
        ("logged model", logged_models_table, source_model_id, "target_model_id", target_model_id),
        ("trace", traces_table, source_trace_id, "target_trace_id", target_trace_id),
    )
    for what, table, source_id, target_key, target_id in lookups:
        if source_id or target_id:
            found = _either_side(table(staging).load(), source_id, target_key, target_id)
            if found is None:
                return not_found(f"{what} {source_id or target_id}")
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
        "prompts": registry_tables(staging, PROMPTS)[0].load(),
        "prompt_versions": registry_tables(staging, PROMPTS)[1].load(),
        "traces": traces_table(staging).load(),
    }
    print(_render_summary(summary_counts(runs, exps, read_verify(staging), models), fmt))
    return 0
