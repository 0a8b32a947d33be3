"""The capability table (migrator.capabilities): how answers are read, probing a fake server of
each MLflow generation over real HTTP, and what the table makes of it."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from migrator import capabilities as caps
from migrator.capabilities import (
    ALIASES,
    BULK_METRIC_HISTORY,
    DATASET_INPUTS,
    FEATURES,
    LOGGED_MODELS,
    SCORERS,
    SCORERS_ACROSS_EXPERIMENTS,
    TRACES,
    WORKSPACES,
    classify,
)
from migrator.config import Options
from migrator.errors import ConfigError

FLASK_404 = "<!doctype html>\n<title>404 Not Found</title>\n<h1>Not Found</h1>"


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, "{}", "present"),
        (400, '{"error_code": "INVALID_PARAMETER_VALUE", "message": "Missing run_id"}', "present"),
        (404, '{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such alias"}', "present"),
        (401, '{"error_code": "UNAUTHENTICATED"}', "denied"),
        (403, "Permission denied", "denied"),
        (404, FLASK_404, "absent"),
        (404, '{"error_code": "ENDPOINT_NOT_FOUND", "message": "No API route"}', "absent"),
        (404, "{}", "absent"),
        (405, "Method Not Allowed", "absent"),
        (501, '{"error_code": "NOT_IMPLEMENTED"}', "absent"),
        (400, '{"error_code": "NOT_IMPLEMENTED", "message": "file store"}', "absent"),
        (503, "Endpoint: /api/3.0/mlflow/workspaces disabled because the server is running "
              "without workspaces support", "absent"),
        (503, "Service Unavailable", None),
        (500, '{"error_code": "INTERNAL_ERROR"}', None),
        (502, "bad gateway", None),
        (429, "slow down", None),
    ],
)
def test_classify(status: int, body: str, expected: str | None) -> None:
    assert classify(status, body) == expected


Answer = Callable[[str, str], tuple[int, str]]


def mlflow2(method: str, path: str) -> tuple[int, str]:
    """An MLflow 2.16 server as it answers the probes (measured on a real one)."""
    if path == "/version":
        return 200, "2.16.2"
    if path.startswith("/api/2.0/mlflow/registered-models/alias"):
        return 400, '{"error_code": "INVALID_PARAMETER_VALUE", "message": "alias not found"}'
    if path.startswith("/api/2.0/mlflow/runs/log-inputs"):
        return 400, '{"error_code": "INVALID_PARAMETER_VALUE", "message": "Missing run_id"}'
    if path.startswith("/ajax-api/2.0/mlflow/metrics/get-history-bulk"):
        return 200, '{"metrics": []}'
    if path.startswith("/api/2.0/mlflow/traces"):
        return 200, "{}"
    return 404, FLASK_404


def mlflow3(method: str, path: str) -> tuple[int, str]:
    """An MLflow 3.17 server without workspaces enabled (its refusal of both scorer listing
    parameters at once as a real 3.17.2 server words it)."""
    if path == "/version":
        return 200, "3.17.2"
    if path.startswith("/api/3.0/mlflow/workspaces"):
        return 503, "Endpoint: /api/3.0/mlflow/workspaces disabled because ..."
    if path.startswith("/api/3.0/mlflow/scorers/list?") and "experiment_ids=" in path:
        if "experiment_id=" in path:
            return 400, (
                '{"error_code": "INVALID_PARAMETER_VALUE", "message": "Cannot specify both '
                "'experiment_id' and 'experiment_ids'. Use 'experiment_ids' to scope the query "
                "to multiple experiments, or 'experiment_id' to scope it to a single "
                'experiment."}'
            )
    return 200, "{}"


def earlier_mlflow3(method: str, path: str) -> tuple[int, str]:
    """An MLflow 3 server from before scorers were listed across experiments: it lists one
    experiment's and ignores `experiment_ids`."""
    return mlflow3(method, path.replace("experiment_ids=", "ignored="))


