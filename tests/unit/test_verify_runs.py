"""Run verification (migrator.stages.verify_runs) and the report (migrator.verify.VerifyReport)
against fakes shaped like MLflow's Run, RunInfo, RunData, inputs and artifact repositories."""

from __future__ import annotations

import hashlib
import math
from types import SimpleNamespace
from typing import Any

import pytest

from migrator import verify as verify_mod
from migrator.config import Options
from migrator.errors import PermanentError, TransientError
from migrator.manifest import DIFFER, ERROR, MATCH, MISSING_ON_SOURCE, MISSING_ON_TARGET
from migrator.reconcile import DUPLICATE, NOT_MIGRATED
from migrator.stages import verify_runs
from migrator.stages.verify_runs import compare_runs, verify_row, verify_run
from migrator.verify import OUTCOMES, VerifyReport

SRC = "http://source:5000"
DST = "http://target:5000"
SOURCE_ARTIFACT_URI = "mlflow-artifacts:/1/s1/artifacts"
TARGET_ARTIFACT_URI = "mlflow-artifacts:/7/t1/artifacts"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- fakes


def make_run(
    run_id: str,
    *,
    experiment_id: str = "1",
    run_name: str = "train",
    status: str = "FINISHED",
    start_time: int | None = 1_700_000_000_000,
    end_time: int | None = 1_700_000_060_000,
    lifecycle_stage: str = "active",
    user_id: str = "alice",
    artifact_uri: str = SOURCE_ARTIFACT_URI,
    params: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
    metrics: dict[str, float] | None = None,
    dataset_inputs: list[Any] | None = None,
) -> SimpleNamespace:
    info = SimpleNamespace(
        run_id=run_id,
        experiment_id=experiment_id,
        run_name=run_name,
        status=status,
        start_time=start_time,
        end_time=end_time,
        lifecycle_stage=lifecycle_stage,
        user_id=user_id,
        artifact_uri=artifact_uri,
    )
    data = SimpleNamespace(
        params=dict(params or {}), tags=dict(tags or {}), metrics=dict(metrics or {})
    )
    return SimpleNamespace(
        info=info, data=data, inputs=SimpleNamespace(dataset_inputs=list(dataset_inputs or []))
    )


def dataset_input(name: str = "train", digest: str = "abc123", context: str = "training"):
    ds = SimpleNamespace(
        name=name,
        digest=digest,
        source_type="local",
        source='{"uri": "/data/train.csv"}',
        schema='{"mlflow_colspec": []}',
        profile='{"num_rows": 10}',
    )
    return SimpleNamespace(
        dataset=ds, tags=[SimpleNamespace(key="mlflow.data.context", value=context)]
    )


def point(step: int, timestamp: int, value: float) -> SimpleNamespace:
    return SimpleNamespace(key="loss", step=step, timestamp=timestamp, value=value)


class FakeClient:
    """`get_metric_history` from a table of (run_id, key) -> points; one per tracking URI."""

    def __init__(self) -> None:
        self.history: dict[tuple[str, str], list[SimpleNamespace]] = {}
        self.calls: list[tuple[str, str]] = []

    def get_metric_history(self, run_id: str, key: str) -> list[SimpleNamespace]:
        self.calls.append((run_id, key))
        return list(self.history.get((run_id, key), []))


class FakeRepo:
    """An artifact repository holding bytes by path; `sizes` overrides the listed file_size."""

    def __init__(self, files: dict[str, bytes], sizes: dict[str, int | None] | None = None):
        self.files = dict(files)
        self.sizes = dict(sizes or {})
        self.downloads: list[str] = []

    def listing(self) -> list[SimpleNamespace]:
        return [
            SimpleNamespace(
                path=p,
                is_dir=False,
                file_size=self.sizes[p] if p in self.sizes else len(self.files[p]),
            )
            for p in sorted(self.files)
        ]

    def _download_file(self, path: str, local: str) -> None:
        self.downloads.append(path)
        with open(local, "wb") as f:
            f.write(self.files[path])


