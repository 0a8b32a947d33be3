"""What each MLflow server offers: probed once per server before any planning, and the one table
the whole program asks ("does the source have logged models?") instead of catching 404s.

MLflow servers differ by version: MLflow 2 has no logged models (3.0), no aliases before 2.3,
no dataset inputs before 2.4, no traces before 2.14; MLflow 3 servers add evaluation datasets,
scorers, webhooks, workspaces and more release by release. Each `Feature` names one endpoint
and a harmless request to it (a search for one object, a lookup of a name that cannot exist,
a write with no arguments that the server refuses). A server without the endpoint answers 404
(Flask's HTML page, or `ENDPOINT_NOT_FOUND`), 405, 501 or a 503 saying the feature is disabled;
any other answer, a refusal of the probe's own dummy arguments included, means the endpoint is
there. A server that keeps failing (5xx after retries) fails the probe: a feature is never
taken to be absent because a request was unlucky.

A database URI (`sqlite:///…`, `postgresql://…`) is read by this process's own MLflow store,
which has every feature but the REST-only ones.

The driver probes in its preflight (`with_capabilities`) and carries the result in `Options`,
so workers never probe again; `of(opts, uri)` answers for either side (probing, once per
process, only where the driver did not).
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from migrator.errors import ConfigError, TransientError
from migrator.lineage import (
    MAX_EXPERIMENT_TAG_VALUE_LENGTH,
    MAX_EXPERIMENT_TAG_VALUE_LENGTH_BEFORE_3_16,
)
from migrator.mlflow_io import host_creds, translate_errors

if TYPE_CHECKING:
    from migrator.config import Options

log = logging.getLogger(__name__)

LOGGED_MODELS = "logged_models"
ALIASES = "aliases"
DATASET_INPUTS = "dataset_inputs"
BULK_METRIC_HISTORY = "bulk_metric_history"
TRACES = "traces"
TRACES_V2 = "traces_v2"
EVALUATION_DATASETS = "evaluation_datasets"
SCORERS = "scorers"
SCORERS_ACROSS_EXPERIMENTS = "scorers_across_experiments"
WEBHOOKS = "webhooks"
WORKSPACES = "workspaces"
GATEWAY = "gateway"
LABEL_SCHEMAS = "label_schemas"
REVIEW_QUEUES = "review_queues"

#: A name no registered model, run or key carries: the lookups of probes find nothing.
_NOBODY = "mlflow-migrator-capability-probe"


@dataclass(frozen=True)
class Feature:
    """One thing a server may offer, and the request that tells."""

    name: str
    label: str
    since: str
    """The MLflow release that brought it, where known (for messages)."""
    method: str
    path: str
    query: tuple[tuple[str, str], ...] = ()
    body: str | None = None
    moves: bool | None = None
    """A kind of object this migrator moves (True), one it does not move yet (False), or not
    a kind of object at all (None: an endpoint it reads through, e.g. bulk metric history)."""
    rest_only: bool = False
    """Only a REST server has it (a database URI is read by this process's own store)."""
    replaced_by: str = ""
    """A later API of the same kind: this one is spoken of only where a server has it and
    not the later one."""
    present_if: str = ""
    """For a parameter rather than an endpoint: text only an answer of a server that has it
    contains (any other answer, a success included, means it is absent)."""

    @property
    def named(self) -> str:
        """The label, with the release that brought it where known."""
        return f"{self.label} ({self.since}+)" if self.since else self.label


FEATURES: tuple[Feature, ...] = (
    Feature(
        LOGGED_MODELS,
        "logged models",
        "3.0",
        "POST",
        "/api/2.0/mlflow/logged-models/search",
        body='{"max_results": 1}',
        moves=True,
    ),
    Feature(
        ALIASES,
        "registered model aliases",
        "2.3",
        "GET",
        "/api/2.0/mlflow/registered-models/alias",
        query=(("name", _NOBODY), ("alias", _NOBODY)),
        moves=True,
    ),
    Feature(
        DATASET_INPUTS,
        "dataset inputs",
        "2.4",
        "POST",
        "/api/2.0/mlflow/runs/log-inputs",
        body="{}",
        moves=True,
    ),
    Feature(
        BULK_METRIC_HISTORY,
        "bulk metric history",
        "2.0",
        "GET",
        "/ajax-api/2.0/mlflow/metrics/get-history-bulk",
        query=(("run_id", _NOBODY), ("metric_key", _NOBODY)),
        rest_only=True,
    ),
    Feature(
        TRACES_V2,
        "traces (MLflow 2 API)",
        "2.14",
        "GET",
        "/api/2.0/mlflow/traces",
        query=(("experiment_ids", "0"), ("max_results", "1")),
        moves=False,
        replaced_by=TRACES,
    ),
    Feature(
        TRACES,
        "traces",
        "3.0",
        "POST",
        "/api/3.0/mlflow/traces/search",
        body='{"locations": [], "max_results": 1}',
        moves=True,
    ),
    Feature(
        EVALUATION_DATASETS,
        "evaluation datasets",
        "",
        "POST",
        "/api/3.0/mlflow/datasets/search",
        body='{"max_results": 1}',
        moves=True,
    ),
    Feature(
        SCORERS,
        "registered scorers",
        "",
        "GET",
        "/api/3.0/mlflow/scorers/list",
        query=(("experiment_id", "0"),),
        moves=True,
    ),
    Feature(
        SCORERS_ACROSS_EXPERIMENTS,
        "scorers listed across experiments",
        "",
        "GET",
        "/api/3.0/mlflow/scorers/list",
        # A server that takes `experiment_ids` refuses it beside `experiment_id`; one that
        # does not ignores it (and answers experiment 0's scorers, or refuses otherwise), so
        # only that refusal tells: a server mistaken for one that has it would answer an
        # `experiment_ids` listing with nothing and lose every scorer.
        query=(("experiment_id", "0"), ("experiment_ids", "0")),
        rest_only=True,
        present_if="Cannot specify both 'experiment_id' and 'experiment_ids'",
    ),
    Feature(
        WEBHOOKS,
        "webhooks",
        "",
        "GET",
        "/api/2.0/mlflow/webhooks",
        (("max_results", "1"),),
        moves=False,
    ),
    Feature(WORKSPACES, "workspaces", "", "GET", "/api/3.0/mlflow/workspaces", moves=False),
    Feature(
        GATEWAY,
        "AI gateway endpoints",
        "",
        "GET",
        "/api/3.0/mlflow/gateway/endpoints/list",
        moves=False,
    ),
    Feature(
        LABEL_SCHEMAS,
        "label schemas",
        "",
        "GET",
        "/api/3.0/mlflow/label-schemas/list",
        moves=False,
    ),
    Feature(
        REVIEW_QUEUES,
        "review queues",
        "",
        "GET",
        "/api/3.0/mlflow/review-queues/list",
        moves=False,
    ),
)
BY_NAME = {f.name: f for f in FEATURES}


@dataclass(frozen=True)
class ServerCapabilities:
    """What one server offers, as probed."""

    uri: str
    version: str
    """The server's MLflow version (`GET /version`), or "" where it does not say."""
    present: frozenset[str]
    denied: frozenset[str] = frozenset()
    """There, but refused to the credentials in use (401/403): nothing of them can be read or
    written, and the plan and summary say so."""

    def has(self, feature: str) -> bool:
        return feature in self.present

    def lacks(self) -> list[Feature]:
        return [f for f in FEATURES if f.name not in self.present | self.denied]

    def why_not(self, feature: str) -> str:
        """Why a kind cannot be read or written here, for a `skipped` row."""
        if feature in self.denied:
            return f"{self.describe()} refuses these credentials for it (HTTP 401/403)"
        return f"{self.describe()} does not have it"

    @property
    def major(self) -> int | None:
        head = self.version.split(".", 1)[0]
        return int(head) if head.isdigit() else None

    def at_least(self, *release: int) -> bool:
        """Whether the server says it is this MLflow release or a later one (`3.16.0rc1` is
        3.16; a server that does not say is not)."""
        said = re.match(r"(\d+)\.(\d+)", self.version)
        return said is not None and tuple(map(int, said.groups())) >= release

    def describe(self) -> str:
        """`MLflow 2.16.2`, or what the probes make of a server that does not say."""
        if self.version:
            return f"MLflow {self.version}"
        return "MLflow 3" if self.has(LOGGED_MODELS) else "MLflow 2 (version not reported)"


# ---- probing ------------------------------------------------------------------------------

#: Answers that mean "no such endpoint here".
_ABSENT_CODES = {"ENDPOINT_NOT_FOUND", "NOT_IMPLEMENTED", "FEATURE_DISABLED"}
_RETRIED_STATUSES = {408, 429, 500, 502, 503, 504}
PROBE_ATTEMPTS = 4


#: A probe's answer: the endpoint is there, is not, or refuses these credentials.
PRESENT, ABSENT, DENIED = "present", "absent", "denied"


def classify(status: int, body: str) -> str | None:
    """What a probe's answer says: `PRESENT`, `ABSENT`, `DENIED` (401/403: the endpoint is
    there, not for this user), or None (a failure worth asking again)."""
    code = ""
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict):
            code = str(parsed.get("error_code") or "")
    except ValueError:
        parsed = None
    if code in _ABSENT_CODES or status in (405, 501):
        return ABSENT
    if status == 404:  # a JSON refusal of the probe's arguments, or no such route
        return PRESENT if parsed is not None and code != "" else ABSENT
    if status == 503 and "disabled" in body.lower():
        return ABSENT
    if status in (401, 403):
        return DENIED
    if status in _RETRIED_STATUSES:
        return None
    return PRESENT


