"""Everything the stages ask of an MLflow server: clients, paged searches, chunked writes.

Clients are made once per process and tracking URI (HTTP sessions are reused across runs).
MLflow's own exceptions are translated here into the migrator's: a server that is down or
overloaded is transient, anything the server refuses on its merits is permanent.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

from migrator.errors import ConfigError, PermanentError, TransientError
from migrator.lineage import (
    DUPLICATE_OF_TAG,
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_TAGS_PER_BATCH,
    SOURCE_RUN_ID_TAG,
)

log = logging.getLogger(__name__)

PAGE_SIZE = 1000
_SCHEMES = (
    "http",
    "https",
    "sqlite",
    "postgresql",
    "mysql",
    "mysql+pymysql",
    "mssql",
    "databricks",
)

# Quicker-failing clients than MLflow's defaults (7 retries, 120 s timeout), unless the user set
# them. Retries apply to idempotent requests only (`migrator.transport`): 5 retries at backoff
# factor 1 (1, 2, 4, 8, 16 s, plus jitter) ride out a server that is away for ~30 s.
CLIENT_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
}


def apply_client_env() -> None:
    """Client settings and the create-aware retry policy, once per process before any call."""
    from migrator import transport

    for k, v in CLIENT_ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)
    transport.install()


@functools.lru_cache(maxsize=8)
def client(uri: str) -> Any:
    """The MlflowClient for a tracking URI, one per process."""
    apply_client_env()
    from mlflow import MlflowClient

    if urlparse(uri).scheme != "databricks":
        _skip_databricks_headers()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@functools.lru_cache(maxsize=1)
def _skip_databricks_headers() -> None:
    """Drop MLflow's Databricks request-header provider in this process. Before every request
    it asks whether it runs in a Databricks notebook or job, by imports that fail (pyspark,
    dbruntime) and so are searched for again each time: measured at ~12% of a worker's CPU.
    Only for servers that are not Databricks'."""
    from mlflow.tracking.request_header import registry
    from mlflow.tracking.request_header.databricks_request_header_provider import (
        DatabricksRequestHeaderProvider,
    )

    providers = registry._request_header_provider_registry._registry
    providers[:] = [p for p in providers if not isinstance(p, DatabricksRequestHeaderProvider)]


def tracking_store(uri: str) -> Any:
    """The tracking store behind a URI's client (its REST store: the calls `MlflowClient` does
    not offer, or offers only through the global tracking URI)."""
    return client(uri)._tracking_client.store


def host_creds(uri: str) -> Any:
    """MLflow's host credentials of a REST tracking server, for endpoints its client lacks."""
    return tracking_store(uri).get_host_creds()


def check_tracking_uri(uri: str, role: str) -> None:
    """Fail fast, with one clear line, on a bad or unreachable tracking URI.

    Raises:
        ConfigError: the URI is malformed, of an unknown scheme, or the server does not answer.
    """
    parsed = urlparse(uri)
    scheme = parsed.scheme
    if scheme == "sqlite" and role == "source" and parsed.path not in ("", "/:memory:"):
        path = parsed.path[1:]  # SQLAlchemy: sqlite:///rel.db, sqlite:////abs/path.db
        if not os.path.isfile(path):  # MLflow would make a new, empty database there
            raise ConfigError(f"source database {path} does not exist (from {uri})")
    if scheme not in _SCHEMES:
        raise ConfigError(
            f"{role} tracking URI {uri!r} has unsupported scheme {scheme!r} "
            "(use http(s)://, sqlite:///, postgresql://, mysql://, databricks://)"
        )
    if role == "source" and scheme not in ("http", "https", "databricks"):
        check_source_schema(uri)
    if scheme in ("http", "https"):
        import requests

        try:
            resp = requests.get(uri.rstrip("/") + "/health", timeout=10)
        except requests.RequestException as e:
            raise ConfigError(f"{role} server {uri} is not reachable: {type(e).__name__}") from None
        if resp.status_code >= 400:
            raise ConfigError(f"{role} server {uri} answered HTTP {resp.status_code} to /health")
    try:
        with translate_errors(role):
            client(uri).search_experiments(max_results=1)
    except (TransientError, PermanentError) as e:
        raise ConfigError(f"{role} tracking URI {uri} is not usable: {e.message}") from None