class World:
    """Everything verify_runs asks of the outside, as fakes."""

    def __init__(self) -> None:
        self.clients = {SRC: FakeClient(), DST: FakeClient()}
        self.runs: dict[tuple[str, str], Any] = {}
        self.repos: dict[str, FakeRepo] = {}
        self.repo_calls: list[tuple[str, str]] = []
        self.get_run_calls: list[tuple[str, str]] = []
        self.raise_on_get: BaseException | None = None

    def client(self, uri: str) -> FakeClient:
        return self.clients[uri]

    def artifact_repo(self, tracking_uri: str, artifact_uri: str) -> FakeRepo:
        self.repo_calls.append((tracking_uri, artifact_uri))
        return self.repos[artifact_uri]

    def get_run_or_none(self, uri: str, run_id: str) -> Any:
        self.get_run_calls.append((uri, run_id))
        if self.raise_on_get is not None:
            raise self.raise_on_get
        return self.runs.get((uri, run_id))


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    w = World()
    monkeypatch.setattr(verify_runs, "client", w.client)
    monkeypatch.setattr(verify_runs, "artifact_repo", w.artifact_repo)
    monkeypatch.setattr(verify_runs, "iter_artifact_files", lambda repo: iter(repo.listing()))
    monkeypatch.setattr(verify_runs, "get_run_or_none", w.get_run_or_none)
    return w


# --------------------------------------------------------------------------- a migrated pair

SOURCE_TAGS = {
    "team": "vision",
    "mlflow.user": "alice",
    "mlflow.runName": "train",
    "mlflow.source.name": "train.py",
}
ARTIFACTS = {"model/weights.bin": b"0123456789", "notes.txt": b"hello", "empty.txt": b""}

# What the tag stage leaves on the target with source tags on, written out by hand (not computed
# with the code under test), from the README's rules.
LINEAGE_TAGS = {
    "mlflow_exim.run_info.run_id": "s1",
    "mlflow_exim.run_info.experiment_id": "1",
    "mlflow_exim.run_info.user_id": "alice",
    "mlflow_exim.run_info.status": "FINISHED",
    "mlflow_exim.run_info.start_time": "1700000000000",
    "mlflow_exim.run_info.end_time": "1700000060000",
    "mlflow_exim.run_info.lifecycle_stage": "active",
    "mlflow_exim.run_info.artifact_uri": SOURCE_ARTIFACT_URI,
    "mlflow_exim.run_info.run_name": "train",
    "mlflow_exim.mlflow_tag.user": "alice",
    "mlflow_exim.mlflow_tag.runName": "train",
    "mlflow_exim.mlflow_tag.source.name": "train.py",
}


def make_row(**extra: Any) -> dict[str, Any]:
    """The manifest row of source run s1, as the export stage records it."""
    row = {
        "source_experiment_id": "1",
        "source_run_id": "s1",
        "target_experiment_id": "7",
        "target_run_id": "t1",
        "run_name": "train",
        "user_id": "alice",
        "status": "FINISHED",
        "lifecycle_stage": "active",
        "start_time": 1_700_000_000_000,
        "end_time": 1_700_000_060_000,
        "artifact_uri": SOURCE_ARTIFACT_URI,
        "source_parent_run_id": None,
        "mlflow_tags": {k: v for k, v in SOURCE_TAGS.items() if k.startswith("mlflow.")},
        "artifact_files": [
            {"path": p, "size": len(b), "sha256": _sha(b)} for p, b in sorted(ARTIFACTS.items())
        ],
        "state": "tagged",
    }
    row.update(extra)
    return row


def make_pair(world: World, *, source_tags_on: bool = True) -> tuple[Any, Any]:
    """A source run and a faithful target run, registered with the fakes."""
    source = make_run(
        "s1",
        params={"lr": "0.1", "epochs": "3"},
        tags=SOURCE_TAGS,
        metrics={"loss": 0.5, "acc": 0.9},
        dataset_inputs=[dataset_input()],
    )
    target_tags = dict(SOURCE_TAGS)
    if source_tags_on:
        target_tags.update(LINEAGE_TAGS)
    target = make_run(
        "t1",
        experiment_id="7",
        artifact_uri=TARGET_ARTIFACT_URI,
        params={"epochs": "3", "lr": "0.1"},
        tags=target_tags,
        metrics={"acc": 0.9, "loss": 0.5},
        dataset_inputs=[dataset_input()],
    )
    loss = [point(0, 10, 1.0), point(1, 20, 0.7), point(2, 30, 0.5)]
    acc = [point(2, 30, 0.9)]
    world.clients[SRC].history[("s1", "loss")] = loss
    world.clients[SRC].history[("s1", "acc")] = acc
    # the target returns the same points in another order: order must not matter
    world.clients[DST].history[("t1", "loss")] = list(reversed(loss))
    world.clients[DST].history[("t1", "acc")] = list(acc)
    world.repos[TARGET_ARTIFACT_URI] = FakeRepo(ARTIFACTS)
    world.runs[(SRC, "s1")] = source
    world.runs[(DST, "t1")] = target
    return source, target


