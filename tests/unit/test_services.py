"""`services`: what the demo, the benchmark and the integration tests start, and clean up."""

from __future__ import annotations

from pathlib import Path

import pytest

from migrator import services


def test_a_server_that_does_not_start_leaves_no_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = "postgresql+psycopg2://postgres@127.0.0.1:5432/migrator_0123456789"
    dropped: list[str] = []
    monkeypatch.setattr(services, "backend_uri", lambda kind, workdir, name: uri)
    monkeypatch.setattr(services, "drop_database", dropped.append)

    def no_start(*args: object, **kwargs: object) -> services.Service:
        raise RuntimeError("mlflow server exited with 1")

    monkeypatch.setattr(services, "start_mlflow", no_start)
    with pytest.raises(RuntimeError, match="exited"):
        with services.mlflow_server("source", services.POSTGRES, tmp_path):
            pass
    assert dropped == [uri]
