"""How an export task reads its runs (`export_runs._read_runs`), against fakes of the source."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from migrator import scope
from migrator.config import Options
from migrator.stages import export_runs


def run(run_id: str, exp: str, full: bool = False) -> Any:
    return SimpleNamespace(info=SimpleNamespace(run_id=run_id, experiment_id=exp), full=full)


ROWS = [
    {"source_run_id": "a", "source_experiment_id": "1"},
    {"source_run_id": "b", "source_experiment_id": "2"},
    {"source_run_id": "gone", "source_experiment_id": "2"},
]


class Source:
    """The calls a task makes, recorded; `holding`: experiments with a logged model now."""

    def __init__(self, holding: set[str]) -> None:
        self.holding = holding
        self.calls: list[str] = []

    def get_run(self, run_id: str) -> Any:
        self.calls.append(f"get_run {run_id}")
        exp = next(r["source_experiment_id"] for r in ROWS if r["source_run_id"] == run_id)
        return run(run_id, exp, True)

    def get_run_or_none(self, uri: str, run_id: str) -> Any:
        if run_id == "gone":  # the source answers that it does not exist
            self.calls.append(f"get_run {run_id}")
            return None
        return self.get_run(run_id)

    def search(self, uri: str, exps: list[str], ids: list[str]) -> list[Any]:
        self.calls.append("search")
        found = [r for r in ROWS if r["source_run_id"] != "gone"]
        return [run(r["source_run_id"], r["source_experiment_id"]) for r in found]

    def has_logged_models(self, uri: str, exps: list[str]) -> bool:
        self.calls.append(f"has_logged_models {exps}")
        return bool(set(exps) & self.holding)


@pytest.fixture
def source(monkeypatch: pytest.MonkeyPatch) -> Source:
    src = Source({"2"})
    monkeypatch.setattr(export_runs, "get_run_or_none", src.get_run_or_none)
    monkeypatch.setattr(export_runs, "search_runs_by_id", src.search)
    monkeypatch.setattr(scope.mlflow_io, "has_logged_models", src.has_logged_models)
    monkeypatch.setattr(scope, "source_has", lambda opts, feature: True)
    monkeypatch.setattr(export_runs, "client", lambda uri: src)
    return src


def test_runs_read_in_full_are_each_read_once_and_never_searched(source: Source) -> None:
    runs = export_runs._read_runs(ROWS, Options(source="http://src", runs_read_in_full=True))
    assert sorted(runs) == ["a", "b"]  # "gone" is left to its row, which fails naming it
    assert all(r.full for r in runs.values())
    assert source.calls == ["get_run a", "get_run b", "get_run gone"]


def test_a_search_then_a_full_read_of_runs_whose_experiment_now_holds_a_model(
    source: Source,
) -> None:
    runs = export_runs._read_runs(ROWS, Options(source="http://src"))
    assert sorted(runs) == ["a", "b"]
    assert (runs["a"].full, runs["b"].full) == (False, True)
    # asked after the search, so a model made in between is seen
    assert source.calls == ["search", "has_logged_models ['1', '2']", "has_logged_models ['1']",
                            "has_logged_models ['2']", "get_run b"]


def test_a_job_of_several_experiments_none_with_a_model_asks_once(source: Source) -> None:
    """Runs listed a hundred experiments per search come to a job from several experiments:
    one search says that none holds a logged model."""
    source.holding = set()
    runs = export_runs._read_runs(ROWS, Options(source="http://src"))
    assert not any(r.full for r in runs.values())
    assert source.calls == ["search", "has_logged_models ['1', '2']"]


def test_runs_the_enumeration_found_are_not_searched_again(
    source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = run("a", "1")
    rows = [{**ROWS[0], export_runs.SOURCE_RUN: found}, ROWS[1], ROWS[2]]
    searched: list[list[str]] = []

    def search(uri: str, exps: list[str], ids: list[str]) -> list[Any]:
        searched.append(ids)
        return source.search(uri, exps, ids)[1:]  # b only ("gone" is not on the source)

    monkeypatch.setattr(export_runs, "search_runs_by_id", search)
    runs = export_runs._read_runs(rows, Options(source="http://src"))
    assert runs["a"] is found and sorted(runs) == ["a", "b"]
    assert searched == [["b", "gone"]]  # only the rows that came without their run
    assert source.calls[-2:] == ["has_logged_models ['2']", "get_run b"]


def test_a_job_whose_runs_all_came_with_it_makes_no_search(source: Source) -> None:
    rows = [{**r, export_runs.SOURCE_RUN: run(r["source_run_id"], r["source_experiment_id"])}
            for r in ROWS[:1]]
    runs = export_runs._read_runs(rows, Options(source="http://src"))
    assert list(runs) == ["a"]
    assert source.calls == ["has_logged_models ['1']"]


def test_runs_read_in_full_ignore_what_the_enumeration_found(source: Source) -> None:
    rows = [{**ROWS[0], export_runs.SOURCE_RUN: run("a", "1")}]
    runs = export_runs._read_runs(rows, Options(source="http://src", runs_read_in_full=True))
    assert runs["a"].full and source.calls == ["get_run a"]