def opts(**kw: Any) -> Options:
    return Options(source=SRC, target=DST, **kw)


# --------------------------------------------------------------------------- compare_runs


def test_identical_runs_have_no_differences(world: World) -> None:
    source, target = make_pair(world)
    assert compare_runs(opts(), make_row(), source, target) == {}
    # every metric history was read on both sides, and every artifact hashed
    assert sorted(world.clients[SRC].calls) == [("s1", "acc"), ("s1", "loss")]
    assert sorted(world.clients[DST].calls) == [("t1", "acc"), ("t1", "loss")]
    assert world.repo_calls == [(DST, TARGET_ARTIFACT_URI)]
    assert sorted(world.repos[TARGET_ARTIFACT_URI].downloads) == sorted(ARTIFACTS)


def test_identical_runs_without_source_tags(world: World) -> None:
    source, target = make_pair(world, source_tags_on=False)
    assert compare_runs(opts(import_source_tags=False), make_row(), source, target) == {}


def test_changed_tag_value_names_the_key(world: World) -> None:
    source, target = make_pair(world)
    target.data.tags["team"] = "nlp"
    diffs = compare_runs(opts(), make_row(), source, target)
    assert diffs == {"tags": ["'team' differs"]}


def test_missing_user_tag_on_target(world: World) -> None:
    source, target = make_pair(world)
    del target.data.tags["team"]
    assert compare_runs(opts(), make_row(), source, target) == {"tags": ["missing 'team'"]}


def test_extra_param(world: World) -> None:
    source, target = make_pair(world)
    target.data.params["x"] = "1"
    assert compare_runs(opts(), make_row(), source, target) == {"params": ["extra 'x'"]}


def test_missing_and_changed_params(world: World) -> None:
    source, target = make_pair(world)
    del target.data.params["lr"]
    target.data.params["epochs"] = "4"
    diffs = compare_runs(opts(), make_row(), source, target)
    assert diffs == {"params": ["missing 'lr'", "'epochs' differs"]}


def test_different_end_time(world: World) -> None:
    source, target = make_pair(world)
    target.info.end_time = source.info.end_time + 1
    diffs = compare_runs(opts(), make_row(), source, target)
    assert set(diffs) == {"end_time"}
    assert diffs["end_time"] == ["1700000060000 != 1700000060001"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("run_name", "other"),
        ("status", "FAILED"),
        ("start_time", 1),
        ("lifecycle_stage", "deleted"),
        ("user_id", "bob"),
    ],
)
def test_each_info_field_is_compared(world: World, field: str, value: Any) -> None:
    source, target = make_pair(world)
    setattr(target.info, field, value)
    assert set(compare_runs(opts(), make_row(), source, target)) == {field}


def test_dataset_inputs_compared(world: World) -> None:
    source, target = make_pair(world)
    target.inputs.dataset_inputs = [dataset_input(digest="zzz")]
    assert compare_runs(opts(), make_row(), source, target) == {"inputs": ["dataset inputs differ"]}
    target.inputs.dataset_inputs = [dataset_input(context="eval")]
    assert set(compare_runs(opts(), make_row(), source, target)) == {"inputs"}
    target.inputs.dataset_inputs = []
    assert set(compare_runs(opts(), make_row(), source, target)) == {"inputs"}


def test_dataset_inputs_order_does_not_matter(world: World) -> None:
    source, target = make_pair(world)
    source.inputs.dataset_inputs = [dataset_input("a"), dataset_input("b")]
    target.inputs.dataset_inputs = [dataset_input("b"), dataset_input("a")]
    assert compare_runs(opts(), make_row(), source, target) == {}


# metrics


