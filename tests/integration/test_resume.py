"""Safe to run again: a killed driver resumes with nothing lost and nothing duplicated."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from migrator.config import Options
from migrator.fanout import make_executor
from migrator.faults import FaultPlan, fault_proxy
from migrator.lineage import SOURCE_RUN_ID_TAG
from migrator.manifest import runs_table
from migrator.pipeline import run_command
from migrator.stages.export_runs import export_run
from migrator.stages.import_runs import import_run, intent_key, migrate_run
from migrator.staging import LocalStaging
from migrator.states import next_step

from .conftest import Source


def source_tag_counts(c: MlflowClient) -> dict[str, int]:
    exps = c.search_experiments(view_type=ViewType.ALL)
    runs = c.search_runs([e.experiment_id for e in exps], run_view_type=ViewType.ALL,
                         max_results=10000)
    counts: dict[str, int] = {}
    for r in runs:
        sid = r.data.tags.get(SOURCE_RUN_ID_TAG, "<none>")
        counts[sid] = counts.get(sid, 0) + 1
    return counts


def test_kill_9_mid_way_then_resume(source: Source, target_server: Any, ray_local: None,
                                    tmp_path: Path) -> None:
    target = target_server()
    staging = tmp_path / "staging"
    journal = staging / "manifests" / "_journal" / "runs"
    # Half the run creates are answered 429 (Retry-After: 1 s) by a proxy in front of the
    # target, so the migration lasts long enough to be killed part way on any machine (a
    # quiet one moved this source in under the two journal flushes the test waits for).
    slow = FaultPlan(rates={}, overrides={r"/runs/create$": {"429": 0.5}}, seed=7)
    with fault_proxy(target.url, slow) as proxy:
        cmd = [sys.executable, "-m", "migrator", "migrate", "--source", source.url,
               "--target", proxy.url, "--staging", str(staging), "--include-deleted",
               "--batch-size", "1", "--concurrency", "2"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and proc.poll() is None:
                files = list(journal.glob("*.parquet")) if journal.is_dir() else []
                if len(files) >= 2:
                    break
                time.sleep(0.2)
            assert proc.poll() is None, "the migration finished before it could be killed"
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver (and any Ray of its), mid-flight
            proc.wait()
        assert proxy.counts["429"] > 0  # the slowing did happen
    src = MlflowClient(source.url)
    src_ids = {r.info.run_id for r in src.search_runs(
        [e.experiment_id for e in src.search_experiments(view_type=ViewType.ALL)],
        run_view_type=ViewType.ALL, max_results=10000)}
    before = runs_table(LocalStaging(str(staging))).load()
    unfinished = len(src_ids) - sum(r["state"] == "tagged" for r in before.values())
    assert unfinished > 0, "the kill came too late to test a resume"

    opts = Options(source=source.url, target=target.url, staging=str(staging),
                   include_deleted=True)
    summary = run_command("migrate", opts, make_executor)
    assert summary.ok, summary.render()

    counts = source_tag_counts(MlflowClient(target.url))
    assert set(counts) == src_ids  # everything arrived ...
    assert set(counts.values()) == {1}  # ... exactly once
    after = runs_table(LocalStaging(str(staging))).load()
    assert {r["state"] for r in after.values()} == {"tagged"}
    assert not list(journal.glob("*.parquet"))  # the journal was folded in
    tgt = MlflowClient(target.url)
    numbers = lambda c: sorted(  # noqa: E731
        int(v.version) for v in c.search_model_versions("name='demo-classifier'"))
    assert numbers(tgt) == numbers(src) == [1, 2, 4, 6]
    exps = lambda c: [e.experiment_id for e in c.search_experiments()]  # noqa: E731
    assert len(tgt.search_logged_models(experiment_ids=exps(tgt))) == len(
        src.search_logged_models(experiment_ids=exps(src)))  # each once


def created_before_the_driver_died(source: Source, tgt: MlflowClient, exp_id: str,
                                   run_id: str) -> str:
    """The target run a create that landed but was never recorded left: what create_run had
    sent, the source's tags and the lineage marker. Returns its id."""
    tags = MlflowClient(source.url).get_run(run_id).data.tags
    tags = {k: v for k, v in tags.items() if k != "mlflow.parentRunId"}
    return tgt.create_run(exp_id, tags={**tags, SOURCE_RUN_ID_TAG: run_id}).info.run_id


