"""Two-sided verify: what a walk over the manifest cannot see (rclone `check`'s other sides).

- **duplicate**: a target object that carries a migrated source id (its lineage tag) but is not
  the one the manifest names, or a copy left half-discarded (`mlflow_exim.duplicate_of`, still
  active). Found by searching each migrated target experiment for runs and logged models that
  carry a lineage tag.
- **not_migrated**: a source object in scope (same scope as the migration) that has no manifest
  row at all: it never moved.

Both are verify rows, and both make `verify` exit 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from migrator import mlflow_io, scope
from migrator.config import Options
from migrator.ledger import Column, Ledger
from migrator.lineage import DUPLICATE_OF_TAG, SOURCE_MODEL_ID_TAG, SOURCE_RUN_ID_TAG
from migrator.manifest import Row, now_ms
from migrator.registry import RegistryKind

DUPLICATE, NOT_MIGRATED = "duplicate", "not_migrated"
#: A manifest's rows by source id: the driver's ledger, or a dict (tests).
Rows = Mapping[str, Row] | Ledger


def _row(
    kind: str, outcome: str, source_id: str, target_id: str | None, name: Any, why: str
) -> Row:
    return {
        "object_type": kind,
        "source_id": source_id,
        "target_id": target_id,
        "name": name,
        "outcome": outcome,
        "differences": [],
        "details": why,
        "verified_at": now_ms(),
    }


def duplicates(
    kind: str, found: Iterable[tuple[str, str, Any]], manifest: Mapping[Any, Any]
) -> Iterator[Row]:
    """Rows for target objects `(target id, source id, name)` carrying a source id the
    manifest knows (`manifest`: source id → the target id it names) but not named by it."""
    for target_id, source_id, name in found:
        if source_id not in manifest:
            continue  # another migration's object, or one outside this scope
        named = manifest[source_id]
        if target_id != named:
            why = f"carries source id {source_id}; the manifest names {named or 'none'}"
            yield _row(kind, DUPLICATE, source_id, target_id, name, why)


def never_moved(
    kind: str, source: Iterable[tuple[str, Any]], known: Mapping[str, Any] | Ledger
) -> Iterator[Row]:
    """Rows for source objects `(source id, name)` in scope that have no manifest row."""
    for source_id, name in source:
        if source_id not in known:
            yield _row(kind, NOT_MIGRATED, source_id, None, name, "in scope, never migrated")


def _tagged_runs(uri: str, experiment_id: str) -> Iterator[tuple[str, str, Any]]:
    """Target runs of an experiment (deleted too) carrying a source run id, and active runs
    left marked as a discarded duplicate."""
    from mlflow.entities import ViewType

    for run in mlflow_io.iter_runs(
        uri, [experiment_id], ViewType.ALL, f"tags.`{SOURCE_RUN_ID_TAG}` LIKE '%'"
    ):
        yield run.info.run_id, run.data.tags[SOURCE_RUN_ID_TAG], run.info.run_name
    for run in mlflow_io.iter_runs(
        uri, [experiment_id], ViewType.ACTIVE_ONLY, f"tags.`{DUPLICATE_OF_TAG}` LIKE '%'"
    ):
        if SOURCE_RUN_ID_TAG not in run.data.tags:
            yield run.info.run_id, run.data.tags.get(SOURCE_RUN_ID_TAG, ""), run.info.run_name


def _tagged_logged_models(uri: str, experiment_id: str) -> Iterator[tuple[str, str, Any]]:
    for lm in mlflow_io.iter_logged_models(uri, [experiment_id]):
        if SOURCE_MODEL_ID_TAG in lm.tags:
            yield lm.model_id, lm.tags[SOURCE_MODEL_ID_TAG], lm.name


def reconcile(
    opts: Options,
    exps: Rows,
    runs: Rows,
    logged: Rows,
    registries: Sequence[tuple[RegistryKind, Rows]],
    objects: Sequence[Any] = (),
) -> list[Row]:
    """Duplicates on the target and source objects that never moved, for the experiments
    in scope (`exps`: the experiments manifest) and the objects the manifests hold
    (`registries`: each registry kind's rows; `objects`: the `ObjectDriver`s, which list
    their source objects themselves)."""
    out: list[Row] = []
    in_scope = {
        str(k): e
        for k, e in exps.items()
        if scope.matches(opts.experiments, str(k), e.get("name") or "")
    }
    targets = sorted(
        {e["target_experiment_id"] for e in in_scope.values() if e.get("target_experiment_id")}
    )
    run_targets = Column(runs, "target_run_id")
    model_targets = Column(logged, "target_model_id")
    with mlflow_io.translate_errors("target", "verify"):
        for exp_id in targets:
            out += duplicates("run", _tagged_runs(opts.target, exp_id), run_targets)
            out += duplicates(
                "logged_model", _tagged_logged_models(opts.target, exp_id), model_targets
            )
    with mlflow_io.translate_errors("source", "verify"):
        source_exps = list(scope.source_experiments(opts))
        out += never_moved("experiment", ((e.experiment_id, e.name) for e in source_exps), exps)
        # an experiment that never moved is reported above; its runs follow it
        moved = {
            e.experiment_id: {"lifecycle_stage": e.lifecycle_stage}
            for e in source_exps
            if e.experiment_id in exps
        }
        # listed as the migration lists them: a hundred experiments per search
        listed_runs = scope.source_runs(opts, list(moved))
        out += never_moved("run", ((r.info.run_id, r.info.run_name) for r in listed_runs), runs)
        listed_models = scope.source_logged_models(opts, list(moved))
        out += never_moved("logged_model", ((m.model_id, m.name) for m in listed_models), logged)
        for d in objects:  # `ObjectDriver`s: traces, evaluation datasets, scorers
            listed = ((f[d.key], f.get("name")) for _, f in d.source_objects(moved))
            out += never_moved(d.object_type, listed, d.rows)
        for kind, rows in registries:
            found = ((m.name, m.name) for m in scope.source_registry(opts, kind))
            out += never_moved(kind.object_type, found, rows)
    return out