def request(
    uri: str, method: str, path: str, query: Iterable[tuple[str, str]], body: str | None
) -> tuple[int, str]:
    """One request through MLflow's session (its credentials adapter and create-aware retries),
    with 503 left to `classify` (a disabled feature answers 503 at once)."""
    from mlflow.utils.rest_utils import http_request

    kwargs: dict[str, Any] = {"params": list(query)}
    if body is not None:
        kwargs["json"] = json.loads(body)
    with translate_errors(f"server {uri}", "probe"):
        resp = http_request(
            host_creds(uri),
            path,
            method,
            retry_codes=(408, 429, 500, 502, 504),
            raise_on_status=False,
            **kwargs,
        )
    return resp.status_code, resp.text


def _probe_feature(uri: str, feature: Feature) -> str:
    """Whether the server has this feature (`PRESENT`, `ABSENT` or `DENIED`).

    Raises:
        TransientError: the server kept failing the probe.
    """
    for attempt in range(1, PROBE_ATTEMPTS + 1):
        status, body = request(uri, feature.method, feature.path, feature.query, feature.body)
        found = classify(status, body)
        if found == PRESENT and feature.present_if not in body:
            return ABSENT
        if found is not None:
            return found
        if attempt < PROBE_ATTEMPTS:
            time.sleep(2**attempt)
    raise TransientError(
        f"{feature.label} probe answered HTTP {status} {PROBE_ATTEMPTS} times",
        obj=f"server {uri}",
        stage="probe",
    )


