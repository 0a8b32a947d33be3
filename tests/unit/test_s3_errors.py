"""S3 failures (migrator.staging): s3_error's mapping, and S3Staging's retries with a fake client."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from migrator import staging
from migrator.errors import PermanentError, StagingError, TransientError
from migrator.staging import S3_ATTEMPTS, S3Staging, s3_error


def _client_error(status: int, code: str | None, op: str = "GetObject") -> ClientError:
    error: dict[str, str] = {"Message": "x"}
    if code is not None:
        error["Code"] = code
    return ClientError(
        {"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}},  # type: ignore[typeddict-item]
        op,
    )


# ---- s3_error ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, code", [(404, "NoSuchKey"), (404, "404"), (404, "NotFound"), (404, None)]
)
def test_missing_is_staging_error(status: int, code: str | None) -> None:
    err = s3_error(_client_error(status, code), "runs/r1/run.json")
    assert isinstance(err, StagingError)
    assert err.obj == "runs/r1/run.json"
    assert "runs/r1/run.json" in str(err)


@pytest.mark.parametrize("status, code", [(403, "AccessDenied"), (400, "InvalidArgument")])
def test_refused_is_permanent_not_staging(status: int, code: str) -> None:
    err = s3_error(_client_error(status, code), "k")
    assert isinstance(err, PermanentError)
    assert not isinstance(err, StagingError)
    assert not isinstance(err, TransientError)
    assert str(status) in err.message and code in err.message


@pytest.mark.parametrize(
    "status, code",
    [
        (503, "SlowDown"),
        (500, "InternalError"),
        (429, None),
        (429, ""),
        (502, "BadGateway"),
        (500, "SomethingNew"),
        (503, None),
        (400, "RequestTimeout"),
        (400, "ThrottlingException"),
    ],
)
def test_throttling_and_5xx_are_transient(status: int, code: str | None) -> None:
    err = s3_error(_client_error(status, code), "k")
    assert isinstance(err, TransientError)
    assert not isinstance(err, PermanentError)
    assert err.obj == "k"


def test_no_answer_is_transient() -> None:
    err = s3_error(EndpointConnectionError(endpoint_url="http://x"), "k")
    assert isinstance(err, TransientError)
    assert "EndpointConnectionError" in err.message
    assert err.obj == "k"


def test_read_timeout_is_transient() -> None:
    err = s3_error(ReadTimeoutError(endpoint_url="http://x"), "k")
    assert isinstance(err, TransientError)


# ---- S3Staging with a fake client -------------------------------------------------------


class Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self) -> bytes:
        return self.data


class FakeS3:
    """Answers each call with the next scripted outcome (an exception is raised)."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def _next(self, op: str, kw: dict[str, Any]) -> Any:
        self.calls.append((op, kw))
        out = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(out, BaseException):
            raise out
        return out

    def head_object(self, **kw: Any) -> Any:
        return self._next("head_object", kw)

    def get_object(self, **kw: Any) -> Any:
        return self._next("get_object", kw)

    def delete_objects(self, **kw: Any) -> Any:
        return self._next("delete_objects", kw)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(staging.time, "sleep", slept.append)
    return slept


def _s3(client: FakeS3) -> S3Staging:
    s3 = S3Staging.__new__(S3Staging)
    s3.uri = "s3://bucket/pre"
    s3.bucket = "bucket"
    s3.prefix = "pre"
    s3._client = client
    return s3


def test_exists_false_on_404(sleeps: list[float]) -> None:
    client = FakeS3(_client_error(404, "404", "HeadObject"))
    assert _s3(client).exists("runs/r1/run.json") is False
    assert client.calls == [("head_object", {"Bucket": "bucket", "Key": "pre/runs/r1/run.json"})]
    assert sleeps == []


def test_exists_true_on_success(sleeps: list[float]) -> None:
    client = FakeS3({"ContentLength": 3})
    assert _s3(client).exists("runs/r1/run.json") is True
    assert len(client.calls) == 1