def check_source_schema(uri: str) -> None:
    """Refuse a source database whose schema is not this MLflow client's: MLflow's store would
    upgrade it in place when it opens it (an MLflow 2 database becomes an MLflow 3 one), and a
    migration never writes to its source.

    Raises:
        ConfigError: the database has another schema revision, or none (not MLflow's).
    """
    import sqlalchemy
    from mlflow.store.db.utils import _get_latest_schema_revision, _get_schema_version

    engine = sqlalchemy.create_engine(uri)
    try:
        found = _get_schema_version(engine)
    except sqlalchemy.exc.SQLAlchemyError as e:
        raise ConfigError(f"source database {uri} cannot be read: {type(e).__name__}") from None
    finally:
        engine.dispose()
    wanted = _get_latest_schema_revision()
    if found != wanted:
        raise ConfigError(
            f"source database {uri} has MLflow schema revision {found or 'none'}, this "
            f"client's is {wanted}: opening it here would upgrade it in place. Serve it with its "
            "own MLflow (`mlflow server --backend-store-uri …`) and migrate from that URL"
        )


def answers(uri: str, grace_s: float = 60.0, pause_s: float = 5.0) -> bool:
    """Whether a tracking server answers `/health` within `grace_s` (asked every `pause_s`);
    a database URI always counts as answering."""
    import time

    import requests

    if urlparse(uri).scheme not in ("http", "https"):
        return True
    deadline = time.monotonic() + grace_s
    while True:
        try:
            if requests.get(uri.rstrip("/") + "/health", timeout=5).status_code < 500:
                return True
        except requests.RequestException:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause_s)


_TRANSIENT_CODES = {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "INTERNAL_ERROR"}
# Two writers racing to insert the same row (e.g. one dataset logged by two runs at once):
# the server answers BAD_REQUEST, but the next attempt finds the row there and succeeds.
_RACE = re.compile(r"UniqueViolation|IntegrityError|Duplicate entry|UNIQUE constraint failed")
# A server with more requests in flight than its database pool has connections (SQLAlchemy's
# 5 + 10 by default) waits 30 s for one, then answers BAD_REQUEST: nothing was done, and the
# request succeeds once the crowd has passed (seen at `--concurrency 32` on PostgreSQL).
_POOL_EXHAUSTED = re.compile(r"QueuePool limit of size \d+ overflow -?\d+ reached")


@contextmanager
def translate_errors(obj: str, stage: str = "") -> Iterator[None]:
    """Turn MLflow and HTTP exceptions into TransientError / PermanentError naming `obj`."""
    import requests
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as e:
        transient = (
            e.error_code in _TRANSIENT_CODES
            or bool(_RACE.search(e.message))
            or bool(_POOL_EXHAUSTED.search(e.message))
        )
        kind = TransientError if transient else PermanentError
        # A server's answer (RestException) starts with its code already: said once.
        said = (
            e.message
            if e.message.startswith(f"{e.error_code}:")
            else f"{e.error_code}: {e.message}"
        )
        raise kind(said, obj=obj, stage=stage) from e
    except (requests.ConnectionError, requests.Timeout) as e:
        raise TransientError(f"{type(e).__name__}: {e}", obj=obj, stage=stage) from e


def iter_experiments(uri: str, view_type: int) -> Iterator[Any]:
    """Every experiment of a server, one page at a time."""
    token = None
    while True:
        page = client(uri).search_experiments(
            view_type=view_type, max_results=PAGE_SIZE, page_token=token
        )
        yield from page
        token = page.token
        if not token:
            return


