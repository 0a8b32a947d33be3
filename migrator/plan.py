"""`plan` and `--dry-run`: what a command would do, from the source and the manifests.

Experiments with their runs by next step, and the registered models in scope with their
versions.

Reads only: the source server (or, for `import`, the manifests) and the target's experiment
names. Nothing is written anywhere, not even the manifests' compaction.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from migrator import capabilities, inventory, mlflow_io, scope
from migrator.config import Options
from migrator.ledger import Ledger
from migrator.manifest import (
    IMPORTED,
    ManifestTable,
    Row,
    experiments_table,
    models_table,
    runs_table,
)
from migrator.pipeline import preflight
from migrator.registry import PROMPTS
from migrator.staging import open_staging
from migrator.states import next_step


@dataclass
class ExperimentPlan:
    source_id: str
    name: str
    lifecycle_stage: str
    on_target: bool | None
    runs: Counter[str] = field(default_factory=Counter)


@dataclass
class Plan:
    command: str
    experiments: list[ExperimentPlan] = field(default_factory=list)
    models: Counter[str] = field(default_factory=Counter)
    """Registered models in scope by what is left to do: import, or nothing (`done`)."""
    versions: int = 0
    inventory: Counter[str] = field(default_factory=Counter)
    """Other kinds in scope on the source, by count (logged models, traces, prompts, …)."""
    servers: list[str] = field(default_factory=list)
    """What each server is, lacks and offers beyond what moves (`capabilities.notes`)."""

    def render(self) -> str:
        total: Counter[str] = Counter()
        lines = [f"{self.command} (dry run): nothing was written", ""]
        lines.append(f"  {'experiment':40} {'target':8} runs by next step")
        for e in self.experiments:
            total.update(e.runs)
            where = {None: "?", True: "exists", False: "new"}[e.on_target]
            deleted = " (deleted)" if e.lifecycle_stage == "deleted" else ""
            steps = ", ".join(f"{v} {k}" for k, v in sorted(e.runs.items())) or "no runs"
            lines.append(f"  {(e.name + deleted)[:40]:40} {where:8} {steps}")
        lines.append("")
        lines.append(
            f"  total: {len(self.experiments)} experiments, {sum(total.values())} runs ("
            + (", ".join(f"{v} {k}" for k, v in sorted(total.items())) or "none")
            + ")"
        )
        for kind, n in self.inventory.items():
            lines.append(f"  {kind}: {n}")
        if self.models:
            lines.append(
                f"  models: {sum(self.models.values())} registered models, {self.versions} "
                "versions (" + ", ".join(f"{v} {k}" for k, v in sorted(self.models.items())) + ")"
            )
        lines += [f"  {line}" for line in self.servers]
        return "\n".join(lines)


def _known_runs(opts: Options) -> ManifestTable | None:
    """The runs manifest, read into its ledger without folding the journal (nothing is
    written); None when there is no staging store yet."""
    try:
        table = runs_table(open_staging(opts.staging))
        table.open(fold=False)
    except Exception:
        return None
    return table


def _known_models(opts: Options) -> dict[str, Row]:
    try:
        return models_table(open_staging(opts.staging)).load()
    except Exception:
        return {}


def run_plan(opts: Options, command: str) -> Plan:
    """Enumerate what `command` would do with these options; writes nothing."""
    plan = Plan(command)
    from_source = command in ("migrate", "export", "plan")
    with_target = bool(opts.target) and command != "export"
    opts = preflight(opts, source=from_source, target=with_target, staging=False)
    plan.servers = capabilities.notes(opts, source=from_source, target=with_target)
    if from_source:
        experiments = (
            e.experiment_id
            for e in scope.source_experiments(opts)
            if e.lifecycle_stage != "deleted"
        )
        plan.servers += inventory.unmoved_lines(opts, experiments)
    table = _known_runs(opts)
    try:
        return _plan(opts, command, plan, from_source, table.ledger if table else None)
    finally:
        if table is not None:
            table.close()


def _plan(opts: Options, command: str, plan: Plan, from_source: bool, known: Ledger | None) -> Plan:
    def step(run_id: str) -> str:
        return next_step(known.get(run_id) if known is not None else None)

    target = mlflow_io.client(opts.target) if opts.target and command != "export" else None

    def on_target(name: str) -> bool | None:
        return None if target is None else target.get_experiment_by_name(name) is not None

    if not from_source:
        staging = open_staging(opts.staging)
        for e in scope.staged_experiments(opts, experiments_table(staging).load().values()):
            ep = ExperimentPlan(
                e["source_experiment_id"], e["name"], e["lifecycle_stage"], on_target(e["name"])
            )
            for r in known.rows(groups=[ep.source_id]) if known is not None else ():
                ep.runs[next_step(r)] += 1
            plan.experiments.append(ep)
        return plan

    known_models = _known_models(opts)
    for rm in scope.source_models(opts):
        done = (known_models.get(rm.name) or {}).get("state") == IMPORTED
        plan.models["done" if done else "import"] += 1
        plan.versions += len(mlflow_io.model_versions(opts.source, rm.name))
    inv = plan.inventory
    by_id: dict[str, ExperimentPlan] = {}
    for exp in scope.source_experiments(opts):
        ep = ExperimentPlan(exp.experiment_id, exp.name, exp.lifecycle_stage, on_target(exp.name))
        by_id[exp.experiment_id] = ep
        plan.experiments.append(ep)
    for run in scope.source_runs(opts, list(by_id)):
        by_id[run.info.experiment_id].runs[step(run.info.run_id)] += 1
    inv["logged models"] += sum(1 for _ in scope.source_logged_models(opts, list(by_id)))
    stages = {k: ep.lifecycle_stage for k, ep in by_id.items()}
    for info in scope.source_traces(opts, stages):
        inv["traces"] += 1
        inv["assessments"] += len(info.assessments or [])
    inv["scorers"] += sum(1 for _ in scope.source_scorers(opts, stages))
    for prompt in scope.source_registry(opts, PROMPTS):
        plan.inventory["prompts"] += 1
        plan.inventory["prompt versions"] += len(PROMPTS.versions(opts.source, prompt.name))
    plan.inventory["evaluation datasets"] += sum(1 for _ in scope.source_datasets(opts))
    plan.inventory = Counter({k: n for k, n in plan.inventory.items() if n})
    return plan
