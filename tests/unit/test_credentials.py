"""Credentials per side, and secrets redacted from every message."""

from __future__ import annotations

import base64
import logging
from types import SimpleNamespace

import pytest

from migrator import credentials
from migrator.credentials import RedactingFilter, authorize, bind, redact, side_credentials

SRC, TGT = "http://source:5000", "http://target:5001/mlflow"


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("TOKEN", "USERNAME", "PASSWORD"):
        for prefix in ("MLFLOW_TRACKING_", "MIGRATOR_SOURCE_TRACKING_", "MIGRATOR_TARGET_TRACKING_"):
            monkeypatch.delenv(prefix + k, raising=False)
    monkeypatch.setattr(credentials, "_AUTH", {})


def _auth_of(url: str) -> str | None:
    request = SimpleNamespace(url=url, headers={})
    authorize(request)
    return request.headers.get("Authorization")


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.standard_b64encode(f"{user}:{password}".encode()).decode()


def test_each_side_gets_its_own_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIGRATOR_SOURCE_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MIGRATOR_SOURCE_TRACKING_PASSWORD", "alice-password-1")
    monkeypatch.setenv("MIGRATOR_TARGET_TRACKING_TOKEN", "target-token-2")
    bind(SRC, TGT)
    assert _auth_of(SRC + "/api/2.0/mlflow/runs/search") == _basic("alice", "alice-password-1")
    assert _auth_of(TGT + "/api/2.0/mlflow/runs/create") == "Bearer target-token-2"
    assert _auth_of("http://target:5001/api/2.0/mlflow/runs/create") is None  # not under /mlflow
    assert _auth_of("http://source:50001/api") is None  # another port is another server


def test_a_side_without_its_own_falls_back_to_mlflows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "shared-token")
    monkeypatch.setenv("MIGRATOR_TARGET_TRACKING_TOKEN", "own-token")
    assert side_credentials("SOURCE") == {"token": "shared-token"}
    assert side_credentials("TARGET") == {"token": "own-token"}
    bind(SRC, TGT)
    assert _auth_of(SRC + "/x") == "Bearer shared-token"
    assert _auth_of(TGT + "/x") == "Bearer own-token"


def test_no_credentials_no_header() -> None:
    bind(SRC, TGT)
    assert _auth_of(SRC + "/x") is None


def test_redact_urls_signatures_and_known_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-very-secret")
    text = (
        "GET http://bob:hunter22@mlflow:5000/api failed; "
        "https://bucket.s3/x?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=abcdef123&other=1; "
        "key wJalrXUtnFEMI-very-secret seen"
    )
    out = redact(text)
    for secret in ("hunter22", "bob:", "abcdef123", "AKIA%2F1", "wJalrXUtnFEMI-very-secret"):
        assert secret not in out
    assert "http://***@mlflow:5000/api" in out
    assert "other=1" in out


def test_the_log_filter_redacts_messages_and_tracebacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "p4ssw0rd-xyz")
    try:
        raise RuntimeError("connect failed with p4ssw0rd-xyz")
    except RuntimeError:
        import sys

        record = logging.LogRecord("m", logging.WARNING, __file__, 1, "token %s", ("p4ssw0rd-xyz",),
                                   sys.exc_info())
    assert RedactingFilter().filter(record)
    assert "p4ssw0rd-xyz" not in record.getMessage()
    assert "p4ssw0rd-xyz" not in (record.exc_text or "")
