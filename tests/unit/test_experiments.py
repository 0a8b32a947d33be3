"""Importing an experiment against a fake target client: created with one request where it is
new, adopted by name where the target has it already (the server keeps names unique)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from mlflow.exceptions import MlflowException

from migrator.config import Options
from migrator.stages import experiments
from migrator.staging import open_staging


class Target:
    """A tracking client holding experiments by name, logging every call."""

    def __init__(self, existing: dict[str, dict[str, str]]) -> None:
        self.by_name = {
            name: SimpleNamespace(
                experiment_id=str(i), name=name, lifecycle_stage="active", tags=dict(tags)
            )
            for i, (name, tags) in enumerate(existing.items(), start=1)
        }
        self.calls: list[str] = []

    def get_experiment_by_name(self, name: str) -> Any:
        self.calls.append("get_experiment_by_name")
        return self.by_name.get(name)

    def create_experiment(self, name: str, tags: dict[str, str]) -> str:
        self.calls.append("create_experiment")
        if name in self.by_name:
            raise MlflowException(f"{name} already exists", error_code="RESOURCE_ALREADY_EXISTS")
        exp_id = str(len(self.by_name) + 1)
        self.by_name[name] = SimpleNamespace(
            experiment_id=exp_id, name=name, lifecycle_stage="active", tags=dict(tags)
        )
        return exp_id

    def get_experiment(self, exp_id: str) -> Any:
        self.calls.append("get_experiment")
        return next(e for e in self.by_name.values() if e.experiment_id == exp_id)

    def set_experiment_tag(self, exp_id: str, key: str, value: str) -> None:
        self.calls.append(f"set_experiment_tag {key}")
        next(e for e in self.by_name.values() if e.experiment_id == exp_id).tags[key] = value


def _source_experiment() -> Any:
    return SimpleNamespace(
        experiment_id="7",
        name="churn",
        artifact_location="mlflow-artifacts:/7",
        lifecycle_stage="active",
        creation_time=1,
        last_update_time=2,
        tags={"team": "risk"},
    )


def _import(tmp_path: Any, target: Target, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setattr(experiments, "client", lambda uri: target)
    staging = open_staging(str(tmp_path))
    exp = _source_experiment()
    row = experiments.export_experiment(exp, staging)
    opts = Options(target="http://tgt", import_source_tags=False)
    return experiments.import_experiment(row, opts, staging)


def test_a_new_experiment_is_created_without_a_lookup_first(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = Target({})
    row = _import(tmp_path, target, monkeypatch)
    assert target.calls == ["create_experiment"]  # no read back: it is as the create made it
    assert target.by_name["churn"].tags == {"team": "risk"}
    assert row["target_experiment_id"] == target.by_name["churn"].experiment_id


def test_an_experiment_the_target_has_by_name_is_adopted_not_made_twice(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An earlier attempt's (killed before it was recorded) or the target's own."""
    target = Target({"churn": {"team": "old"}})
    row = _import(tmp_path, target, monkeypatch)
    assert target.calls == ["create_experiment", "get_experiment_by_name", "set_experiment_tag team"]
    assert len(target.by_name) == 1 and target.by_name["churn"].tags == {"team": "risk"}
    assert row["target_experiment_id"] == "1"


