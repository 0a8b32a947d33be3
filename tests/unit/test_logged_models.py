"""MLflow 3 logged models (migrator.stages.logged_models): the staged document's checks and the
tags a target logged model gets."""

from __future__ import annotations

import copy
import enum
import functools
from types import SimpleNamespace
from typing import Any

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INTERNAL_ERROR,
    PERMISSION_DENIED,
    RESOURCE_DOES_NOT_EXIST,
)

from migrator.config import Options
from migrator.errors import PermanentError, StagingError, TransientError
from migrator.ledger import Targets
from migrator.lineage import LOGGED_MODEL_FIELDS, SOURCE_MODEL_ID_TAG
from migrator.manifest import FAILED, IMPORTED, TAGGED
from migrator.stages import logged_models
from migrator.stages.logged_models import (
    MODEL_VERSIONS_TAG,
    import_logged_model_doc,
    logged_model_fields,
    tag_logged_model,
    validate_logged_model_doc,
    wanted_tags,
)

ON, OFF = Options(), Options(import_source_tags=False)
MID = "m-0123456789abcdef0123456789abcdef"
RUN = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
VERSIONS_VALUE = '[{"name": "churn", "version": "1"}]'


def _doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "fields": {
            "model_id": MID,
            "experiment_id": "3",
            "name": "model",
            "artifact_location": f"mlflow-artifacts:/3/models/{MID}/artifacts",
            "creation_timestamp": 1670836055960,
            "last_updated_timestamp": 1670836055961,
            "model_type": "",
            "source_run_id": RUN,
            "status": "READY",
            "status_message": None,
        },
        "tags": {
            MODEL_VERSIONS_TAG: VERSIONS_VALUE,
            "mlflow.user": "andre",
            "team": "ml",
        },
        "params": {"alpha": "0.5"},
        "metrics": [
            {
                "key": "acc",
                "value": 0.9,
                "timestamp": 1,
                "step": 0,
                "run_id": RUN,
                "dataset_name": None,
                "dataset_digest": None,
            }
        ],
        "artifacts": [{"path": "MLmodel", "size": 10}, {"path": "model/model.pkl", "size": 5}],
    }
    doc.update(over)
    return doc


# ---- wanted_tags -----------------------------------------------------------------------------


def test_wanted_tags_with_source_tags() -> None:
    doc = _doc()
    tags = wanted_tags(doc, ON)
    assert MODEL_VERSIONS_TAG not in tags  # the target registry writes its own
    assert tags["mlflow_exim.mlflow_tag.modelVersions"] == VERSIONS_VALUE  # the source's, kept
    assert tags[SOURCE_MODEL_ID_TAG] == MID
    assert tags["mlflow.user"] == "andre"
    assert tags["mlflow_exim.mlflow_tag.user"] == "andre"
    assert tags["team"] == "ml"
    assert tags["mlflow_exim.field.creation_timestamp"] == "1670836055960"
    assert tags["mlflow_exim.field.source_run_id"] == RUN
    assert tags["mlflow_exim.field.status"] == "READY"
    assert "mlflow_exim.field.model_type" not in tags  # "" counts as unset
    assert "mlflow_exim.field.status_message" not in tags  # None is unset
    assert "mlflow_exim.mlflow_tag.team" not in tags
    assert doc == _doc()  # the document is not changed


def test_wanted_tags_source_tags_cover_every_set_field() -> None:
    tags = wanted_tags(_doc(), ON)
    fields = {k[len("mlflow_exim.field.") :] for k in tags if k.startswith("mlflow_exim.field.")}
    assert fields == set(LOGGED_MODEL_FIELDS) - {"model_type", "status_message"}


def test_wanted_tags_without_source_tags_keep_only_the_marker() -> None:
    tags = wanted_tags(_doc(), OFF)
    assert tags == {"mlflow.user": "andre", "team": "ml", SOURCE_MODEL_ID_TAG: MID}
    assert [k for k in tags if k.startswith("mlflow_exim.")] == [SOURCE_MODEL_ID_TAG]


def test_wanted_tags_marker_is_the_source_id_even_if_a_tag_says_otherwise() -> None:
    doc = _doc(tags={SOURCE_MODEL_ID_TAG: "m-bogus", "a": "b"})
    assert wanted_tags(doc, ON)[SOURCE_MODEL_ID_TAG] == MID
    assert wanted_tags(doc, OFF)[SOURCE_MODEL_ID_TAG] == MID


def test_wanted_tags_without_model_versions_tag() -> None:
    tags = wanted_tags(_doc(tags={"mlflow.user": "u"}), ON)
    assert "mlflow_exim.mlflow_tag.modelVersions" not in tags


