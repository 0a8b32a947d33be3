"""Real parts for the integration tests, started once per session on free 127.0.0.1 ports.

- an S3 server (moto's server mode) with a staging bucket;
- local Ray (one per session: it takes ~8 s and ~1 GB to start);
- a seeded source `mlflow server` on MariaDB (SQLite where MariaDB does not answer), with
  registered models (version gaps, stages, aliases, a version whose run was deleted) and a
  logged model made by `mlflow.pyfunc.log_model`;
- `target_server()`: a fresh target `mlflow server` on a fresh PostgreSQL database (SQLite
  where PostgreSQL does not answer), stopped and dropped after the test.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from migrator import services
from migrator.seed import Seeded, seed_models, seed_source

BUCKET = "migrator-staging"
BIG_FILE_MB = 64


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("parts")


@pytest.fixture(scope="session")
def s3(workdir: Path) -> Iterator[services.Service]:
    with services.s3_server(workdir, BUCKET) as svc:
        yield svc


@pytest.fixture(scope="session")
def ray_local(s3: services.Service) -> Iterator[None]:
    import ray

    ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", num_cpus=2,
             configure_logging=False, log_to_driver=False)
    yield
    ray.shutdown()


def folder_hashes(root: str) -> dict[str, str]:
    """SHA-256 of every file under `root`, by path relative to it."""
    from migrator.staging import file_sha256

    return {
        os.path.relpath(os.path.join(d, f), root): file_sha256(os.path.join(d, f))
        for d, _, files in os.walk(root)
        for f in files
    }


def s3_staging() -> str:
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}"


@pytest.fixture()
def target_server(workdir: Path) -> Iterator[Callable[[], services.Service]]:
    """A factory of fresh target servers (PostgreSQL), all stopped when the test ends."""
    with contextlib.ExitStack() as stack:
        def make() -> services.Service:
            name = f"target-{uuid.uuid4().hex[:6]}"
            return stack.enter_context(services.mlflow_server(name, services.POSTGRES, workdir))

        yield make


class Source:
    def __init__(self, svc: services.Service, seeded: Seeded, extra: dict[str, str]) -> None:
        self.svc = svc
        self.url = svc.url
        self.seeded = seeded
        self.extra = extra


def _add_hard_cases(url: str, workdir: Path) -> dict[str, str]:
    """Runs that exercise the limits: a 10,000+ point history, a 64 MB artifact, a system tag
    whose copied key is over MLflow's 250-character limit."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    c = MlflowClient(url)
    exp_id = c.create_experiment("hard/limits")
    run = c.create_run(exp_id, start_time=1_600_000_000_123, run_name="big history",
                       tags={"mlflow.user": "dave", "mlflow." + "x" * 236: "long key"})
    rid = run.info.run_id
    points = [Metric("long", float(s) / 7, 1_600_000_000_000 + s, s) for s in range(10_500)]
    for i in range(0, len(points), 1000):
        c.log_batch(rid, metrics=points[i : i + 1000])
    big = workdir / "big.bin"
    with open(big, "wb") as f:
        for _ in range(BIG_FILE_MB):
            f.write(os.urandom(1 << 20))
    c.log_artifact(rid, str(big), "blobs/large files")
    c.set_terminated(rid, "FINISHED", end_time=1_600_000_999_999)
    return {
        "hard_run": rid,
        "hard_experiment": exp_id,
        "big_sha256": hashlib.sha256(big.read_bytes()).hexdigest(),
    }


@pytest.fixture(scope="session")
def source(workdir: Path) -> Iterator[Source]:
    """A seeded source on MariaDB; tests must not change it."""
    with services.mlflow_server("source", services.MYSQL, workdir) as svc:
        seeded = seed_source(svc.url, n_runs=24)
        seed_models(svc.url, seeded)
        extra = _add_hard_cases(svc.url, workdir)
        yield Source(svc, seeded, extra)


class Background:
    """A call run in a thread of its own; `join` hands back its result or raises its error."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self._outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                self._outcome["result"] = call()
            except BaseException as e:  # handed to the main thread by join
                self._outcome["error"] = e

        self.thread = threading.Thread(target=run, name="background", daemon=True)
        self.thread.start()

    def join(self, timeout: float = 600) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"still running after {timeout:.0f} s"
        if "error" in self._outcome:
            raise self._outcome["error"]
        return self._outcome["result"]
