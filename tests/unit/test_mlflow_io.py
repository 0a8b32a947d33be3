"""Chunked writes (migrator.mlflow_io.log_batch_chunked) against a fake client."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from migrator import mlflow_io
from migrator.errors import ConfigError


@dataclass
class FakeClient:
    calls: list[dict[str, Any]] = field(default_factory=list)

    def log_batch(self, run_id: str, metrics=(), params=(), tags=(), synchronous=None) -> None:
        self.calls.append({"run_id": run_id, "metrics": list(metrics), "params": list(params),
                           "tags": list(tags), "synchronous": synchronous})


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    c = FakeClient()
    uris: list[str] = []

    def client(uri: str) -> FakeClient:
        uris.append(uri)
        return c

    monkeypatch.setattr(mlflow_io, "client", client)
    c.uris = uris  # type: ignore[attr-defined]
    return c


def _entities(n_metrics: int, n_params: int, n_tags: int):
    metrics = [("m", i) for i in range(n_metrics)]
    params = [("p", i) for i in range(n_params)]
    tags = [("t", i) for i in range(n_tags)]
    return metrics, params, tags


CASES = [
    (0, 0, 0),
    (1, 0, 0),
    (0, 1, 0),
    (0, 0, 1),
    (1000, 0, 0),
    (1001, 0, 0),
    (0, 100, 0),
    (0, 101, 0),
    (0, 60, 41),
    (999, 1, 0),
    (950, 30, 30),
    (2500, 150, 60),
    (1850, 150, 0),
    (10, 0, 450),
    (5000, 5, 5),
    (3, 250, 250),
]


@pytest.mark.parametrize(("n_m", "n_p", "n_t"), CASES)
def test_log_batch_chunked_limits_and_exactly_once(fake: FakeClient, n_m: int, n_p: int,
                                                    n_t: int) -> None:
    metrics, params, tags = _entities(n_m, n_p, n_t)
    n_calls = mlflow_io.log_batch_chunked("http://target", "run-1", metrics=metrics,
                                          params=params, tags=tags)
    assert n_calls == len(fake.calls)
    for call in fake.calls:
        total = len(call["metrics"]) + len(call["params"]) + len(call["tags"])
        assert 0 < total <= 1000, total
        assert len(call["params"]) + len(call["tags"]) <= 100
        assert call["run_id"] == "run-1"
        assert call["synchronous"] is True
    sent_m = [m for c in fake.calls for m in c["metrics"]]
    sent_p = [p for c in fake.calls for p in c["params"]]
    sent_t = [t for c in fake.calls for t in c["tags"]]
    # everything exactly once, in order, and each kind in its own argument
    assert sent_m == metrics
    assert sent_p == params
    assert sent_t == tags
    # as few calls as the limits allow
    n_small = n_p + n_t
    fewest = max(math.ceil(n_small / 100), math.ceil((n_small + n_m) / 1000))
    assert n_calls == fewest
    assert set(fake.uris) <= {"http://target"}  # type: ignore[attr-defined]


def test_log_batch_chunked_nothing_to_send_makes_no_call(fake: FakeClient) -> None:
    assert mlflow_io.log_batch_chunked("u", "r") == 0
    assert fake.calls == []


def test_log_batch_chunked_accepts_tuples(fake: FakeClient) -> None:
    metrics, params, tags = _entities(1500, 120, 0)
    n = mlflow_io.log_batch_chunked("u", "r", metrics=tuple(metrics), params=tuple(params),
                                    tags=tuple(tags))
    assert n == 2
    assert [m for c in fake.calls for m in c["metrics"]] == metrics


def test_log_batch_chunked_propagates_client_errors_after_partial_send(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Failing(FakeClient):
        def log_batch(self, run_id, metrics=(), params=(), tags=(), synchronous=None):
            if self.calls:
                raise RuntimeError("server gone")
            super().log_batch(run_id, metrics, params, tags, synchronous)

    c = Failing()
    monkeypatch.setattr(mlflow_io, "client", lambda uri: c)
    metrics, _, _ = _entities(2500, 0, 0)
    with pytest.raises(RuntimeError, match="server gone"):
        mlflow_io.log_batch_chunked("u", "r", metrics=metrics)
    assert len(c.calls) == 1


@pytest.mark.parametrize("uri", ["ftp://host/x", "file:///tmp/mlruns", "s3://bucket/x", "nope"])
def test_check_tracking_uri_refuses_unknown_scheme_without_network(uri: str,
                                                                   monkeypatch) -> None:
    def no_client(u: str):
        raise AssertionError("must fail before making a client")

    monkeypatch.setattr(mlflow_io, "client", no_client)
    with pytest.raises(ConfigError, match="unsupported scheme") as ei:
        mlflow_io.check_tracking_uri(uri, "source")
    assert str(ei.value).startswith("source tracking URI")


@pytest.mark.parametrize(
    "message",
    [
        '(psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint "dataset_pk"',
        "(pymysql.err.IntegrityError) (1062, \"Duplicate entry '2-iris-d1' for key 'PRIMARY'\")",
        "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id",
        # the server's database pool exhausted (SQLAlchemy's TimeoutError, answered 400)
        "QueuePool limit of size 5 overflow 10 reached, connection timed out, timeout 30.00 "
        "(Background on this error at: https://sqlalche.me/e/21/3o7r)",
    ],
)
def test_a_racing_insert_or_a_crowded_server_is_transient(message: str) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import BAD_REQUEST

    from migrator.errors import TransientError

    with pytest.raises(TransientError), mlflow_io.translate_errors("run r", "import"):
        raise MlflowException(message, error_code=BAD_REQUEST)


def test_other_bad_requests_are_permanent() -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import BAD_REQUEST

    from migrator.errors import PermanentError

    with pytest.raises(PermanentError), mlflow_io.translate_errors("run r", "import"):
        raise MlflowException("malformed request", error_code=BAD_REQUEST)


def test_a_refused_value_is_permanent() -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    from migrator.errors import PermanentError

    with pytest.raises(PermanentError, match="run r"), mlflow_io.translate_errors("run r", "import"):
        raise MlflowException("Invalid value for parameter", error_code=INVALID_PARAMETER_VALUE)


def test_a_server_answer_says_its_code_once() -> None:
    """A server's answer (RestException) starts with its code; a client's own error not."""
    from mlflow.exceptions import MlflowException, RestException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    from migrator.errors import PermanentError

    answer = RestException({"error_code": "BAD_REQUEST", "message": "value too long"})
    with pytest.raises(PermanentError) as raised, mlflow_io.translate_errors("experiment e"):
        raise answer
    assert raised.value.message == "BAD_REQUEST: value too long"
    with pytest.raises(PermanentError) as raised, mlflow_io.translate_errors("run r"):
        raise MlflowException("Invalid value", error_code=INVALID_PARAMETER_VALUE)
    assert raised.value.message == "INVALID_PARAMETER_VALUE: Invalid value"


def test_a_source_database_of_another_schema_is_refused_untouched(tmp_path: Path) -> None:
    """An MLflow 2 database opened by MLflow 3's store is upgraded in place: refused first."""
    import sqlite3

    from migrator.errors import ConfigError
    from migrator.mlflow_io import check_tracking_uri

    db = tmp_path / "mlflow2.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        conn.execute("INSERT INTO alembic_version VALUES ('4465047574b1')")  # MLflow 2.16's
        conn.execute("CREATE TABLE experiments (experiment_id INTEGER PRIMARY KEY)")
    before = db.read_bytes()
    with pytest.raises(ConfigError, match=r"schema revision 4465047574b1, this client's is \w+: "
                                          r"opening it here would upgrade it in place"):
        check_tracking_uri(f"sqlite:///{db}", "source")
    assert db.read_bytes() == before
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    with pytest.raises(ConfigError, match="schema revision none"):
        check_tracking_uri(f"sqlite:///{empty}", "source")


