"""The create-aware HTTP retry policy (migrator.transport), driven with real urllib3 objects."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from urllib3.connection import HTTPConnection
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)
from urllib3.response import HTTPResponse
from urllib3.util.retry import Retry

from migrator import transport
from migrator.transport import RETRY_AFTER_CAP_S, CreateAwareRetry, creates

API = "/api/2.0/mlflow"
CREATE = f"{API}/runs/create"
LOG_BATCH = f"{API}/runs/log-batch"

# ---- creates ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "runs/create",
        "experiments/create",
        "logged-models",
        "model-versions/create",
        "registered-models/create",
        "runs/log-inputs",
        "runs/outputs",
        "traces",
    ],
)
def test_creates_true_for_create_endpoints(path: str) -> None:
    assert creates("POST", f"{API}/{path}")
    assert creates("post", f"http://mlflow:5000{API}/{path}")
    assert creates("POST", f"https://h/ajax-api/2.0/mlflow/{path}?x=1")


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "runs/create"),
        ("GET", "traces"),
        ("PUT", "logged-models"),
        ("POST", "runs/log-batch"),
        ("POST", "runs/search"),
        ("POST", "logged-models/search"),
        ("POST", "runs/set-tag"),
        ("POST", "runs/update"),
        ("POST", "experiments/search"),
    ],
)
def test_creates_false_for_other_requests(method: str, path: str) -> None:
    assert not creates(method, f"{API}/{path}")
    assert not creates(method, f"http://mlflow:5000{API}/{path}")


def test_creates_false_without_method_or_url() -> None:
    assert not creates(None, CREATE)
    assert not creates("POST", None)
    assert not creates("POST", "")


# ---- CreateAwareRetry.increment --------------------------------------------------------


def _retry() -> CreateAwareRetry:
    return CreateAwareRetry(
        total=3, status_forcelist=[503, 429], allowed_methods=None, backoff_factor=0
    )


def _response(status: int, headers: dict[str, str] | None = None) -> HTTPResponse:
    return HTTPResponse(body=b"", status=status, headers=headers or {}, preload_content=False)


def _refused() -> NewConnectionError:
    return NewConnectionError(HTTPConnection("localhost", 1), "Connection refused")


def test_fake_response_is_what_urllib3_sees() -> None:
    """Sanity of the fixture: a 503 is not a redirect, so `increment` counts a status retry."""
    resp = _response(503)
    assert resp.status == 503
    assert not resp.get_redirect_location()


def test_create_503_is_not_resent() -> None:
    with pytest.raises(MaxRetryError) as info:
        _retry().increment("POST", CREATE, response=_response(503))
    assert "503" in str(info.value.reason)


def test_create_500_is_not_resent() -> None:
    with pytest.raises(MaxRetryError):
        _retry().increment("POST", f"http://h{API}/experiments/create", response=_response(500))


def test_create_429_is_resent() -> None:
    new = _retry().increment("POST", CREATE, response=_response(429, {"Retry-After": "1"}))
    assert isinstance(new, CreateAwareRetry)
    assert new.total == 2
    assert new.history[-1].status == 429


def test_create_connection_refused_is_resent() -> None:
    new = _retry().increment("POST", CREATE, error=_refused())
    assert isinstance(new, CreateAwareRetry)
    assert new.total == 2


def test_create_connect_timeout_is_resent() -> None:
    new = _retry().increment("POST", CREATE, error=ConnectTimeoutError("connect timed out"))
    assert new.total == 2


def test_create_reset_is_not_resent() -> None:
    error = ProtocolError("reset")
    with pytest.raises(MaxRetryError) as info:
        _retry().increment("POST", CREATE, error=error)
    assert info.value.reason is error


def test_create_read_timeout_is_not_resent() -> None:
    error = ReadTimeoutError(None, CREATE, "read timed out")  # type: ignore[arg-type]
    with pytest.raises(MaxRetryError):
        _retry().increment("POST", CREATE, error=error)


@pytest.mark.parametrize("path", ["logged-models", "model-versions/create", "traces"])
def test_other_creates_reset_not_resent(path: str) -> None:
    with pytest.raises(MaxRetryError):
        _retry().increment("POST", f"{API}/{path}", error=ProtocolError("reset"))


def test_create_connection_refused_still_bounded_by_total() -> None:
    r = CreateAwareRetry(total=1, allowed_methods=None, backoff_factor=0)
    r = r.increment("POST", CREATE, error=_refused())
    with pytest.raises(MaxRetryError):
        r.increment("POST", CREATE, error=_refused())


def test_non_create_503_is_retried() -> None:
    new = _retry().increment("POST", LOG_BATCH, response=_response(503))
    assert isinstance(new, CreateAwareRetry)
    assert new.total == 2


def test_non_create_reset_is_retried() -> None:
    new = _retry().increment("POST", LOG_BATCH, error=ProtocolError("reset"))
    assert isinstance(new, CreateAwareRetry)
    assert new.total == 2


def test_get_is_retried_even_on_a_create_path() -> None:
    new = _retry().increment("GET", CREATE, error=ProtocolError("reset"))
    assert new.total == 2


def test_non_create_exhausts_after_total() -> None:
    r: Retry = _retry()
    for _ in range(3):
        r = r.increment("POST", LOG_BATCH, response=_response(503))
    assert r.total == 0
    with pytest.raises(MaxRetryError):
        r.increment("POST", LOG_BATCH, response=_response(503))


def test_retry_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="migrator.transport")
    _retry().increment("POST", f"http://h{LOG_BATCH}", response=_response(503))
    assert any(LOG_BATCH in m and "503" in m for m in caplog.messages)


# ---- Retry-After -------------------------------------------------------------------------


def test_retry_after_huge_is_capped() -> None:
    after = _retry().get_retry_after(_response(429, {"Retry-After": "3600"}))
    assert after == RETRY_AFTER_CAP_S


def test_retry_after_small_is_kept() -> None:
    assert _retry().get_retry_after(_response(429, {"Retry-After": "2"})) == 2


def test_retry_after_absent_is_none() -> None:
    assert _retry().get_retry_after(_response(429)) is None


# ---- install -----------------------------------------------------------------------------


@pytest.fixture
def clean_install(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Start from MLflow's own Retry; restore it (and drop cached sessions) afterwards."""
    from mlflow.utils import request_utils

    own = transport.mlflow_own(request_utils._cached_get_request_session)
    monkeypatch.setattr(request_utils, "Retry", Retry)
    monkeypatch.setattr(request_utils, "_cached_get_request_session", own)
    transport.install.cache_clear()
    own.cache_clear()
    yield
    transport.install.cache_clear()
    own.cache_clear()


