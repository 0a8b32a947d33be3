"""What else the source holds, that this migrator does not move: counted, each with one line
saying why, in the plan and the summary. Nothing is left behind without a word.

Each kind is counted through its list endpoint where the source has it (`capabilities`);
a kind the source lacks is not counted (the capability notes say so).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from migrator.capabilities import (
    GATEWAY,
    LABEL_SCHEMAS,
    REVIEW_QUEUES,
    TRACES,
    TRACES_V2,
    WEBHOOKS,
    WORKSPACES,
    is_rest,
    request,
    source_has,
)
from migrator.config import Options


def _count(
    uri: str,
    path: str,
    field: str,
    query: tuple[tuple[str, str], ...] = (),
    keep: Callable[[dict[str, object]], bool] = lambda item: True,
) -> int | None:
    """Items of a list endpoint, page after page; None when the server does not answer it."""
    n, token = 0, ""
    for _ in range(10_000):  # pages of 500: the most every list takes (MLflow 2's traces)
        params = (*query, ("max_results", "500"), *((("page_token", token),) if token else ()))
        status, body = request(uri, "GET", path, params, None)
        if status != 200:
            return None
        doc = json.loads(body or "{}")
        n += sum(1 for item in doc.get(field) or [] if keep(item))
        token = doc.get("next_page_token") or ""
        if not token:
            break
    return n


#: Requests in flight at once for a kind listed per experiment.
PER_EXPERIMENT_THREADS = 4


def _not_default(item: dict[str, object]) -> bool:
    """Every experiment gets a default label schema of its own: not the user's."""
    return not item.get("is_default")


def _per_experiment(
    path: str,
    field: str,
    param: str = "experiment_id",
    keep: Callable[[dict[str, object]], bool] = lambda item: True,
) -> Callable[[Options, Iterable[str]], int | None]:
    def count(opts: Options, experiment_ids: Iterable[str]) -> int | None:
        """A few experiments at a time: a server of thousands takes a request for each."""

        def one(experiment_id: str) -> int | None:
            return _count(opts.source, path, field, ((param, experiment_id),), keep)

        with ThreadPoolExecutor(PER_EXPERIMENT_THREADS, thread_name_prefix="inventory") as pool:
            counts = list(pool.map(one, experiment_ids))
        return None if None in counts else sum(n or 0 for n in counts)

    return count


def _global(path: str, field: str) -> Callable[[Options, Iterable[str]], int | None]:
    return lambda opts, _experiments: _count(opts.source, path, field)


@dataclass(frozen=True)
class Unmoved:
    """A kind of object this migrator does not move, how it is counted, and why not."""

    label: str
    feature: str | None
    count: Callable[[Options, Iterable[str]], int | None]
    why: str
    unless: str | None = None
    """Not counted where the source has this (a later API that moves: MLflow 3 traces)."""


UNMOVED: tuple[Unmoved, ...] = (
    Unmoved(
        "traces of MLflow 2",
        TRACES_V2,
        _per_experiment("/api/2.0/mlflow/traces", "traces", "experiment_ids"),
        "MLflow 2 keeps spans in an artifact of its own format; traces move from MLflow 3 servers",
        unless=TRACES,
    ),
    Unmoved(
        "webhooks",
        WEBHOOKS,
        _global("/api/2.0/mlflow/webhooks", "webhooks"),
        "their signing secrets cannot be read back: create them on the target",
    ),
    Unmoved(
        "workspaces",
        WORKSPACES,
        _global("/api/3.0/mlflow/workspaces", "workspaces"),
        "objects of the default workspace move; other workspaces are not migrated yet",
    ),
    Unmoved(
        "AI gateway endpoints",
        GATEWAY,
        _global("/api/3.0/mlflow/gateway/endpoints/list", "endpoints"),
        "their provider keys cannot be read back: create them on the target (judges on them "
        "need them there)",
    ),
    Unmoved(
        "AI gateway model definitions",
        GATEWAY,
        _global("/api/3.0/mlflow/gateway/model-definitions/list", "model_definitions"),
        "they go with the gateway endpoints and their secrets",
    ),
    Unmoved(
        "label schemas",
        LABEL_SCHEMAS,
        _per_experiment("/api/3.0/mlflow/label-schemas/list", "label_schemas", keep=_not_default),
        "not migrated yet (the default one of each experiment is made anew on the target)",
    ),
    Unmoved(
        "review queues",
        REVIEW_QUEUES,
        _per_experiment("/api/3.0/mlflow/review-queues/list", "review_queues"),
        "not migrated yet: they hold reviewers' work in progress",
    ),
    Unmoved(
        "MCP servers",
        None,
        _global("/api/3.0/mlflow/mcp-servers", "mcp_servers"),
        "not migrated yet",
    ),
    Unmoved(
        "users and permissions",
        None,
        _global("/api/2.0/mlflow/users/list", "users"),
        "passwords cannot be read through MLflow's API: create them on the target",
    ),
)


def unmoved_lines(opts: Options, experiment_ids: Iterable[str]) -> list[str]:
    """One line per kind the source holds that does not move, with its count and why."""
    if not is_rest(opts.source):  # a database URI: counted through REST list endpoints only
        return []
    experiment_ids = list(experiment_ids)
    lines = []
    for kind in UNMOVED:
        if kind.feature is not None and not source_has(opts, kind.feature):
            continue
        if kind.unless is not None and source_has(opts, kind.unless):
            continue
        n = kind.count(opts, experiment_ids)
        if n is None:  # the server does not answer that list (another app, another version)
            continue
        lines.append(f"  {kind.label:30} {n:>7}  {kind.why}")
    return ["not migrated by this version (count on the source, why):", *lines] if lines else []