class FakeServer:
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                outer.requests.append((self.command, self.path))
                status, body = outer.answer(self.command, self.path)
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _reply

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Answer], FakeServer]]:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setattr(caps.time, "sleep", lambda s: None)
    caps.probe.cache_clear()
    servers: list[FakeServer] = []

    def make(answer: Answer) -> FakeServer:
        servers.append(FakeServer(answer))
        return servers[-1]

    yield make
    for s in servers:
        s.close()
    caps.probe.cache_clear()


def test_an_mlflow2_server_lacks_what_mlflow3_brought(serve: Callable[[Answer], FakeServer]) -> None:
    server = serve(mlflow2)
    found = caps.probe(server.url)
    assert found.version == "2.16.2" and found.major == 2
    assert found.has(ALIASES) and found.has(DATASET_INPUTS) and found.has(BULK_METRIC_HISTORY)
    assert not found.has(LOGGED_MODELS) and not found.has(TRACES)
    assert found.describe() == "MLflow 2.16.2"
    # Every probe is asked once, and none of them writes: the writes carry no arguments.
    asked = [p for _, p in server.requests]
    assert len(asked) == len(set(asked)) == len(FEATURES) + 1


def test_an_mlflow3_server_has_everything_but_a_disabled_feature(
    serve: Callable[[Answer], FakeServer],
) -> None:
    found = caps.probe(serve(mlflow3).url)
    assert found.major == 3
    assert {f.name for f in found.lacks()} == {WORKSPACES}


def test_scorers_are_listed_across_experiments_only_where_the_server_says_it_can(
    serve: Callable[[Answer], FakeServer],
) -> None:
    """A server that ignores `experiment_ids` would answer a listing by it with nothing (or
    experiment 0's): only the refusal of both parameters at once tells it takes them."""
    assert caps.probe(serve(mlflow3).url).has(SCORERS_ACROSS_EXPERIMENTS)
    earlier = caps.probe(serve(earlier_mlflow3).url)
    assert earlier.has(SCORERS) and not earlier.has(SCORERS_ACROSS_EXPERIMENTS)


def test_a_probe_is_asked_once_per_process(serve: Callable[[Answer], FakeServer]) -> None:
    server = serve(mlflow3)
    caps.probe(server.url)
    n = len(server.requests)
    assert caps.probe(server.url) is caps.probe(server.url)
    assert len(server.requests) == n


def test_a_flaky_answer_is_asked_again_never_taken_as_absent(
    serve: Callable[[Answer], FakeServer],
) -> None:
    failures = {"n": 0}

    def flaky(method: str, path: str) -> tuple[int, str]:
        if "logged-models" in path and failures["n"] < 2:
            failures["n"] += 1
            return 503, "Service Unavailable"
        return mlflow3(method, path)

    assert caps.probe(serve(flaky).url).has(LOGGED_MODELS)
    assert failures["n"] == 2


def test_a_server_that_keeps_failing_is_a_clear_error(serve: Callable[[Answer], FakeServer]) -> None:
    def broken(method: str, path: str) -> tuple[int, str]:
        return (500, '{"error_code": "INTERNAL_ERROR"}') if "traces" in path else mlflow3(method, path)

    url = serve(broken).url
    with pytest.raises(ConfigError, match=r"could not ask .* what it offers: traces .*probe answered HTTP 500 4 times"):
        caps.with_capabilities(Options(source=url), url)


def test_an_mlflow2_target_is_refused_by_name(serve: Callable[[Answer], FakeServer]) -> None:
    old, new = serve(mlflow2).url, serve(mlflow3).url
    with pytest.raises(ConfigError, match=r"target .* is MLflow 2\.16\.2: targets must be MLflow 3"):
        caps.with_capabilities(Options(source=new, target=old), new, old)
    opts = caps.with_capabilities(Options(source=old, target=new), old, new)
    assert not caps.source_has(opts, LOGGED_MODELS)
    assert caps.of(opts, new).has(LOGGED_MODELS)


