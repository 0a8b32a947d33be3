"""The re-sync fingerprint (migrator.mlflow_io.run_fingerprint) and artifact_sizes, with fakes."""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import pytest

from migrator import mlflow_io
from migrator.mlflow_io import artifact_sizes, iter_artifact_files, run_fingerprint


def make_run(
    *,
    tags: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    metrics: dict[str, float] | None = None,
    **info: Any,
) -> SimpleNamespace:
    base = {
        "run_id": "r1",
        "status": "RUNNING",
        "end_time": None,
        "start_time": 1_700_000_000_000,
        "run_name": "train",
        "lifecycle_stage": "active",
        "user_id": "alice",
    }
    base.update(info)
    return SimpleNamespace(
        info=SimpleNamespace(**base),
        data=SimpleNamespace(
            tags=dict(tags if tags is not None else {"team": "a", "mlflow.user": "alice"}),
            params=dict(params if params is not None else {"lr": "0.1", "epochs": "3"}),
            metrics=dict(metrics if metrics is not None else {"loss": 0.5, "acc": 0.75}),
        ),
    )


ARTIFACTS = [("model/weights.bin", 10), ("notes.txt", 5)]


def test_fingerprint_is_a_stable_hex_digest() -> None:
    fp = run_fingerprint(make_run(), ARTIFACTS)
    assert fp == run_fingerprint(make_run(), list(ARTIFACTS))
    assert len(fp) == 32
    int(fp, 16)  # hex


def test_fingerprint_ignores_dict_and_list_order() -> None:
    a = make_run(
        tags={"team": "a", "mlflow.user": "alice"},
        params={"lr": "0.1", "epochs": "3"},
        metrics={"loss": 0.5, "acc": 0.75},
    )
    b = make_run(
        tags={"mlflow.user": "alice", "team": "a"},
        params={"epochs": "3", "lr": "0.1"},
        metrics={"acc": 0.75, "loss": 0.5},
    )
    assert list(a.data.tags) != list(b.data.tags)  # really a different order
    assert run_fingerprint(a, ARTIFACTS) == run_fingerprint(b, list(reversed(ARTIFACTS)))


def _changed(change: Any) -> SimpleNamespace:
    run = make_run()
    change(run)
    return run


CHANGES = {
    "status": lambda r: setattr(r.info, "status", "FINISHED"),
    "end_time": lambda r: setattr(r.info, "end_time", 1_700_000_060_000),
    "run_name": lambda r: setattr(r.info, "run_name", "renamed"),
    "lifecycle_stage": lambda r: setattr(r.info, "lifecycle_stage", "deleted"),
    "tag_value": lambda r: r.data.tags.__setitem__("team", "b"),
    "new_tag": lambda r: r.data.tags.__setitem__("mlflow.note.content", "x"),
    "removed_tag": lambda r: r.data.tags.pop("team"),
    "param_value": lambda r: r.data.params.__setitem__("lr", "0.2"),
    "new_param": lambda r: r.data.params.__setitem__("seed", "1"),
    "latest_metric_value": lambda r: r.data.metrics.__setitem__("loss", 0.4),
    "latest_metric_tiny_change": lambda r: r.data.metrics.__setitem__("loss", 0.5000000000000001),
    "latest_metric_nan": lambda r: r.data.metrics.__setitem__("loss", float("nan")),
    "new_metric": lambda r: r.data.metrics.__setitem__("f1", 0.1),
}


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_fingerprint_changes_with_visible_state(name: str) -> None:
    before = run_fingerprint(make_run(), ARTIFACTS)
    assert run_fingerprint(_changed(CHANGES[name]), ARTIFACTS) != before


def test_fingerprint_changes_with_end_time_by_one_ms() -> None:
    a = make_run(status="FINISHED", end_time=1_700_000_060_000)
    b = make_run(status="FINISHED", end_time=1_700_000_060_001)
    assert run_fingerprint(a, ARTIFACTS) != run_fingerprint(b, ARTIFACTS)