def test_import_finds_a_run_created_but_never_recorded(source: Source, target_server: Any,
                                                       tmp_path: Path) -> None:
    """The driver died after create_run reached the target but before the row was written."""
    target = target_server()
    opts = Options(source=source.url, target=target.url, staging=str(tmp_path / "s"))
    staging = LocalStaging(opts.staging)
    run_id = source.seeded.run_ids[1]
    row = export_run({"source_run_id": run_id}, opts)
    tgt = MlflowClient(target.url)
    exp_id = tgt.create_experiment("resumed")
    staging.write_bytes(intent_key(run_id), b"")  # written just before create_run
    orphan = created_before_the_driver_died(source, tgt, exp_id, run_id)

    first = import_run({**row, "target_experiment_id": exp_id}, opts)
    again = import_run({**row, "target_experiment_id": exp_id}, opts)  # a Ray retry, say
    assert first["target_run_id"] == orphan == again["target_run_id"]
    runs = tgt.search_runs([exp_id], run_view_type=ViewType.ALL)
    assert len(runs) == 1
    assert runs[0].data.params == MlflowClient(source.url).get_run(run_id).data.params
    assert len(tgt.get_metric_history(orphan, "loss")) == 50  # no duplicated points


def test_migrate_takes_a_staged_run_json_as_the_create_intent(source: Source, target_server: Any,
                                                              tmp_path: Path) -> None:
    """In `migrate` the export writes run.json just before the create, conditionally: a task
    that finds it there already (a retry, a resumed driver) looks the run up first and adopts
    the one an earlier attempt created; a first attempt writes no intent object."""
    target = target_server()
    opts = Options(source=source.url, target=target.url, staging=str(tmp_path / "s"))
    intents = tmp_path / "s" / "manifests" / "_journal" / "intents"
    tgt = MlflowClient(target.url)
    exp_id = tgt.create_experiment("migrated")
    fresh, died = source.seeded.run_ids[0], source.seeded.run_ids[1]

    first = migrate_run({"source_run_id": fresh, "target_experiment_id": exp_id}, opts)
    assert first["state"] == "imported", first.get("error")
    assert not intents.exists()  # the conditional run.json was the intent
    assert not list((tmp_path / "s" / "runs" / fresh).glob(".*"))  # no lock file beside it

    # An attempt that died after its create: run.json staged, the run on the target, no row.
    export_run({"source_run_id": died}, opts)
    orphan = created_before_the_driver_died(source, tgt, exp_id, died)
    again = migrate_run({"source_run_id": died, "target_experiment_id": exp_id}, opts)
    assert again["target_run_id"] == orphan
    assert again["state"] == "imported", again.get("error")
    by_source = source_tag_counts(tgt)
    assert by_source == {fresh: 1, died: 1}
    assert len(tgt.get_metric_history(orphan, "loss")) == 50  # no duplicated points


def test_import_after_a_failed_migrate_adopts_what_it_created(source: Source, target_server: Any,
                                                               tmp_path: Path) -> None:
    """A `migrate` task whose create landed but whose import part then failed (the target went
    away) is recorded failed at import, and the next command imports it from staging: with no
    intent object (run.json was the intent), the failed row itself makes it look first."""
    target = target_server()
    opts = Options(source=source.url, target=target.url, staging=str(tmp_path / "s"))
    run_id = source.seeded.run_ids[1]
    tgt = MlflowClient(target.url)
    exp_id = tgt.create_experiment("failed-migrate")
    row = export_run({"source_run_id": run_id}, opts)
    orphan = created_before_the_driver_died(source, tgt, exp_id, run_id)
    failed = {**row, "state": "failed", "failed_stage": "import", "target_experiment_id": exp_id,
              "error": "TransientError: the target server did not answer"}
    assert next_step(failed) == "import"
    again = import_run(failed, opts)
    assert again["state"] == "imported", again.get("error")
    assert again["target_run_id"] == orphan
    assert source_tag_counts(tgt) == {run_id: 1}


def test_models_resume_after_a_kill_between_create_and_delete(
    source: Source, target_server: Any, s3: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """The driver dies right after a version landed on a number the source left unused (it
    was deleted there), before deleting it again: the next run deletes it and goes on, and
    every version ends at its source number, once."""
    target = target_server()
    opts = Options(source=source.url, target=target.url, staging=str(tmp_path / "s"),
                   experiments=("demo/classification",), models=("demo-classifier",),
                   ray_address="none")
    real = MlflowClient.delete_model_version

    def killed(self: Any, name: str, version: str) -> None:
        raise SystemExit(f"killed before deleting {name} {version}")

    monkeypatch.setattr(MlflowClient, "delete_model_version", killed)
    with pytest.raises(SystemExit, match="killed before deleting demo-classifier 3"):
        run_command("migrate", opts, make_executor)
    monkeypatch.setattr(MlflowClient, "delete_model_version", real)
    tgt = MlflowClient(target.url)

    def numbers() -> list[int]:
        return sorted(int(v.version) for v in tgt.search_model_versions("name='demo-classifier'"))

    left = {int(v.version): v.tags.get("mlflow_exim.field.version")
            for v in tgt.search_model_versions("name='demo-classifier'")}
    assert left == {1: "1", 2: "2", 3: "4"}  # v4 landed on 3, where the source has a gap
    summary = run_command("migrate", opts, make_executor)
    assert summary.ok, summary.render()
    assert numbers() == [1, 2, 4, 6]
    verified = run_command("verify", opts, make_executor).verify
    assert verified.ok, verified.render()
