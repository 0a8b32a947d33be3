"""The driver's part for the registry — registered models, and prompts: which move, in jobs
through the fan-out, and their manifests (`models.parquet` + `model_versions.parquet`;
`prompt_registry.parquet` + `prompts.parquet`). One class, one instance per `RegistryKind`.

Models go after the runs and logged models their versions point at (a version waits for one
still moving instead of being registered from a copy of its files); prompts after the
experiments their links name, and before the traces that link to their versions.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from migrator import scope
from migrator.fanout import InlineExecutor, Job, Stage, failed_row, jobs_of
from migrator.faults import crash_point
from migrator.manifest import (
    FAILED,
    IMPORTED,
    MODEL_VERSIONS_SCHEMA,
    MODELS_SCHEMA,
    ManifestTable,
    Row,
)
from migrator.registry import RegistryKind
from migrator.scope import matches
from migrator.stages import models as models_stage
from migrator.stages.export_models import export_model
from migrator.stages.model_sources import source_ref
from migrator.stages.verify_models import verify_model
from migrator.staging import Staging
from migrator.states import failed_at

if TYPE_CHECKING:
    from migrator.logged_model_driver import LoggedModelDriver
    from migrator.pipeline import Migration
    from migrator.run_driver import RunDriver


def registry_tables(staging: Staging, kind: RegistryKind) -> tuple[ManifestTable, ManifestTable]:
    """The manifests of a kind: one row per object (`name`), one per version (`name, version`)."""
    return (
        ManifestTable(staging, kind.models_table, MODELS_SCHEMA, "name"),
        ManifestTable(
            staging, kind.versions_table, MODEL_VERSIONS_SCHEMA, ("name", "version"), group="name"
        ),
    )


class RegistryDriver:
    """One kind of registry object of one migration: the manifest rows, and the stages."""

    def __init__(self, m: Migration, kind: RegistryKind) -> None:
        self.m = m
        self.kind = kind
        self.models_m, self.versions_m = registry_tables(m.staging, kind)
        self.models = self.models_m.open()
        #: Version rows, grouped by name (an object's versions are read together).
        self.versions = self.versions_m.open()
        self.export = Stage(
            "export",
            functools.partial(export_model, kind=kind),
            inputs=("known_model", "known_versions"),
        )
        self.import_ = Stage(
            "import", functools.partial(models_stage.import_model, kind=kind), inputs=("refs",)
        )
        self.verify_stage = Stage("verify", functools.partial(verify_model, kind=kind))

    @property
    def tables(self) -> tuple[ManifestTable, ManifestTable]:
        return self.models_m, self.versions_m

    def in_scope(self) -> list[Row]:
        """Rows of the objects in scope (`--models` names registered models; prompts all)."""
        if self.kind.prompts:
            return list(self.models.rows())
        patterns = self.m.opts.models
        return [r for r in self.models.rows() if matches(patterns, r["name"], r["name"])]

    def versions_of(self, name: str) -> list[Row]:
        return sorted(self.versions.rows(groups=[name]), key=lambda v: v["version"])

    def record(self, row: Row) -> None:
        """A model's row from a task, and its version rows (`_versions`: both the task's input
        and its output)."""
        crash_point("model-done")
        versions = row.pop("_versions", None) or []
        if row["state"] == FAILED:  # the model failed: its versions that were not done with it
            versions = [
                v
                if v.get("state") in (IMPORTED, FAILED)
                else failed_row(v, row["failed_stage"], row["error"])
                for v in versions or self.versions_of(row["name"])
            ]
        # Rows the export found unchanged are the manifest's own: nothing to write again.
        if self.models.get(row["name"]) != row:
            self.models_m.append([row])
        known = {v["version"]: v for v in self.versions_of(row["name"])}
        self.versions_m.append([v for v in versions if known.get(v["version"]) != v])

    def items(self, rows: Iterable[Row]) -> Iterator[Row]:
        """Each model row with its version rows (`_versions`) and the target ids they point at
        (`refs`: runs, logged models, experiments), as its import and its verification take it."""
        m = self.m
        experiments = {
            k: e["target_experiment_id"] for k, e in m.exps.items() if e.get("target_experiment_id")
        }
        for row in rows:
            versions = self.versions_of(row["name"])
            refs = {**self._refs(versions), "experiments": experiments}
            yield {**row, "_versions": versions, "refs": refs}

    def _refs(self, versions: list[Row]) -> Row:
        """The target runs and logged models versions point at, and (`pending`) the ones still
        moving (`Migration.link`): a version waits for those rather than being registered from
        a copy of its files."""
        m = self.m
        runs: dict[str, str] = {}
        models: dict[str, str] = {}
        pending: set[str] = set()

        def refer(of: RunDriver | LoggedModelDriver, source_id: str, to: dict[str, str]) -> None:
            link = m.link(of, source_id)
            if link.target:
                to[source_id] = link.target
            elif link.waits:
                pending.add(source_id)

        for v in versions:
            kind, ref, _ = source_ref(v.get("source") or "", v.get("run_id"))
            for rid in {v.get("run_id"), ref if kind == "run" else None} - {None}:
                refer(m.runs, rid, runs)  # type: ignore[arg-type]
            for mid in {v.get("model_id"), ref if kind == "model" else None} - {None}:
                refer(m.logged, mid, models)  # type: ignore[arg-type]
        return {"runs": runs, "models": models, "pending": sorted(pending)}

    def transfer(self, do_export: bool, do_import: bool) -> None:
        """Objects in scope: export each (a task per few), then import those with anything
        left to do, each object's versions in order in one task."""
        m, opts = self.m, self.m.opts
        size = max(1, opts.batch_size // 4)

        def on_done(job: Job, results: list[Row]) -> list[Job]:
            for r in results:
                self.record(r)
            if job.stage is self.import_:
                m.progress.advance(self.kind.label + "s", results)
            m.checkpoint(results)
            return []

        if do_export:
            items = (
                {
                    "name": rm.name,
                    "known_model": self.models.get(rm.name),
                    "known_versions": {v["version"]: v for v in self.versions_of(rm.name)},
                }
                for rm in scope.source_registry(opts, self.kind)
            )
            # In this process: mostly a few reads per model, so a re-run that finds nothing
            # changed never starts the cluster.
            InlineExecutor().run(jobs_of(self.export, items, size), opts, on_done)
        if do_import:
            todo = [
                row
                for row in self.in_scope()
                if not failed_at(row, "export")
                and (
                    row["state"] != IMPORTED
                    or any(v["state"] != IMPORTED for v in self.versions_of(row["name"]))
                )
            ]
            m.executor.run(
                jobs_of(self.import_, self.items(todo), size, opts.concurrency), opts, on_done
            )

    def verify_items(self) -> Iterator[Row]:
        return self.items(r for r in self.in_scope() if r["state"] != FAILED)

    def final_rows(self) -> tuple[list[Row], list[Row]]:
        """The rows of the objects in scope, and of their versions (for the summary), each
        naming its object (`object`)."""
        k = self.kind
        models = [{**r, "object": f"{k.label} {r['name']!r}"} for r in self.in_scope()]
        versions = [
            {**v, "object": f"{k.version_label} {v['name']!r} {v['version']}"}
            for r in models
            for v in self.versions_of(r["name"])
        ]
        return models, versions
