"""What is in scope on the source: the one place that applies `--experiments`, `--models`,
`--include-deleted` and `--run-start-time`, and leaves out the kinds the source does not have
(`migrator.capabilities`). The migration, `plan` and `verify` (which reports source objects
that never moved) all enumerate through here, so they can never disagree.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from migrator import mlflow_io, traces_io
from migrator.capabilities import (
    EVALUATION_DATASETS,
    LOGGED_MODELS,
    SCORERS,
    SCORERS_ACROSS_EXPERIMENTS,
    TRACES,
    source_has,
)
from migrator.config import Options
from migrator.manifest import FAILED, Row
from migrator.registry import MODELS, RegistryKind


def matches(patterns: tuple[str, ...], object_id: str, name: str) -> bool:
    """True when no filter is set, or a pattern equals the id or name, or globs the name."""
    if not patterns:
        return True
    return any(p in (object_id, name) or fnmatch.fnmatchcase(name, p) for p in patterns)


def staged_experiments(opts: Options, rows: Iterable[Row]) -> list[Row]:
    """Experiments in scope as the manifest knows them (`import`, `verify`, `plan` of an
    import: no source to list)."""
    return [
        r for r in rows if matches(opts.experiments, r["source_experiment_id"], r.get("name") or "")
    ]


def moving_experiments(exp_rows: Iterable[Row]) -> dict[str, Row]:
    """The experiments in scope that did not fail, by source id: the runs, logged models and
    other objects of a failed one stay where they are (it has no target to go to)."""
    return {e["source_experiment_id"]: e for e in exp_rows if e.get("state") != FAILED}


def view_type(opts: Options) -> int:
    """MLflow's view type for experiments and runs: deleted ones only with --include-deleted."""
    from mlflow.entities import ViewType

    return int(ViewType.ALL if opts.include_deleted else ViewType.ACTIVE_ONLY)


def run_filter(opts: Options) -> str:
    """The search filter for runs (`--run-start-time`), or none."""
    if opts.run_start_time is None:
        return ""
    return f"attributes.start_time >= {int(opts.run_start_time)}"


def source_experiments(opts: Options) -> Iterator[Any]:
    """Every source experiment in scope, paged."""
    for exp in mlflow_io.iter_experiments(opts.source, view_type(opts)):
        if matches(opts.experiments, exp.experiment_id, exp.name):
            yield exp


#: Runs per page of the enumeration: a page (the server's answer and its Run objects) is what
#: the driver holds of the source at a time, so it is kept small; a request per 200 runs is
#: nothing next to the runs' own.
RUN_PAGE = 200


def source_runs(opts: Options, experiment_ids: Sequence[str]) -> Iterator[Any]:
    """Every run in scope of these source experiments (its `info.experiment_id` says whose),
    paged, a hundred experiments per search, oldest first in each: a server of thousands of
    experiments, most of them small, costs a search per hundred, not one each."""
    for chunk in mlflow_io.experiment_chunks(experiment_ids):
        yield from mlflow_io.iter_runs(
            opts.source, chunk, view_type(opts), run_filter(opts), RUN_PAGE
        )


def source_logged_models(opts: Options, experiment_ids: Sequence[str]) -> Iterator[Any]:
    """Every logged model of these source experiments (its `experiment_id` says whose), paged,
    a hundred experiments per search; none on a server without them (MLflow 2)."""
    if source_has(opts, LOGGED_MODELS):
        for chunk in mlflow_io.experiment_chunks(experiment_ids):
            yield from mlflow_io.iter_logged_models(opts.source, chunk)


def holds_logged_models(opts: Options, experiment_ids: list[str]) -> bool:
    """Whether any of these source experiments holds a logged model (none before MLflow 3):
    the runs then read in full (`Options.runs_read_in_full`)."""
    return source_has(opts, LOGGED_MODELS) and mlflow_io.has_logged_models(
        opts.source, experiment_ids
    )


def lifecycle_stages(experiments: Mapping[str, Row]) -> dict[str, str]:
    """Experiment rows by source id, as the id → lifecycle stage that listings per experiment
    take (`source_traces`, `source_scorers`)."""
    return {exp_id: exp.get("lifecycle_stage") or "" for exp_id, exp in experiments.items()}


def source_traces(opts: Options, experiments: Mapping[str, str]) -> Iterator[Any]:
    """Every trace (its TraceInfo; its `experiment_id` says whose) of these source experiments
    (id → lifecycle stage), oldest first in each search of a hundred experiments, paged; none
    on a server without MLflow 3's traces API, nor in a deleted experiment (the server refuses
    to list them: restore the experiment to migrate them)."""
    if source_has(opts, TRACES):
        active = [e for e, stage in experiments.items() if stage != "deleted"]
        for chunk in mlflow_io.experiment_chunks(active):
            yield from traces_io.iter_trace_infos(opts.source, chunk)


def source_datasets(opts: Options) -> Iterator[Any]:
    """Every evaluation dataset on the source (datasets are linked to experiments, not in
    them: all move), paged; none on a server without them."""
    if source_has(opts, EVALUATION_DATASETS):
        yield from mlflow_io.iter_datasets(opts.source)


def source_scorers(opts: Options, experiments: Mapping[str, str]) -> Iterator[tuple[str, Any]]:
    """Every registered scorer (its latest version) of these source experiments (id →
    lifecycle stage), with the id of its experiment; none in a deleted one (as for traces).
    One listing per hundred experiments where the server lists across experiments, else one
    each."""
    if not source_has(opts, SCORERS):
        return
    active = [e for e, stage in experiments.items() if stage != "deleted"]
    if source_has(opts, SCORERS_ACROSS_EXPERIMENTS):
        asked = set(active)  # a server that listed more than it was asked is not believed
        for sv in mlflow_io.scorers_across(opts.source, active):
            if str(sv.experiment_id) in asked:
                yield str(sv.experiment_id), sv
        return
    store = mlflow_io.tracking_store(opts.source)
    for exp_id in active:
        yield from ((exp_id, sv) for sv in store.list_scorers(exp_id))


def source_models(opts: Options) -> Iterator[Any]:
    """Every registered model in scope on the source, paged."""
    return source_registry(opts, MODELS)


def source_registry(opts: Options, kind: RegistryKind) -> Iterator[Any]:
    """Every registry object of a kind in scope on the source, paged: registered models by
    `--models`, prompts all (none before MLflow 2.21)."""
    for rm in kind.search(opts.source):
        if kind.prompts or matches(opts.models, rm.name, rm.name):
            yield rm
