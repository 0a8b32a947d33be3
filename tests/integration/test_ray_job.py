"""`ray job submit -- python jobs/migrate.py …` against a real (local) Ray cluster."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from mlflow import MlflowClient
from mlflow.entities import ViewType

from migrator.manifest import runs_table
from migrator.services import free_port
from migrator.staging import LocalStaging

from .conftest import Source

REPO = Path(__file__).resolve().parents[2]
#: A credential in the cluster's environment (the test servers ignore it): it must reach the
#: workers, and never Ray's job or actor metadata (the dashboard shows runtime_env).
RAY_SECRET = "ray-secret-token-0f9e8d7c6b5a"
BIN = Path(sys.executable).parent


def worker_ports(n: int, avoid: set[int]) -> int:
    """The first of `n` consecutive free ports none of which is in `avoid` (Ray refuses a
    worker port range that holds one of its other ports)."""
    while True:
        low = free_port()
        block = range(low, low + n)
        if avoid.isdisjoint(block) and block[-1] < 65536 and all(_bindable(p) for p in block):
            return low


def _bindable(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@pytest.fixture()
def ray_cluster(tmp_path: Path) -> Iterator[str]:
    """A one-node Ray cluster on loopback with every port pinned; returns the dashboard URL."""
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # socket paths must stay short
    ports = {name: free_port() for name in (
        "port", "dashboard-port", "ray-client-server-port", "object-manager-port",
        "node-manager-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
        "runtime-env-agent-port", "metrics-export-port")}
    metric_ports = {"AUTOSCALER_METRIC_PORT": free_port(), "DASHBOARD_METRIC_PORT": free_port()}
    low = worker_ports(51, avoid={*ports.values(), *metric_ports.values()})
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--num-cpus=2",
           f"--min-worker-port={low}", f"--max-worker-port={low + 50}",
           f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    cmd += [f"--{k}={v}" for k, v in ports.items()]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           **{k: str(v) for k, v in metric_ports.items()},
           "PATH": f"{BIN}:{os.environ['PATH']}", "MLFLOW_TRACKING_TOKEN": RAY_SECRET}
    log = open(tmp_path / "ray-head.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    url = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "ray-head.log").read_text()[-3000:]
            with contextlib.suppress(requests.RequestException):
                if requests.get(url + "/api/version", timeout=2).ok:
                    break
            assert time.monotonic() < deadline, "Ray head did not start"
            time.sleep(0.5)
        yield url
    finally:
        family = [proc.pid]
        with contextlib.suppress(psutil.NoSuchProcess):
            family += [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in family:  # Ray may start some of its processes in sessions of their own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_runs_the_migration(source: Source, target_server: Any,
                                           ray_cluster: str, tmp_path: Path) -> None:
    target = target_server()
    staging = tmp_path / "staging"
    entry = [sys.executable, str(REPO / "jobs" / "migrate.py"),  # `migrate` by default
             "--source", source.url, "--target", target.url, "--staging", str(staging),
             "--experiments", "demo/regression"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", ray_cluster, "--",
                           *entry], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout.lower()
    assert "migrate: 1 experiments" in done.stdout  # the summary, from the job's driver

    src = MlflowClient(source.url)
    exp = src.get_experiment_by_name("demo/regression")
    n = len(src.search_runs([exp.experiment_id], run_view_type=ViewType.ACTIVE_ONLY))
    tgt = MlflowClient(target.url)
    texp = tgt.get_experiment_by_name("demo/regression")
    assert len(tgt.search_runs([texp.experiment_id])) == n
    rows = runs_table(LocalStaging(str(staging))).load()
    assert len(rows) == n and {r["state"] for r in rows.values()} == {"tagged"}

    # The secret reached the workers' environment only by a Ray object: not in the job's
    # or any actor's or task's metadata, nor in the job's output.
    metadata = {
        path: requests.get(ray_cluster + path, timeout=30).text
        for path in ("/api/jobs/", "/api/v0/actors?detail=true&limit=1000",
                     "/api/v0/tasks?detail=true&limit=1000")
    }
    assert "StageWorker" in metadata["/api/v0/actors?detail=true&limit=1000"]
    for path, text in {**metadata, "job output": done.stdout + done.stderr}.items():
        assert RAY_SECRET not in text, f"the secret shows in {path}"
