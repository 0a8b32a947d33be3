"""`verify` finds exactly the differences made on the target, and `audit` answers lineage."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from migrator.cli import main
from migrator.config import Options
from migrator.fanout import make_executor
from migrator.manifest import read_verify, runs_table
from migrator.pipeline import run_command
from migrator.staging import LocalStaging

from .conftest import Source


def outcomes(staging: Path) -> dict[str, tuple[str, list[str]]]:
    return {
        r["source_id"]: (r["outcome"], r["differences"] or [])
        for r in read_verify(LocalStaging(str(staging)))
    }


def test_verify_reports_exactly_the_objects_and_fields_that_differ(
    source: Source, target_server: Any, ray_local: None, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = target_server()
    staging = tmp_path / "staging"
    opts = Options(source=source.url, target=target.url, staging=str(staging),
                   experiments=("demo/*", "Default"), include_deleted=True, verify=True)
    first = run_command("migrate", opts, make_executor)
    assert first.ok, first.render()
    assert first.verify is not None and first.verify.ok
    clean = outcomes(staging)
    assert clean and {o for o, _ in clean.values()} == {"match"}

    rows = runs_table(LocalStaging(str(staging))).load()
    live = sorted(r["source_run_id"] for r in rows.values()
                  if r["lifecycle_stage"] == "active" and r["n_artifacts"])
    tag_run, param_run, deleted_run, corrupt_run, removed_run, metric_run = live[:6]
    tgt = MlflowClient(target.url)
    t = {k: rows[k]["target_run_id"] for k in live[:6]}
    tgt.set_tag(t[tag_run], "owner", "someone else")
    tgt.log_param(t[param_run], "extra", "1")
    tgt.delete_run(t[deleted_run])
    art = target.artifacts_dir
    assert art is not None

    def stored(run: str, path: str) -> Path:
        return art / rows[run]["target_experiment_id"] / t[run] / "artifacts" / path

    f = stored(corrupt_run, "model.txt")
    f.write_bytes(b"X" * f.stat().st_size)  # same size, other bytes: only a hash can tell
    stored(removed_run, "plots/deep/random.bin").unlink()
    tgt.log_batch(t[metric_run], metrics=[Metric("loss", 0.5, 1, 999)])

    code = main(["verify", "--source", source.url, "--target", target.url, "--staging",
                 str(staging), "--experiments", "demo/*,Default"])
    out = capsys.readouterr().out
    assert code == 1
    assert "DIFFERENCES FOUND" in out
    got = {k: v for k, v in outcomes(staging).items() if v[0] != "match"}
    assert got == {
        tag_run: ("differ", ["tags"]),
        param_run: ("differ", ["params"]),
        deleted_run: ("differ", ["lifecycle_stage"]),
        corrupt_run: ("differ", ["artifacts"]),
        removed_run: ("differ", ["artifacts"]),
        metric_run: ("differ", ["metrics"]),
    }
    details = {r["source_id"]: r["details"] for r in read_verify(LocalStaging(str(staging)))}
    assert "'owner' differs" in details[tag_run]
    assert "extra 'extra'" in details[param_run]
    assert "'model.txt' SHA-256 differs" in details[corrupt_run]
    assert "missing 'plots/deep/random.bin'" in details[removed_run]
    assert "'loss'" in details[metric_run]
    assert len(outcomes(staging)) == len(clean)

    # Sizes only: the same-size corruption passes, the removed file does not.
    assert main(["verify", "--source", source.url, "--target", target.url, "--staging",
                 str(staging), "--experiments", "demo/*,Default", "--artifacts", "size"]) == 1
    by_size = outcomes(staging)
    assert by_size[corrupt_run] == ("match", [])
    assert by_size[removed_run] == ("differ", ["artifacts"])

    # audit answers lineage questions from the manifests alone
    capsys.readouterr()
    assert main(["audit", "--staging", str(staging), "--source-run-id", tag_run,
                 "--format", "json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    src_run = MlflowClient(source.url).get_run(tag_run)
    assert rec["target_run_id"] == t[tag_run]
    assert rec["start_time"] == src_run.info.start_time
    assert rec["user_id"] == src_run.info.user_id
    assert rec["artifact_uri"] == src_run.info.artifact_uri
    assert rec["mlflow_tags"]["mlflow.user"] == src_run.data.tags["mlflow.user"]
    assert main(["audit", "--staging", str(staging), "--target-run-id", t[tag_run]]) == 0
    table = capsys.readouterr().out
    assert f"source_run_id            {tag_run}" in table
    assert main(["audit", "--staging", str(staging), "--summary", "--format", "csv"]) == 0
    counts = {(r["object_type"], r["state"]): r["count"]
              for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert counts[("run", "tagged")] == str(len(rows))
    assert counts[("run", "verified")] == str(len(rows) - 5)  # the last verify: 5 still differ
    assert int(counts[("run", "artifact_bytes")]) == sum(r["artifact_bytes"] for r in rows.values())
    assert main(["audit", "--staging", str(staging), "--source-run-id", "nope"]) == 1
