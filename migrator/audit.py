"""`audit`: lineage questions answered from the manifests alone (no server needed)."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections import Counter
from datetime import datetime, timezone
from typing import Any

from migrator.manifest import (
    MATCH,
    Row,
    experiments_table,
    read_verify,
    runs_table,
)
from migrator.staging import open_staging

_TIME_FIELDS = ("start_time", "end_time", "updated_at", "creation_time", "last_update_time")


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


def summary_counts(runs: dict[str, Row], exps: dict[str, Row], verify: list[Row]) -> dict[str, Any]:
    return {
        "experiments": dict(Counter(r["state"] for r in exps.values())),
        "runs": dict(Counter(r["state"] for r in runs.values())),
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
    rows += [(f"{t}", "verified", n) for t, n in sorted(counts["verified"].items())]
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["object_type", "state", "count"])
        w.writerows(rows)
        w.writerow(["run", "artifact_bytes", counts["artifact_bytes"]])
        return buf.getvalue().rstrip("\n")
    lines = [f"{'object':12} {'state':10} {'count':>8}"]
    lines += [f"{t:12} {s:10} {n:>8}" for t, s, n in rows]
    lines.append(f"artifact bytes: {counts['artifact_bytes']:,}")
    return "\n".join(lines)


def run_audit(
    staging_uri: str,
    *,
    source_run_id: str | None = None,
    target_run_id: str | None = None,
    fmt: str = "table",
) -> int:
    """Print the answer; returns the exit code (1 when the run is not in the manifests)."""
    staging = open_staging(staging_uri)
    runs = runs_table(staging).load()
    exps = experiments_table(staging).load()
    if source_run_id or target_run_id:
        if source_run_id:
            row = runs.get(source_run_id)
        else:
            row = next((r for r in runs.values() if r.get("target_run_id") == target_run_id), None)
        if row is None:
            which = f"source id {source_run_id}" if source_run_id else f"target id {target_run_id}"
            print(f"migrator: no run with {which} in {staging.uri}/manifests/", file=sys.stderr)
            return 1
        print(_render_record(run_record(row, exps), fmt))
        return 0
    print(_render_summary(summary_counts(runs, exps, read_verify(staging)), fmt))
    return 0
