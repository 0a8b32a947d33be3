"""Verify one migrated run against its source, field by field, like `rclone check`.

Compares what the migration promises to keep: name, params, tags (user and system, as is),
status, start/end time, lifecycle stage, user, dataset inputs, every metric point (NaN equals
NaN), the remapped parent link, the expected source tags, and the artifact tree (paths, sizes
and, with `--artifacts hash`, the SHA-256 recorded at export time, recomputed from the target).
"""

from __future__ import annotations

import math
import os
from typing import Any

from migrator.config import Options
from migrator.lineage import (
    MAX_KEY_LENGTH,
    MAX_RUN_TAG_VALUE_LENGTH,
    PARENT_RUN_ID_TAG,
    fit,
)
from migrator.manifest import (
    DIFFER,
    MATCH,
    MISSING_ON_SOURCE,
    MISSING_ON_TARGET,
    Row,
    now_ms,
)
from migrator.mlflow_io import (
    artifact_repo,
    client,
    get_run_or_none,
    iter_artifact_files,
    translate_errors,
)
from migrator.stages.tag_runs import link_key, run_model_links, tags_for
from migrator.staging import file_sha256
from migrator.workdirs import Workdir

STAGE = "verify"
_MAX_DETAIL = 6


def verify_row(
    item: Row, outcome: str, diffs: dict[str, list[str]] | None = None, error: str | None = None
) -> Row:
    """A row of `verify.parquet` for a run."""
    diffs = diffs or {}
    return {
        "object_type": "run",
        "source_id": item["source_run_id"],
        "target_id": item.get("target_run_id"),
        "name": item.get("run_name"),
        "outcome": outcome,
        "differences": sorted(diffs),
        "details": "; ".join(f"{k}: {', '.join(v[:_MAX_DETAIL])}" for k, v in sorted(diffs.items()))
        or None,
        "error": error,
        "verified_at": now_ms(),
    }


def _points(uri: str, run_id: str, key: str) -> list[tuple[int, int, bool, float]]:
    """A metric's history in a comparable, sortable form: NaN equals NaN (and sorts apart)."""
    return sorted(
        (m.step, m.timestamp, math.isnan(m.value), 0.0 if math.isnan(m.value) else m.value)
        for m in client(uri).get_metric_history(run_id, key)
    )


def _inputs(run: Any) -> list[tuple[Any, ...]]:
    out = []
    for di in run.inputs.dataset_inputs if run.inputs else []:
        d = di.dataset
        tags = tuple(sorted((t.key, t.value) for t in di.tags))
        out.append((d.name, d.digest, d.source_type, d.source, d.schema, d.profile, tags))
    return sorted(out, key=repr)


def compare_map(
    name: str, want: dict[str, str], have: dict[str, str], diffs: dict[str, list[str]]
) -> None:
    bad = [f"missing {k!r}" for k in sorted(set(want) - set(have))]
    bad += [f"extra {k!r}" for k in sorted(set(have) - set(want))]
    bad += [f"{k!r} differs" for k in sorted(set(want) & set(have)) if want[k] != have[k]]
    if bad:
        diffs[name] = bad


def compare_artifacts(
    opts: Options, files: list[Row] | None, artifact_uri: str, diffs: dict[str, list[str]]
) -> None:
    """The files under `artifact_uri` on the target against those recorded at export (path,
    size and, with `--artifacts hash`, SHA-256)."""
    if opts.verify_artifacts == "none":
        return
    expected = {a["path"]: a for a in files or []}
    repo = artifact_repo(opts.target, artifact_uri)
    found = {f.path: f for f in iter_artifact_files(repo)}
    bad = [f"missing {p!r}" for p in sorted(set(expected) - set(found))]
    bad += [f"extra {p!r}" for p in sorted(set(found) - set(expected))]
    with Workdir("verify") as tmp:
        local = os.path.join(tmp, "f")
        for path in sorted(set(expected) & set(found)):
            want, size = expected[path], found[path].file_size or 0  # REST drops a zero size
            if size != want["size"]:
                bad.append(f"{path!r} size {size} != {want['size']}")
            elif opts.verify_artifacts == "hash":
                repo._download_file(path, local)
                if file_sha256(local) != want["sha256"]:
                    bad.append(f"{path!r} SHA-256 differs")
                os.remove(local)
    if bad:
        diffs["artifacts"] = bad


def _compare_model_links(item: Row, target: Any, diffs: dict[str, list[str]]) -> None:
    """The run's links to logged models, remapped to the target's (`target_model_links`)."""
    want = sorted(map(link_key, item.get("target_model_links") or []))
    have = sorted(run_model_links(target))
    if want != have:
        diffs["model_links"] = [f"{len(want)} links to logged models expected, {len(have)} found"]


def compare_runs(opts: Options, item: Row, source: Any, target: Any) -> dict[str, list[str]]:
    """Every difference between a source run and its target run, by field."""
    diffs: dict[str, list[str]] = {}
    for f in ("run_name", "status", "start_time", "end_time", "lifecycle_stage", "user_id"):
        a, b = getattr(source.info, f), getattr(target.info, f)
        if a != b:
            diffs[f] = [f"{a!r} != {b!r}"]
    compare_map("params", source.data.params, target.data.params, diffs)

    lineage = tags_for(item, opts)
    parent = lineage.pop(PARENT_RUN_ID_TAG, None)
    want = {k: v for k, v in source.data.tags.items() if k != PARENT_RUN_ID_TAG}
    want = fit(want, MAX_RUN_TAG_VALUE_LENGTH)
    want.update(lineage)
    have = {k: v for k, v in target.data.tags.items() if k != PARENT_RUN_ID_TAG}
    compare_map("tags", want, have, diffs)
    if target.data.tags.get(PARENT_RUN_ID_TAG) != parent:
        diffs["parent"] = [f"{target.data.tags.get(PARENT_RUN_ID_TAG)!r} != {parent!r}"]

    if _inputs(source) != _inputs(target):
        diffs["inputs"] = ["dataset inputs differ"]

    keys = set(source.data.metrics) | set(target.data.metrics)
    bad = []
    for key in sorted(keys):
        a = _points(opts.source, source.info.run_id, key) if key in source.data.metrics else []
        b = _points(opts.target, target.info.run_id, key) if key in target.data.metrics else []
        if a != b:
            bad.append(f"{key[:MAX_KEY_LENGTH]!r} ({len(a)} points on source, {len(b)} on target)")
    if bad:
        diffs["metrics"] = bad
    _compare_model_links(item, target, diffs)
    compare_artifacts(opts, item.get("artifact_files"), target.info.artifact_uri, diffs)
    return diffs


def verify_run(item: Row, opts: Options) -> Row:
    """Verify one run; returns its `verify.parquet` row.

    Args:
        item: a manifest row, with the driver's `with_targets` additions (the target parent
            and the target logged models the run must link to).
    """
    obj = f"run {item['source_run_id']}"
    with translate_errors(obj, STAGE):
        source = get_run_or_none(opts.source, item["source_run_id"])
        if source is None:
            return verify_row(item, MISSING_ON_SOURCE)
        target = (
            get_run_or_none(opts.target, item["target_run_id"])
            if item.get("target_run_id")
            else None
        )
        if target is None:
            return verify_row(item, MISSING_ON_TARGET)
        diffs = compare_runs(opts, item, source, target)
    return verify_row(item, DIFFER if diffs else MATCH, diffs)