@pytest.mark.parametrize(
    "artifacts",
    [
        [("model/weights.bin", 11), ("notes.txt", 5)],  # a size
        [("model/weights.bin", 10), ("notes.md", 5)],  # a path
        [("model/weights.bin", 10)],  # a file gone
        [*ARTIFACTS, ("plots/loss.png", 0)],  # a new, empty file
        [],
    ],
    ids=["size", "path", "removed", "added_empty", "none"],
)
def test_fingerprint_changes_with_artifacts(artifacts: list[tuple[str, int]]) -> None:
    assert run_fingerprint(make_run(), artifacts) != run_fingerprint(make_run(), ARTIFACTS)


def test_fingerprint_ignores_what_it_does_not_cover() -> None:
    """Start time, user and run id are not part of a run's changing state."""
    before = run_fingerprint(make_run(), ARTIFACTS)
    other = make_run(start_time=1, user_id="bob", run_id="r2")
    assert run_fingerprint(other, ARTIFACTS) == before


def test_fingerprint_does_not_change_its_input() -> None:
    run = make_run()
    snapshot = copy.deepcopy(vars(run.data))
    artifacts = list(reversed(ARTIFACTS))
    run_fingerprint(run, artifacts)
    assert vars(run.data) == snapshot
    assert artifacts == list(reversed(ARTIFACTS))


# --------------------------------------------------------------------------- artifact_sizes


class FakeRepo:
    """list_artifacts(path) like MLflow's: direct children of a folder, dirs flagged."""

    def __init__(self, tree: dict[str | None, list[SimpleNamespace]]) -> None:
        self.tree = tree
        self.listed: list[str | None] = []

    def list_artifacts(self, path: str | None = None) -> list[SimpleNamespace]:
        self.listed.append(path)
        return self.tree.get(path, [])


def _f(path: str, size: int | None) -> SimpleNamespace:
    return SimpleNamespace(path=path, is_dir=False, file_size=size)


def _d(path: str) -> SimpleNamespace:
    return SimpleNamespace(path=path, is_dir=True, file_size=None)


def test_artifact_sizes_maps_absent_size_to_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    listing = [_f("a.txt", 3), _f("empty.txt", None), _f("model/w.bin", 10)]

    def fake_repo(tracking_uri: str, artifact_uri: str) -> str:
        calls.append((tracking_uri, artifact_uri))
        return "REPO"

    def fake_iter(repo: Any, path: str = "") -> Any:
        assert repo == "REPO"
        return iter(listing)

    monkeypatch.setattr(mlflow_io, "artifact_repo", fake_repo)
    monkeypatch.setattr(mlflow_io, "iter_artifact_files", fake_iter)
    out = artifact_sizes("http://src:5000", "mlflow-artifacts:/1/r1/artifacts")
    assert out == [("a.txt", 3), ("empty.txt", 0), ("model/w.bin", 10)]
    assert calls == [("http://src:5000", "mlflow-artifacts:/1/r1/artifacts")]


def test_artifact_sizes_walks_folders(monkeypatch: pytest.MonkeyPatch) -> None:
    repo = FakeRepo(
        {
            None: [_f("a.txt", 1), _d("model"), _f("z.txt", None)],
            "model": [_d("model/sub"), _f("model/w.bin", 7)],
            "model/sub": [_f("model/sub/x", 2)],
        }
    )
    monkeypatch.setattr(mlflow_io, "artifact_repo", lambda t, a: repo)
    assert artifact_sizes("t", "a") == [
        ("a.txt", 1),
        ("model/sub/x", 2),
        ("model/w.bin", 7),
        ("z.txt", 0),
    ]
    assert repo.listed == [None, "model", "model/sub"]


def test_iter_artifact_files_of_empty_run() -> None:
    assert list(iter_artifact_files(FakeRepo({}))) == []


def test_absent_size_and_zero_size_fingerprint_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """The driver's fingerprint (from a listing, where REST drops a zero size) must equal the
    export's (from the downloaded bytes, size 0) for an unchanged run."""
    repo = FakeRepo({None: [_f("empty.txt", None), _f("b.txt", 4)]})
    monkeypatch.setattr(mlflow_io, "artifact_repo", lambda t, a: repo)
    from_listing = run_fingerprint(make_run(), artifact_sizes("t", "a"))
    from_export = run_fingerprint(make_run(), [("empty.txt", 0), ("b.txt", 4)])
    assert from_listing == from_export
