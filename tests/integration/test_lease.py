"""One driver per staging store, on real S3 (moto): a second driver is refused while the
first runs, and the first's manifests are whole afterwards."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import ViewType

from migrator.lease import LEASE_KEY
from migrator.manifest import runs_table
from migrator.services import Service
from migrator.staging import open_staging

from .conftest import Source, s3_staging


def test_a_second_driver_on_the_same_staging_is_refused(
    source: Source, target_server: Any, s3: Service
) -> None:
    target = target_server()
    staging = s3_staging()
    experiments = ",".join(source.seeded.experiment_ids.values())
    cmd = [
        sys.executable, "-m", "migrator", "migrate", "--source", source.url,
        "--target", target.url, "--staging", staging, "--experiments", experiments,
        "--include-deleted", "--ray-address", "none", "--batch-size", "1", "--concurrency", "1",
    ]  # fmt: skip
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    store = open_staging(staging)
    deadline = time.monotonic() + 60
    while not store.exists(LEASE_KEY):
        assert first.poll() is None, first.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, "the first driver never took the lease"
        time.sleep(0.1)
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    out, err = first.communicate(timeout=600)
    assert second.returncode == 2, second.stderr[-2000:]
    line = second.stderr.strip().splitlines()[-1]
    assert "is in use by another driver (migrate on" in line, line
    assert first.returncode == 0, err.decode()[-3000:]
    assert first.poll() is not None
    assert not store.exists(LEASE_KEY)  # released at the end

    src = MlflowClient(source.url)
    want = {r.info.run_id for r in src.search_runs(
        list(source.seeded.experiment_ids.values()), run_view_type=ViewType.ALL,
        max_results=10_000)}
    rows = runs_table(store).load()
    assert set(rows) == want
    assert {r["state"] for r in rows.values()} == {"tagged"}
