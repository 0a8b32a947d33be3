"""A server of more experiments than one search for their runs names (a hundred): the runs of
the first hundred move while the next hundred are made, and runs nested across the two
hundreds keep their parents. Real parts: SQLite source, PostgreSQL target, threads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import ViewType

from migrator import services
from migrator.config import Options
from migrator.fanout import make_executor
from migrator.mlflow_io import EXPERIMENTS_PER_SEARCH
from migrator.pipeline import run_command

PARENT_ID = "mlflow.parentRunId"


def test_runs_nested_across_hundreds_of_experiments_keep_their_parents(
    target_server: Any, tmp_path: Path
) -> None:
    with services.mlflow_server("many-experiments", "sqlite", tmp_path) as src_svc:
        src = MlflowClient(src_svc.url)
        exps = [src.create_experiment(f"many/{i:03d}") for i in range(EXPERIMENTS_PER_SEARCH + 5)]
        early, late = exps[2], exps[-1]  # in the first hundred made, and in the second
        parent_early = src.create_run(early, run_name="parent early").info.run_id
        parent_late = src.create_run(late, run_name="parent late").info.run_id
        child_late = src.create_run(
            late, run_name="child late", tags={PARENT_ID: parent_early}
        ).info.run_id
        child_early = src.create_run(
            early, run_name="child early", tags={PARENT_ID: parent_late}
        ).info.run_id
        for rid in (parent_early, parent_late, child_late, child_early):
            src.set_terminated(rid, "FINISHED")

        target = target_server()
        opts = Options(
            source=src_svc.url,
            target=target.url,
            staging=str(tmp_path / "staging"),
            ray_address="none",
            verify=True,
        )
        first = run_command("migrate", opts, make_executor)
        assert first.ok, first.render()
        assert first.runs == {"tagged": 4}
        assert first.experiments == {"tagged": len(exps) + 1}  # and the Default

        tgt = MlflowClient(target.url)
        by_name = {r.info.run_name: r for r in tgt.search_runs(
            [e.experiment_id for e in tgt.search_experiments(view_type=ViewType.ALL)]
        )}
        assert by_name["child late"].data.tags[PARENT_ID] == by_name["parent early"].info.run_id
        assert by_name["child early"].data.tags[PARENT_ID] == by_name["parent late"].info.run_id
        assert by_name["child late"].info.experiment_id == (
            tgt.get_experiment_by_name(f"many/{len(exps) - 1:03d}").experiment_id
        )

        again = run_command("migrate", opts, make_executor)
        assert again.ok, again.render()
        assert again.found == {"unchanged": 4}
        assert len(tgt.search_experiments(view_type=ViewType.ALL)) == len(exps) + 1
