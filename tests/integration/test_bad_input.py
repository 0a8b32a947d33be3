"""Bad input: clear errors naming the object, failed rows, the rest goes on, nothing escapes."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from migrator.cli import main
from migrator.config import Options
from migrator.fanout import make_executor
from migrator.manifest import runs_table
from migrator.pipeline import run_command
from migrator.staging import LocalStaging

from .conftest import Source


def _edit_run_json(staging: Path, run_id: str, edit: Any) -> None:
    path = staging / "runs" / run_id / "run.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def test_corrupt_and_hostile_staging_files_fail_only_their_runs(
    source: Source, target_server: Any, ray_local: None, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    staging = tmp_path / "staging"
    exported = run_command("export", Options(source=source.url, staging=str(staging),
                                             experiments=("demo/regression",)), make_executor)
    assert exported.ok
    run_ids = sorted(p.name for p in (staging / "runs").iterdir())
    corrupt, hostile, too_long, missing = run_ids[:4]
    (staging / "runs" / corrupt / "run.json").write_bytes(b"{not json")
    _edit_run_json(staging, hostile, lambda d: d["artifacts"].append(
        {"path": "../../../../escape.txt", "size": 1, "sha256": ""}))
    _edit_run_json(staging, too_long, lambda d: d["params"].update({"huge": "x" * 7000}))
    (staging / "runs" / missing / "metrics.parquet").unlink()

    target = target_server()
    code = main(["import", "--target", target.url, "--staging", str(staging)])
    out = capsys.readouterr().out
    assert code == 1
    rows = runs_table(LocalStaging(str(staging))).load()
    failed = {k: r for k, r in rows.items() if r["state"] == "failed"}
    assert set(failed) == {corrupt, hostile, too_long, missing}
    assert "corrupt staging file" in failed[corrupt]["error"]
    assert "artifact path refused" in failed[hostile]["error"]
    assert "'huge'" in failed[too_long]["error"] and "6000" in failed[too_long]["error"]
    assert "metrics.parquet" in failed[missing]["error"]
    assert all(r["failed_stage"] == "import" for r in failed.values())
    for rid in failed:
        assert f"run {rid}" in out  # the summary names every failed run
    ok = [r for r in rows.values() if r["state"] == "tagged"]
    assert len(ok) == len(run_ids) - 4
    assert not list(tmp_path.rglob("escape.txt"))
    assert not list(Path("/").glob("escape.txt"))
    tgt = MlflowClient(target.url)
    exp = tgt.get_experiment_by_name("demo/regression")
    names = {r.info.run_name for r in tgt.search_runs([exp.experiment_id])}
    assert len(names) == len(run_ids) - 4  # failed runs were refused before anything was created


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_server_fails_fast_with_one_line(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    staging = tmp_path / "never"
    code = main(["migrate", "--source", source.url, "--target",
                 f"http://127.0.0.1:{_closed_port()}", "--staging", str(staging)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("migrator: error: target server http://127.0.0.1:")
    assert "not reachable" in err[-1]
    assert not staging.exists()


def test_missing_bucket_fails_fast(source: Source, s3: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["export", "--source", source.url, "--staging", "s3://no-such-bucket/x"])
    err = capsys.readouterr().err
    assert code == 2
    assert "bucket 'no-such-bucket' not usable" in err


def test_missing_credentials_fail_fast(source: Source, s3: Any, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code = main(["export", "--source", source.url, "--staging", "s3://migrator-staging/no-creds"])
    err = capsys.readouterr().err
    assert code == 2
    assert "credentials" in err.lower()


def test_a_run_and_an_experiment_the_servers_refuse_fail_alone(
    workdir: Path, target_server: Any, ray_local: None, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An artifact the source server cannot read (its file vanished behind a dangling link),
    and an experiment whose name a SQLite source holds but PostgreSQL's 256-character column
    refuses: each fails alone, named; the runs of the refused experiment stay where they are,
    and leave the progress total (the bar ends full)."""
    from migrator import progress, services

    totals: list[tuple[str, int, bool]] = []
    said = progress.Progress.total

    def total(self: progress.Progress, label: str, n: int, final: bool) -> None:
        totals.append((label, n, final))
        said(self, label, n, final)

    monkeypatch.setattr(progress.Progress, "total", total)
    with services.mlflow_server("broken-source", "sqlite", tmp_path) as src:
        c = MlflowClient(src.url)
        exp = c.create_experiment("broken")
        good, bad = (c.create_run(exp, run_name=n).info.run_id for n in ("good", "bad"))
        for rid in (good, bad):
            f = tmp_path / "a.txt"
            f.write_text(rid)
            c.log_artifact(rid, str(f))
            c.set_terminated(rid)
        stored = tmp_path / "broken-source-artifacts" / exp / bad / "artifacts" / "a.txt"
        assert stored.is_file()
        stored.unlink()
        stored.symlink_to(tmp_path / "gone")
        long_name = "a name over 256 characters " + "x" * 250
        refused = c.create_experiment(long_name)
        stays = {c.create_run(refused).info.run_id for _ in range(2)}
        target = target_server()
        # one attempt: the retries (2 s, then 4 s, over MLflow's own) are the faults tests'
        opts = Options(source=src.url, target=target.url, staging=str(tmp_path / "staging"),
                       max_attempts=1)
        summary = run_command("migrate", opts, make_executor)
        out = summary.render()
    assert not summary.ok
    assert f"run {bad}: export:" in out
    assert f"experiment {long_name!r} ({refused}): import:" in out and "too long" in out
    rows = runs_table(LocalStaging(str(tmp_path / "staging"))).load()
    assert rows[bad]["state"] == "failed" and rows[bad]["failed_stage"] == "export"
    assert rows[good]["state"] == "tagged"
    assert not stays & set(rows), "the runs of the refused experiment were not started"
    tgt = MlflowClient(target.url)
    assert sorted(e.name for e in tgt.search_experiments()) == ["Default", "broken"]
    deadline = time.monotonic() + 30  # the count runs in a thread of its own
    while not any(label == "runs" and final for label, _, final in totals):
        assert time.monotonic() < deadline, totals
        time.sleep(0.1)
    assert [n for label, n, final in totals if label == "runs" and final][-1] == 2


