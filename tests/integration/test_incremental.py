"""Incremental migration: new runs move, runs unfinished at the last export are re-synced."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric

from migrator import services
from migrator.config import Options
from migrator.fanout import make_executor
from migrator.pipeline import run_command


def test_second_migrate_moves_new_runs_and_resyncs_unfinished_ones(
    target_server: Any, ray_local: None, tmp_path: Path
) -> None:
    with services.mlflow_server("growing-source", "sqlite", tmp_path) as src_svc:
        src = MlflowClient(src_svc.url)
        exp = src.create_experiment("growing")
        done = []
        for i in range(2):
            rid = src.create_run(exp, run_name=f"done-{i}").info.run_id
            src.log_batch(rid, metrics=[Metric("loss", 1.0 / (s + 1), 1000 + s, s) for s in range(5)])
            src.set_terminated(rid, "FINISHED", end_time=5000 + i)
            done.append(rid)
        live = src.create_run(exp, run_name="still training", start_time=1_000).info.run_id
        src.log_batch(live, metrics=[Metric("loss", 1.0, 1000, 0), Metric("loss", 0.9, 1001, 1)])
        (tmp_path / "ckpt-1.txt").write_text("one")
        src.log_artifact(live, str(tmp_path / "ckpt-1.txt"), "checkpoints")
        quiet = src.create_run(exp, run_name="running, unchanged").info.run_id  # stays as is
        (tmp_path / "empty.txt").write_text("")  # REST drops a zero size: must not look changed
        src.log_artifact(quiet, str(tmp_path / "empty.txt"))
        art_only = src.create_run(exp, run_name="running, new artifact only").info.run_id
        src.create_registered_model("growing-model")
        src.create_model_version("growing-model", f"runs:/{done[0]}", run_id=done[0])

        target = target_server()
        opts = Options(source=src_svc.url, target=target.url, staging=str(tmp_path / "s"),
                       verify=True)
        first = run_command("migrate", opts, make_executor)
        assert first.ok, first.render()
        assert first.found == {"new": 5}

        # The source moves on: the live run trains further and finishes; a new run appears.
        src.log_batch(live, metrics=[Metric("loss", 0.5, 1002, 2), Metric("acc", 0.7, 1002, 2)])
        src.set_tag(live, "phase", "done")
        (tmp_path / "ckpt-2.txt").write_text("two")
        src.log_artifact(live, str(tmp_path / "ckpt-2.txt"), "checkpoints")
        src.set_terminated(live, "FINISHED", end_time=9_999)
        src.log_artifact(art_only, str(tmp_path / "ckpt-2.txt"))
        new = src.create_run(exp, run_name="new").info.run_id
        src.set_terminated(new, "FINISHED", end_time=10_000)
        # ... and the registry too: two new versions (the first deleted again), an alias, an
        # edited description and stage on the version already migrated.
        for rid in (done[1], new):
            src.create_model_version("growing-model", f"runs:/{rid}", run_id=rid)
        src.delete_model_version("growing-model", "2")
        src.set_registered_model_alias("growing-model", "best", "3")
        src.update_model_version("growing-model", "1", description="superseded")
        src.transition_model_version_stage("growing-model", "1", "Archived")

        second = run_command("migrate", opts, make_executor)
        assert second.ok, second.render()
        assert second.found == {"new": 1, "re-synced": 2, "unchanged": 3}
        assert second.verify is not None and second.verify.ok, second.verify.render()
        assert second.versions == {"imported": 2}

    versions = {int(v.version): v for v in MlflowClient(target.url).search_model_versions(
        "name = 'growing-model'")}
    assert sorted(versions) == [1, 3]
    assert (versions[1].description, versions[1].current_stage) == ("superseded", "Archived")
    assert MlflowClient(target.url).get_registered_model("growing-model").aliases == {"best": "3"}

    tgt = MlflowClient(target.url)
    texp = tgt.get_experiment_by_name("growing")
    runs = {r.info.run_name: r for r in tgt.search_runs([texp.experiment_id])}
    assert sorted(runs) == ["done-0", "done-1", "new", "running, new artifact only",
                            "running, unchanged", "still training"]
    assert [f.path for f in tgt.list_artifacts(runs["running, new artifact only"].info.run_id)] == [
        "ckpt-2.txt"]
    t_live = runs["still training"]
    assert t_live.info.status == "FINISHED" and t_live.info.end_time == 9_999
    assert t_live.data.tags["phase"] == "done"
    assert t_live.data.tags["mlflow_exim.run_info.status"] == "FINISHED"
    assert len(tgt.get_metric_history(t_live.info.run_id, "loss")) == 3  # no duplicated points
    assert len(tgt.get_metric_history(t_live.info.run_id, "acc")) == 1
    paths = [f.path for f in tgt.list_artifacts(t_live.info.run_id, "checkpoints")]
    assert paths == ["checkpoints/ckpt-1.txt", "checkpoints/ckpt-2.txt"]
