"""Separate credentials for source and target, on two real basic-auth MLflow servers with
different users; and no secret in any byte the migration writes (staging, logs, target)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, ViewType

from migrator import services
from migrator.lineage import SOURCE_RUN_ID_TAG
from migrator.staging import open_staging

from .conftest import s3_staging

ADMIN = "admin-password-1234"
ALICE = ("alice", "alice-password-5678")  # only on the source
BOB = ("bob", "bob-password-9012")  # only on the target
AWS_SECRET = "aws-secret-" + uuid.uuid4().hex  # moto takes any key: a value to search for
_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, list[str]]]:
    """(source URL, target URL, source run ids): a seeded basic-auth source, an empty
    basic-auth target."""
    workdir = tmp_path_factory.mktemp("auth")
    with (
        services.basic_auth_server(
            "auth-source", "sqlite", workdir, ADMIN, {ALICE[0]: ALICE[1]}
        ) as src,
        services.basic_auth_server(
            "auth-target", services.POSTGRES, workdir, ADMIN, {BOB[0]: BOB[1]}
        ) as tgt,
    ):
        saved = {k: os.environ.get(k) for k in _VARS}
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = ALICE
        try:
            c = MlflowClient(src.url)
            exp = c.create_experiment("secured")
            ids = []
            for i in range(3):
                run = c.create_run(exp, run_name=f"r{i}", tags={"mlflow.user": "alice"})
                c.log_batch(run.info.run_id, metrics=[Metric("m", i, 1000 + i, 0)],
                            params=[Param("p", str(i))])
                c.log_text(run.info.run_id, f"text {i}", "notes/n.txt")
                c.set_terminated(run.info.run_id, "FINISHED")
                ids.append(run.info.run_id)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        yield src.url, tgt.url, ids


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _VARS}
    return {**env, **extra}


def _migrate(src: str, tgt: str, staging: Any, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "migrator", "migrate", "--source", src, "--target", tgt,
           "--staging", str(staging), "--ray-address", "none", "--verify"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def test_one_process_wide_user_cannot_serve_both_sides(
    servers: tuple[str, str, list[str]], tmp_path: Path
) -> None:
    src, tgt, _ = servers
    done = _migrate(src, tgt, tmp_path / "s", _env(MLFLOW_TRACKING_USERNAME=ALICE[0],
                                                   MLFLOW_TRACKING_PASSWORD=ALICE[1]))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "target tracking URI" in done.stderr and "not usable" in done.stderr
    assert ALICE[1] not in done.stderr + done.stdout


def test_each_side_with_its_own_user_and_no_secret_anywhere(
    servers: tuple[str, str, list[str]], s3: Any, tmp_path: Path
) -> None:
    src, tgt, ids = servers
    staging = s3_staging()
    env = _env(
        MIGRATOR_SOURCE_TRACKING_USERNAME=ALICE[0], MIGRATOR_SOURCE_TRACKING_PASSWORD=ALICE[1],
        MIGRATOR_TARGET_TRACKING_USERNAME=BOB[0], MIGRATOR_TARGET_TRACKING_PASSWORD=BOB[1],
        AWS_SECRET_ACCESS_KEY=AWS_SECRET,
    )
    done = _migrate(src, tgt, staging, env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "result: all match" in done.stdout

    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = BOB
    try:
        c = MlflowClient(tgt)
        exps = [e.experiment_id for e in c.search_experiments(view_type=ViewType.ALL)]
        runs = c.search_runs(exps, run_view_type=ViewType.ALL)
        assert sorted(r.data.tags[SOURCE_RUN_ID_TAG] for r in runs) == sorted(ids)
        target_text = repr([(r.data.tags, r.data.params) for r in runs])
        target_text += repr([e.tags for e in c.search_experiments(view_type=ViewType.ALL)])
    finally:
        for k in _VARS:
            os.environ.pop(k, None)

    secrets = [ALICE[1], BOB[1], AWS_SECRET, ADMIN]
    outputs = {"stdout": done.stdout, "stderr": done.stderr, "target tags": target_text}
    store = open_staging(staging)
    for prefix in ("experiments", "runs", "manifests", "models", "logged_models"):
        for key in store.list_keys(prefix):
            outputs[key] = store.read_bytes(key).decode("latin-1")
    assert any(k.endswith("runs.parquet") for k in outputs), sorted(outputs)
    for where, text in outputs.items():
        for secret in secrets:
            assert secret not in text, f"a secret leaked into {where}"