def test_a_model_the_target_refuses_fails_alone(
    workdir: Path, s3: Any, target_server: Any, tmp_path: Path
) -> None:
    """A name an older MLflow let in (`/` is refused since) fails with the target's reason;
    the other model migrates."""
    import sqlalchemy

    from migrator import services

    with services.mlflow_server("source-names", services.MYSQL, workdir) as src_svc:
        src = MlflowClient(src_svc.url)
        exp = src.create_experiment("named")
        run = src.create_run(exp).info.run_id
        src.log_text(run, "w", "model/w.txt")
        src.create_registered_model("good")
        src.create_model_version("good", f"runs:/{run}/model", run_id=run)
        engine = sqlalchemy.create_engine(src_svc.backend)
        with engine.begin() as db:  # as an older server stored it
            db.execute(sqlalchemy.text(
                "INSERT INTO registered_models (workspace, name, creation_time, "
                "last_updated_time, description) VALUES ('default', 'team/bad', 1, 1, 'old')"))
        engine.dispose()
        assert {m.name for m in src.search_registered_models()} == {"good", "team/bad"}

        target = target_server()
        opts = Options(source=src_svc.url, target=target.url, staging=str(tmp_path / "s"),
                       ray_address="none")
        summary = run_command("migrate", opts, make_executor)
        assert not summary.ok and summary.models == {"imported": 1, "failed": 1}
        (bad,) = summary.failed
        assert bad["name"] == "team/bad" and "cannot contain '/'" in bad["error"]
        assert "registered model 'team/bad'" in summary.render()
        tgt = MlflowClient(target.url)
        assert [m.name for m in tgt.search_registered_models()] == ["good"]
        assert tgt.get_model_version("good", "1").run_id  # remapped to the migrated run
        rows = LocalStaging(opts.staging)
        assert (tmp_path / "s" / "models" / "team%2Fbad" / "model.json").is_file()
        from migrator.manifest import models_table

        manifest = models_table(rows).load()
        assert manifest["team/bad"]["state"] == "failed"
        assert manifest["team/bad"]["failed_stage"] == "import"
