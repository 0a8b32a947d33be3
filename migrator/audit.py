"""`audit`: lineage questions answered from the manifests alone (no server needed).

Where did a source run, logged model or trace go (and the reverse), what were its original
system attributes, which versions does a registered model or prompt have and where did each
one's files come from, and how many objects are in each state.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from migrator.layout import check_staging_format
from migrator.ledger import Ledger
from migrator.manifest import (
    MATCH,
    ManifestTable,
    Row,
    experiments_table,
    logged_models_table,
    model_versions_table,
    models_table,
    read_verify,
    runs_table,
    traces_table,
)
from migrator.registry import MODELS, PROMPTS, RegistryKind
from migrator.registry_driver import registry_tables
from migrator.staging import Staging, open_staging

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


Rows = Mapping[Any, Row] | Ledger  # a manifest's rows by key: a dict, or a ledger on disk


def run_record(row: Row, experiments: Rows) -> dict[str, Any]:
    """A run's lineage: source and target ids and every original system attribute."""
    exp = experiments.get(row["source_experiment_id"]) or {}
    rec = {"source_experiment_name": exp.get("name"), **row}
    rec["artifact_files"] = len(row.get("artifact_files") or [])
    return rec


def summary_counts(
    runs: Rows,
    exps: Rows,
    verify: list[Row],
    models: Mapping[str, Rows] | None = None,
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
    rows: Rows, source_id: str | None, target_key: str, target_id: str | None
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
    """Print the answer; returns the exit code (1 when the object is not in the manifests).

    Each manifest it reads is loaded into an on-disk ledger (`ManifestTable.open`, nothing
    folded or written), as the driver does: an audit of a server of millions of runs needs no
    more memory than one of a hundred."""
    staging = open_staging(staging_uri)
    check_staging_format(staging, write=False)
    with contextlib.ExitStack() as opened:

        def ledger(table: ManifestTable) -> Ledger:
            opened.callback(table.close)
            return table.open(fold=False)

        return _answer(
            staging,
            ledger,
            fmt,
            runs=(source_run_id, target_run_id),
            registry=((MODELS, model), (PROMPTS, prompt)),
            version=version,
            logged_models=(source_model_id, target_model_id),
            traces=(source_trace_id, target_trace_id),
        )


def _answer(
    staging: Staging,
    ledger: Callable[[ManifestTable], Ledger],
    fmt: str,
    *,
    runs: tuple[str | None, str | None],
    registry: tuple[tuple[RegistryKind, str | None], ...],
    version: int | None,
    logged_models: tuple[str | None, str | None],
    traces: tuple[str | None, str | None],
) -> int:
    def not_found(what: str) -> int:
        print(f"migrator: no {what} in {staging.uri}/manifests/", file=sys.stderr)
        return 1

    for kind, name in registry:
        if name is None:
            continue
        objects, versions_table = registry_tables(staging, kind)
        row = ledger(objects).get(name)
        versions = [
            _version_record(v)
            for v in sorted(
                ledger(versions_table).rows(groups=[name]), key=lambda v: int(v["version"])
            )
            if version in (None, int(v["version"]))
        ]
        if row is None or (version is not None and not versions):
            which = (
                f"version {version} of {kind.name} {name!r}" if version else f"{kind.name} {name!r}"
            )
            return not_found(which)
        print(_render_records(versions if version is not None else [row, *versions], fmt))
        return 0
    lookups = (
        ("logged model", logged_models_table, "target_model_id", logged_models),
        ("trace", traces_table, "target_trace_id", traces),
    )
    for what, table, target_key, (source_id, target_id) in lookups:
        if source_id or target_id:
            found = _either_side(ledger(table(staging)), source_id, target_key, target_id)
            if found is None:
                return not_found(f"{what} {source_id or target_id}")
            print(_render_record(_version_record(found), fmt))
            return 0
    run_rows = ledger(runs_table(staging))
    exps = ledger(experiments_table(staging))
    source_run_id, target_run_id = runs
    if source_run_id or target_run_id:
        run = _either_side(run_rows, source_run_id, "target_run_id", target_run_id)
        if run is None:
            which = f"source id {source_run_id}" if source_run_id else f"target id {target_run_id}"
            return not_found(f"run with {which}")
        print(_render_record(run_record(run, exps), fmt))
        return 0
    models = {
        "logged_models": ledger(logged_models_table(staging)),
        "registered_models": ledger(models_table(staging)),
        "model_versions": ledger(model_versions_table(staging)),
        "prompts": ledger(registry_tables(staging, PROMPTS)[0]),
        "prompt_versions": ledger(registry_tables(staging, PROMPTS)[1]),
        "traces": ledger(traces_table(staging)),
    }
    print(_render_summary(summary_counts(run_rows, exps, read_verify(staging), models), fmt))
    return 0