def server_version(uri: str) -> str:
    """The MLflow version a server reports (`GET /version`), or ""."""
    status, body = request(uri, "GET", "/version", (), None)
    text = body.strip()
    if status == 200 and text and len(text) < 40 and text[0].isdigit():
        return text
    return ""


def is_rest(uri: str) -> bool:
    return urlparse(uri).scheme in ("http", "https")


@functools.lru_cache(maxsize=8)
def probe(uri: str) -> ServerCapabilities:
    """Ask a server what it offers (once per process and URI).

    Raises:
        TransientError: the server kept failing a probe.
    """
    if not is_rest(uri):
        import mlflow

        present = frozenset(f.name for f in FEATURES if not f.rest_only)
        return ServerCapabilities(uri, mlflow.__version__, present)
    # Asked at once: a preflight waits for every answer of both servers.
    with ThreadPoolExecutor(len(FEATURES) + 1, thread_name_prefix="probe") as pool:
        asked_version = pool.submit(server_version, uri)
        answers = {f.name: pool.submit(_probe_feature, uri, f) for f in FEATURES}
        version = asked_version.result()
        found = {name: answer.result() for name, answer in answers.items()}
    caps = ServerCapabilities(
        uri,
        version,
        frozenset(k for k, v in found.items() if v == PRESENT),
        frozenset(k for k, v in found.items() if v == DENIED),
    )
    log.debug("%s: %s, lacks %s", uri, caps.describe(), [f.name for f in caps.lacks()])
    return caps


