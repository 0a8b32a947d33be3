"""Source-tag rules (migrator.lineage): pure functions, no MLflow."""

from __future__ import annotations

import pytest

from migrator import lineage
from migrator.lineage import (
    EXPERIMENT_FIELDS,
    MAX_KEY_LENGTH,
    MAX_RUN_TAG_VALUE_LENGTH,
    RUN_INFO_FIELDS,
    experiment_source_tags,
    field_source_tags,
    fit,
    is_source_tag,
    run_source_tags,
    system_tag_copies,
)

INFO = {
    "run_id": "0a1b2c3d4e5f",
    "experiment_id": "17",
    "user_id": "andre@company.com",
    "status": "FINISHED",
    "start_time": 1670836055960,
    "end_time": 1670836099001,
    "lifecycle_stage": "active",
    "artifact_uri": "s3://bucket/17/0a1b2c3d4e5f/artifacts",
    "run_name": "brave-owl-42",
}


def test_run_info_fields_are_the_documented_ones() -> None:
    assert set(RUN_INFO_FIELDS) == {
        "run_id", "experiment_id", "user_id", "status", "start_time", "end_time",
        "lifecycle_stage", "artifact_uri", "run_name",
    }


def test_run_source_tags_every_run_info_field_exact_values() -> None:
    tags = run_source_tags(INFO, {})
    assert tags == {
        "mlflow_exim.run_info.run_id": "0a1b2c3d4e5f",
        "mlflow_exim.run_info.experiment_id": "17",
        "mlflow_exim.run_info.user_id": "andre@company.com",
        "mlflow_exim.run_info.status": "FINISHED",
        "mlflow_exim.run_info.start_time": "1670836055960",
        "mlflow_exim.run_info.end_time": "1670836099001",
        "mlflow_exim.run_info.lifecycle_stage": "active",
        "mlflow_exim.run_info.artifact_uri": "s3://bucket/17/0a1b2c3d4e5f/artifacts",
        "mlflow_exim.run_info.run_name": "brave-owl-42",
    }
    assert all(isinstance(v, str) for v in tags.values())


def test_run_source_tags_times_are_decimal_ms_strings_not_floats_or_iso() -> None:
    tags = run_source_tags({**INFO, "start_time": 0, "end_time": 1}, {})
    assert tags["mlflow_exim.run_info.start_time"] == "0"  # 0 is a value, not "missing"
    assert tags["mlflow_exim.run_info.end_time"] == "1"


def test_run_source_tags_skips_none_fields() -> None:
    info = {**INFO, "end_time": None, "run_name": None}
    tags = run_source_tags(info, {})
    assert "mlflow_exim.run_info.end_time" not in tags
    assert "mlflow_exim.run_info.run_name" not in tags
    assert len(tags) == len(RUN_INFO_FIELDS) - 2


def test_run_source_tags_ignores_extra_info_keys() -> None:
    tags = run_source_tags({**INFO, "run_uuid": "0a1b2c3d4e5f", "other": "x"}, {})
    assert "mlflow_exim.run_info.run_uuid" not in tags
    assert "mlflow_exim.run_info.other" not in tags


def test_run_source_tags_copies_system_tags() -> None:
    tags = run_source_tags(
        INFO,
        {
            "mlflow.user": "andre@company.com",
            "mlflow.parentRunId": "parent123",
            "mlflow.source.git.commit": "abc",
            "mlflow.mlflow.x": "nested",
            "mymlflow.x": "not a system tag",
            "mlflow_exim.field.x": "already a source tag",
            "MLFLOW.upper": "case matters",
            "team": "ml",
        },
    )
    copied = {k: v for k, v in tags.items() if k.startswith("mlflow_exim.mlflow_tag.")}
    assert copied == {
        "mlflow_exim.mlflow_tag.user": "andre@company.com",
        "mlflow_exim.mlflow_tag.parentRunId": "parent123",
        "mlflow_exim.mlflow_tag.source.git.commit": "abc",
        "mlflow_exim.mlflow_tag.mlflow.x": "nested",
    }
    # user tags are not turned into source tags (they are copied as is elsewhere)
    assert "team" not in tags and "mlflow_exim.mlflow_tag.team" not in tags
    assert not any("mymlflow" in k for k in tags)
    assert len(tags) == len(RUN_INFO_FIELDS) + 4


def test_system_tag_copies_replaces_only_leading_prefix() -> None:
    assert system_tag_copies({"mlflow.mlflow.x": "v"}) == {"mlflow_exim.mlflow_tag.mlflow.x": "v"}
    assert system_tag_copies({"mymlflow.x": "v", "x.mlflow.y": "v", "mlflow": "v"}) == {}
    assert system_tag_copies({}) == {}


