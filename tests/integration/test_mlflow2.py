"""An upgrade: a real MLflow 2 server (its own venv, kept between sessions) seeded by MLflow 2's
own client, migrated to an MLflow 3 target on real parts (MariaDB source, PostgreSQL target,
moto S3 staging, local Ray).

`MIGRATOR_TEST_MLFLOW2` picks another 2.x (`2.9.2`, `2.0.1`, …; older ones need
`MIGRATOR_TEST_MLFLOW2_REQUIREMENTS="sqlalchemy<2 numpy<2 pymysql"`): the tests check what the
seeded server had (aliases from 2.3, dataset inputs from 2.4).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from migrator import services
from migrator.cli import main
from migrator.config import Options
from migrator.fanout import make_executor
from migrator.pipeline import run_command
from migrator.seed import pointing_at

from .conftest import folder_hashes, s3_staging

VERSION = os.environ.get("MIGRATOR_TEST_MLFLOW2", "2.16.2")
REQUIREMENTS = tuple(
    os.environ.get("MIGRATOR_TEST_MLFLOW2_REQUIREMENTS", "sqlalchemy<2.1 pymysql").split()
)
SEED = Path(__file__).parent / "legacy" / "seed_mlflow2.py"
SOURCE_LINE = rf"source: MLflow ({re.escape(VERSION)}|2 \(version not reported\))\n"


@pytest.fixture(scope="module")
def old_source(workdir: Path) -> Iterator[dict[str, Any]]:
    """A seeded MLflow 2 server; what the seed made (`seed_mlflow2.py`)."""
    bin_dir = services.venv(f"mlflow-{VERSION}", (f"mlflow=={VERSION}", *REQUIREMENTS))
    python = str(bin_dir / "python")
    with services.mlflow_server("mlflow2-source", services.MYSQL, workdir, python=python) as svc:
        done = subprocess.run(
            [python, str(SEED), svc.url], capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-3000:]
        seeded = json.loads(done.stdout.strip().splitlines()[-1])
        assert seeded["mlflow_version"] == VERSION
        yield {"url": svc.url, **seeded}


@pytest.fixture(scope="module")
def moved(
    old_source: dict[str, Any], workdir: Path, ray_local: None
) -> Iterator[dict[str, Any]]:
    with services.mlflow_server("mlflow3-target", services.POSTGRES, workdir) as target:
        opts = Options(source=old_source["url"], target=target.url, staging=s3_staging(),
                       include_deleted=True)
        runs_before = len(all_runs(MlflowClient(target.url)))
        first = run_command("migrate", opts, make_executor)
        second = run_command("migrate", opts, make_executor)
        verified = run_command("verify", opts, make_executor)
        tgt = MlflowClient(target.url, registry_uri=target.url)
        by_source = {r.data.tags["mlflow_exim.run_info.run_id"]: r for r in all_runs(tgt)}
        yield {"opts": opts, "first": first, "second": second, "verified": verified,
               "tgt": tgt, "by_source": by_source, "target": target.url,
               "runs_before": runs_before}


def all_runs(c: MlflowClient) -> list[Any]:
    exps = c.search_experiments(view_type=ViewType.ALL)
    return c.search_runs([e.experiment_id for e in exps], run_view_type=ViewType.ALL,
                         max_results=5000)


def test_plan_shows_what_the_old_server_has_and_lacks(
    old_source: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(["plan", "--source", old_source["url"], "--staging", str(tmp_path / "none"),
                 "--include-deleted", "--ray-address", "none"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert re.search(SOURCE_LINE, out), out  # MLflow 2.0 does not say its version
    assert "not on the source (nothing to migrate): logged models (3.0+)" in out
    n_runs = len(old_source["runs"])
    assert f"4 experiments, {n_runs} runs ({n_runs} export)" in out
    assert "models: 1 registered models, 3 versions" in out
    assert "logged models:" not in out  # none to count
    if old_source["prompts"]:  # MLflow 2.21+: prompts are registered models, never counted as models
        assert "  prompts: 1\n  prompt versions: 2\n" in out
    if VERSION >= "2.14":  # traces of MLflow 2's own API: counted, and said not to move
        assert re.search(r"traces of MLflow 2 +0  MLflow 2 keeps", out), out
    assert not (tmp_path / "none").exists()  # a plan writes nothing


def test_migrates_without_error_and_says_what_the_source_lacks(moved: dict[str, Any],
                                                               old_source: dict[str, Any]) -> None:
    first = moved["first"]
    assert first.ok, first.render()
    n = len(old_source["runs"])
    assert first.runs == {"tagged": n}
    assert first.experiments == {"tagged": 4}
    assert not first.logged_models
    assert first.models == {"imported": 1} and first.versions == {"imported": 3}
    text = first.render()
    assert re.search(SOURCE_LINE, text)
    assert text.count("not on the source (nothing to migrate): logged models") == 1


def test_runs_keep_times_status_parents_and_deleted_state(moved: dict[str, Any],
                                                          old_source: dict[str, Any]) -> None:
    by_source = moved["by_source"]
    assert set(by_source) == set(old_source["runs"])
    for sid, seeded in old_source["runs"].items():
        run = by_source[sid]
        assert run.info.status == seeded["status"]
        assert run.data.tags["mlflow_exim.run_info.start_time"] == str(run.info.start_time)
        parent = seeded["parent"]
        if parent:  # remapped, also into the other experiment
            assert run.data.tags["mlflow.parentRunId"] == by_source[parent].info.run_id
            assert run.data.tags["mlflow_exim.mlflow_tag.parentRunId"] == parent
        else:
            assert "mlflow.parentRunId" not in run.data.tags
    assert by_source[old_source["deleted_run"]].info.lifecycle_stage == "deleted"
    gone = moved["tgt"].get_experiment_by_name("legacy/gone")
    assert gone is not None and gone.lifecycle_stage == "deleted"


def test_histories_datasets_and_artifacts_arrive(moved: dict[str, Any],
                                                 old_source: dict[str, Any]) -> None:
    tgt, src = moved["tgt"], MlflowClient(old_source["url"])
    for sid, seeded in old_source["runs"].items():
        target_id = moved["by_source"][sid].info.run_id
        for key in src.get_run(sid).data.metrics:  # read per key: no bulk endpoint needed
            a = [(m.step, m.timestamp, repr(m.value)) for m in src.get_metric_history(sid, key)]
            b = [(m.step, m.timestamp, repr(m.value)) for m in tgt.get_metric_history(target_id, key)]
            assert sorted(a) == sorted(b), (sid, key)
        if seeded.get("dataset"):
            names = [d.dataset.name for d in tgt.get_run(target_id).inputs.dataset_inputs]
            assert names == [seeded["dataset"]]
        with tempfile.TemporaryDirectory() as s, tempfile.TemporaryDirectory() as t:
            theirs = folder_hashes(src.download_artifacts(sid, "", s))
            ours = folder_hashes(tgt.download_artifacts(target_id, "", t))
        assert ours == theirs
        assert ours or seeded.get("dataset"), sid  # every other seeded run has files
        if seeded.get("model"):  # a run-level model of MLflow 2: MLmodel among the artifacts
            assert "model/MLmodel" in ours


def test_versions_keep_numbers_stage_alias_and_load_on_the_target(
    moved: dict[str, Any], old_source: dict[str, Any]
) -> None:
    tgt, name = moved["tgt"], old_source["model"]
    versions = {int(v.version): v for v in tgt.search_model_versions(f"name = '{name}'")}
    assert sorted(versions) == [1, 3, 4]  # 2 was deleted at the source: a gap
    assert versions[3].current_stage == "Production"
    assert versions[1].description == "first" and versions[1].tags["validated"] == "yes"
    for number, v in versions.items():
        seeded = old_source["versions"][str(number)]
        target_run = moved["by_source"][seeded["run_id"]].info.run_id
        assert v.run_id == target_run
        assert v.model_id is None  # MLflow 2 has no logged models: none is made up
        if seeded["source"].startswith("runs:/"):
            assert v.source == f"runs:/{target_run}/model"
        else:
            assert v.source.endswith(f"/{target_run}/artifacts/model")
        assert v.tags["mlflow_exim.field.source"] == seeded["source"]
    model = tgt.get_registered_model(name)
    if old_source["aliases"]:
        assert model.aliases == {"champion": "3"}
    with pointing_at(moved["target"], registry=True):
        for uri in (f"models:/{name}/3", f"models:/{name}/4", f"models:/{name}/1"):
            # into a folder of our own: without one, MLflow downloads into a temporary folder
            # that nobody removes
            with tempfile.TemporaryDirectory() as tmp:
                loaded = mlflow.pyfunc.load_model(uri, dst_path=tmp)
                assert [int(p) for p in loaded.predict(old_source["predict_input"])] == \
                    old_source["predictions"], uri


def test_verify_matches_and_a_rerun_adds_nothing(moved: dict[str, Any],
                                                 old_source: dict[str, Any]) -> None:
    report = moved["verified"].verify
    assert report.ok, report.render()
    counts = report.counts()
    assert counts[("run", "match")] == len(old_source["runs"])
    assert counts[("model_version", "match")] == 3
    second = moved["second"]
    assert second.ok and not second.actions, second.render()
    assert len(all_runs(moved["tgt"])) == moved["runs_before"] + len(old_source["runs"])
