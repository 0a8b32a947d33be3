"""`audit` (migrator.audit.run_audit) over manifests written to a local staging folder."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from migrator.audit import run_audit
from migrator.manifest import experiments_table, runs_table, write_verify
from migrator.staging import LocalStaging

T0 = 1_700_000_000_000  # 2023-11-14T22:13:20.000Z
T1 = 1_700_000_061_234  # 2023-11-14T22:14:21.234Z


def _run(sid: str, **kw: Any) -> dict[str, Any]:
    row = {
        "source_experiment_id": "1",
        "source_run_id": sid,
        "target_experiment_id": "7",
        "target_run_id": "t-" + sid,
        "run_name": "name-" + sid,
        "user_id": "alice",
        "status": "FINISHED",
        "lifecycle_stage": "active",
        "start_time": T0,
        "end_time": T1,
        "artifact_uri": f"mlflow-artifacts:/1/{sid}/artifacts",
        "source_parent_run_id": None,
        "mlflow_tags": {"mlflow.user": "alice", "mlflow.source.name": "train.py"},
        "n_params": 2,
        "n_metric_points": 5,
        "n_artifacts": 2,
        "artifact_bytes": 100,
        "artifact_files": [
            {"path": "a.txt", "size": 40, "sha256": "0" * 64},
            {"path": "b.txt", "size": 60, "sha256": "1" * 64},
        ],
        "source_fingerprint": "f" * 32,
        "state": "tagged",
        "error": None,
        "failed_stage": None,
        "updated_at": T1 + 5000,
    }
    row.update(kw)
    return row


def _exp(eid: str, name: str, **kw: Any) -> dict[str, Any]:
    row = {
        "source_experiment_id": eid,
        "target_experiment_id": "t" + eid,
        "name": name,
        "artifact_location": f"mlflow-artifacts:/{eid}",
        "lifecycle_stage": "active",
        "creation_time": T0 - 1000,
        "last_update_time": T0,
        "tags": {"owner": "alice"},
        "state": "tagged",
        "error": None,
        "failed_stage": None,
        "updated_at": T1,
    }
    row.update(kw)
    return row


@pytest.fixture
def staging(tmp_path: Path) -> LocalStaging:
    """A migration's staging folder: 2 experiments, 5 runs in various states, a verify."""
    st = LocalStaging(str(tmp_path / "staging"))
    exps = experiments_table(st)
    exps.append([_exp("1", "vision"), _exp("2", "nlp", state="imported")])
    exps.compact()

    runs = runs_table(st)
    runs.append(
        [
            _run("s1", source_parent_run_id="s0", mlflow_tags={"mlflow.parentRunId": "s0"}),
            _run("s2", artifact_bytes=1000),
            _run("s3", state="imported", artifact_bytes=1),
            _run(
                "s4",
                state="failed",
                failed_stage="import",
                error="PermanentError: boom",
                target_run_id=None,
                artifact_bytes=None,
            ),
        ]
    )
    runs.flush()
    runs.compact()
    # rows after the compaction stay in the journal (a driver killed before compacting)
    runs.append([_run("s5", source_experiment_id="2", state="exported", target_run_id=None)])
    runs.append([_run("s2", state="tagged", artifact_bytes=20)])  # newer row for s2 wins
    runs.flush()
    assert list(st.list_keys("manifests/_journal/runs"))  # really left in the journal

    write_verify(
        st,
        [
            {"object_type": "experiment", "source_id": "1", "outcome": "match"},
            {"object_type": "experiment", "source_id": "2", "outcome": "differ"},
            {"object_type": "run", "source_id": "s1", "outcome": "match"},
            {"object_type": "run", "source_id": "s2", "outcome": "match"},
            {"object_type": "run", "source_id": "s3", "outcome": "missing_on_target"},
            {"object_type": "run", "source_id": "s4", "outcome": "error", "error": "x"},
        ],
    )
    return st


# --------------------------------------------------------------------------- one run


