"""The driver's pure decisions (migrator.scope.matches / next_step)."""

from __future__ import annotations

import functools

import pytest

from migrator.scope import matches
from migrator.states import failed_at, next_step, still_moving


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (None, "export"),
        ({"state": "exported"}, "import"),
        ({"state": "imported"}, "tag"),
        ({"state": "tagged"}, "done"),
        ({"state": "failed", "failed_stage": "export"}, "export"),
        ({"state": "failed", "failed_stage": "import"}, "import"),
        ({"state": "failed", "failed_stage": "tag"}, "tag"),
        ({"state": "failed", "failed_stage": None}, "export"),
        ({"state": "failed"}, "export"),
        ({"state": "failed", "failed_stage": "finish"}, "export"),
        ({"state": None}, "export"),
        ({}, "export"),
        ({"state": "weird"}, "export"),
    ],
)
def test_next_step(row: dict | None, expected: str) -> None:
    assert next_step(row) == expected


@pytest.mark.parametrize(
    ("row", "moving"),
    [
        ({"state": "exported"}, True),
        ({"state": "failed", "error": "TransientError: 503"}, True),
        ({"state": "failed", "error": "task lost: worker died"}, True),
        ({"state": "failed", "error": "PermanentError: waits for its source run r1, which …"}, True),
        ({"state": "failed", "error": "waits for its parent run r1, which has not …"}, True),
        ({"state": "failed", "error": "PermanentError: 400 bad value"}, False),
        ({"state": "failed", "error": "PermanentError: it waits for nothing"}, False),
        ({"state": "imported", "target_run_id": "t1"}, False),
        ({"state": "tagged", "target_model_id": "m-1"}, False),
        # a logged model's row holds its source run's target: the model has none yet
        ({"state": "failed", "error": "TransientError: 503", "target_run_id": "t-run"}, True),
    ],
)
def test_still_moving(row: dict, moving: bool) -> None:
    """An object failed waiting for another one moves once that one does: what points at it
    waits too."""
    assert still_moving(row, scope_complete=True) is moving


def test_a_run_waits_for_the_logged_models_it_links_to_while_they_still_move() -> None:
    """A tagged run is not visited again, so a link to a logged model still moving must wait,
    or it is lost (found by verify as a missing link)."""
    from types import SimpleNamespace

    from migrator.ledger import Targets
    from migrator.pipeline import Migration
    from migrator.run_driver import RunDriver

    logged_rows = {
        "m-moving": {"state": "failed", "error": "PermanentError: waits for its source run r0"},
        "m-dead": {"state": "failed", "error": "PermanentError: 400"},
        "m-done": {"state": "tagged", "target_model_id": "t-m"},
        # its create failed ambiguously after its source run landed (the row names that
        # run's target): seen under faults, the run was tagged without the link, for good
        "m-run-landed": {
            "state": "failed",
            "error": "TransientError: create of the logged model failed ambiguously",
            "source_run_id": "r-train",
            "target_run_id": "t-train",
        },
    }
    driver = object.__new__(RunDriver)
    driver.rows = {  # type: ignore[assignment]
        "p-moving": {"state": "failed", "error": "TransientError: 503"},
        "p-done": {"state": "tagged", "target_run_id": "t-p"},
    }
    driver.targets = Targets(driver.rows, "target_run_id")  # type: ignore[arg-type]
    driver.m = m = SimpleNamespace(  # type: ignore[assignment]
        scope_complete=True,
        logged=SimpleNamespace(rows=logged_rows, targets=Targets(logged_rows, "target_model_id")),  # type: ignore[arg-type]
    )
    m.link = functools.partial(Migration.link, m)

    def waits(parent: str | None, *models: str) -> str | None:
        row = {"source_parent_run_id": parent,
               "model_links": [{"kind": "input", "model_id": m} for m in models]}
        item, waits = driver.linked(row)
        linked = {k["model_id"] for k in item.get("target_model_links") or []}
        assert linked == ({"t-m"} if "m-done" in models else set())  # what has a target
        assert item.get("target_parent_run_id") == ("t-p" if parent == "p-done" else None)
        return waits

    assert waits(None, "m-done", "m-dead") is None  # linked now; the dead one is done without
    assert waits(None, "m-done", "m-moving") == "its logged model m-moving"
    assert waits(None, "m-run-landed") == "its logged model m-run-landed"
    assert waits("p-moving") == "its parent run p-moving"
    assert waits("p-done", "m-done") is None
    assert waits("p-unknown", "m-unknown") is None  # outside a complete scope


def test_next_step_ignores_stale_failed_stage_when_not_failed() -> None:
    # a row that failed at import earlier and was then imported goes on to tag
    assert next_step({"state": "imported", "failed_stage": "import", "error": "old"}) == "tag"
    assert next_step({"state": "tagged", "failed_stage": "tag"}) == "done"


def test_empty_filter_matches_everything() -> None:
    assert matches((), "1", "anything")
    assert matches((), "", "")


def test_matches_by_id() -> None:
    assert matches(("17",), "17", "My_Experiment")
    assert not matches(("17",), "170", "My_Experiment")
    assert not matches(("1",), "17", "My_Experiment")


def test_matches_by_name() -> None:
    assert matches(("My_Experiment",), "17", "My_Experiment")
    assert not matches(("my_experiment",), "17", "My_Experiment")  # case-sensitive
    assert not matches(("My",), "17", "My_Experiment")  # no substring match
    assert matches(("/Users/a@b.com/proj",), "3", "/Users/a@b.com/proj")