def test_exists_raises_on_403(sleeps: list[float]) -> None:
    client = FakeS3(_client_error(403, "AccessDenied", "HeadObject"))
    with pytest.raises(PermanentError) as info:
        _s3(client).exists("runs/r1/run.json")
    assert not isinstance(info.value, StagingError)
    assert len(client.calls) == 1  # a refusal is not retried
    assert sleeps == []


def test_exists_raises_transient_on_503_after_all_attempts(sleeps: list[float]) -> None:
    client = FakeS3(_client_error(503, "SlowDown", "HeadObject"))
    with pytest.raises(TransientError) as info:
        _s3(client).exists("runs/r1/run.json")
    assert info.value.obj == "runs/r1/run.json"
    assert len(client.calls) == S3_ATTEMPTS
    assert len(sleeps) == S3_ATTEMPTS - 1
    assert all(s > 0 for s in sleeps)


def test_exists_raises_transient_on_lost_connection(sleeps: list[float]) -> None:
    client = FakeS3(EndpointConnectionError(endpoint_url="http://x"))
    with pytest.raises(TransientError):
        _s3(client).exists("k")
    assert len(client.calls) == S3_ATTEMPTS


def test_read_bytes_retries_transient_then_succeeds(sleeps: list[float]) -> None:
    client = FakeS3(
        _client_error(503, "SlowDown"),
        EndpointConnectionError(endpoint_url="http://x"),
        {"Body": Body(b"payload")},
    )
    assert _s3(client).read_bytes("runs/r1/run.json") == b"payload"
    assert len(client.calls) == 3
    assert all(kw == {"Bucket": "bucket", "Key": "pre/runs/r1/run.json"} for _, kw in client.calls)
    assert len(sleeps) == 2


def test_read_bytes_404_is_staging_error_naming_key(sleeps: list[float]) -> None:
    client = FakeS3(_client_error(404, "NoSuchKey"))
    with pytest.raises(StagingError) as info:
        _s3(client).read_bytes("runs/r1/run.json")
    assert "runs/r1/run.json" in str(info.value)
    assert info.value.obj == "runs/r1/run.json"
    assert len(client.calls) == 1
    assert sleeps == []


def test_read_bytes_403_not_retried(sleeps: list[float]) -> None:
    client = FakeS3(_client_error(403, "AccessDenied"), {"Body": Body(b"never")})
    with pytest.raises(PermanentError):
        _s3(client).read_bytes("k")
    assert len(client.calls) == 1


def test_unsafe_key_refused_before_any_request(sleeps: list[float]) -> None:
    client = FakeS3({"Body": Body(b"x")})
    with pytest.raises(StagingError):
        _s3(client).read_bytes("../escape")
    assert client.calls == []


def test_exists_refuses_unsafe_key(sleeps: list[float]) -> None:
    client = FakeS3({"ContentLength": 1})
    with pytest.raises(StagingError):
        _s3(client).exists("../escape")
    assert client.calls == []


def test_delete_many_names_a_key_s3_would_not_delete(sleeps: list[float]) -> None:
    client = FakeS3(
        {"Errors": [{"Key": "pre/j/2", "Code": "AccessDenied", "Message": "Access Denied"}]}
    )
    with pytest.raises(StagingError, match="did not delete 1 of 3 objects: AccessDenied") as e:
        _s3(client).delete_many(["j/1", "j/2", "j/3"])
    assert e.value.obj == "pre/j/2"
    (op, kw), = client.calls
    assert op == "delete_objects" and kw["Bucket"] == "bucket"
    assert [o["Key"] for o in kw["Delete"]["Objects"]] == ["pre/j/1", "pre/j/2", "pre/j/3"]


def test_delete_many_retries_a_throttled_request(sleeps: list[float]) -> None:
    client = FakeS3(_client_error(503, "SlowDown", "DeleteObjects"), {})
    assert _s3(client).delete_many(["j/1"]) == 1
    assert [op for op, _ in client.calls] == ["delete_objects", "delete_objects"]
    assert len(sleeps) == 1
