"""Export and import as separate commands, with filters and without source tags."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from migrator.cli import main
from migrator.config import Options
from migrator.fanout import make_executor
from migrator.pipeline import run_command

from .conftest import Source


def test_export_then_import_with_filters_and_no_source_tags(
    source: Source, target_server: Any, ray_local: None, tmp_path: Path
) -> None:
    src = MlflowClient(source.url)
    scope = [e for e in src.search_experiments() if e.name.startswith("demo/class")]
    assert len(scope) == 1
    all_in_exp = src.search_runs([scope[0].experiment_id], max_results=1000)
    cutoff = sorted(r.info.start_time for r in all_in_exp)[len(all_in_exp) // 2]
    wanted = {r.info.run_id for r in all_in_exp if r.info.start_time >= cutoff}
    assert 0 < len(wanted) < len(all_in_exp)

    staging = str(tmp_path / "bucket-like folder")
    exported = run_command("export", Options(source=source.url, staging=staging,
                                             experiments=("demo/class*",),
                                             run_start_time=cutoff), make_executor)
    assert exported.ok and exported.runs == {"exported": len(wanted)}
    # the staging layout of DESIGN.md, exactly
    for rid in wanted:
        run_dir = Path(staging) / "runs" / rid
        doc = json.loads((run_dir / "run.json").read_text())
        assert {"info", "params", "tags", "inputs", "outputs"} <= set(doc)
        assert pq.read_schema(run_dir / "metrics.parquet").names == ["key", "step", "timestamp", "value"]
        models = source.seeded.models  # the runs that logged or evaluated a model have no plots
        if rid not in (models["train_run"], models["evaluation_run"]):
            assert (run_dir / "artifacts" / "plots" / "loss curve ü.csv").is_file()
    exp_doc = Path(staging) / "experiments" / scope[0].experiment_id / "experiment.json"
    assert json.loads(exp_doc.read_text())["fields"]["name"] == scope[0].name

    target = target_server()
    tgt = MlflowClient(target.url)
    existing = tgt.create_experiment(scope[0].name)  # already there: must be reused
    # The import needs nothing but the staging store: no source URI at all.
    imported = run_command("import", Options(target=target.url, staging=staging,
                                             import_source_tags=False), make_executor)
    assert imported.ok, imported.render()
    exp = tgt.get_experiment_by_name(scope[0].name)
    assert exp is not None and exp.experiment_id == existing
    assert not any(k.startswith("mlflow_exim.") for k in exp.tags)
    runs = tgt.search_runs([exp.experiment_id], run_view_type=ViewType.ALL)
    assert {r.info.run_name for r in runs} == {src.get_run(i).info.run_name for i in wanted}
    for r in runs:
        assert not any(k.startswith("mlflow_exim.") for k in r.data.tags), r.data.tags
    others = [e.name for e in tgt.search_experiments() if e.name.startswith("demo/")]
    assert others == [scope[0].name]
    # Models came along: a version whose run is outside the filters (here a single file) was
    # staged from its own source; no source tags anywhere, the logged model's marker gone too.
    assert imported.versions == {"imported": 5} and imported.logged_models == {"tagged": 1}
    assert (Path(staging) / "models" / "team.forecast model" / "model.json").is_file()
    forecast = tgt.get_model_version("team.forecast model", "1")
    assert "/models/m-" in forecast.source and forecast.source.endswith("/artifacts/model.txt")
    source_file = src.get_model_version("team.forecast model", "1")
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=tgt.get_model_version_download_uri("team.forecast model", "1"),
            dst_path=tmp, tracking_uri=target.url)
        want = src.download_artifacts(source_file.run_id, "model.txt", tmp + "/src")
        assert Path(local).read_bytes() == Path(want).read_bytes()
    for v in tgt.search_model_versions(""):
        assert not any(k.startswith("mlflow_exim.") for k in v.tags), v.tags
    logged = tgt.search_logged_models(experiment_ids=[exp.experiment_id])
    holders = [m for m in logged if "mlflow_exim.model_version" in m.tags]
    # versions whose runs the filters left out hold their files in logged models of their own
    assert sorted(m.tags["mlflow_exim.model_version"] for m in holders) == [
        "demo-classifier/2", "demo-classifier/4", "demo-classifier/6"]
    assert len(logged) == len(holders) + 1  # and the one migrated logged model
    exim = {k for m in logged for k in m.tags if k.startswith("mlflow_exim.")}
    assert exim == {"mlflow_exim.model_version"}  # what a holder holds, and nothing else

    again = run_command("import", Options(target=target.url, staging=staging,
                                          import_source_tags=False), make_executor)
    assert not again.actions and again.found == {"unchanged": len(wanted)}
    assert again.ok and again.versions == {"imported": 5}
    numbers = [int(v.version) for v in tgt.search_model_versions("name = 'demo-classifier'")]
    assert sorted(numbers) == [1, 2, 4, 6]
    assert len(tgt.search_runs([exp.experiment_id], run_view_type=ViewType.ALL)) == len(wanted)


def test_plan_and_dry_run_write_nothing(source: Source, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    staging = tmp_path / "plan-staging"
    assert main(["plan", "--source", source.url, "--staging", str(staging),
                 "--include-deleted"]) == 0
    out = capsys.readouterr().out
    src = MlflowClient(source.url)
    n_runs = len(src.search_runs([e.experiment_id for e in src.search_experiments(
        view_type=ViewType.ALL)], run_view_type=ViewType.ALL, max_results=10000))
    assert f"runs ({n_runs} export)" in out
    assert "models: 2 registered models, 5 versions (2 import)" in out
    assert "demo/archived (deleted)" in out
    assert main(["migrate", "--dry-run", "--source", source.url, "--target", source.url,
                 "--staging", str(staging), "--experiments", "demo/regression"]) == 0
    out = capsys.readouterr().out
    assert "1 experiments" in out and "exists" in out
    assert not staging.exists()
