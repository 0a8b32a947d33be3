"""What `scope` lists on the source, and in how many requests, against fakes of the source."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from migrator import scope
from migrator.config import Options


@pytest.fixture
def listed(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The experiment ids of each listing request (runs, logged models or traces)."""
    calls: list[list[str]] = []

    def listing(uri: str, experiment_ids: Sequence[str], *rest: Any) -> Iterator[str]:
        calls.append(list(experiment_ids))
        yield from (f"object of {e}" for e in experiment_ids if int(e) % 50 == 0)

    monkeypatch.setattr(scope, "source_has", lambda opts, feature: True)
    monkeypatch.setattr(scope.mlflow_io, "iter_logged_models", listing)
    monkeypatch.setattr(scope.traces_io, "iter_trace_infos", listing)
    monkeypatch.setattr(scope.mlflow_io, "iter_runs", listing)
    return calls


def test_runs_are_listed_a_hundred_experiments_per_search(listed: list[list[str]]) -> None:
    """A server of thousands of experiments, most of them small, costs a search of runs per
    hundred experiments, not one each (the migration, its progress count, plan and verify)."""
    ids = [str(i) for i in range(250)]
    found = list(scope.source_runs(Options(source="http://src"), ids))
    assert found == [f"object of {i}" for i in range(0, 250, 50)]
    assert [len(c) for c in listed] == [100, 100, 50]
    assert [e for c in listed for e in c] == ids


def test_logged_models_are_listed_a_hundred_experiments_per_search(
    listed: list[list[str]],
) -> None:
    ids = [str(i) for i in range(250)]
    found = list(scope.source_logged_models(Options(source="http://src"), ids))
    assert found == [f"object of {i}" for i in range(0, 250, 50)]
    assert [len(c) for c in listed] == [100, 100, 50]
    assert [e for c in listed for e in c] == ids


def test_traces_are_listed_a_hundred_experiments_per_search_leaving_out_deleted_ones(
    listed: list[list[str]],
) -> None:
    stages = {str(i): "deleted" if i % 2 else "active" for i in range(300)}
    found = list(scope.source_traces(Options(source="http://src"), stages))
    assert found == [f"object of {i}" for i in range(0, 300, 50)]
    assert [len(c) for c in listed] == [100, 50]  # the 150 active ones
    assert all(int(e) % 2 == 0 for c in listed for e in c)


def test_nothing_is_listed_on_a_server_without_the_kind(
    listed: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scope, "source_has", lambda opts, feature: False)
    opts = Options(source="http://src")
    assert list(scope.source_logged_models(opts, ["1"])) == []
    assert list(scope.source_traces(opts, {"1": "active"})) == []
    assert listed == []


@pytest.mark.parametrize("across", [True, False])
def test_scorers_are_listed_a_hundred_experiments_per_request_where_the_server_can(
    monkeypatch: pytest.MonkeyPatch, across: bool
) -> None:
    """A server that lists scorers across experiments is asked once per hundred active
    experiments; an earlier one once per experiment. Either way a scorer comes with the id of
    its experiment, and none is read from a deleted experiment (nor taken from one it did not
    ask for)."""
    from types import SimpleNamespace

    from migrator.capabilities import SCORERS_ACROSS_EXPERIMENTS

    def scorer(e: str) -> Any:
        return SimpleNamespace(experiment_id=int(e), scorer_name=f"judge of {e}")

    calls: list[list[str]] = []

    def across_experiments(uri: str, experiment_ids: Sequence[str]) -> Iterator[Any]:
        for chunk in (experiment_ids[i : i + 100] for i in range(0, len(experiment_ids), 100)):
            calls.append(list(chunk))
            yield from (scorer(e) for e in chunk if int(e) % 50 == 0)
            yield scorer("100000")  # not asked for: left out

    class Store:
        def list_scorers(self, experiment_id: str) -> list[Any]:
            calls.append([experiment_id])
            return [scorer(experiment_id)] if int(experiment_id) % 50 == 0 else []

    monkeypatch.setattr(
        scope, "source_has", lambda opts, f: across or f != SCORERS_ACROSS_EXPERIMENTS
    )
    monkeypatch.setattr(scope.mlflow_io, "scorers_across", across_experiments)
    monkeypatch.setattr(scope.mlflow_io, "tracking_store", lambda uri: Store())
    stages = {str(i): "deleted" if i % 4 == 3 else "active" for i in range(300)}
    found = list(scope.source_scorers(Options(source="http://src"), stages))
    assert [(e, sv.scorer_name) for e, sv in found] == [
        (str(i), f"judge of {i}") for i in range(0, 300, 50)
    ]
    assert [len(c) for c in calls] == ([100, 100, 25] if across else [1] * 225)
    assert all(stages[e] == "active" for c in calls for e in c)