def test_metric_nan_on_both_sides_is_equal(world: World) -> None:
    source, target = make_pair(world)
    nan_points = [point(0, 10, float("nan")), point(1, 20, 0.25)]
    world.clients[SRC].history[("s1", "loss")] = nan_points
    world.clients[DST].history[("t1", "loss")] = [point(1, 20, 0.25), point(0, 10, math.nan)]
    assert compare_runs(opts(), make_row(), source, target) == {}


def test_metric_nan_against_number_differs(world: World) -> None:
    source, target = make_pair(world)
    world.clients[SRC].history[("s1", "loss")] = [point(0, 10, float("nan"))]
    world.clients[DST].history[("t1", "loss")] = [point(0, 10, 0.0)]
    assert set(compare_runs(opts(), make_row(), source, target)) == {"metrics"}


def test_extra_metric_point_differs(world: World) -> None:
    source, target = make_pair(world)
    world.clients[DST].history[("t1", "loss")].append(point(3, 40, 0.4))
    diffs = compare_runs(opts(), make_row(), source, target)
    assert diffs == {"metrics": ["'loss' (3 points on source, 4 on target)"]}


@pytest.mark.parametrize(
    "change",
    [
        lambda p: setattr(p, "value", 0.71),
        lambda p: setattr(p, "step", 5),
        lambda p: setattr(p, "timestamp", 21),
    ],
    ids=["value", "step", "timestamp"],
)
def test_changed_metric_point_differs(world: World, change: Any) -> None:
    source, target = make_pair(world)
    pts = [SimpleNamespace(**vars(p)) for p in world.clients[DST].history[("t1", "loss")]]
    change(next(p for p in pts if p.step == 1))
    world.clients[DST].history[("t1", "loss")] = pts
    diffs = compare_runs(opts(), make_row(), source, target)
    assert diffs == {"metrics": ["'loss' (3 points on source, 3 on target)"]}


def test_metric_only_on_target_differs(world: World) -> None:
    source, target = make_pair(world)
    target.data.metrics["extra"] = 1.0
    world.clients[DST].history[("t1", "extra")] = [point(0, 1, 1.0)]
    diffs = compare_runs(opts(), make_row(), source, target)
    assert diffs == {"metrics": ["'extra' (0 points on source, 1 on target)"]}
    # the source was not asked for a metric it does not have
    assert ("s1", "extra") not in world.clients[SRC].calls


def test_metric_missing_on_target_differs(world: World) -> None:
    source, target = make_pair(world)
    del target.data.metrics["acc"]
    diffs = compare_runs(opts(), make_row(), source, target)
    assert diffs == {"metrics": ["'acc' (1 points on source, 0 on target)"]}


def test_metric_nan_and_number_at_same_step_and_timestamp(world: World) -> None:
    source, target = make_pair(world)
    pts = [point(0, 10, float("nan")), point(0, 10, 1.0)]
    world.clients[SRC].history[("s1", "loss")] = pts
    world.clients[DST].history[("t1", "loss")] = list(reversed(pts))
    assert compare_runs(opts(), make_row(), source, target) == {}


# parent link


def test_parent_link_points_to_target_parent(world: World) -> None:
    source, target = make_pair(world)
    source.data.tags["mlflow.parentRunId"] = "sp"
    target.data.tags["mlflow.parentRunId"] = "tp"
    target.data.tags["mlflow_exim.mlflow_tag.parentRunId"] = "sp"
    row = make_row(
        source_parent_run_id="sp",
        target_parent_run_id="tp",
        mlflow_tags={**make_row()["mlflow_tags"], "mlflow.parentRunId": "sp"},
    )
    assert compare_runs(opts(), row, source, target) == {}

    # a target still pointing to the *source* parent is wrong
    target.data.tags["mlflow.parentRunId"] = "sp"
    diffs = compare_runs(opts(), row, source, target)
    assert diffs == {"parent": ["'sp' != 'tp'"]}

    # and so is a target without the link
    del target.data.tags["mlflow.parentRunId"]
    assert compare_runs(opts(), row, source, target) == {"parent": ["None != 'tp'"]}


def test_parent_link_absent_when_row_has_none(world: World) -> None:
    source, target = make_pair(world)
    target.data.tags["mlflow.parentRunId"] = "tp"
    assert compare_runs(opts(), make_row(), source, target) == {"parent": ["'tp' != None"]}