def test_wanted_tags_values_are_cut() -> None:
    tags = wanted_tags(_doc(tags={"big": "x" * 9000, MODEL_VERSIONS_TAG: "y" * 9000}), ON)
    assert tags["big"] == "x" * 8000
    assert tags["mlflow_exim.mlflow_tag.modelVersions"] == "y" * 8000


# ---- validate_logged_model_doc ---------------------------------------------------------------


def test_validate_accepts_a_good_doc() -> None:
    validate_logged_model_doc(_doc(), MID)  # does not raise
    validate_logged_model_doc(_doc(metrics=[], artifacts=[], params={}, tags={}), MID)


def _bad(**over: Any) -> dict[str, Any]:
    return _doc(**over)


def _fields(**over: Any) -> dict[str, Any]:
    f = copy.deepcopy(_doc()["fields"])
    f.update(over)
    return f


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        (_bad(fields=_fields(model_id="m-ffff")), "does not describe this model"),
        (_bad(fields=None), "does not describe this model"),
        (_bad(tags={"a": 1}), "'tags' is not a string map"),
        (_bad(tags=None), "'tags' is not a string map"),
        (_bad(params={"a": None}), "'params' is not a string map"),
        (_bad(params=[["a", "b"]]), "'params' is not a string map"),
        (_bad(artifacts=[{"path": "../../etc/passwd"}]), "artifact path refused"),
        (_bad(artifacts=[{"path": "a/./b"}]), "artifact path refused"),
        (_bad(artifacts=[{"size": 3}]), "malformed artifact entry"),
        (_bad(artifacts="MLmodel"), "artifact list is not a list"),
        (_bad(metrics=None), "'metrics' is not a list"),
        (_bad(metrics={"acc": 1.0}), "'metrics' is not a list"),
        (_bad(metrics=[{"value": 1.0}]), "'metrics' is not a list"),
        (_bad(metrics=[{"key": 3}]), "'metrics' is not a list"),
        (_bad(metrics=["acc"]), "'metrics' is not a list"),
    ],
)
def test_validate_refuses_malformed_docs(doc: dict[str, Any], match: str) -> None:
    with pytest.raises(StagingError, match=match) as e:
        validate_logged_model_doc(doc, MID)
    assert e.value.obj == f"logged model {MID}"


# ---- logged_model_fields ---------------------------------------------------------------------


class Status(enum.Enum):
    READY = 2


def test_logged_model_fields_status_is_a_name() -> None:
    lm = SimpleNamespace(**{f: f"v-{f}" for f in LOGGED_MODEL_FIELDS})
    lm.status = Status.READY
    out = logged_model_fields(lm)
    assert out["status"] == "READY"
    assert out["model_id"] == "v-model_id"
    assert set(out) == set(LOGGED_MODEL_FIELDS)
    lm.status = "FAILED"
    assert logged_model_fields(lm)["status"] == "FAILED"


# ---- the marker tag: kept by import, dropped by the `tag` step -----------------------------

TARGET_MID = "m-fedcba9876543210fedcba9876543210"
TARGET_RUN = "11111111111111111111111111111111"