@pytest.mark.usefixtures("clean_install")
def test_install_makes_mlflow_sessions_use_create_aware_retry() -> None:
    from mlflow.utils import request_utils

    before = request_utils._get_request_session(3, 1, 0.0, frozenset([503]), True, True)
    assert not isinstance(before.get_adapter("http://x").max_retries, CreateAwareRetry)

    transport.install()
    session = request_utils._get_request_session(3, 1, 0.0, frozenset([503]), True, True)
    assert session is not before
    for url in ("http://x", "https://x"):
        retry = session.get_adapter(url).max_retries
        assert isinstance(retry, CreateAwareRetry)
        assert retry.total == 3
        assert retry.allowed_methods is None
    transport.install()  # a second call changes nothing
    assert request_utils._get_request_session(3, 1, 0.0, frozenset([503]), True, True) is session


def count_environment_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URLs `requests` reads the environment's proxies for, from now on (a list that grows)."""
    import requests.sessions

    reads: list[str] = []
    real = requests.sessions.get_environ_proxies

    def counted(url: str, no_proxy: str | None = None) -> dict[str, str]:
        reads.append(url)
        return real(url, no_proxy=no_proxy)

    monkeypatch.setattr(requests.sessions, "get_environ_proxies", counted)
    return reads


def test_the_environment_is_read_once_per_server_and_still_applies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import requests

    from migrator.transport import _environment_read_once_per_origin

    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "direct.internal")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/bundle.pem")
    reads = count_environment_reads(monkeypatch)
    session = _environment_read_once_per_origin(requests.Session())

    def merged(url: str, proxies: dict[str, str] | None = None) -> dict[str, Any]:
        return dict(session.merge_environment_settings(url, proxies or {}, None, None, None))

    first = merged("http://tracking.internal:5000/api/2.0/mlflow/runs/create")
    again = merged("http://tracking.internal:5000/api/2.0/mlflow/runs/log-batch")
    assert first == again
    assert first["proxies"]["http"] == "http://proxy.internal:3128"
    assert first["verify"] == "/etc/ssl/bundle.pem"
    assert len(reads) == 1  # once for this server, not once per request
    again["proxies"]["http"] = "changed by a caller"
    assert merged("http://tracking.internal:5000/x")["proxies"]["http"].startswith("http://proxy")

    assert "http" not in merged("http://direct.internal:5000/x")["proxies"]  # NO_PROXY holds
    own = merged("http://tracking.internal:5000/x", {"http": "http://mine:1"})
    assert own["proxies"]["http"] == "http://mine:1"  # a request's own proxies win
    assert len(reads) == 3


def test_mlflow_sessions_read_the_environment_once_per_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlflow.utils import request_utils

    reads = count_environment_reads(monkeypatch)
    transport.install()
    session = request_utils._get_request_session(3, 1, 0.5, (503,), True, True)
    for path in ("runs/create", "runs/log-batch", "runs/update"):
        session.merge_environment_settings(
            f"http://once.internal:5000/{path}", {}, None, None, None
        )
    assert len(reads) == 1  # MLflow's own session, reading the environment once per server
    assert session is request_utils._get_request_session(3, 1, 0.5, (503,), True, True)