def test_experiment_source_tags_use_field_prefix() -> None:
    fields = {
        "experiment_id": "5",
        "name": "/Users/andre@mycompany.com/mlflow/My_Experiment",
        "artifact_location": "mlflow-artifacts:/5",
        "lifecycle_stage": "active",
        "creation_time": 1670474737597,
        "last_update_time": None,
        "tags": {"ignored": "x"},
    }
    tags = experiment_source_tags(
        fields,
        {"mlflow.experiment.sourceName": "/Users/andre@mycompany.com/mlflow/My_Experiment",
         "note": "user"},
    )
    assert tags == {
        "mlflow_exim.field.experiment_id": "5",
        "mlflow_exim.field.name": "/Users/andre@mycompany.com/mlflow/My_Experiment",
        "mlflow_exim.field.artifact_location": "mlflow-artifacts:/5",
        "mlflow_exim.field.lifecycle_stage": "active",
        "mlflow_exim.field.creation_time": "1670474737597",
        "mlflow_exim.mlflow_tag.experiment.sourceName":
            "/Users/andre@mycompany.com/mlflow/My_Experiment",
    }
    assert not any(k.startswith("mlflow_exim.run_info.") for k in tags)
    assert set(EXPERIMENT_FIELDS) >= {"creation_time", "last_update_time", "experiment_id"}


def test_field_source_tags_only_named_fields() -> None:
    out = field_source_tags({"a": 1, "b": "x", "c": None}, ("a", "c", "missing"))
    assert out == {"mlflow_exim.field.a": "1"}


def test_fit_cuts_keys_and_values() -> None:
    long_key = "k" * 300
    long_val = "v" * (MAX_RUN_TAG_VALUE_LENGTH + 7)
    out = fit({long_key: long_val, "short": "ok"})
    assert out == {"k" * MAX_KEY_LENGTH: "v" * MAX_RUN_TAG_VALUE_LENGTH, "short": "ok"}
    assert MAX_KEY_LENGTH == 250


def test_fit_honours_given_limit_and_keeps_values_at_the_limit() -> None:
    out = fit({"a": "x" * 10, "b": "y" * 11, "c": ""}, max_value=10)
    assert out == {"a": "x" * 10, "b": "y" * 10, "c": ""}
    exact = fit({"k" * 250: "v"})
    assert list(exact) == ["k" * 250]


def test_fit_does_not_modify_input() -> None:
    tags = {"a": "x" * 20}
    fit(tags, max_value=5)
    assert tags == {"a": "x" * 20}


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("mlflow_exim.run_info.run_id", True),
        ("mlflow_exim.field.name", True),
        ("mlflow_exim.mlflow_tag.user", True),
        ("mlflow_eximx.a", False),
        ("mlflow.user", False),
        ("mlflow_exim", False),
    ],
)
def test_is_source_tag(key: str, expected: bool) -> None:
    assert is_source_tag(key) is expected


def test_source_run_id_tag_constant() -> None:
    assert lineage.SOURCE_RUN_ID_TAG == "mlflow_exim.run_info.run_id"
    assert lineage.PARENT_RUN_ID_TAG == "mlflow.parentRunId"


# ---- registered models, model versions, logged models ------------------------------------


def test_object_source_tags() -> None:
    fields = {
        "name": "churn",
        "version": 3,
        "creation_timestamp": 1670836055960,
        "last_updated_timestamp": 0,
        "user_id": "",
        "current_stage": "None",
        "source": "runs:/abc/model",
        "run_id": None,
        "run_link": "",
        "status": "READY",
        "status_message": "",
        "model_id": None,
        "not_named": "x",
    }
    tags = lineage.object_source_tags(
        fields,
        lineage.MODEL_VERSION_FIELDS,
        {"mlflow.x": "1", "mlflow.source.type": "NOTEBOOK", "team": "ml", "mlflow_exim.y": "z"},
    )
    assert tags == {
        "mlflow_exim.field.name": "churn",
        "mlflow_exim.field.version": "3",
        "mlflow_exim.field.creation_timestamp": "1670836055960",
        "mlflow_exim.field.last_updated_timestamp": "0",  # 0 is a value
        "mlflow_exim.field.current_stage": "None",
        "mlflow_exim.field.source": "runs:/abc/model",
        "mlflow_exim.field.status": "READY",
        "mlflow_exim.mlflow_tag.x": "1",
        "mlflow_exim.mlflow_tag.source.type": "NOTEBOOK",
    }
    assert all(isinstance(v, str) for v in tags.values())


def test_field_source_tags_skip_empty_only_when_asked() -> None:
    fields = {"a": "", "b": None, "c": 0, "d": "x"}
    assert field_source_tags(fields, ("a", "b", "c", "d")) == {
        "mlflow_exim.field.a": "",
        "mlflow_exim.field.c": "0",
        "mlflow_exim.field.d": "x",
    }
    assert field_source_tags(fields, ("a", "b", "c", "d"), skip_empty=True) == {
        "mlflow_exim.field.c": "0",
        "mlflow_exim.field.d": "x",
    }


def test_model_field_lists_and_markers() -> None:
    assert set(lineage.MODEL_VERSION_FIELDS) >= {"name", "version", "source", "run_id", "model_id"}
    assert set(lineage.REGISTERED_MODEL_FIELDS) == {"name", "creation_timestamp", "last_updated_timestamp"}
    assert "model_id" in lineage.LOGGED_MODEL_FIELDS
    assert lineage.SOURCE_MODEL_ID_TAG == "mlflow_exim.field.model_id"
    assert lineage.SOURCE_VERSION_TAG == "mlflow_exim.field.version"
    assert is_source_tag(lineage.SOURCE_MODEL_ID_TAG) and is_source_tag(lineage.SOURCE_VERSION_TAG)
