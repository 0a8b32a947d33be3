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
    monkeypatch.setattr(services, "backend_uri", lambda kind, workdir, name, python: uri)
    monkeypatch.setattr(services, "drop_database", dropped.append)

    def no_start(*args: object, **kwargs: object) -> services.Service:
        raise RuntimeError("mlflow server exited with 1")

    monkeypatch.setattr(services, "start_mlflow", no_start)
    with pytest.raises(RuntimeError, match="exited"):
        with services.mlflow_server("source", services.POSTGRES, tmp_path):
            pass
    assert dropped == [uri]


def _tables(uri: str) -> tuple[set[str], str | None, int]:
    """The tables of a backend, its alembic revision and how many experiments it holds."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.connect() as conn:
            names = set(sqlalchemy.inspect(conn).get_table_names())
            revision = conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version"))
            experiments = conn.execute(sqlalchemy.text("SELECT COUNT(*) FROM experiments"))
            return names, revision.scalar(), experiments.scalar_one()
    finally:
        engine.dispose()


def test_a_fresh_backend_holds_mlflows_tables_at_head_and_no_experiment(tmp_path: Path) -> None:
    """So the server skips the migrations and still makes its own default experiment."""
    from mlflow.store.db.base_sql_model import Base
    from mlflow.store.db.utils import _get_latest_schema_revision

    uri = services.backend_uri("sqlite", tmp_path, "fresh")
    names, revision, experiments = _tables(uri)
    assert set(Base.metadata.tables) <= names
    assert (revision, experiments) == (_get_latest_schema_revision(), 0)
    if services.database_available(services.POSTGRES):
        uri = services.backend_uri(services.POSTGRES, tmp_path, "fresh")
        try:
            assert _tables(uri) == (names, revision, 0)
        finally:
            services.drop_database(uri)


def test_an_existing_sqlite_backend_and_another_mlflows_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "kept.db").write_bytes(b"not replaced")
    assert services.backend_uri("sqlite", tmp_path, "kept").endswith("kept.db")
    assert (tmp_path / "kept.db").read_bytes() == b"not replaced"
    services.backend_uri("sqlite", tmp_path, "old", python="/elsewhere/bin/python")
    assert not (tmp_path / "old.db").exists()  # that server's own MLflow makes its tables