def test_unmigrated_source_parent_expects_no_link(world: World) -> None:
    """A source parent outside the migration: no target parent id, so no link on the target."""
    source, target = make_pair(world, source_tags_on=False)
    source.data.tags["mlflow.parentRunId"] = "sp"
    row = make_row(source_parent_run_id="sp")
    assert compare_runs(opts(import_source_tags=False), row, source, target) == {}


# source tags


def test_missing_source_tag_start_time_differs(world: World) -> None:
    source, target = make_pair(world)
    del target.data.tags["mlflow_exim.run_info.start_time"]
    diffs = compare_runs(opts(import_source_tags=True), make_row(), source, target)
    assert diffs == {"tags": ["missing 'mlflow_exim.run_info.start_time'"]}


def test_wrong_source_tag_value_differs(world: World) -> None:
    source, target = make_pair(world)
    target.data.tags["mlflow_exim.run_info.start_time"] = "1700000000001"
    diffs = compare_runs(opts(), make_row(), source, target)
    assert diffs == {"tags": ["'mlflow_exim.run_info.start_time' differs"]}


def test_source_tags_of_unfinished_run_have_no_end_time(world: World) -> None:
    source, target = make_pair(world)
    source.info.end_time = target.info.end_time = None
    source.info.status = target.info.status = "RUNNING"
    del target.data.tags["mlflow_exim.run_info.end_time"]
    target.data.tags["mlflow_exim.run_info.status"] = "RUNNING"
    row = make_row(end_time=None, status="RUNNING")
    assert compare_runs(opts(), row, source, target) == {}
    # an end_time tag where the source had none is extra
    target.data.tags["mlflow_exim.run_info.end_time"] = "None"
    assert compare_runs(opts(), row, source, target) == {
        "tags": ["extra 'mlflow_exim.run_info.end_time'"]
    }


@pytest.mark.parametrize(
    "key", ["mlflow_exim.run_info.run_id", "mlflow_exim.mlflow_tag.user", "mlflow_exim.field.x"]
)
def test_any_source_tag_is_extra_when_source_tags_off(world: World, key: str) -> None:
    source, target = make_pair(world, source_tags_on=False)
    target.data.tags[key] = "v"
    diffs = compare_runs(opts(import_source_tags=False), make_row(), source, target)
    assert diffs == {"tags": [f"extra {key!r}"]}


def test_source_tags_on_target_are_all_extra_when_source_tags_off(world: World) -> None:
    source, target = make_pair(world, source_tags_on=True)  # the target has every lineage tag
    diffs = compare_runs(opts(import_source_tags=False), make_row(), source, target)
    assert diffs["tags"] == [f"extra {k!r}" for k in sorted(LINEAGE_TAGS)]
    assert set(diffs) == {"tags"}


def test_long_source_tag_value_is_expected_cut(world: World) -> None:
    source, target = make_pair(world)
    source.data.tags["long"] = "x" * 9000
    target.data.tags["long"] = "x" * 8000
    assert compare_runs(opts(), make_row(), source, target) == {}
    target.data.tags["long"] = "x" * 9000
    assert compare_runs(opts(), make_row(), source, target) == {"tags": ["'long' differs"]}


# artifacts


def test_artifact_missing_on_target(world: World) -> None:
    source, target = make_pair(world)
    del world.repos[TARGET_ARTIFACT_URI].files["notes.txt"]
    diffs = compare_runs(opts(), make_row(), source, target)
    assert diffs == {"artifacts": ["missing 'notes.txt'"]}


def test_artifact_extra_on_target(world: World) -> None:
    source, target = make_pair(world)
    world.repos[TARGET_ARTIFACT_URI].files["stray/file.bin"] = b"x"
    diffs = compare_runs(opts(), make_row(), source, target)
    assert diffs == {"artifacts": ["extra 'stray/file.bin'"]}


@pytest.mark.parametrize("mode", ["hash", "size"])
def test_artifact_size_mismatch(world: World, mode: str) -> None:
    source, target = make_pair(world)
    world.repos[TARGET_ARTIFACT_URI].files["notes.txt"] = b"hello!"
    diffs = compare_runs(opts(verify_artifacts=mode), make_row(), source, target)
    assert diffs == {"artifacts": ["'notes.txt' size 6 != 5"]}


