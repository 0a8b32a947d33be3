"""MLflow 3 logged models (migrator.stages.logged_models): the staged document's checks and the
tags a target logged model gets."""

from __future__ import annotations

import copy
import enum
from types import SimpleNamespace
from typing import Any

import pytest

from migrator.config import Options
from migrator.errors import StagingError
from migrator.lineage import LOGGED_MODEL_FIELDS, SOURCE_MODEL_ID_TAG
from migrator.stages.logged_models import (
    MODEL_VERSIONS_TAG,
    logged_model_fields,
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
