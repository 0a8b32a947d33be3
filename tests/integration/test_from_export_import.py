"""`migrator import --from-export-import DIR` on a directory the real mlflow-export-import
wrote (`tests/fixtures/exim-export`, made by `tests/fixtures/make_exim_fixture.py`): into a
real target server, with lineage, parents remapped, artifacts whole; again without duplicates;
a damaged run fails alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import ViewType

from migrator import cli
from migrator.manifest import runs_table
from migrator.staging import LocalStaging

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "exim-export"
PARENT, CHILD = "6486f2d69461491f9df02a8c1e981210", "cf3929d42a9c4eaa939cc77cf7b6b1de"


def run_import(target: str, staging: Path, folder: Path) -> int:
    return cli.main([
        "import", "--target", target, "--staging", str(staging), "--from-export-import",
        str(folder), "--ray-address", "none", "--log-file", "", "--progress", "none",
    ])


def target_runs(url: str) -> dict[str, Any]:
    c = MlflowClient(url)
    exp = c.get_experiment_by_name("exim/demo")
    runs = c.search_runs([exp.experiment_id], run_view_type=ViewType.ALL)
    return {r.data.tags["mlflow_exim.run_info.run_id"]: r for r in runs}


def test_an_export_import_directory_comes_in_once(target_server: Any, tmp_path: Path) -> None:
    target = target_server()
    staging = tmp_path / "staging"
    assert run_import(target.url, staging, FIXTURE) == 0
    runs = target_runs(target.url)
    assert set(runs) == {PARENT, CHILD}
    child = runs[CHILD]
    assert child.data.params == {"lr": "0.01"}
    assert child.info.start_time == 1_700_000_100_000 and child.info.status == "FINISHED"
    assert child.data.tags["mlflow.parentRunId"] == runs[PARENT].info.run_id  # remapped
    assert child.data.tags["mlflow_exim.mlflow_tag.parentRunId"] == PARENT
    history = MlflowClient(target.url).get_metric_history(child.info.run_id, "loss")
    assert [m.step for m in history] == [0, 1, 2, 3, 4]
    local = MlflowClient(target.url).download_artifacts(child.info.run_id, "", str(tmp_path / "a"))
    assert (Path(local) / "plots" / "loss.csv").read_text().startswith("step,loss")
    exp = MlflowClient(target.url).get_experiment_by_name("exim/demo")
    assert exp.tags["team"] == "forecast"
    rows = runs_table(LocalStaging(str(staging))).load()
    assert {r["state"] for r in rows.values()} == {"tagged"}

    # Again: nothing new on the target.
    assert run_import(target.url, staging, FIXTURE) == 0
    assert set(target_runs(target.url)) == {PARENT, CHILD}
    assert len(MlflowClient(target.url).search_runs([exp.experiment_id])) == 2


def test_a_damaged_run_fails_alone(target_server: Any, tmp_path: Path) -> None:
    target = target_server()
    folder = tmp_path / "export"
    shutil.copytree(FIXTURE, folder)
    (folder / "1" / "runs" / CHILD / "run.json").write_text("{not json")
    staging = tmp_path / "staging"
    assert run_import(target.url, staging, folder) == 1  # a run failed: named, exit 1
    assert set(target_runs(target.url)) == {PARENT}
    row = runs_table(LocalStaging(str(staging))).load()[CHILD]
    assert row["state"] == "failed" and "run.json" in row["error"]
    # Repaired, the same command brings it in, linked to its parent.
    shutil.copy(FIXTURE / "1" / "runs" / CHILD / "run.json", folder / "1" / "runs" / CHILD)
    assert run_import(target.url, staging, folder) == 0
    runs = target_runs(target.url)
    assert runs[CHILD].data.tags["mlflow.parentRunId"] == runs[PARENT].info.run_id


def test_not_an_export_directory_is_bad_usage(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text(json.dumps({}))
    assert run_import("http://127.0.0.1:9", tmp_path / "s", tmp_path) == 2