def test_artifact_sha256_mismatch_in_hash_mode(world: World) -> None:
    source, target = make_pair(world)
    world.repos[TARGET_ARTIFACT_URI].files["model/weights.bin"] = b"0123456780"  # same size
    diffs = compare_runs(opts(verify_artifacts="hash"), make_row(), source, target)
    assert diffs == {"artifacts": ["'model/weights.bin' SHA-256 differs"]}


def test_same_size_corruption_passes_in_size_mode(world: World) -> None:
    source, target = make_pair(world)
    world.repos[TARGET_ARTIFACT_URI].files["model/weights.bin"] = b"0123456780"
    assert compare_runs(opts(verify_artifacts="size"), make_row(), source, target) == {}
    assert world.repos[TARGET_ARTIFACT_URI].downloads == []  # size mode reads no bytes
    # but a missing file is still found in size mode
    del world.repos[TARGET_ARTIFACT_URI].files["notes.txt"]
    assert compare_runs(opts(verify_artifacts="size"), make_row(), source, target) == {
        "artifacts": ["missing 'notes.txt'"]
    }


def test_none_mode_skips_artifacts(world: World) -> None:
    source, target = make_pair(world)
    world.repos.clear()  # any look at the target's artifacts would fail with KeyError
    world.repo_calls.clear()
    assert compare_runs(opts(verify_artifacts="none"), make_row(), source, target) == {}
    assert world.repo_calls == []


def test_a_file_listed_without_size_counts_as_empty(world: World) -> None:
    """Over REST an empty file's size comes back absent (proto3 drops zeros)."""
    source, target = make_pair(world)
    repo = world.repos[TARGET_ARTIFACT_URI]
    repo.sizes = {"empty.txt": None}
    assert compare_runs(opts(verify_artifacts="hash"), make_row(), source, target) == {}
    repo.sizes = {"notes.txt": None}  # a non-empty file that lists as empty: a difference
    assert compare_runs(opts(verify_artifacts="hash"), make_row(), source, target) == {
        "artifacts": ["'notes.txt' size 0 != 5"]
    }


def test_size_mode_empty_target_file_listed_without_size(world: World) -> None:
    source, target = make_pair(world)
    repo = world.repos[TARGET_ARTIFACT_URI]
    repo.files["notes.txt"] = b""  # truncated on the target
    repo.sizes = {"notes.txt": None}  # as REST lists an empty file
    diffs = compare_runs(opts(verify_artifacts="size"), make_row(), source, target)
    assert diffs == {"artifacts": ["'notes.txt' size 0 != 5"]}


def test_several_differences_are_all_reported(world: World) -> None:
    source, target = make_pair(world)
    target.info.status = "FAILED"
    target.data.params["x"] = "1"
    world.clients[DST].history[("t1", "acc")] = []
    del world.repos[TARGET_ARTIFACT_URI].files["notes.txt"]
    diffs = compare_runs(opts(), make_row(), source, target)
    assert set(diffs) == {"status", "params", "metrics", "artifacts"}


# --------------------------------------------------------------------------- verify_run


def test_verify_run_match(world: World) -> None:
    make_pair(world)
    row = verify_run(make_row(), opts())
    assert row["object_type"] == "run"
    assert (row["source_id"], row["target_id"], row["name"]) == ("s1", "t1", "train")
    assert row["outcome"] == MATCH
    assert row["differences"] == []
    assert row["details"] is None
    assert row["error"] is None
    assert isinstance(row["verified_at"], int) and row["verified_at"] > 1_600_000_000_000


def test_verify_run_differ_lists_fields_and_details(world: World) -> None:
    _, target = make_pair(world)
    target.data.params["x"] = "1"
    target.data.tags["team"] = "nlp"
    row = verify_run(make_row(), opts())
    assert row["outcome"] == DIFFER
    assert row["differences"] == ["params", "tags"]
    assert row["details"] == "params: extra 'x'; tags: 'team' differs"


def test_verify_run_details_are_capped(world: World) -> None:
    _, target = make_pair(world)
    for i in range(10):
        target.data.params[f"x{i}"] = "1"
    row = verify_run(make_row(), opts())
    assert row["details"] == "params: " + ", ".join(f"extra 'x{i}'" for i in range(6))


def test_verify_run_missing_on_source(world: World) -> None:
    make_pair(world)
    del world.runs[(SRC, "s1")]
    row = verify_run(make_row(), opts())
    assert row["outcome"] == MISSING_ON_SOURCE
    assert (row["source_id"], row["target_id"]) == ("s1", "t1")
    assert world.get_run_calls == [(SRC, "s1")]