def iter_runs(
    uri: str,
    experiment_ids: Sequence[str],
    view_type: int,
    filter_string: str = "",
    page_size: int = PAGE_SIZE,
) -> Iterator[Any]:
    """Every run of the given experiments, oldest first, one page at a time."""
    token = None
    while True:
        page = client(uri).search_runs(
            experiment_ids=list(experiment_ids),
            filter_string=filter_string,
            run_view_type=view_type,
            max_results=page_size,
            order_by=["attributes.start_time ASC", "attributes.run_id ASC"],
            page_token=token,
        )
        yield from page
        token = page.token
        if not token:
            return


def artifact_sizes(tracking_uri: str, artifact_uri: str) -> list[tuple[str, int]]:
    """(path, size) of every artifact file of a run, in name order. An empty file's size
    comes back absent over REST (proto3 drops zeros): it counts as 0."""
    repo = artifact_repo(tracking_uri, artifact_uri)
    return [(f.path, f.file_size or 0) for f in iter_artifact_files(repo)]


def run_fingerprint(run: Any, artifacts: list[tuple[str, int]]) -> str:
    """A digest of a run's visible state (status, end time, name, tags, params, latest metric
    values, artifact paths and sizes): equal digests mean nothing changed since the export."""
    body = {
        "status": run.info.status,
        "end_time": run.info.end_time,
        "run_name": run.info.run_name,
        "lifecycle_stage": run.info.lifecycle_stage,
        "tags": run.data.tags,
        "params": run.data.params,
        "metrics": {k: repr(v) for k, v in run.data.metrics.items()},
        "artifacts": sorted([p, s] for p, s in artifacts),
    }
    return fingerprint(body)


def fingerprint(body: Any) -> str:
    """A digest of a JSON-able description of an object as the source showed it: a later run
    that computes the same digest knows the object has not changed."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:32]


def or_none(call: Any, *args: Any) -> Any | None:
    """`call(*args)`, or None when the server says the object does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return call(*args)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def get_run_or_none(uri: str, run_id: str) -> Any | None:
    """The run, or None when the server says it does not exist."""
    return or_none(client(uri).get_run, run_id)


def get_experiment_or_none(uri: str, experiment_id: str) -> Any | None:
    """The experiment, or None when the server says it does not exist."""
    return or_none(client(uri).get_experiment, experiment_id)


BULK_HISTORY_MAX = 25_000  # points per call (the server's cap); 100 run ids per call
BULK_HISTORY_RUNS = 100


def metric_history_bulk(uri: str, run_ids: Sequence[str], key: str) -> dict[str, list[Any]] | None:
    """One key's full history for many runs in one call (the UI's bulk endpoint; ask
    `capabilities.BULK_METRIC_HISTORY` first).

    Returns None when the answer may be cut at the server's cap (or more runs are asked for
    than one call takes): the caller then reads run by run.

    Raises:
        TransientError: the server did not answer the call.
    """
    if len(run_ids) > BULK_HISTORY_RUNS:
        return None
    from mlflow.entities import Metric
    from mlflow.utils.rest_utils import http_request

    params = [("run_id", r) for r in run_ids]
    params += [("metric_key", key), ("max_results", str(BULK_HISTORY_MAX))]
    resp = http_request(
        host_creds(uri), "/ajax-api/2.0/mlflow/metrics/get-history-bulk", "GET", params=params
    )
    if resp.status_code != 200:
        raise TransientError(f"bulk metric history answered HTTP {resp.status_code}", obj=key)
    found = resp.json().get("metrics", [])
    if len(found) >= BULK_HISTORY_MAX:
        return None
    out: dict[str, list[Any]] = {r: [] for r in run_ids}
    for m in found:
        out[m["run_id"]].append(
            Metric(m["key"], float(m["value"]), int(m["timestamp"]), int(m.get("step", 0)))
        )
    return out


