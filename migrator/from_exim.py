"""A way in for mlflow-export-import users: `migrator import --from-export-import DIR`.

A directory written by mlflow-export-import (`export-experiments`: `<exp_id>/experiment.json`
with `<exp_id>/runs/<run_id>/run.json` and its `artifacts/`; `export-all`: the same under
`experiments/`) is translated into this migrator's staging layout — experiment.json,
run.json, metrics.parquet and the artifacts, and manifest rows in state `exported`, as our own
`export` writes them — and then imported like any staging store: lineage tags, parents
remapped, exactly once, resumable, verified by `verify`-style audits from the manifests.

Translating again is idempotent: a run already imported whose exported files did not change
(its `source_fingerprint`, a digest of its run.json and artifact listing) keeps its row; one
whose files changed is staged again and re-imported onto the same target run. A file that
cannot be read, or names a path outside its folder, fails that run (named in the manifest)
and the rest goes on. Registered models of an export-all (`models/`) are not read yet.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from migrator.config import Options
from migrator.errors import ConfigError, StagingError
from migrator.fanout import describe, failed_row
from migrator.layout import (
    RUN_FORMAT,
    artifact_key,
    dump_doc,
    metrics_to_parquet,
    run_key,
    validate_run_doc,
)
from migrator.lease import Lease
from migrator.manifest import (
    EXPORTED,
    IMPORTED,
    TAGGED,
    Row,
    experiments_table,
    now_ms,
    runs_table,
)
from migrator.stages.experiments import export_experiment
from migrator.stages.export_runs import row_fields
from migrator.staging import Staging, file_sha256, open_staging, safe_key

log = logging.getLogger(__name__)

STAGE = "export"


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise StagingError(f"cannot read {path.name}: {e}", obj=what) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("mlflow"), dict):
        raise StagingError(f"{path.name} is not an mlflow-export-import document", obj=what)
    body: dict[str, Any] = doc["mlflow"]
    return body


def experiment_dirs(root: Path) -> list[Path]:
    """Every experiment folder of an export (`export-experiments` or `export-all`)."""
    if not root.is_dir():
        raise ConfigError(f"--from-export-import {str(root)!r}: not a folder")
    found = sorted({p.parent for p in root.glob("*/experiment.json")})
    found += sorted({p.parent for p in root.glob("experiments/*/experiment.json")})
    if not found:
        raise ConfigError(
            f"--from-export-import {str(root)!r}: no experiment.json (an mlflow-export-import "
            "export-experiments or export-all directory was expected)"
        )
    return found


def _run_dir(exp_dir: Path, run_id: str) -> Path:
    safe_key(run_id)  # one path segment, nothing that leaves the folder
    for candidate in (exp_dir / "runs" / run_id, exp_dir / run_id):
        if candidate.is_dir():
            return candidate
    raise StagingError("its folder is missing from the export", obj=f"run {run_id}")


def _artifacts(run_dir: Path, run_id: str, staging: Staging) -> list[Row]:
    """Copy a run's exported artifact files to staging; their path, size and SHA-256."""
    root = run_dir / "artifacts"
    files: list[Row] = []
    if not root.is_dir():
        return files
    for dirpath, _dirs, names in os.walk(root, followlinks=False):
        for name in sorted(names):
            local = Path(dirpath, name)
            if local.is_symlink():
                raise StagingError(f"symbolic link refused: {local}", obj=f"run {run_id}")
            rel = local.relative_to(root).as_posix()
            key = artifact_key(run_id, rel)  # refuses unsafe paths
            staging.upload_file(str(local), key)
            files.append(
                {"path": rel, "size": local.stat().st_size, "sha256": file_sha256(str(local))}
            )
    return sorted(files, key=lambda f: f["path"])


def _points(metrics: Any, run_id: str) -> list[Row]:
    if not isinstance(metrics, dict):
        raise StagingError("metrics is not a map of histories", obj=f"run {run_id}")
    points = []
    for key, history in sorted(metrics.items()):
        for p in history if isinstance(history, list) else []:
            points.append(
                {
                    "key": key,
                    "step": int(p.get("step") or 0),
                    "timestamp": int(p.get("timestamp") or 0),
                    "value": float(p["value"]),
                }
            )
    return points