class FakeTarget:
    """The target's logged models, recording every call; `fail` is raised by the tag delete."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.models: dict[str, SimpleNamespace] = {}
        self.calls: list[tuple[Any, ...]] = []

    def create_logged_model(self, experiment_id: str, **kw: Any) -> Any:
        self.calls.append(("create_logged_model", experiment_id))
        lm = SimpleNamespace(
            model_id=TARGET_MID,
            creation_timestamp=0,
            experiment_id=experiment_id,
            tags=dict(kw.get("tags") or {}),
            artifact_location=f"mlflow-artifacts:/{experiment_id}/models/{TARGET_MID}/artifacts",
            status="PENDING",
            metrics=[],
            source_run_id=kw.get("source_run_id"),
        )
        self.models[TARGET_MID] = lm
        return lm

    def get_logged_model(self, model_id: str) -> Any:
        self.calls.append(("get_logged_model", model_id))
        return self.models[model_id]

    def set_logged_model_tags(self, model_id: str, tags: dict[str, str]) -> None:
        self.calls.append(("set_logged_model_tags", model_id))
        self.models[model_id].tags.update(tags)

    def finalize_logged_model(self, model_id: str, status: Any) -> None:
        self.calls.append(("finalize_logged_model", model_id))
        self.models[model_id].status = status.name

    def delete_logged_model_tag(self, model_id: str, key: str) -> None:
        self.calls.append(("delete_logged_model_tag", model_id, key))
        if self.fail is not None:
            raise self.fail
        self.models[model_id].tags.pop(key, None)


@pytest.fixture
def target(monkeypatch: pytest.MonkeyPatch) -> FakeTarget:
    fake = FakeTarget()
    monkeypatch.setattr(logged_models, "client", lambda uri: fake)
    monkeypatch.setattr(logged_models, "find_logged_models_by_tag", lambda *a: [])
    return fake


def _imported_row(**over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "source_model_id": MID,
        "source_experiment_id": "3",
        "target_experiment_id": "7",
        "target_model_id": TARGET_MID,
        "name": "model",
        "state": IMPORTED,
        "error": None,
        "failed_stage": None,
    }
    row.update(over)
    return row


@pytest.mark.parametrize("opts", [ON, OFF], ids=["source tags on", "source tags off"])
def test_import_logged_model_doc_keeps_the_marker(target: FakeTarget, opts: Options) -> None:
    item = {
        "source_model_id": MID,
        "target_experiment_id": "7",
        "target_run_id": TARGET_RUN,
        "run_id_map": {},
    }
    doc = _doc(metrics=[], artifacts=[])

    row = import_logged_model_doc(item, opts, doc, lambda i, path, local: None)

    assert row["state"] == IMPORTED
    assert row["target_model_id"] == TARGET_MID
    assert "run_id_map" not in row
    lm = target.models[TARGET_MID]
    assert lm.tags[SOURCE_MODEL_ID_TAG] == MID  # a resumed import finds the model by it
    assert lm.status == "READY"
    assert not [c for c in target.calls if c[0] == "delete_logged_model_tag"]


def test_import_logged_model_doc_resumed_keeps_the_marker(target: FakeTarget) -> None:
    # an earlier attempt made the model; the row holds its id
    target.create_logged_model("7", tags=wanted_tags(_doc(), OFF))
    target.calls.clear()
    item = {"source_model_id": MID, "target_experiment_id": "7", "target_model_id": TARGET_MID}

    row = import_logged_model_doc(item, OFF, _doc(metrics=[], artifacts=[]), lambda *a: None)

    assert row["target_model_id"] == TARGET_MID
    assert target.models[TARGET_MID].tags[SOURCE_MODEL_ID_TAG] == MID
    assert [c[0] for c in target.calls] == ["get_logged_model", "finalize_logged_model"]


def test_import_waits_for_a_metric_run_still_moving_and_a_rerun_finishes(
    target: FakeTarget,
) -> None:
    # The run its metric was logged against failed transiently in this pass: the model is made
    # (what points at it need not wait) but fails, so the next run logs that metric.
    item = {"source_model_id": MID, "target_experiment_id": "7", "target_run_id": None,
            "run_id_map": {}, "waits_for_runs": [RUN]}
    doc = _doc(artifacts=[])
    doc["fields"]["source_run_id"] = None  # its own source run is another case (below)

    row = import_logged_model_doc(item, ON, doc, lambda *a: None)

    assert row["state"] == FAILED and row["failed_stage"] == "import"
    assert row["error"].startswith(f"PermanentError: waits for run {RUN}")
    assert row["target_model_id"] == TARGET_MID
    assert "waits_for_runs" not in row and "run_id_map" not in row
    logged: list[tuple[str, str]] = []
    target.log_metric = lambda rid, key, value, **kw: logged.append((rid, key))  # type: ignore[attr-defined]

    again = {**row, "run_id_map": {RUN: TARGET_RUN}, "waits_for_runs": []}
    done = import_logged_model_doc(again, ON, doc, lambda *a: None)

    assert done["state"] == IMPORTED and done["target_model_id"] == TARGET_MID
    assert logged == [(TARGET_RUN, "acc")]
    assert [c for c in target.calls if c[0] == "create_logged_model"] == [("create_logged_model", "7")]


def test_import_waits_for_its_own_source_run_before_making_the_model(
    target: FakeTarget,
) -> None:
    # Its source run failed transiently in this pass. MLflow sets a model's source run only
    # when it is created, so the model is not made yet: the next run makes it, linked.
    item = {"source_model_id": MID, "target_experiment_id": "7", "target_run_id": None,
            "source_run_id": RUN, "run_id_map": {}, "waits_for_runs": [RUN]}

    row = import_logged_model_doc(item, ON, _doc(artifacts=[]), lambda *a: None)

    assert row["state"] == FAILED and row["failed_stage"] == "import"
    assert row["error"].startswith(f"PermanentError: waits for its source run {RUN}")
    assert not row.get("target_model_id") and target.calls == []
    assert "waits_for_runs" not in row and "run_id_map" not in row

    logged: list[tuple[str, str]] = []
    target.log_metric = lambda rid, key, value, **kw: logged.append((rid, key))  # type: ignore[attr-defined]
    again = {**row, "target_run_id": TARGET_RUN, "run_id_map": {RUN: TARGET_RUN},
             "waits_for_runs": []}
    done = import_logged_model_doc(again, ON, _doc(artifacts=[]), lambda *a: None)

    assert done["state"] == IMPORTED
    assert target.models[done["target_model_id"]].source_run_id == TARGET_RUN
    assert logged == [(TARGET_RUN, "acc")]


def test_tag_logged_model_without_source_tags_drops_the_marker(target: FakeTarget) -> None:
    target.create_logged_model("7", tags={SOURCE_MODEL_ID_TAG: MID, "team": "ml"})
    target.calls.clear()
    item = _imported_row(tags={"team": "ml"})

    row = tag_logged_model(item, OFF)

    assert target.calls == [("delete_logged_model_tag", TARGET_MID, SOURCE_MODEL_ID_TAG)]
    assert target.models[TARGET_MID].tags == {"team": "ml"}
    assert row["state"] == TAGGED
    assert (row["error"], row["failed_stage"]) == (None, None)
    assert {k: v for k, v in row.items() if k not in ("state", "updated_at")} == {
        k: v for k, v in item.items() if k != "state"
    }
    assert item["state"] == IMPORTED  # the input row is not changed


def test_tag_logged_model_with_source_tags_makes_no_call(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_client(uri: str) -> Any:
        raise AssertionError(f"no call expected, got client({uri!r})")

    monkeypatch.setattr(logged_models, "client", no_client)

    row = tag_logged_model(_imported_row(), ON)

    assert row["state"] == TAGGED
    assert row["target_model_id"] == TARGET_MID


def test_tag_logged_model_retried_after_a_failure_clears_it(target: FakeTarget) -> None:
    target.create_logged_model("7", tags={SOURCE_MODEL_ID_TAG: MID})
    item = _imported_row(state="failed", error="boom", failed_stage="tag")

    row = tag_logged_model(item, OFF)

    assert (row["state"], row["error"], row["failed_stage"]) == (TAGGED, None, None)
    assert SOURCE_MODEL_ID_TAG not in target.models[TARGET_MID].tags


def test_tag_logged_model_tolerates_a_tag_already_gone(target: FakeTarget) -> None:
    # e.g. the step ran before and the manifest row was not written
    target.create_logged_model("7", tags={})
    target.fail = MlflowException("no such tag", error_code=RESOURCE_DOES_NOT_EXIST)
    assert target.fail.error_code == "RESOURCE_DOES_NOT_EXIST"

    row = tag_logged_model(_imported_row(), OFF)

    assert row["state"] == TAGGED
    assert target.calls[-1] == ("delete_logged_model_tag", TARGET_MID, SOURCE_MODEL_ID_TAG)


@pytest.mark.parametrize(
    ("code", "kind"),
    [(PERMISSION_DENIED, PermanentError), (INTERNAL_ERROR, TransientError)],
    ids=["permission denied", "internal error"],
)
def test_tag_logged_model_other_errors_are_raised(
    target: FakeTarget, code: int, kind: type[Exception]
) -> None:
    target.create_logged_model("7", tags={SOURCE_MODEL_ID_TAG: MID})
    target.fail = MlflowException("nope", error_code=code)

    with pytest.raises(kind) as e:
        tag_logged_model(_imported_row(), OFF)

    assert e.value.obj == f"logged model {MID}"  # type: ignore[attr-defined]
    assert e.value.stage == "tag"  # type: ignore[attr-defined]
    assert target.models[TARGET_MID].tags == {SOURCE_MODEL_ID_TAG: MID}


def test_the_driver_makes_a_model_wait_for_its_own_source_run_still_moving() -> None:
    from migrator.logged_model_driver import LoggedModelDriver
    from migrator.pipeline import Migration

    moving, failed_for_good, done = "a" * 32, "b" * 32, "c" * 32
    rows = {
        moving: {"state": FAILED, "error": "TransientError: 503"},
        failed_for_good: {"state": FAILED, "error": "PermanentError: 400"},
        done: {"state": IMPORTED, "target_run_id": TARGET_RUN},
    }
    runs = SimpleNamespace(rows=rows, targets=Targets(rows, "target_run_id"))  # type: ignore[arg-type]
    driver = object.__new__(LoggedModelDriver)
    driver.m = m = SimpleNamespace(runs=runs, scope_complete=True)  # type: ignore[assignment]
    m.link = functools.partial(Migration.link, m)
    exps = {"3": {"target_experiment_id": "7"}}

    def waits(source_run: str | None, metric_runs: list[str]) -> list[str]:
        row = {"source_model_id": MID, "source_experiment_id": "3", "source_run_id": source_run}
        return list(driver.item(row, exps, metric_runs)["waits_for_runs"])

    assert waits(moving, []) == [moving]  # its own source run: the link is set only at creation
    assert waits(failed_for_good, []) == []  # failed for good: the model does without
    assert waits(done, [moving]) == [moving]
    assert waits(None, []) == []
    item = driver.item({"source_model_id": MID, "source_experiment_id": "3",
                        "source_run_id": done}, exps, [])
    assert item["target_run_id"] == TARGET_RUN and item["target_experiment_id"] == "7"