def test_a_source_database_of_this_schema_is_read(tmp_path: Path) -> None:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from migrator.mlflow_io import check_tracking_uri

    uri = f"sqlite:///{tmp_path / 'current.db'}"
    SqlAlchemyStore(uri, str(tmp_path / "artifacts"))  # made by this client: current schema
    check_tracking_uri(uri, "source")


def _mlflow_body(run_id: str, metrics, params, tags) -> dict:
    import json

    from mlflow.protos.service_pb2 import LogBatch
    from mlflow.utils.proto_json_utils import message_to_json

    msg = LogBatch(run_id=run_id, metrics=[m.to_proto() for m in metrics],
                   params=[p.to_proto() for p in params], tags=[t.to_proto() for t in tags])
    return json.loads(message_to_json(msg))


def test_batch_json_is_the_body_mlflow_would_send() -> None:
    """The hand-written log_batch body equals MLflow's own (protobuf) one, value for value:
    non-finite doubles, int64 times, negative steps, unicode, empty values, MLflow 3 links."""
    import json

    from mlflow.entities import Metric, Param, RunTag

    metrics = [Metric("a", 1, 5, 0), Metric("nan", float("nan"), 2**53 + 1, 3),
               Metric("inf", float("inf"), 1, -2), Metric("-inf", -float("inf"), 1, 2),
               Metric("é/x y", 1e-300, 0, 0), Metric("big", -1.7976931348623157e308, 1, 2**40),
               Metric("m", 0.5, 1, 1, model_id="m-1", dataset_name="ds", dataset_digest="dg")]
    params = [Param("p", "v"), Param("empty", ""), Param("ü", "ß" * 300)]
    tags = [RunTag("t", "ü"), RunTag("mlflow.note.content", "a\nb\"c")]
    for ms, ps, ts in [(metrics, params, tags), (metrics, [], []), ([], params, []),
                       ([], [], tags), ([], [], [])]:
        ours = json.loads(mlflow_io.batch_json("run-1", ms, ps, ts))
        assert ours == _mlflow_body("run-1", ms, ps, ts)