def search_runs_by_id(uri: str, experiment_ids: Sequence[str], run_ids: Sequence[str]) -> list[Any]:
    """The given runs (deleted ones too) in one search: ids, infos, params, tags, metrics."""
    from mlflow.entities import ViewType

    quoted = ", ".join(f"'{r}'" for r in run_ids)
    return list(
        client(uri).search_runs(
            experiment_ids=list(experiment_ids),
            filter_string=f"attributes.run_id IN ({quoted})",
            run_view_type=ViewType.ALL,
            max_results=max(len(run_ids), 1),
        )
    )


def find_runs_by_source_id(uri: str, experiment_id: str, source_run_id: str) -> list[Any]:
    """Every target run of an experiment (deleted ones too) that carries this source run id
    as its lineage tag: normally none or one; more are duplicates for `once.adopt`."""
    from mlflow.entities import ViewType

    runs = client(uri).search_runs(
        experiment_ids=[experiment_id],
        filter_string=matching(f"tags.`{SOURCE_RUN_ID_TAG}`", source_run_id),
        run_view_type=ViewType.ALL,
        max_results=100,
    )
    return [r for r in runs if r.data.tags.get(SOURCE_RUN_ID_TAG) == source_run_id]


def discard_run(uri: str, run: Any, kept_id: str) -> None:
    """Turn a duplicate target run into a deleted one that no longer carries its lineage tag
    (tagged `mlflow_exim.duplicate_of` = the run kept instead)."""
    c = client(uri)
    run_id = run.info.run_id
    if run.info.lifecycle_stage != "active":
        c.restore_run(run_id)  # MLflow refuses tag changes on a deleted run
    c.set_tag(run_id, DUPLICATE_OF_TAG, kept_id)
    or_none(c.delete_tag, run_id, SOURCE_RUN_ID_TAG)
    c.delete_run(run_id)


#: Experiments one search of runs, logged models or traces names at most: a server of
#: thousands of experiments, most of them small or empty, costs a request per hundred, not one
#: each.
EXPERIMENTS_PER_SEARCH = 100


def experiment_chunks(experiment_ids: Sequence[str]) -> Iterator[list[str]]:
    """The ids, `EXPERIMENTS_PER_SEARCH` at a time."""
    ids = list(experiment_ids)
    for i in range(0, len(ids), EXPERIMENTS_PER_SEARCH):
        yield ids[i : i + EXPERIMENTS_PER_SEARCH]


def scorers_across(uri: str, experiment_ids: Sequence[str]) -> Iterator[Any]:
    """The registered scorers (latest version of each) of these experiments, one listing per
    hundred, from a server that lists across experiments (MLflow's `ListScorers` with
    `experiment_ids`: `capabilities.SCORERS_ACROSS_EXPERIMENTS`; its client has no call for
    it). Each names its experiment; deleted ones have none, as one by one."""
    from mlflow.entities.scorer import ScorerVersion
    from mlflow.protos.service_pb2 import ListScorers
    from mlflow.utils.proto_json_utils import message_to_json

    store = tracking_store(uri)
    for chunk in experiment_chunks(experiment_ids):
        answer = store._call_endpoint(
            ListScorers,
            message_to_json(ListScorers(experiment_ids=chunk)),
            endpoint="/api/3.0/mlflow/scorers/list",
        )
        yield from (ScorerVersion.from_proto(s) for s in answer.scorers)


def has_logged_models(uri: str, experiment_ids: Sequence[str]) -> bool:
    """Whether any of these experiments holds an MLflow 3 logged model (one small search per
    hundred experiments)."""
    return any(
        client(uri).search_logged_models(experiment_ids=chunk, max_results=1)
        for chunk in experiment_chunks(experiment_ids)
    )