def test_verify_run_without_target_id_is_missing_on_target(world: World) -> None:
    make_pair(world)
    row = verify_run(make_row(target_run_id=None), opts())
    assert row["outcome"] == MISSING_ON_TARGET
    assert row["target_id"] is None
    # the target was never asked for a run
    assert world.get_run_calls == [(SRC, "s1")]
    row = verify_run({k: v for k, v in make_row().items() if k != "target_run_id"}, opts())
    assert row["outcome"] == MISSING_ON_TARGET


def test_verify_run_target_gone_is_missing_on_target(world: World) -> None:
    make_pair(world)
    del world.runs[(DST, "t1")]
    row = verify_run(make_row(), opts())
    assert row["outcome"] == MISSING_ON_TARGET
    assert world.get_run_calls == [(SRC, "s1"), (DST, "t1")]


@pytest.mark.parametrize(
    ("code", "kind"), [("INTERNAL_ERROR", TransientError), ("PERMISSION_DENIED", PermanentError)]
)
def test_verify_run_server_errors_are_translated(world: World, code: str, kind: type) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.protos import databricks_pb2

    make_pair(world)
    world.raise_on_get = MlflowException("nope", error_code=getattr(databricks_pb2, code))
    with pytest.raises(kind) as e:
        verify_run(make_row(), opts())
    assert "s1" in str(e.value)


def test_verify_row_shape() -> None:
    row = verify_row(
        {"source_run_id": "s", "target_run_id": "t", "run_name": "n"},
        DIFFER,
        {"tags": ["a", "b"], "end_time": ["1 != 2"]},
    )
    assert row["differences"] == ["end_time", "tags"]
    assert row["details"] == "end_time: 1 != 2; tags: a, b"
    err = verify_row({"source_run_id": "s"}, ERROR, error="boom")
    assert (err["target_id"], err["name"], err["error"], err["details"]) == (
        None,
        None,
        "boom",
        None,
    )


# --------------------------------------------------------------------------- VerifyReport


def _vrow(kind: str, sid: str, outcome: str, **kw: Any) -> dict[str, Any]:
    return {
        "object_type": kind,
        "source_id": sid,
        "target_id": "t" + sid,
        "name": f"name-{sid}",
        "outcome": outcome,
        "details": None,
        "error": None,
        **kw,
    }


def _count_line(text: str, kind: str) -> dict[str, int]:
    lines = [
        ln
        for ln in text.splitlines()
        if ln.split()[:1] == [kind] and all(x.isdigit() for x in ln.split()[1:])
    ]
    assert len(lines) == 1, text
    return dict(zip(OUTCOMES, (int(x) for x in lines[0].split()[1:]), strict=True))


def test_report_ok_only_when_every_row_matches() -> None:
    rows = [_vrow("experiment", "1", MATCH), _vrow("run", "r1", MATCH)]
    assert VerifyReport.of(rows).ok
    for outcome in OUTCOMES:
        if outcome != MATCH:
            assert not VerifyReport.of([*rows, _vrow("run", "r2", outcome)]).ok, outcome