def with_capabilities(opts: Options, *uris: str) -> Options:
    """`opts` carrying the capabilities of these servers (probed now), for every process.

    Raises:
        ConfigError: a server kept failing the probes, or the target is not MLflow 3.
    """
    found = {c.uri: c for c in opts.capabilities}
    for uri in uris:
        if uri and uri not in found:
            try:
                found[uri] = probe(uri)
            except TransientError as e:
                raise ConfigError(f"could not ask {uri} what it offers: {e.message}") from None
    if opts.target in found and not found[opts.target].has(LOGGED_MODELS):
        raise ConfigError(
            f"target {opts.target} is {found[opts.target].describe()}: targets must be "
            "MLflow 3 servers (sources may be MLflow 2)"
        )
    return opts.replace(capabilities=tuple(found.values()))


def probed(opts: Options, uri: str) -> ServerCapabilities | None:
    """The capabilities of one side as the driver probed them, if it did."""
    return next((c for c in opts.capabilities if c.uri == uri), None)


def of(opts: Options, uri: str) -> ServerCapabilities:
    """The capabilities of one side, as the driver probed them (or probed here, once)."""
    return probed(opts, uri) or probe(uri)


def source_has(opts: Options, feature: str) -> bool:
    return of(opts, opts.source).has(feature)


def experiment_tag_value_limit(opts: Options) -> int:
    """The longest experiment tag value the target takes (a longer one is cut to it, as every
    tag is cut to the target's limit): 20,000 characters from MLflow 3.16, 5,000 before and
    where the target does not say its version. Options without the target's probe (never a
    command's: its preflight probes) get this package's MLflow's limit."""
    target = probed(opts, opts.target)
    if target is None or target.at_least(3, 16):
        return MAX_EXPERIMENT_TAG_VALUE_LENGTH
    return MAX_EXPERIMENT_TAG_VALUE_LENGTH_BEFORE_3_16


def notes(opts: Options, *, source: bool = True, target: bool = True) -> list[str]:
    """What the servers' capabilities mean for this migration, one line each, said once in
    the plan and the summary: what each server is, and the kinds the source does not have
    (nothing of them to move). (What the source has and does not move: `inventory`.)"""
    lines = []
    if source and opts.source:
        src = of(opts, opts.source)
        kinds = [f for f in FEATURES if f.moves is not None and not f.replaced_by]
        lacks = [f.named for f in kinds if f in src.lacks()]
        denied = [f.label for f in kinds if f.name in src.denied]
        lines.append(f"source: {src.describe()}")
        if lacks:
            lines.append(f"  not on the source (nothing to migrate): {', '.join(lacks)}")
        if denied:
            lines.append(
                "  refused to these credentials (HTTP 401/403; not migrated: give the user "
                f"access to migrate them): {', '.join(denied)}"
            )
    if target and opts.target:
        lines.append(f"target: {of(opts, opts.target).describe()}")
    return lines