def iter_logged_models(
    uri: str, experiment_ids: Sequence[str], filter_string: str = ""
) -> Iterator[Any]:
    """Every logged model of the given experiments, one page at a time."""
    token = None
    while True:
        page = client(uri).search_logged_models(
            experiment_ids=list(experiment_ids),
            filter_string=filter_string or None,
            max_results=100,
            page_token=token,
        )
        yield from page
        token = page.token
        if not token:
            return


_UNQUOTABLE = re.compile(r"['\\]")


def matching(field: str, value: str) -> str:
    """A search-filter clause that selects `value` of `field` (`name`, ``tags.`k` ``).

    MLflow's filter strings have no escapes: a literal is the text between its quotes. So a
    value with a single quote or a backslash is searched with `LIKE`, each such character
    standing as `_` (any one character): the clause then selects a few more objects, never
    fewer, and every caller checks the exact value of what it gets back.
    """
    if not _UNQUOTABLE.search(value):
        return f"{field} = '{value}'"
    return f"{field} LIKE '{_UNQUOTABLE.sub('_', value)}'"


def find_logged_models_by_tag(uri: str, experiment_id: str, key: str, value: str) -> list[Any]:
    """Every logged model of an experiment that carries this tag value (exact, checked)."""
    found = iter_logged_models(uri, [experiment_id], matching(f"tags.`{key}`", value))
    return [m for m in found if m.tags.get(key) == value]


def find_logged_model_by_tag(uri: str, experiment_id: str, key: str, value: str) -> Any | None:
    """The oldest logged model of an experiment that carries this tag, if any."""
    found = find_logged_models_by_tag(uri, experiment_id, key, value)
    return min(found, key=oldest_first) if found else None


def oldest_first(lm: Any) -> tuple[Any, str]:
    """Sort key of logged models: the oldest first, then by id (every caller agrees)."""
    return (lm.creation_timestamp, str(lm.model_id))


def discard_logged_model(uri: str, lm: Any, key: str, kept_id: str) -> None:
    """Turn a duplicate target logged model into a deleted one without its lineage tag."""
    c = client(uri)
    c.set_logged_model_tags(lm.model_id, {DUPLICATE_OF_TAG: kept_id})
    or_none(c.delete_logged_model_tag, lm.model_id, key)
    c.delete_logged_model(lm.model_id)


#: The tag that makes a registered model a prompt (MLflow's prompt registry, 2.21+).
PROMPT_TAG = "mlflow.prompt.is_prompt"


def search_registry(uri: str, filter_string: str = "", page_token: str | None = None) -> Any:
    """One page of the registry's registered models as the server lists them.

    MLflow 3's client adds `tag.mlflow.prompt.is_prompt != 'true'` to every search; an MLflow 2
    server takes that as "has the tag, with another value" and answers with no model at all. So
    the search goes to the registry store as asked: servers that have prompts (2.21+) leave
    them out unless the filter asks for them.
    """
    store = client(uri)._get_registry_client().store
    return store.search_registered_models(filter_string or None, PAGE_SIZE, None, page_token)


