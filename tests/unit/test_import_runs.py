"""The import stage's pure parts: which tags are set at creation, which can be set later."""

from __future__ import annotations

from typing import Any

import pytest

from migrator.errors import PermanentError
from migrator.lineage import SOURCE_RUN_ID_TAG
from migrator.stages.import_runs import _changed_tags, _creation_tags


def doc(tags: dict[str, str]) -> dict[str, Any]:
    return {"info": {"run_id": "src1"}, "tags": tags}


def test_creation_tags_carry_the_marker_but_not_the_source_parent() -> None:
    tags = _creation_tags(doc({"a": "1", "mlflow.parentRunId": "p", "k'ey": "x" * 9000}))
    assert tags[SOURCE_RUN_ID_TAG] == "src1"
    assert "mlflow.parentRunId" not in tags
    assert len(tags["k'ey"]) == 8000  # cut to MLflow's limit


def test_only_changed_tags_are_sent_again() -> None:
    have = {"a": "1", "b": "old", "k'ey": "legacy", SOURCE_RUN_ID_TAG: "src1"}
    changed = _changed_tags(doc({"a": "1", "b": "new", "c": "3", "k'ey": "legacy"}), have, "run src1")
    assert sorted((t.key, t.value) for t in changed) == [("b", "new"), ("c", "3")]


def test_a_changed_tag_with_a_creation_only_key_fails_the_run_loudly() -> None:
    have = {"k'ey": "legacy", SOURCE_RUN_ID_TAG: "src1"}
    with pytest.raises(PermanentError, match="k'ey") as e:
        _changed_tags(doc({"k'ey": "changed"}), have, "run src1")
    assert e.value.obj == "run src1"