def test_source_run_id_json(staging: LocalStaging, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_audit(staging.uri, source_run_id="s1", fmt="json") == 0
    out, err = capsys.readouterr()
    assert err == ""
    rec = json.loads(out)
    assert rec["source_run_id"] == "s1"
    assert rec["target_run_id"] == "t-s1"
    assert rec["target_experiment_id"] == "7"
    assert rec["source_experiment_id"] == "1"
    assert rec["source_experiment_name"] == "vision"
    # the original times, as epoch milliseconds (not strings, not seconds)
    assert rec["start_time"] == T0
    assert rec["end_time"] == T1
    assert rec["updated_at"] == T1 + 5000
    assert rec["user_id"] == "alice"
    assert rec["status"] == "FINISHED"
    assert rec["source_parent_run_id"] == "s0"
    assert rec["mlflow_tags"] == {"mlflow.parentRunId": "s0"}
    assert rec["artifact_files"] == 2  # a count, not the list
    assert rec["state"] == "tagged"


def test_source_run_id_json_reads_the_journal(
    staging: LocalStaging, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_audit(staging.uri, source_run_id="s5", fmt="json") == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["state"] == "exported"
    assert rec["target_run_id"] is None
    assert rec["source_experiment_name"] == "nlp"
    assert run_audit(staging.uri, source_run_id="s2", fmt="json") == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["artifact_bytes"] == 20  # the newest row


def _table(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        out[key] = value.strip()
    return out


def test_target_run_id_table(staging: LocalStaging, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_audit(staging.uri, target_run_id="t-s3") == 0
    out, err = capsys.readouterr()
    assert err == ""
    rec = _table(out)
    assert rec["source_run_id"] == "s3"
    assert rec["target_run_id"] == "t-s3"
    assert rec["source_experiment_name"] == "vision"
    assert rec["state"] == "imported"
    assert rec["start_time"] == f"2023-11-14T22:13:20.000Z ({T0})"
    assert rec["end_time"] == f"2023-11-14T22:14:21.234Z ({T1})"
    assert rec["mlflow_tags"] == "mlflow.source.name=train.py, mlflow.user=alice"
    assert rec["error"] == ""  # None shows as empty
    assert rec["artifact_files"] == "2"


def test_target_run_id_table_ignores_runs_without_target(
    staging: LocalStaging, capsys: pytest.CaptureFixture[str]
) -> None:
    # s4 and s5 have no target id: asking for None-ish ids must not find them
    assert run_audit(staging.uri, target_run_id="None") == 1
    assert capsys.readouterr().out == ""


def test_source_run_id_csv(staging: LocalStaging, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_audit(staging.uri, source_run_id="s4", fmt="csv") == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 1
    rec = rows[0]
    assert rec["source_run_id"] == "s4"
    assert rec["state"] == "failed"
    assert rec["failed_stage"] == "import"
    assert rec["error"] == "PermanentError: boom"
    assert rec["target_run_id"] == ""
    assert rec["start_time"] == str(T0)
    assert json.loads(rec["mlflow_tags"]) == {
        "mlflow.user": "alice",
        "mlflow.source.name": "train.py",
    }


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"source_run_id": "nope"}, "source id nope"),
        ({"target_run_id": "nope"}, "target id nope"),
    ],
)
def test_unknown_run_id(
    staging: LocalStaging, capsys: pytest.CaptureFixture[str], kwargs: dict, words: str
) -> None:
    assert run_audit(staging.uri, fmt="json", **kwargs) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert words in err
    assert staging.uri in err
    assert err.startswith("migrator: ")


def test_source_id_is_not_looked_up_as_target_id(
    staging: LocalStaging, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_audit(staging.uri, source_run_id="t-s1") == 1
    assert run_audit(staging.uri, target_run_id="s1") == 1


# --------------------------------------------------------------------------- summary


def test_summary_csv(staging: LocalStaging, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_audit(staging.uri, fmt="csv") == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["object_type", "state", "count"]
    body = {(t, s): int(n) for t, s, n in rows[1:]}
    assert body == {
        ("experiment", "imported"): 1,
        ("experiment", "tagged"): 1,
        ("run", "exported"): 1,
        ("run", "failed"): 1,
        ("run", "imported"): 1,
        ("run", "tagged"): 2,
        # only `match` counts as verified
        ("experiment", "verified"): 1,
        ("run", "verified"): 2,
        # s1 100 + s2 20 (newest row) + s3 1 + s4 none + s5 100
        ("run", "artifact_bytes"): 221,
    }
    assert len(rows) == 1 + len(body)  # no duplicate rows


def test_summary_json(staging: LocalStaging, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_audit(staging.uri, fmt="json") == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts == {
        "experiments": {"tagged": 1, "imported": 1},
        "runs": {"tagged": 2, "imported": 1, "failed": 1, "exported": 1},
        "verified": {"experiment": 1, "run": 2},
        "artifact_bytes": 221,
        "logged_models": {},
        "registered_models": {},
        "model_versions": {},
        "prompts": {},
        "prompt_versions": {},
        "traces": {},
    }


def test_summary_table(staging: LocalStaging, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_audit(staging.uri) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["object", "state", "count"]
    assert ["run", "tagged", "2"] in [ln.split() for ln in lines]
    assert ["run", "verified", "2"] in [ln.split() for ln in lines]
    assert lines[-1] == "artifact bytes: 221"


def test_summary_without_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    st = LocalStaging(str(tmp_path / "s"))
    t = runs_table(st)
    t.append([_run("a", artifact_bytes=2_000_000)])
    t.compact()
    assert run_audit(st.uri, fmt="csv") == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows == [
        ["object_type", "state", "count"],
        ["run", "tagged", "1"],
        ["run", "artifact_bytes", "2000000"],
    ]
    assert run_audit(st.uri) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "artifact bytes: 2,000,000"


def test_summary_of_empty_staging(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_audit(str(tmp_path / "empty"), fmt="json") == 0
    assert json.loads(capsys.readouterr().out) == {
        "experiments": {},
        "runs": {},
        "verified": {},
        "artifact_bytes": 0,
        "logged_models": {},
        "registered_models": {},
        "model_versions": {},
        "prompts": {},
        "prompt_versions": {},
        "traces": {},
    }


def test_audit_writes_nothing_and_leaves_no_ledger(
    staging: LocalStaging, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Each manifest is read into an on-disk ledger (bounded memory): the journal is not
    # folded (an audit never writes to staging) and the ledgers go when the audit ends.
    import tempfile

    ledgers = tmp_path / "tmp"
    ledgers.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(ledgers))
    before = {p: p.read_bytes() for p in Path(staging.uri).rglob("*") if p.is_file()}

    assert run_audit(staging.uri, target_run_id="t-s2", fmt="json") == 0
    assert json.loads(capsys.readouterr().out)["artifact_bytes"] == 20  # the journal's row
    assert run_audit(staging.uri, fmt="json") == 0
    assert run_audit(staging.uri, model="nope") == 1

    after = {p: p.read_bytes() for p in Path(staging.uri).rglob("*") if p.is_file()}
    assert after == before
    assert list(ledgers.iterdir()) == []


def test_model_and_its_versions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from migrator.manifest import model_versions_table, models_table

    st = LocalStaging(str(tmp_path / "staging"))
    models = models_table(st)
    models.append([{"name": "churn", "target_name": "churn", "n_versions": 3, "state": "tagged"},
                   {"name": "other", "target_name": "other", "n_versions": 1, "state": "tagged"}])
    models.compact()
    versions = model_versions_table(st)
    versions.append([
        {"name": "churn", "version": v, "target_version": v, "state": "tagged",
         "run_id": f"r{v}"} for v in (10, 2, 1)
    ] + [{"name": "other", "version": 2, "target_version": 1, "state": "failed"}])
    versions.compact()

    assert run_audit(st.uri, model="churn", fmt="json") == 0
    recs = json.loads(capsys.readouterr().out)
    assert [r.get("version") for r in recs] == [None, 1, 2, 10]  # the model, then by number
    assert recs[0]["n_versions"] == 3
    assert run_audit(st.uri, model="churn", version=2, fmt="json") == 0
    assert [r["run_id"] for r in json.loads(capsys.readouterr().out)] == ["r2"]
    assert run_audit(st.uri, model="churn", version=3) == 1
    assert "version 3 of model 'churn'" in capsys.readouterr().err
