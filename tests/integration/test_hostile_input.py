"""Hostile input on real servers: names with both quote kinds, newlines, control characters
and long unicode; staged files cut short or of the wrong schema; a staging store of a newer
format; a server that is not MLflow; a source database that does not exist."""

from __future__ import annotations

import http.server
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag, ViewType

from migrator import services
from migrator.cli import main
from migrator.config import Options
from migrator.fanout import make_executor
from migrator.layout import STAGING_FORMAT_KEY
from migrator.lineage import SOURCE_RUN_ID_TAG
from migrator.manifest import model_versions_table, runs_table
from migrator.pipeline import run_command
from migrator.staging import LocalStaging

#: Names no filter string can quote: both quote kinds, a backslash, a newline, a bell, a tab.
AWKWARD = "it's \"both\" \\ kinds\nnew line\x07bell\ttab"
LONG_UNICODE = "Ünïcødé-名前-" * 20  # 240 characters, multi-byte
NAMES = {
    "experiment": AWKWARD,
    "long experiment": LONG_UNICODE,
    "model": "model 'a' \"b\" \\c",
}


@pytest.fixture(scope="module")
def hostile_source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A SQLite source whose names and tags are as awkward as MLflow lets them be."""
    workdir = tmp_path_factory.mktemp("hostile")
    with services.mlflow_server("hostile-source", "sqlite", workdir) as svc:
        c = MlflowClient(svc.url)
        runs = []
        for key in ("experiment", "long experiment"):
            exp = c.create_experiment(NAMES[key], tags={"note": AWKWARD})
            for i in range(2):
                tags = {"mlflow.user": "o'neil \"x\"", "multi": "a\nb\x01c"}
                if i:
                    run = c.create_run(exp, run_name=f"{AWKWARD} {i}", tags=tags)
                else:  # as a REST client that names no user makes it: user_id ""
                    run = c._tracking_client.store.create_run(
                        exp, "", 1_700_000_000_000, [RunTag(k, v) for k, v in tags.items()],
                        f"{AWKWARD} {i}")
                c.log_batch(run.info.run_id, metrics=[Metric("m", 1.0, 1, 0)],
                            params=[Param("p", AWKWARD)], tags=[RunTag("t", LONG_UNICODE)])
                c.log_text(run.info.run_id, "x", f"files/{LONG_UNICODE[:40]}.txt")
                c.set_terminated(run.info.run_id, "FINISHED")
                runs.append(run.info.run_id)
        c.create_registered_model(NAMES["model"], description=AWKWARD)
        for rid in runs[:2]:
            c.create_model_version(NAMES["model"], f"runs:/{rid}/files", run_id=rid,
                                   tags={"q": AWKWARD})
        yield {"url": svc.url, "runs": runs, "workdir": workdir}


def test_awkward_names_and_tags_migrate_exactly(
    hostile_source: dict[str, Any], target_server: Any, tmp_path: Path
) -> None:
    target = target_server()
    opts = Options(source=hostile_source["url"], target=target.url,
                   staging=str(tmp_path / "s"), ray_address="none")
    first = run_command("migrate", opts, make_executor)
    assert first.ok, first.render()
    again = run_command("migrate", opts, make_executor)  # looked up again by those names
    assert again.ok and again.found["unchanged"] == len(hostile_source["runs"])

    tgt = MlflowClient(target.url)
    for key in ("experiment", "long experiment"):
        exp = tgt.get_experiment_by_name(NAMES[key])
        assert exp is not None and exp.tags["note"] == AWKWARD
    exps = [e.experiment_id for e in tgt.search_experiments(view_type=ViewType.ALL)]
    runs = tgt.search_runs(exps, run_view_type=ViewType.ALL)
    assert sorted(r.data.tags[SOURCE_RUN_ID_TAG] for r in runs) == sorted(hostile_source["runs"])
    assert all(r.data.params["p"] == AWKWARD and r.data.tags["multi"] == "a\nb\x01c"
               for r in runs)
    src = MlflowClient(hostile_source["url"])
    users = {r.data.tags[SOURCE_RUN_ID_TAG]: r.info.user_id for r in runs}
    assert users == {rid: src.get_run(rid).info.user_id for rid in hostile_source["runs"]}
    assert sorted(users.values()).count("") == 2  # kept empty, not made up
    for n in ("1", "2"):
        v = tgt.get_model_version(NAMES["model"], n)
        assert v.tags["q"] == AWKWARD and v.run_id in {r.info.run_id for r in runs}
    assert tgt.get_registered_model(NAMES["model"]).description == AWKWARD
    rows = model_versions_table(LocalStaging(opts.staging)).load()
    assert {k: r["state"] for k, r in rows.items()} == {
        (NAMES["model"], 1): "imported", (NAMES["model"], 2): "imported"}
    report = run_command("verify", opts, make_executor).verify
    assert report.ok, report.render()


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def test_staged_metrics_cut_short_or_of_another_schema_fail_their_runs(
    hostile_source: dict[str, Any], target_server: Any, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    staging = tmp_path / "staging"
    assert run_command("export", Options(source=hostile_source["url"], staging=str(staging),
                                         ray_address="none"), make_executor).ok
    cut, other, fine = sorted(hostile_source["runs"])[:3]
    path = staging / "runs" / cut / "metrics.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    (staging / "runs" / other / "metrics.parquet").write_bytes(
        _parquet(pa.table({"name": ["m"], "when": [1]})))
    target = target_server()
    code = main(["import", "--target", target.url, "--staging", str(staging),
                 "--ray-address", "none"])
    out = capsys.readouterr().out
    assert code == 1
    rows = runs_table(LocalStaging(str(staging))).load()
    assert rows[cut]["state"] == rows[other]["state"] == "failed"
    assert "metrics.parquet" in rows[cut]["error"] and "metrics.parquet" in rows[other]["error"]
    assert rows[fine]["state"] == "tagged"
    assert f"run {cut}" in out and f"run {other}" in out


def test_a_staging_store_of_a_newer_format_is_refused(
    hostile_source: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    staging = tmp_path / "newer"
    (staging / "manifests").mkdir(parents=True)
    (staging / STAGING_FORMAT_KEY).write_text(
        json.dumps({"format": "mlflow-migrator/staging", "version": 99}))
    code = main(["export", "--source", hostile_source["url"], "--staging", str(staging)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert "staging format version 99" in err[-1] and "upgrade mlflow-migrator" in err[-1]
    assert not (staging / "runs").exists()  # nothing written


@pytest.fixture()
def html_server() -> Iterator[str]:
    """A web server that is not MLflow: every path answers 200 with an HTML page."""

    class Page(http.server.BaseHTTPRequestHandler):
        def _page(self) -> None:
            body = b"<html><body>Welcome to nginx!</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _page  # noqa: N815

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_that_is_not_mlflow_fails_fast_with_one_line(
    html_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["export", "--source", html_server, "--staging", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("migrator: error: source tracking URI"), err
    assert "not usable" in err[0]


def test_a_source_database_that_does_not_exist_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such.db"
    code = main(["export", "--source", f"sqlite:///{missing}", "--staging", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1] == f"migrator: error: source database {missing} does not exist " \
                      f"(from sqlite:///{missing})"
    assert not missing.exists()  # and none was made