def test_report_render_counts_per_type_and_outcome() -> None:
    rows = [
        _vrow("experiment", "1", MATCH),
        _vrow("experiment", "2", MATCH),
        _vrow("experiment", "3", MISSING_ON_TARGET),
        _vrow("run", "r1", MATCH),
        _vrow("run", "r2", MATCH),
        _vrow("run", "r3", MATCH),
        _vrow("run", "r4", DIFFER, details="params: extra 'x'"),
        _vrow("run", "r5", DIFFER, details="end_time: 1 != 2"),
        _vrow("run", "r6", MISSING_ON_SOURCE),
        _vrow("run", "r7", ERROR, error="PermanentError: boom"),
    ]
    report = VerifyReport.of(rows, elapsed=2.0, path="/tmp/s/manifests/verify.parquet")
    text = report.render()
    assert text.splitlines()[0] == "verify: 10 objects in 2.0 s (3.5 runs/s)"
    assert _count_line(text, "experiment") == {
        MATCH: 2,
        DIFFER: 0,
        MISSING_ON_TARGET: 1,
        MISSING_ON_SOURCE: 0,
        DUPLICATE: 0,
        NOT_MIGRATED: 0,
        ERROR: 0,
    }
    assert _count_line(text, "run") == {
        MATCH: 3,
        DIFFER: 2,
        MISSING_ON_TARGET: 0,
        MISSING_ON_SOURCE: 1,
        DUPLICATE: 0,
        NOT_MIGRATED: 0,
        ERROR: 1,
    }
    assert "    experiment 3 (name-3): missing_on_target" in text.splitlines()
    assert "    run r4 (name-r4): differ: params: extra 'x'" in text
    assert "    run r5 (name-r5): differ: end_time: 1 != 2" in text
    assert "    run r6 (name-r6): missing_on_source" in text.splitlines()
    assert "    run r7 (name-r7): error: PermanentError: boom" in text
    # matching objects are not listed
    assert "r1 (" not in text and "experiment 1 (" not in text
    assert text.splitlines()[-1] == (
        "  result: DIFFERENCES FOUND  (/tmp/s/manifests/verify.parquet)"
    )
    assert report.counts()[("run", DIFFER)] == 2


def test_report_render_all_match() -> None:
    rows = [_vrow("experiment", "1", MATCH), *(_vrow("run", f"r{i}", MATCH) for i in range(4))]
    text = VerifyReport.of(rows, elapsed=0.0, path="p").render()
    assert text.splitlines()[0] == "verify: 5 objects in 0.0 s (0.0 runs/s)"
    assert _count_line(text, "run")[MATCH] == 4
    assert _count_line(text, "experiment")[MATCH] == 1
    assert text.splitlines()[-1] == "  result: all match  (p)"
    # header, title, two count lines, result: nothing listed
    assert len(text.splitlines()) == 5


def test_report_render_caps_the_list_of_bad_objects() -> None:
    rows = [_vrow("run", f"r{i}", DIFFER, details="x") for i in range(verify_mod._SHOWN + 3)]
    text = VerifyReport.of(rows, elapsed=1.0, path="P").render()
    listed = [ln for ln in text.splitlines() if ln.startswith("    run r")]
    assert len(listed) == verify_mod._SHOWN
    assert "    … and 3 more (see P)" in text.splitlines()


# --------------------------------------------------------------------------- streamed verification


def _verify_stage(row: dict[str, Any], opts: Options) -> dict[str, Any]:
    """A fake verify stage: every tenth run differs; run 'boom' raises."""
    if row["source_run_id"] == "boom":
        raise PermanentError("no such run")
    i = int(row["source_run_id"][1:])
    outcome = DIFFER if i % 10 == 0 else MATCH
    return _vrow("run", row["source_run_id"], outcome, details="x" if outcome == DIFFER else None)


def test_verify_migration_streams_rows_to_the_manifest_and_keeps_only_counts(
    tmp_path: Any,
) -> None:
    from migrator.fanout import InlineExecutor, Stage
    from migrator.manifest import read_verify, verify_counts
    from migrator.staging import LocalStaging

    staging = LocalStaging(str(tmp_path))
    n = 2345  # several row groups of the verify manifest
    items = [{"source_run_id": f"r{i}", "source_experiment_id": "1"} for i in range(n)]
    items.append({"source_run_id": "boom", "source_experiment_id": "1"})
    opts = Options(concurrency=2, batch_size=7)
    report = verify_mod.verify_migration(
        opts,
        InlineExecutor(),
        staging,
        [],
        [("run", Stage("verify", _verify_stage), iter(items))],
    )
    differ = sum(1 for i in range(n) if i % 10 == 0)
    assert report.counts() == {("run", MATCH): n - differ, ("run", DIFFER): differ, ("run", ERROR): 1}
    assert report.n_bad == differ + 1 and not report.ok
    # only the first objects that do not match are held, for the listing
    assert len(report.bad) == verify_mod._SHOWN
    assert f"… and {differ + 1 - verify_mod._SHOWN} more" in report.render()
    rows = read_verify(staging)
    assert len(rows) == n + 1
    assert {r["source_id"] for r in rows} == {f"r{i}" for i in range(n)} | {"boom"}
    assert next(r for r in rows if r["source_id"] == "boom")["error"]
    assert verify_counts(staging) == report.counts()
    assert report.path.endswith("manifests/verify.parquet")