def test_matches_by_glob() -> None:
    assert matches(("My_*",), "17", "My_Experiment")
    assert matches(("/Users/*/proj",), "3", "/Users/a@b.com/proj")
    assert matches(("exp-?",), "3", "exp-7")
    assert not matches(("exp-?",), "3", "exp-10")
    assert not matches(("Other*",), "17", "My_Experiment")
    # globs apply to names, not ids
    assert not matches(("1*",), "17", "My_Experiment")


def test_matches_any_of_several_patterns() -> None:
    pats = ("nope", "42", "team-*")
    assert matches(pats, "42", "x")
    assert matches(pats, "1", "team-a")
    assert not matches(pats, "1", "other")


def test_matches_exact_name_with_brackets() -> None:
    assert matches(("exp [v2]",), "5", "exp [v2]")


def test_a_kind_the_server_refuses_fails_alone_and_is_named() -> None:
    from types import SimpleNamespace

    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, TEMPORARILY_UNAVAILABLE

    from migrator.errors import TransientError
    from migrator.pipeline import Migration
    from migrator.summary import Summary

    m = SimpleNamespace(summary=Summary("migrate"), scope_complete=True)

    def refused() -> None:
        raise MlflowException("Permission denied", error_code=PERMISSION_DENIED)

    ran: list[str] = []
    Migration.kind(m, "evaluation datasets", refused)  # type: ignore[arg-type]
    Migration.kind(m, "scorers", lambda: ran.append("scorers"))  # type: ignore[arg-type]
    assert ran == ["scorers"]  # the next kind still moves
    assert m.scope_complete is False  # what points at the failed kind waits
    [row] = m.summary.failed
    assert row["object"] == "evaluation datasets" and row["failed_stage"] == "list"
    assert "PERMISSION_DENIED" in row["error"]
    assert not m.summary.ok
    assert "evaluation datasets: list: PermanentError: PERMISSION_DENIED" in m.summary.render()

    def away() -> None:  # a server that is away is not one kind's failure: the command stops
        raise MlflowException("down", error_code=TEMPORARILY_UNAVAILABLE)

    with pytest.raises(TransientError):
        Migration.kind(m, "traces", away)  # type: ignore[arg-type]


def test_summary_counts_every_failure_and_keeps_only_the_first_to_list() -> None:
    from migrator.summary import SHOWN, Summary

    s = Summary(command="migrate")
    assert s.ok
    s.add_failed(
        {"source_run_id": f"r{i}", "state": "failed", "failed_stage": "import", "error": "boom"}
        for i in range(SHOWN * 3 + 1)
    )
    assert not s.ok and s.n_failed == SHOWN * 3 + 1 and len(s.failed) == SHOWN
    text = s.render()
    assert f"FAILED ({SHOWN * 3 + 1}):" in text
    assert f"… and {SHOWN * 2 + 1} more (see manifests)" in text
    assert text.count(": import: boom") == SHOWN


@pytest.mark.parametrize(
    ("row", "at_import"),
    [
        ({"state": "failed", "failed_stage": "import"}, True),
        ({"state": "failed", "failed_stage": "export"}, False),
        ({"state": "failed"}, False),
        # a stage left on a row that has since moved on is not a failure
        ({"state": "imported", "failed_stage": "import"}, False),
    ],
)
def test_failed_at(row: dict, at_import: bool) -> None:
    assert failed_at(row, "import") is at_import


def test_a_driver_that_fails_to_load_releases_the_others(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drivers load their ledgers side by side: one that fails (a manifest it cannot
    read) fails the command, and the ledgers the others opened are removed, not left."""
    import tempfile

    from migrator import pipeline
    from migrator.config import Options
    from migrator.errors import StagingError
    from migrator.fanout import InlineExecutor

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()

    def unreadable(m: object) -> None:
        raise StagingError("manifests/runs.parquet: not a Parquet file")

    opts = Options(staging=str(tmp_path / "staging"))
    with monkeypatch.context() as patched, pytest.raises(StagingError, match="runs.parquet"):
        patched.setattr(pipeline, "RunDriver", unreadable)
        pipeline.Migration(opts, InlineExecutor(), "migrate")
    assert not list((tmp_path / "tmp").glob("migrator-ledger-*"))
    m = pipeline.Migration(opts, InlineExecutor(), "migrate")  # and without the fault
    assert len(list((tmp_path / "tmp").glob("migrator-ledger-*"))) >= 8
    m.release()
    assert not list((tmp_path / "tmp").glob("migrator-ledger-*"))


def test_the_inventory_runs_aside_and_a_count_the_source_kept_failing_is_said_not_raised() -> None:
    """The inventory runs beside the whole migration; the summary takes its lines at the end.
    A source that kept failing its list calls (retries spent) is said there: the migration it
    ran beside is done. Any other error is a bug, and raised."""
    import threading

    from migrator.background import aside
    from migrator.errors import TransientError
    from migrator.pipeline import _inventory_lines

    release = threading.Event()

    def slow() -> list[str]:
        release.wait(5)
        return ["  webhooks 0  why"]

    pending = aside(slow)
    assert not pending.done()  # the caller goes on while it counts
    release.set()
    assert _inventory_lines(pending) == ["  webhooks 0  why"]
    assert _inventory_lines(None) == []

    def failing() -> list[str]:
        raise TransientError("HTTP 503 five times", obj="server http://src", stage="driver")

    (line,) = _inventory_lines(aside(failing))
    assert "not counted (HTTP 503 five times)" in line and "migrator plan" in line

    def broken() -> list[str]:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        _inventory_lines(aside(broken))
