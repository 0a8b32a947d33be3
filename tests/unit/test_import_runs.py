"""The import stage's pure parts: which tags are set at creation, which can be set later."""

from __future__ import annotations

from typing import Any

import pytest

from migrator.config import Options
from migrator.errors import PermanentError
from migrator.lineage import SOURCE_RUN_ID_TAG
from migrator.stages.import_runs import _changed_tags, _creation_tags

ON, OFF = Options(), Options(import_source_tags=False)


def doc(tags: dict[str, str]) -> dict[str, Any]:
    return {"info": {"run_id": "src1", "start_time": 1670836055960, "end_time": None}, "tags": tags}


def test_creation_tags_carry_the_marker_but_not_the_source_parent() -> None:
    tags = _creation_tags(doc({"a": "1", "mlflow.parentRunId": "p", "k'ey": "x" * 9000}), OFF)
    assert tags == {"a": "1", "k'ey": "x" * 8000, SOURCE_RUN_ID_TAG: "src1"}  # values cut


def test_creation_tags_carry_the_lineage_when_source_tags_are_on() -> None:
    tags = _creation_tags(doc({"mlflow.user": "andre", "mlflow.parentRunId": "p"}), ON)
    assert tags["mlflow.user"] == "andre"
    assert tags["mlflow_exim.mlflow_tag.user"] == "andre"
    assert tags["mlflow_exim.mlflow_tag.parentRunId"] == "p"  # the source parent, kept
    assert tags["mlflow_exim.run_info.start_time"] == "1670836055960"
    assert "mlflow_exim.run_info.end_time" not in tags  # None on the source
    assert "mlflow.parentRunId" not in tags


def test_only_changed_tags_are_sent_again() -> None:
    have = {"a": "1", "b": "old", "k'ey": "legacy", SOURCE_RUN_ID_TAG: "src1"}
    changed = _changed_tags(doc({"a": "1", "b": "new", "c": "3", "k'ey": "legacy"}), OFF, have, "run src1")
    assert sorted((t.key, t.value) for t in changed) == [("b", "new"), ("c", "3")]


def test_a_changed_tag_with_a_creation_only_key_fails_the_run_loudly() -> None:
    have = {"k'ey": "legacy", SOURCE_RUN_ID_TAG: "src1"}
    with pytest.raises(PermanentError, match="k'ey") as e:
        _changed_tags(doc({"k'ey": "changed"}), OFF, have, "run src1")
    assert e.value.obj == "run src1"