def test_options_carry_the_probes_to_workers(serve: Callable[[Answer], FakeServer]) -> None:
    import pickle

    server = serve(mlflow2)
    opts = caps.with_capabilities(Options(source=server.url), server.url)
    n = len(server.requests)
    caps.probe.cache_clear()  # a worker process: nothing probed there
    shipped = pickle.loads(pickle.dumps(opts))
    assert not caps.source_has(shipped, LOGGED_MODELS)
    assert caps.source_has(shipped, ALIASES)
    assert len(server.requests) == n  # answered from the options, not asked again


def test_a_database_uri_has_every_feature_but_the_rest_only_ones() -> None:
    found = caps.probe("sqlite:///nowhere.db")
    assert found.has(LOGGED_MODELS) and found.has(TRACES)
    assert {f.name for f in found.lacks()} == {f.name for f in FEATURES if f.rest_only}


def test_notes_say_once_what_the_source_lacks_and_what_does_not_move(
    serve: Callable[[Answer], FakeServer],
) -> None:
    old, new = serve(mlflow2).url, serve(mlflow3).url
    opts = caps.with_capabilities(Options(source=old, target=new), old, new)
    text = "\n".join(caps.notes(opts))
    assert "source: MLflow 2.16.2" in text
    assert "not on the source (nothing to migrate): logged models (3.0+), traces (3.0+)" in text
    assert "target: MLflow 3.17.2" in text
    assert text.count("logged models") == 1


def test_features_are_named_once_and_every_probe_is_harmless() -> None:
    names = [f.name for f in FEATURES]
    assert len(names) == len(set(names))
    for f in FEATURES:
        if f.method == "POST":  # a search, or a write without the arguments it needs
            assert f.path.endswith("/search") or json.loads(f.body or "{}") == {}, f


def test_inventory_counts_what_does_not_move_and_says_why(
    serve: Callable[[Answer], FakeServer],
) -> None:
    from migrator import inventory

    def mlflow2_0(method: str, path: str) -> tuple[int, str]:  # no /version, no traces at all
        return (404, FLASK_404) if "traces" in path or path == "/version" else mlflow2(method, path)

    def mlflow3_busy(method: str, path: str) -> tuple[int, str]:
        if path.startswith("/api/2.0/mlflow/webhooks"):
            return 200, '{"webhooks": [{"id": "w1"}, {"id": "w2"}]}'
        if path.startswith("/api/3.0/mlflow/label-schemas/list"):  # the default one is not counted
            return 200, '{"label_schemas": [{"name": "Feedback", "is_default": true}, {"name": "x"}]}'
        return mlflow3(method, path)

    for answer, says, absent in (
        (mlflow2_0, [], ["traces of MLflow 2", "webhooks"]),
        (mlflow2, ["traces of MLflow 2                   0"], ["webhooks"]),
        (mlflow3_busy, ["webhooks                             2  their signing secrets",
                        "label schemas                        2", "review queues"],
         ["traces of MLflow 2", "workspaces"]),
    ):
        url = serve(answer).url
        opts = caps.with_capabilities(Options(source=url), url)
        text = "\n".join(inventory.unmoved_lines(opts, ["0", "1"]))
        for line in says:
            assert line in text, text
        for kind in absent:
            assert kind not in text, text


def test_a_kind_refused_to_the_user_is_said_and_not_read(
    serve: Callable[[Answer], FakeServer],
) -> None:
    def basic_auth(method: str, path: str) -> tuple[int, str]:  # datasets: admins only
        return (403, "Permission denied") if "datasets" in path else mlflow3(method, path)

    url = serve(basic_auth).url
    opts = caps.with_capabilities(Options(source=url), url)
    assert not caps.source_has(opts, caps.EVALUATION_DATASETS)
    text = "\n".join(caps.notes(opts))
    assert "refused to these credentials (HTTP 401/403; not migrated: give the user access to " \
        "migrate them): evaluation datasets" in text
    assert "evaluation datasets" not in text.split("\n")[1]  # not "absent" either
    assert "refuses these credentials" in caps.of(opts, url).why_not(caps.EVALUATION_DATASETS)