def test_migrate_imports_from_the_document_it_staged_without_reading_it_back(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = Target({})
    monkeypatch.setattr(experiments, "client", lambda uri: target)
    staging = open_staging(str(tmp_path))

    def no_read(key: str) -> bytes:
        raise AssertionError(f"read back {key}")

    monkeypatch.setattr(staging, "read_bytes", no_read)
    exp = _source_experiment()
    opts = Options(target="http://tgt", import_source_tags=True)
    row = experiments.migrate_experiment(exp, {}, opts, staging)
    assert row["state"] == "imported" and row["target_experiment_id"] == "1"
    assert target.by_name["churn"].tags["mlflow_exim.field.experiment_id"] == "7"
    assert list(tmp_path.rglob("experiment.json"))  # staged as `export` stages it


def _moving(make: Any, n: int, concurrency: int) -> tuple[Any, list[Any]]:
    """An experiment driver (no migration behind it) and `n` experiments, each to go through
    `make` as its stage."""
    from migrator.experiment_driver import ExperimentDriver
    from migrator.fanout import Stage

    driver = ExperimentDriver.__new__(ExperimentDriver)
    driver.m = SimpleNamespace(opts=Options(concurrency=concurrency))  # type: ignore[assignment]
    step = Stage("migrate", make)
    return driver, [(step, {"source_experiment_id": str(i)}) for i in range(n)]


def test_the_runs_of_a_hundred_experiments_move_while_the_next_hundred_are_made() -> None:
    """`ExperimentDriver.move` makes a hundred at a time; taken through `ahead`, as the driver
    does, the third hundred is made only once the loop has the first (its runs are moving)."""
    import threading

    from migrator.background import ahead

    first_taken = threading.Event()
    waited: list[bool] = []

    def make(row: dict[str, Any], opts: Options) -> dict[str, Any]:
        if row["source_experiment_id"] == "200":
            waited.append(first_taken.wait(5))
        return {**row, "state": "imported"}

    driver, work = _moving(make, 250, concurrency=4)
    work[5] = (None, {"source_experiment_id": "5", "state": "failed"})  # left as it is
    chunks = []
    for chunk in ahead(driver.move(work), "experiments"):
        first_taken.set()
        chunks.append(chunk)
    assert [len(c) for c in chunks] == [100, 100, 50]
    assert waited == [True]
    rows = [r for c in chunks for r in c]
    assert [r["source_experiment_id"] for r in rows] == [str(i) for i in range(250)]
    assert rows[5]["state"] == "failed" and rows[6]["state"] == "imported"


def test_an_experiment_an_earlier_command_made_is_looked_up_not_created_again(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-run: the manifest knows the target, so no refused create (and no log of one)."""
    target = Target({"churn": {"team": "risk"}})
    monkeypatch.setattr(experiments, "client", lambda uri: target)
    opts = Options(target="http://tgt", import_source_tags=False)
    known = {"source_experiment_id": "7", "target_experiment_id": "1"}
    row = experiments.migrate_experiment(_source_experiment(), known, opts, open_staging(str(tmp_path)))
    assert target.calls == ["get_experiment_by_name"]
    assert row["target_experiment_id"] == "1" and row["state"] == "imported"


def test_a_migrate_that_fails_keeps_what_the_experiment_was(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver plans with the source's fields: a row that fails in its stage still holds
    the lifecycle stage (`finish` deletes a deleted one after an `import`), tags and times."""
    from migrator import experiment_driver
    from migrator.experiment_driver import ExperimentDriver

    class Refusing(Target):
        def create_experiment(self, name: str, tags: dict[str, str]) -> str:
            raise MlflowException("not allowed", error_code="PERMISSION_DENIED")

    monkeypatch.setattr(experiments, "client", lambda uri: Refusing({}))
    exp = _source_experiment()
    exp.lifecycle_stage = "deleted"
    monkeypatch.setattr(experiment_driver.scope, "source_experiments", lambda opts: [exp])
    driver = ExperimentDriver.__new__(ExperimentDriver)
    staging = open_staging(str(tmp_path))
    opts = Options(target="http://tgt", import_source_tags=False, max_attempts=1)
    driver.m = SimpleNamespace(opts=opts, staging=staging)  # type: ignore[assignment]
    driver.rows = {}
    [row] = driver._through(driver.plan(do_export=True, do_import=True))
    assert row["state"] == "failed" and row["failed_stage"] == "import"
    assert "not allowed" in row["error"]
    assert row["lifecycle_stage"] == "deleted" and row["tags"] == {"team": "risk"}
    assert row["creation_time"] == 1 and row["artifact_location"] == "mlflow-artifacts:/7"
    assert row["target_experiment_id"] is None


def test_a_loop_that_stops_early_starts_no_more_experiments() -> None:
    """An error or an interrupt ends the driver's loop while the next hundred is being made:
    the experiments of that hundred not yet started are not started (the interpreter would
    wait for them at exit), and nothing more is made after it."""
    import threading
    import time

    from migrator.background import ahead

    started, closed = threading.Event(), threading.Event()
    made: list[str] = []

    def make(row: dict[str, Any], opts: Options) -> dict[str, Any]:
        made.append(row["source_experiment_id"])
        if row["source_experiment_id"] == "100":  # the first of the hundred made ahead
            started.set()
            assert closed.wait(5)
        return {**row, "state": "imported"}

    driver, work = _moving(make, 300, concurrency=1)
    stopped = threading.Event()
    taken = ahead(driver.move(work, stopped), "experiments-stop", stopped=stopped)
    assert len(next(taken)) == 100
    assert started.wait(5)
    taken.close()  # the loop stops: its `finally` sets `stopped`
    assert stopped.is_set()
    closed.set()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(
        t.name == "ahead-experiments-stop" and t.is_alive() for t in threading.enumerate()
    ):
        time.sleep(0.05)
    assert made == [str(i) for i in range(101)]
    assert not [t for t in threading.enumerate() if t.name == "ahead-experiments-stop"]


@pytest.mark.parametrize(
    ("version", "limit"),
    [("3.18.0", 20_000), ("3.16.0rc1", 20_000), ("4.0", 20_000), ("3.15.2", 5000), ("", 5000)],
)
def test_a_tag_value_is_cut_to_the_limit_of_the_targets_mlflow(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, version: str, limit: int
) -> None:
    """MLflow 3.16 took experiment tag values from 5,000 characters to 20,000: a newer
    source's longer value (a description, say) is cut to what the target takes, and verify
    expects it so."""
    from migrator.capabilities import ServerCapabilities

    target = Target({})
    monkeypatch.setattr(experiments, "client", lambda uri: target)
    staging = open_staging(str(tmp_path))
    exp = _source_experiment()
    exp.tags = {"mlflow.note.content": "d" * 25_000}
    caps = (ServerCapabilities("http://tgt", version, frozenset()),)
    opts = Options(target="http://tgt", import_source_tags=False, capabilities=caps)
    row = experiments.import_experiment(experiments.export_experiment(exp, staging), opts, staging)
    assert target.by_name["churn"].tags == {"mlflow.note.content": "d" * limit}
    sides = {"http://src": exp, "http://tgt": target.by_name["churn"]}
    monkeypatch.setattr(
        "migrator.mlflow_io.get_experiment_or_none", lambda uri, exp_id: sides[uri]
    )
    report = experiments.verify_experiment(row, opts.replace(source="http://src"))
    assert report["outcome"] == "match", report