def iter_datasets(uri: str) -> Iterator[Any]:
    """Every evaluation dataset of a server, one page at a time."""
    store = tracking_store(uri)
    token = None
    while True:
        page = store.search_datasets(max_results=PAGE_SIZE, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def iter_registry(uri: str, filter_string: str = "") -> Iterator[Any]:
    """Every registered model a registry search lists, one page at a time."""
    token = None
    while True:
        page = search_registry(uri, filter_string, token)
        yield from page
        token = page.token
        if not token:
            return


def iter_registered_models(uri: str, filter_string: str = "") -> Iterator[Any]:
    """Every registered model of a server (prompts are not models), one page at a time."""
    return (m for m in iter_registry(uri, filter_string) if not m._is_prompt())


def iter_prompts(uri: str, filter_string: str = "") -> Iterator[Any]:
    """Every prompt of a server's prompt registry (none before MLflow 2.21)."""
    prompts = f"tags.`{PROMPT_TAG}` = 'true'"
    return iter_registry(uri, f"{filter_string} AND {prompts}" if filter_string else prompts)


@functools.lru_cache(maxsize=8)
def prompt_registry(uri: str) -> PromptRegistry:
    """The `PromptRegistry` of a tracking URI, one per process."""
    return PromptRegistry(uri)


def model_versions(uri: str, name: str) -> list[Any]:
    """Every (not deleted) version of a registered model, lowest number first."""
    return versions_of_model(client(uri), name)


class PromptRegistry:
    """The prompt registry, through the registry methods of `MlflowClient` the model stages
    call. Prompts are registered models (and versions) tagged `mlflow.prompt.is_prompt`, which
    MLflow 3's client refuses to handle as models and its searches leave out; the registry
    store takes them as they are, and this adds the tag and the filter that say "prompt"."""

    def __init__(self, uri: str) -> None:
        self.store = client(uri)._get_registry_client().store

    def get_registered_model(self, name: str) -> Any:
        return self.store.get_registered_model(name)

    def create_registered_model(
        self, name: str, tags: dict[str, str] | None = None, description: str | None = None
    ) -> Any:
        from mlflow.entities.model_registry import RegisteredModelTag

        tags = {**(tags or {}), PROMPT_TAG: "true"}
        return self.store.create_registered_model(
            name, [RegisteredModelTag(k, v) for k, v in tags.items()], description
        )

    def update_registered_model(self, name: str, description: str) -> Any:
        return self.store.update_registered_model(name, description)

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None:
        from mlflow.entities.model_registry import RegisteredModelTag

        self.store.set_registered_model_tag(name, RegisteredModelTag(key, value))

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        self.store.set_registered_model_alias(name, alias, version)

    def create_model_version(
        self,
        name: str,
        source: str,
        run_id: str | None = None,
        tags: dict[str, str] | None = None,
        run_link: str | None = None,
        description: str | None = None,
        await_creation_for: int = 0,
        model_id: str | None = None,
    ) -> Any:
        from mlflow.entities.model_registry import ModelVersionTag

        tags = {**(tags or {}), PROMPT_TAG: "true"}
        return self.store.create_model_version(
            name,
            source,
            run_id,
            [ModelVersionTag(k, v) for k, v in tags.items()],
            run_link,
            description,
        )

    def get_model_version(self, name: str, version: str) -> Any:
        return self.store.get_model_version(name, version)

    def update_model_version(self, name: str, version: str, description: str) -> Any:
        return self.store.update_model_version(name, version, description)

    def delete_model_version(self, name: str, version: str) -> None:
        self.store.delete_model_version(name, version)

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        from mlflow.entities.model_registry import ModelVersionTag

        self.store.set_model_version_tag(name, version, ModelVersionTag(key, value))

    def delete_model_version_tag(self, name: str, version: str, key: str) -> None:
        self.store.delete_model_version_tag(name, version, key)

    def search_model_versions(
        self, filter_string: str, max_results: int = 10_000, page_token: str | None = None
    ) -> Any:
        wanted = f"{filter_string} AND tags.`{PROMPT_TAG}` = 'true'"
        return self.store.search_model_versions(wanted, max_results, None, page_token)


def versions_of_model(c: Any, name: str) -> list[Any]:
    """`model_versions` through a given client."""
    token, out = None, list[Any]()
    while True:
        page = c.search_model_versions(matching("name", name), max_results=10_000, page_token=token)
        out.extend(v for v in page if v.name == name)
        token = page.token
        if not token:
            return sorted(out, key=lambda v: int(v.version))


def log_batch_chunked(
    uri: str,
    run_id: str,
    *,
    metrics: Sequence[Any] = (),
    params: Sequence[Any] = (),
    tags: Sequence[Any] = (),
) -> int:
    """Write metrics, params and tags in as few `log_batch` calls as MLflow's limits allow.

    Each call carries at most 1,000 entities, of which at most 100 params and tags.
    Returns the number of calls made.
    """
    c = client(uri)
    calls = 0
    small = [("p", p) for p in params] + [("t", t) for t in tags]
    m_i = 0
    s_i = 0
    while m_i < len(metrics) or s_i < len(small):
        chunk_small = small[s_i : s_i + MAX_PARAMS_TAGS_PER_BATCH]
        s_i += len(chunk_small)
        room = MAX_METRICS_PER_BATCH - len(chunk_small)
        chunk_metrics = list(metrics[m_i : m_i + room])
        m_i += len(chunk_metrics)
        _log_batch(
            c,
            run_id,
            chunk_metrics,
            [x for kind, x in chunk_small if kind == "p"],
            [x for kind, x in chunk_small if kind == "t"],
        )
        calls += 1
    return calls


def _log_batch(c: Any, run_id: str, metrics: list[Any], params: list[Any], tags: list[Any]) -> None:
    """One `log_batch`. To a server, the request body is written by `batch_json`: MLflow's
    client turns every point into a protobuf message and that into indented JSON, which took
    a fifth of a worker's CPU per run; the body and the answer are the same."""
    from mlflow.protos.service_pb2 import LogBatch
    from mlflow.store.tracking.rest_store import RestStore

    store = getattr(getattr(c, "_tracking_client", None), "store", None)
    if isinstance(store, RestStore):
        store._call_endpoint(LogBatch, batch_json(run_id, metrics, params, tags))
    else:
        c.log_batch(run_id, metrics=metrics, params=params, tags=tags, synchronous=True)


def _double(v: float) -> float | str:
    """A double as protobuf's JSON writes it: the non-finite ones as strings."""
    v = float(v)
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "Infinity" if v > 0 else "-Infinity"
    return v


_METRIC_LINKS = ("model_id", "dataset_name", "dataset_digest", "run_id")


def batch_json(
    run_id: str, metrics: Sequence[Any], params: Sequence[Any], tags: Sequence[Any]
) -> str:
    """The body of a `log_batch` request, as MLflow's `message_to_json(LogBatch(...))` has it
    (int64 fields as numbers, non-finite doubles as strings, unset fields left out)."""
    import json

    def metric(m: Any) -> dict[str, Any]:
        d = {
            "key": m.key,
            "value": _double(m.value),
            "timestamp": int(m.timestamp),
            "step": int(m.step or 0),
        }
        for k in _METRIC_LINKS:
            if v := getattr(m, k, None):
                d[k] = v
        return d

    body: dict[str, Any] = {"run_id": run_id}
    if metrics:
        body["metrics"] = [metric(m) for m in metrics]
    if params:
        body["params"] = [{"key": p.key, "value": p.value} for p in params]
    if tags:
        body["tags"] = [{"key": t.key, "value": t.value} for t in tags]
    return json.dumps(body, separators=(",", ":"), allow_nan=False)


def tag_key_loggable(key: str) -> bool:
    """Whether `log_batch`/`set_tag` accept this tag key. Older servers stored keys that only
    `create_run` still takes (e.g. `k'ey`): such a tag can be set when a run is created, never
    later."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_tag_name

    try:
        _validate_tag_name(key)
        return True
    except MlflowException:
        return False


def artifact_repo(tracking_uri: str, artifact_uri: str) -> Any:
    """The artifact repository behind a run's artifact URI (no extra `get_run` calls)."""
    apply_client_env()
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return get_artifact_repository(artifact_uri, tracking_uri=tracking_uri)


def iter_artifact_files(repo: Any, path: str = "") -> Iterator[Any]:
    """Every file (FileInfo) under `path`, depth first, in name order."""
    for info in repo.list_artifacts(path or None):
        if info.is_dir:
            yield from iter_artifact_files(repo, info.path)
        else:
            yield info