def stage_run(exp_id: str, run_dir: Path, run_id: str, staging: Staging) -> tuple[Row, str]:
    """Translate one exported run into staging; its manifest row (exported) and fingerprint."""
    what = f"run {run_id}"
    raw = run_dir / "run.json"
    mlflow = _read_json(raw, what)
    info = {k: v for k, v in (mlflow.get("info") or {}).items() if not k.startswith("_")}
    info["experiment_id"] = exp_id
    try:
        points = _points(mlflow.get("metrics") or {}, run_id)
    except (KeyError, TypeError, ValueError) as e:
        raise StagingError(f"a metric point is malformed: {e}", obj=what) from None
    artifacts = _artifacts(run_dir, run_id, staging)
    doc = {
        "exported_at": now_ms(),
        "source_tracking_uri_scheme": "mlflow-export-import",
        "info": info,
        "params": mlflow.get("params") or {},
        "tags": mlflow.get("tags") or {},
        "inputs": mlflow.get("inputs") or {},
        "outputs": mlflow.get("outputs") or {},
        "metrics": {
            "keys": sorted({p["key"] for p in points}),
            "points": len(points),
            "links": [],
        },
        "artifacts": artifacts,
    }
    validate_run_doc(doc, run_id)
    staging.write_bytes(run_key(run_id, "metrics.parquet"), metrics_to_parquet(points))
    staging.write_bytes(run_key(run_id, "run.json"), dump_doc(RUN_FORMAT, doc))
    digest = hashlib.sha256(raw.read_bytes())
    for f in artifacts:
        digest.update(f"{f['path']}\0{f['size']}\0{f['sha256']}\0".encode())
    row = {
        "source_run_id": run_id,
        **row_fields(doc),
        "source_fingerprint": "exim:" + digest.hexdigest(),
        "state": EXPORTED,
        "error": None,
        "failed_stage": None,
        "updated_at": now_ms(),
    }
    return row, row["source_fingerprint"]


def stage_directory(root: str, opts: Options) -> tuple[int, int]:
    """Translate an export directory into the staging store (holding its lease); returns
    (runs staged, runs failed). Runs already imported and unchanged are left as they are."""
    staging = open_staging(opts.staging)
    lease = Lease(staging, "import --from-export-import", opts.lease_ttl_s)
    lease.acquire()
    exps_m, runs_m = experiments_table(staging), runs_table(staging)
    staged = failed = 0
    try:
        exps, runs = exps_m.open(), runs_m.open()
        for exp_dir in experiment_dirs(Path(root)):
            exp_doc = _read_json(exp_dir / "experiment.json", f"experiment folder {exp_dir.name}")
            fields = exp_doc.get("experiment") or {}
            exp = SimpleNamespace(
                experiment_id=str(fields.get("experiment_id") or exp_dir.name),
                name=fields.get("name"),
                artifact_location=fields.get("artifact_location"),
                lifecycle_stage=fields.get("lifecycle_stage") or "active",
                creation_time=fields.get("creation_time"),
                last_update_time=fields.get("last_update_time"),
                tags=fields.get("tags") or {},
            )
            if not exp.name:
                raise ConfigError(f"{exp_dir / 'experiment.json'}: the experiment has no name")
            known_exp = exps.get(exp.experiment_id) or {}
            row = export_experiment(exp, staging)
            if known_exp.get("target_experiment_id"):
                row = {
                    **known_exp,
                    **row,
                    "state": known_exp["state"],
                    "target_experiment_id": known_exp["target_experiment_id"],
                }
            exps_m.append([row])
            for run_id in exp_doc.get("runs") or []:
                known = runs.get(run_id)
                try:
                    new, fingerprint = stage_run(
                        exp.experiment_id, _run_dir(exp_dir, str(run_id)), str(run_id), staging
                    )
                except StagingError as e:
                    log.warning("%s", e)
                    base = known or {
                        "source_run_id": str(run_id),
                        "source_experiment_id": exp.experiment_id,
                    }
                    runs_m.append([failed_row(base, STAGE, describe(e))])
                    failed += 1
                    continue
                if (
                    known
                    and known.get("state") in (IMPORTED, TAGGED)
                    and known.get("source_fingerprint") == fingerprint
                ):
                    continue  # imported, and nothing changed in the export
                if known and known.get("target_run_id"):
                    new["target_run_id"] = known["target_run_id"]
                runs_m.append([new])
                staged += 1
            lease.check()
    finally:
        for table in (exps_m, runs_m):
            table.compact()
            table.close()
        lease.release()
    return staged, failed