def test_log_batch_to_a_server_sends_the_hand_written_body(monkeypatch) -> None:
    """Through a REST store the body is `batch_json`'s (not the client's protobuf path)."""
    from mlflow.entities import Metric, Param
    from mlflow.store.tracking.rest_store import RestStore

    sent: list[tuple[str, str]] = []
    store = RestStore(lambda: None)
    monkeypatch.setattr(store, "_call_endpoint",
                        lambda api, body: sent.append((api.__name__, body)))

    class Client:
        class _tracking_client:  # noqa: N801 (MlflowClient's attribute)
            pass

        def log_batch(self, *a, **k):
            raise AssertionError("the client's own log_batch is not used for a server")

    c = Client()
    c._tracking_client.store = store
    monkeypatch.setattr(mlflow_io, "client", lambda uri: c)
    n = mlflow_io.log_batch_chunked("http://t", "r", metrics=[Metric("a", 1.0, 2, 3)] * 1001,
                                    params=[Param("p", "1")])
    assert n == 2
    assert [api for api, _ in sent] == ["LogBatch", "LogBatch"]
    assert sent[0][1] == mlflow_io.batch_json("r", [Metric("a", 1.0, 2, 3)] * 999,
                                              [Param("p", "1")], [])


class ModelSearch:
    """A client whose logged models live in the experiments given; it records each search."""

    def __init__(self, holding: set[str]) -> None:
        self.holding = holding
        self.searches: list[list[str]] = []

    def search_logged_models(self, experiment_ids: list[str], max_results: int) -> list[str]:
        assert max_results == 1
        self.searches.append(experiment_ids)
        return [e for e in experiment_ids if e in self.holding][:1]


@pytest.mark.parametrize(("holding", "calls"), [(set(), 3), ({"5"}, 1), ({"249"}, 3)])
def test_has_logged_models_asks_a_hundred_experiments_at_a_time(
    monkeypatch: pytest.MonkeyPatch, holding: set[str], calls: int
) -> None:
    c = ModelSearch(holding)
    monkeypatch.setattr(mlflow_io, "client", lambda uri: c)
    ids = [str(i) for i in range(250)]
    assert mlflow_io.has_logged_models("http://src", ids) == bool(holding)
    assert len(c.searches) == calls  # stops at the first that holds one
    assert all(len(s) <= 100 for s in c.searches)
    assert [e for s in c.searches for e in s] == ids[: sum(len(s) for s in c.searches)]
