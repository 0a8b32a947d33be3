"""Registered models (migrator.stages.models): what a version's source points at, how it is
rewritten, version numbers kept on import, and the staged model document read back."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST
from mlflow.store.entities.paged_list import PagedList

from migrator import mlflow_io
from migrator.config import Options
from migrator.errors import PermanentError, StagingError
from migrator.layout import MODEL_FORMAT, RUN_FORMAT, dump_doc, model_key
from migrator.lineage import FIELD_PREFIX, SOURCE_VERSION_TAG
from migrator.manifest import FAILED, IMPORTED
from migrator.stages import logged_models, model_sources, models
from migrator.stages.model_sources import rewrite_source, source_ref
from migrator.stages.models import _create_at, read_model_doc
from migrator.staging import LocalStaging

RUN = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
OTHER_RUN = "ffeeddccbbaa99887766554433221100"
TARGET_RUN = "11111111111111111111111111111111"
MID = "m-0123456789abcdef0123456789abcdef"
TARGET_MID = "m-fedcba9876543210fedcba9876543210"


# ---- source_ref ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "run_id", "expected"),
    [
        # a logged model by its URI, with and without a path below it
        (f"models:/{MID}", None, ("model", MID, "")),
        (f"models:/{MID}", RUN, ("model", MID, "")),
        (f"models:/{MID}/sub/dir", None, ("model", MID, "/sub/dir")),
        # a run's artifacts by run URI
        (f"runs:/{RUN}/model", None, ("run", RUN, "/model")),
        (f"runs:/{RUN}/a/b/c", OTHER_RUN, ("run", RUN, "/a/b/c")),
        (f"runs:/{RUN}", None, ("run", RUN, "")),
        # a run's artifact location, recognised only through the version's own run id
        (f"mlflow-artifacts:/1/{RUN}/artifacts/plots", RUN, ("run", RUN, "/plots")),
        (f"mlflow-artifacts:/1/{RUN}/artifacts", RUN, ("run", RUN, "")),
        (f"s3://bucket/mlflow/7/{RUN}/artifacts/model", RUN, ("run", RUN, "/model")),
        (f"mlflow-artifacts:/1/{RUN}/artifacts/plots", OTHER_RUN, ("other", "", "")),
        (f"mlflow-artifacts:/1/{RUN}/artifacts/plots", None, ("other", "", "")),
        # a logged model's artifact location
        (f"mlflow-artifacts:/1/models/{MID}/artifacts/sub", None, ("model", MID, "/sub")),
        (f"mlflow-artifacts:/1/models/{MID}/artifacts", OTHER_RUN, ("model", MID, "")),
        (f"s3://b/p/1/models/{MID}/artifacts/a/b", RUN, ("model", MID, "/a/b")),
        # nothing of this migration
        ("s3://some-bucket/some/where/model.pkl", RUN, ("other", "", "")),
        ("s3://some-bucket/some/where/model.pkl", None, ("other", "", "")),
        ("models:/churn/3", None, ("other", "", "")),  # a registry URI, not a logged model
        ("models:/churn@prod", None, ("other", "", "")),
        (f"mlflow-artifacts:/1/models/{MID}/artifactsX/a", None, ("other", "", "")),
        ("", RUN, ("other", "", "")),
    ],
)
def test_source_ref(source: str, run_id: str | None, expected: tuple[str, str, str]) -> None:
    assert source_ref(source, run_id) == expected


def test_source_ref_a_longer_folder_name_is_not_the_runs_artifacts() -> None:
    # `artifactsX` merely starts like the run's artifact folder
    assert source_ref(f"mlflow-artifacts:/1/{RUN}/artifactsX", RUN) == ("other", "", "")
    assert source_ref(f"mlflow-artifacts:/1/{RUN}/artifactsX/model", RUN) == ("other", "", "")
    # an id that merely ends with the run id is another folder
    assert source_ref(f"mlflow-artifacts:/1/x{RUN}/artifacts/m", RUN) == ("other", "", "")


def test_source_ref_run_folder_wins_over_a_model_like_path_below_it() -> None:
    source = f"mlflow-artifacts:/1/{RUN}/artifacts/models/{MID}/artifacts/x"
    assert source_ref(source, RUN) == ("run", RUN, f"/models/{MID}/artifacts/x")


def test_model_id_of() -> None:
    assert model_sources.model_id_of(f"models:/{MID}") == MID
    assert model_sources.model_id_of(f"models:/{MID}/x") == MID
    assert model_sources.model_id_of(f"runs:/{RUN}/model") is None
    assert model_sources.model_id_of("models:/churn/1") is None


# ---- rewrite_source --------------------------------------------------------------------------

REFS: dict[str, Any] = {
    "runs": {RUN: TARGET_RUN},
    "models": {MID: TARGET_MID},
    "experiments": {},
}


class ArtifactRoot:
    """A target's artifact locations, recording what was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, kind: str, target_id: str) -> str:
        self.calls.append((kind, target_id))
        if kind == "run":
            return f"mlflow-artifacts:/9/{target_id}/artifacts"
        return f"mlflow-artifacts:/9/models/{target_id}/artifacts"


def test_rewrite_runs_uri_with_path() -> None:
    root = ArtifactRoot()
    got = rewrite_source(f"runs:/{RUN}/model", RUN, REFS, root)
    assert got == (f"runs:/{TARGET_RUN}/model", TARGET_RUN, None)
    assert root.calls == []  # a runs:/ URI needs no artifact location


def test_rewrite_runs_uri_without_path() -> None:
    assert rewrite_source(f"runs:/{RUN}", None, REFS, ArtifactRoot()) == (
        f"runs:/{TARGET_RUN}",
        TARGET_RUN,
        None,
    )


def test_rewrite_run_artifact_location() -> None:
    root = ArtifactRoot()
    got = rewrite_source(f"mlflow-artifacts:/1/{RUN}/artifacts/plots", RUN, REFS, root)
    assert got == (f"mlflow-artifacts:/9/{TARGET_RUN}/artifacts/plots", TARGET_RUN, None)
    assert root.calls == [("run", TARGET_RUN)]


def test_rewrite_models_uri_keeps_the_sub_path_and_the_versions_run() -> None:
    root = ArtifactRoot()
    got = rewrite_source(f"models:/{MID}/sub", RUN, REFS, root)
    assert got == (f"models:/{TARGET_MID}/sub", TARGET_RUN, TARGET_MID)
    assert rewrite_source(f"models:/{MID}", None, REFS, root) == (
        f"models:/{TARGET_MID}",
        None,
        TARGET_MID,
    )
    assert root.calls == []


def test_rewrite_model_artifact_location() -> None:
    root = ArtifactRoot()
    got = rewrite_source(f"mlflow-artifacts:/1/models/{MID}/artifacts/sub", RUN, REFS, root)
    assert got == (f"mlflow-artifacts:/9/models/{TARGET_MID}/artifacts/sub", TARGET_RUN, TARGET_MID)
    assert root.calls == [("model", TARGET_MID)]


def test_rewrite_model_version_whose_run_was_not_migrated_has_no_run() -> None:
    got = rewrite_source(f"models:/{MID}", OTHER_RUN, REFS, ArtifactRoot())
    assert got == (f"models:/{TARGET_MID}", None, TARGET_MID)


@pytest.mark.parametrize(
    ("source", "run_id"),
    [
        (f"runs:/{OTHER_RUN}/model", OTHER_RUN),  # run not migrated
        (f"runs:/{OTHER_RUN}", RUN),  # the URI's run decides, not the version's run_id
        (f"mlflow-artifacts:/1/{OTHER_RUN}/artifacts/m", OTHER_RUN),
        ("models:/m-00000000000000000000000000000000", RUN),  # model not migrated
        ("mlflow-artifacts:/1/models/m-00000000000000000000000000000000/artifacts", RUN),
        ("s3://bucket/elsewhere/model", RUN),
        (f"mlflow-artifacts:/1/{RUN}/artifactsX", RUN),
    ],
)
def test_rewrite_returns_none_when_not_migrated(source: str, run_id: str) -> None:
    root = ArtifactRoot()
    assert rewrite_source(source, run_id, REFS, root) is None
    assert root.calls == []


# ---- _create_at ------------------------------------------------------------------------------


class ScriptedRegistry:
    """create_model_version lands on the scripted numbers in turn."""

    def __init__(self, numbers: list[int]) -> None:
        self._numbers = iter(numbers)
        self.created: list[tuple[str, dict[str, Any]]] = []
        self.deleted: list[tuple[str, str]] = []

    def create_model_version(self, name: str, **kwargs: Any) -> Any:
        self.created.append((name, kwargs))
        return SimpleNamespace(version=str(next(self._numbers)))

    def delete_model_version(self, name: str, version: str) -> None:
        self.deleted.append((name, version))

    def search_model_versions(self, *args: Any, **kwargs: Any) -> Any:
        return PagedList([], None)  # nothing marked: every create goes out


ARGS = {"source": f"runs:/{TARGET_RUN}/model", "run_id": TARGET_RUN, "tags": {"a": "1"}}


def test_create_at_lands_directly() -> None:
    c = ScriptedRegistry([5])
    mv = _create_at(c, "m", 5, dict(ARGS), "model version 'm' 5")
    assert mv.version == "5"
    assert c.deleted == []
    assert c.created == [("m", {"await_creation_for": 0, **ARGS})]


def test_create_at_low_numbers_are_deleted_and_the_create_repeated() -> None:
    c = ScriptedRegistry([3, 4, 5])
    mv = _create_at(c, "m", 5, dict(ARGS), "obj")
    assert int(mv.version) == 5
    assert c.deleted == [("m", "3"), ("m", "4")]
    assert len(c.created) == 3
    assert all(kw == {"await_creation_for": 0, **ARGS} for _, kw in c.created)


def test_create_at_high_number_is_deleted_and_fails() -> None:
    c = ScriptedRegistry([7])
    with pytest.raises(PermanentError, match="up to 6, so version 5 cannot keep") as e:
        _create_at(c, "m", 5, dict(ARGS), "model version 'm' 5")
    assert e.value.obj == "model version 'm' 5"
    assert e.value.stage == "import"
    assert c.deleted == [("m", "7")]
    assert len(c.created) == 1


def test_create_at_low_then_high() -> None:
    c = ScriptedRegistry([4, 6])
    with pytest.raises(PermanentError):
        _create_at(c, "m", 5, dict(ARGS), "obj")
    assert c.deleted == [("m", "4"), ("m", "6")]


# ---- read_model_doc --------------------------------------------------------------------------

NAME = "team/churn model"
WHAT = f"registered model {NAME!r}"


@pytest.fixture
def staging(tmp_path: Path) -> LocalStaging:
    return LocalStaging(str(tmp_path))


def _vdoc(n: int, source: str = f"runs:/{RUN}/model", **over: Any) -> dict[str, Any]:
    v: dict[str, Any] = {
        "fields": {
            "name": NAME,
            "version": n,
            "source": source,
            "run_id": RUN,
            "run_link": "",
            "current_stage": "None",
            "status": "READY",
            "status_message": "",
            "user_id": "",
            "creation_timestamp": 1670836055960 + n,
            "last_updated_timestamp": 1670836055960 + n,
            "model_id": None,
        },
        "description": f"version {n}",
        "tags": {"k": str(n)},
        "experiment_id": None,
        "artifacts": [],
        "fingerprint": "x",
    }
    v.update(over)
    return v


def _model_doc(name: str = NAME, **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "exported_at": 1,
        "fields": {"name": name, "creation_timestamp": 1, "last_updated_timestamp": 2},
        "description": "churn predictor",
        "tags": {"team": "ml", "mlflow.x": "sys"},
        "aliases": {"prod": "1"},
        "versions": [_vdoc(1)],
    }
    doc.update(over)
    return doc


def _put(staging: LocalStaging, doc: dict[str, Any], name: str = NAME) -> None:
    staging.write_bytes(model_key(name), dump_doc(MODEL_FORMAT, doc))


def test_read_model_doc_accepts_a_good_doc(staging: LocalStaging) -> None:
    body = _model_doc(versions=[_vdoc(1), _vdoc(3, artifacts=[{"path": "model/MLmodel"}])])
    _put(staging, body)
    doc = read_model_doc(staging, NAME)
    assert doc["format"] == MODEL_FORMAT
    assert [v["fields"]["version"] for v in doc["versions"]] == [1, 3]
    assert doc["versions"][1]["artifacts"] == [{"path": "model/MLmodel"}]


def test_read_model_doc_missing_is_a_staging_error(staging: LocalStaging) -> None:
    with pytest.raises(StagingError, match="missing staging object"):
        read_model_doc(staging, NAME)


def _bad_version(**fields: Any) -> dict[str, Any]:
    v = _vdoc(1)
    v["fields"] = {**v["fields"], **fields}
    return v


def _without_number() -> dict[str, Any]:
    v = _vdoc(1)
    del v["fields"]["version"]
    return v


HOSTILE: list[tuple[str, dict[str, Any], str]] = [
    ("name mismatch", _model_doc(name="other"), "does not describe this model"),
    ("no fields", _model_doc(fields=None), "does not describe this model"),
    ("tags not a map", _model_doc(tags=["a"]), "'tags' is not a string map"),
    ("tag value not str", _model_doc(tags={"a": 1}), "'tags' is not a string map"),
    ("aliases not a map", _model_doc(aliases=None), "'aliases' is not a string map"),
    ("versions not a list", _model_doc(versions={"1": {}}), "'versions' is not a list"),
    ("version not a dict", _model_doc(versions=["1"]), "lacks its number"),
    ("version without number", _model_doc(versions=[_without_number()]), "lacks its number"),
    (
        "version number a string",
        _model_doc(versions=[_bad_version(version="1")]),
        "lacks its number",
    ),
    ("version number zero", _model_doc(versions=[_bad_version(version=0)]), "lacks its number"),
    (
        "version number a bool",
        _model_doc(versions=[_bad_version(version=True)]),
        "lacks its number",
    ),
    (
        "version number a float",
        _model_doc(versions=[_bad_version(version=1.0)]),
        "lacks its number",
    ),
    (
        "version without source",
        _model_doc(versions=[_bad_version(source=None)]),
        r"malformed field\(s\) \[.source.\]",
    ),
    (
        "version tags",
        _model_doc(versions=[_vdoc(1, tags={"a": None})]),
        "'tags' is not a string map",
    ),
    (
        "traversal",
        _model_doc(versions=[_vdoc(1, artifacts=[{"path": "../../etc/passwd"}])]),
        "artifact path refused",
    ),
    (
        "absolute path",
        _model_doc(versions=[_vdoc(1, artifacts=[{"path": "/etc/passwd"}])]),
        "artifact path refused",
    ),
    ("artifacts not a list", _model_doc(versions=[_vdoc(1, artifacts=None)]), "not a list"),
    ("artifact entry", _model_doc(versions=[_vdoc(1, artifacts=["x"])]), "malformed artifact"),
]


@pytest.mark.parametrize(
    ("body", "match"), [(b, m) for _, b, m in HOSTILE], ids=[i for i, _, _ in HOSTILE]
)
def test_read_model_doc_refuses_hostile_docs(
    staging: LocalStaging, body: dict[str, Any], match: str
) -> None:
    _put(staging, body)
    with pytest.raises(StagingError, match=match) as e:
        read_model_doc(staging, NAME)
    assert e.value.obj.startswith(WHAT)  # names the model (and the version, where there is one)


@pytest.mark.parametrize("data", [b"{not json", b"", b"\xff\xfe", b"[1, 2]", b"null"])
def test_read_model_doc_refuses_non_documents(staging: LocalStaging, data: bytes) -> None:
    staging.write_bytes(model_key(NAME), data)
    with pytest.raises(StagingError) as e:
        read_model_doc(staging, NAME)
    assert e.value.obj == WHAT


def test_read_model_doc_refuses_another_format(staging: LocalStaging) -> None:
    staging.write_bytes(model_key(NAME), dump_doc(RUN_FORMAT, _model_doc()))
    with pytest.raises(StagingError, match="not a mlflow-migrator/registered-model document") as e:
        read_model_doc(staging, NAME)
    assert e.value.obj == WHAT


def test_read_model_doc_of_another_model_in_its_place_is_refused(staging: LocalStaging) -> None:
    # a doc copied under the wrong folder: the folder's name is what counts
    _put(staging, _model_doc(name="churn"), name=NAME)
    with pytest.raises(StagingError, match="does not describe this model"):
        read_model_doc(staging, NAME)


def _drop(doc: dict[str, Any], key: str) -> dict[str, Any]:
    """The document (model or version) without one of its keys."""
    return {k: v for k, v in doc.items() if k != key}


#: What read_model_doc refuses beyond the shape checks above, with its exact message.
REFUSED: list[tuple[str, dict[str, Any], str]] = [
    # an alias must name a version number: import sets it with `int(n)`
    (
        "alias 'latest'",
        _model_doc(aliases={"prod": "latest"}),
        "an alias does not name a version number",
    ),
    ("alias empty", _model_doc(aliases={"prod": ""}), "an alias does not name a version number"),
    (
        "alias negative",
        _model_doc(aliases={"prod": "-1"}),
        "an alias does not name a version number",
    ),
    ("alias float", _model_doc(aliases={"prod": "1.0"}), "an alias does not name a version number"),
    (
        "one good alias, one bad",
        _model_doc(aliases={"a": "1", "b": "v1"}),
        "an alias does not name a version number",
    ),
    # a number listed twice would be imported twice (the second onto the first)
    (
        "version listed twice",
        _model_doc(versions=[_vdoc(1), _vdoc(1)]),
        "version 1 is listed twice",
    ),
    (
        "version listed twice, apart",
        _model_doc(versions=[_vdoc(2), _vdoc(1), _vdoc(2, source=f"models:/{MID}")]),
        "version 2 is listed twice",
    ),
    # the model's own description
    (
        "model description missing",
        _drop(_model_doc(), "description"),
        "field 'description' is not a string",
    ),
    (
        "model description None",
        _model_doc(description=None),
        "field 'description' is not a string",
    ),
    (
        "model description a number",
        _model_doc(description=3),
        "field 'description' is not a string",
    ),
    # a version's fields
    (
        "version description missing",
        _model_doc(versions=[_drop(_vdoc(1), "description")]),
        "version 1: malformed field(s) ['description']",
    ),
    (
        "version description None",
        _model_doc(versions=[_vdoc(1, description=None)]),
        "version 1: malformed field(s) ['description']",
    ),
    (
        "version description a list",
        _model_doc(versions=[_vdoc(1, description=["x"])]),
        "version 1: malformed field(s) ['description']",
    ),
    (
        "version experiment_id a number",
        _model_doc(versions=[_vdoc(1, experiment_id=3)]),
        "version 1: malformed field(s) ['experiment_id']",
    ),
    (
        "version run_id a number",
        _model_doc(versions=[_bad_version(run_id=5)]),
        "version 1: malformed field(s) ['run_id']",
    ),
    (
        "version run_id a map",
        _model_doc(versions=[_bad_version(run_id={"id": RUN})]),
        "version 1: malformed field(s) ['run_id']",
    ),
    (
        "version file a number",
        _model_doc(versions=[_vdoc(1, file=1)]),
        "version 1: malformed field(s) ['file']",
    ),
    (
        "version file a list",
        _model_doc(versions=[_vdoc(1, file=["model.txt"])]),
        "version 1: malformed field(s) ['file']",
    ),
    (
        "several version fields, the later version",
        _model_doc(versions=[_vdoc(1), _vdoc(4, description=None, experiment_id=7, file=False)]),
        "version 4: malformed field(s) ['description', 'experiment_id', 'file']",
    ),
]


@pytest.mark.parametrize(
    ("body", "message"), [(b, m) for _, b, m in REFUSED], ids=[i for i, _, _ in REFUSED]
)
def test_read_model_doc_refuses_bad_aliases_duplicates_and_field_types(
    staging: LocalStaging, body: dict[str, Any], message: str
) -> None:
    _put(staging, body)
    with pytest.raises(StagingError) as e:
        read_model_doc(staging, NAME)
    assert e.value.message == message
    assert e.value.obj == WHAT  # the model, named


def test_read_model_doc_accepts_the_optional_fields_set_or_unset(staging: LocalStaging) -> None:
    staged = _vdoc(2, experiment_id="3", file="model.txt", description="")
    no_run = _bad_version(run_id=None)
    body = _model_doc(description="", aliases={"prod": "2", "old": "1", "x": "10"})
    body["versions"] = [no_run, staged]
    _put(staging, body)
    doc = read_model_doc(staging, NAME)
    assert doc["versions"][1]["file"] == "model.txt"
    assert doc["versions"][1]["experiment_id"] == "3"
    # `file` and `experiment_id` may be left out altogether (`_vdoc` has no `file`)
    _put(staging, _model_doc(versions=[_vdoc(1), _drop(_vdoc(2), "experiment_id")]))
    assert len(read_model_doc(staging, NAME)["versions"]) == 2


# ---- import_model against a fake registry ----------------------------------------------------


class FakeRegistry:
    """An MLflow SQL registry in miniature: a new version is numbered one above every version
    ever made (deleted ones included); deleted versions are gone from searches."""

    def __init__(self) -> None:
        self.models: dict[str, SimpleNamespace] = {}
        self.live: dict[tuple[str, int], SimpleNamespace] = {}
        self.top: dict[str, int] = {}
        self.log: list[tuple[str, int]] = []
        self.logged: dict[str, SimpleNamespace] = {}  # logged models, by id
        self.uploads: list[tuple[str, list[dict[str, Any]]]] = []  # (artifact root, files)

    # registered models
    def create_registered_model(self, name: str, tags: Any = None, description: Any = None) -> Any:
        if name in self.models:
            raise MlflowException("exists", error_code=RESOURCE_ALREADY_EXISTS)
        rm = SimpleNamespace(name=name, description=description, tags=dict(tags or {}), aliases={})
        self.models[name] = rm
        return rm

    def get_registered_model(self, name: str) -> Any:
        return self.models[name]

    def update_registered_model(self, name: str, description: str) -> None:
        self.models[name].description = description

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None:
        self.models[name].tags[key] = value

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        self.models[name].aliases[alias] = str(version)

    # versions
    def add(self, name: str, tags: dict[str, str] | None = None) -> SimpleNamespace:
        """A version made outside import_model (an earlier attempt, or the target's own)."""
        return self.create_model_version(name, source="s3://x", tags=tags)

    def create_model_version(
        self,
        name: str,
        source: str,
        run_id: Any = None,
        tags: Any = None,
        run_link: Any = None,
        description: Any = None,
        await_creation_for: Any = None,
        model_id: Any = None,
    ) -> Any:
        n = self.top.get(name, 0) + 1
        self.top[name] = n
        mv = SimpleNamespace(
            name=name,
            version=str(n),
            source=source,
            run_id=run_id,
            tags=dict(tags or {}),
            description=description,
            current_stage="None",
            model_id=model_id,
        )
        self.live[(name, n)] = mv
        self.log.append(("create", n))
        return mv

    def delete_model_version(self, name: str, version: str) -> None:
        del self.live[(name, int(version))]
        self.log.append(("delete", int(version)))

    def get_model_version(self, name: str, version: str) -> Any:
        try:
            return self.live[(name, int(version))]
        except KeyError:
            raise MlflowException("no such version", error_code=RESOURCE_DOES_NOT_EXIST) from None

    def update_model_version(self, name: str, version: str, description: str) -> None:
        self.live[(name, int(version))].description = description

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self.live[(name, int(version))].tags[key] = value

    def delete_model_version_tag(self, name: str, version: str, key: str) -> None:
        self.live[(name, int(version))].tags.pop(key, None)

    def transition_model_version_stage(
        self, name: str, version: str, stage: str, archive_existing_versions: bool = False
    ) -> None:
        self.live[(name, int(version))].current_stage = stage

    def versions(self, name: str) -> list[Any]:
        return [v for (m, n), v in sorted(self.live.items()) if m == name]

    def search_model_versions(self, flt: str, **kwargs: Any) -> Any:
        return PagedList([v for (m, n), v in sorted(self.live.items()) if flt.endswith(f"'{m}'")], None)

    # logged models (the holders of staged versions' files)
    def create_logged_model(
        self, experiment_id: str, name: Any = None, tags: Any = None, **kwargs: Any
    ) -> Any:
        mid = f"m-{len(self.logged) + 1:032x}"
        lm = SimpleNamespace(
            model_id=mid,
            creation_timestamp=len(self.logged),
            experiment_id=experiment_id,
            name=name,
            tags=dict(tags or {}),
            artifact_location=f"mlflow-artifacts:/{experiment_id}/models/{mid}/artifacts",
            status="PENDING",
        )
        self.logged[mid] = lm
        return lm

    def get_logged_model(self, model_id: str) -> Any:
        return self.logged[model_id]

    def finalize_logged_model(self, model_id: str, status: Any) -> None:
        self.logged[model_id].status = str(getattr(status, "name", status))

    def find_logged_models(self, experiment_id: str, key: str, value: str) -> list[Any]:
        return [
            lm
            for lm in self.logged.values()
            if lm.experiment_id == experiment_id and lm.tags.get(key) == value
        ]

    def find_logged_model(self, experiment_id: str, key: str, value: str) -> Any:
        found = self.find_logged_models(experiment_id, key, value)
        return found[0] if found else None


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> FakeRegistry:
    fake = FakeRegistry()
    monkeypatch.setattr(mlflow_io, "client", lambda uri: fake)  # through RegistryKind.client
    monkeypatch.setattr(mlflow_io, "versions_of_model", lambda c, name: fake.versions(name))
    monkeypatch.setattr(models, "versions_of_model", lambda c, name: fake.versions(name))
    monkeypatch.setattr(
        models,
        "find_logged_model_by_tag",
        lambda uri, exp, key, value: fake.find_logged_model(exp, key, value),
    )
    monkeypatch.setattr(
        logged_models,
        "find_logged_models_by_tag",
        lambda uri, exp, key, value: fake.find_logged_models(exp, key, value),
    )
    monkeypatch.setattr(
        models,
        "upload_artifacts",
        lambda uri, root, files, fetch, obj: fake.uploads.append((root, files)),
    )
    return fake


def _opts(staging: LocalStaging, **kw: Any) -> Options:
    return Options(staging=staging.uri, target="http://target:5000", **kw)


def _item(known: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"name": NAME, "state": "exported", "_versions": known or [], "refs": REFS}


def _by_version(result: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {r["version"]: r for r in result["_versions"]}


def test_import_model_reproduces_the_sources_gaps(
    staging: LocalStaging, registry: FakeRegistry
) -> None:
    # source versions 1, 3, 4: version 2 was deleted on the source
    v3 = _vdoc(3, source=f"mlflow-artifacts:/1/{RUN}/artifacts/model")
    v3["fields"]["current_stage"] = "Production"
    v4 = _vdoc(4, source=f"models:/{MID}")
    _put(staging, _model_doc(aliases={"prod": "3", "first": "1"}, versions=[_vdoc(1), v3, v4]))
    registry.get_run = lambda rid: SimpleNamespace(  # type: ignore[attr-defined]
        info=SimpleNamespace(artifact_uri=f"mlflow-artifacts:/9/{rid}/artifacts")
    )

    result = models.import_model(_item(), _opts(staging))

    assert result["state"] == IMPORTED
    assert "refs" not in result
    assert sorted(n for _, n in registry.live) == [1, 3, 4]
    assert registry.log == [
        ("create", 1),
        ("create", 2),
        ("delete", 2),
        ("create", 3),
        ("create", 4),
    ]
    rows = _by_version(result)
    assert {n: (r["state"], r["target_version"]) for n, r in rows.items()} == {
        1: (IMPORTED, 1),
        3: (IMPORTED, 3),
        4: (IMPORTED, 4),
    }
    mv1 = registry.live[(NAME, 1)]
    assert mv1.source == f"runs:/{TARGET_RUN}/model"
    assert mv1.run_id == TARGET_RUN
    assert mv1.description == "version 1"
    assert mv1.tags["k"] == "1"
    assert mv1.tags[SOURCE_VERSION_TAG] == "1"
    assert mv1.tags[FIELD_PREFIX + "creation_timestamp"] == str(1670836055960 + 1)
    assert FIELD_PREFIX + "run_link" not in mv1.tags  # "" on the source: not a value
    mv3 = registry.live[(NAME, 3)]
    assert mv3.source == f"mlflow-artifacts:/9/{TARGET_RUN}/artifacts/model"
    assert mv3.current_stage == "Production"
    assert rows[4]["target_model_id"] == TARGET_MID
    assert registry.live[(NAME, 4)].model_id == TARGET_MID
    rm = registry.models[NAME]
    assert rm.aliases == {"prod": "3", "first": "1"}
    assert rm.description == "churn predictor"
    assert rm.tags["team"] == "ml"
    assert rm.tags["mlflow_exim.mlflow_tag.x"] == "sys"


def test_import_model_resumes_after_a_kill(staging: LocalStaging, registry: FakeRegistry) -> None:
    _put(staging, _model_doc(aliases={}, versions=[_vdoc(1), _vdoc(3)]))
    registry.create_registered_model(NAME)
    registry.add(NAME, {SOURCE_VERSION_TAG: "1"})  # done and recorded
    registry.add(NAME, {SOURCE_VERSION_TAG: "3"})  # killed while at a low number
    registry.log.clear()
    known = [{"name": NAME, "version": 1, "state": IMPORTED, "target_version": 1}]

    result = models.import_model(_item(known), _opts(staging))

    assert registry.log == [("delete", 2), ("create", 3)]
    rows = _by_version(result)
    assert rows[1] == known[0]  # untouched
    assert rows[3]["state"] == IMPORTED
    assert rows[3]["target_version"] == 3
    assert sorted(n for _, n in registry.live) == [1, 3]


def test_import_model_version_already_at_its_number_is_brought_up_to_date(
    staging: LocalStaging, registry: FakeRegistry
) -> None:
    _put(staging, _model_doc(aliases={"prod": "1"}, versions=[_vdoc(1)]))
    registry.create_registered_model(NAME)
    registry.add(NAME, {SOURCE_VERSION_TAG: "1", "k": "stale"})
    registry.log.clear()

    result = models.import_model(_item(), _opts(staging))

    assert registry.log == []  # nothing created or deleted
    assert _by_version(result)[1]["state"] == IMPORTED
    mv = registry.live[(NAME, 1)]
    assert mv.tags["k"] == "1"
    assert mv.description == "version 1"
    assert registry.models[NAME].aliases == {"prod": "1"}


def test_import_model_a_failed_version_blocks_the_later_ones(
    staging: LocalStaging, registry: FakeRegistry
) -> None:
    lost = _vdoc(2, source=f"runs:/{OTHER_RUN}/model")  # its run was not migrated, no files
    _put(staging, _model_doc(aliases={"a": "1", "b": "3"}, versions=[_vdoc(1), lost, _vdoc(3)]))

    result = models.import_model(_item(), _opts(staging))

    rows = _by_version(result)
    assert rows[1]["state"] == IMPORTED
    assert rows[2]["state"] == FAILED
    assert "was not migrated" in rows[2]["error"]
    assert rows[3]["state"] == FAILED
    assert "version 2 failed first" in rows[3]["error"]
    assert sorted(n for _, n in registry.live) == [1]
    assert registry.models[NAME].aliases == {"a": "1"}  # no alias to a version not made


def test_import_model_foreign_version_fails_but_does_not_block(
    staging: LocalStaging, registry: FakeRegistry
) -> None:
    _put(staging, _model_doc(aliases={}, versions=[_vdoc(1), _vdoc(2)]))
    registry.create_registered_model(NAME)
    registry.add(NAME, {"owner": "someone else"})

    result = models.import_model(_item(), _opts(staging))

    rows = _by_version(result)
    assert rows[1]["state"] == FAILED
    assert "did not create" in rows[1]["error"]
    assert registry.live[(NAME, 1)].tags == {"owner": "someone else"}  # left alone
    assert rows[2]["state"] == IMPORTED
    assert rows[2]["target_version"] == 2


def test_import_model_without_source_tags(staging: LocalStaging, registry: FakeRegistry) -> None:
    _put(staging, _model_doc(aliases={}, versions=[_vdoc(1)]))

    models.import_model(_item(), _opts(staging, import_source_tags=False))

    assert registry.live[(NAME, 1)].tags == {"k": "1"}  # the number marker removed, too
    assert registry.models[NAME].tags == {"team": "ml", "mlflow.x": "sys"}


# ---- without source tags: a version whose manifest row was lost --------------------------------


OFF_TAGS = {"import_source_tags": False}


def test_import_model_without_source_tags_twice_with_lost_rows(
    staging: LocalStaging, registry: FakeRegistry
) -> None:
    # versions 1, 3 (2 deleted on the source), 4 from a logged model
    _put(
        staging,
        _model_doc(
            aliases={"prod": "3", "first": "1"},
            versions=[_vdoc(1), _vdoc(3), _vdoc(4, source=f"models:/{MID}")],
        ),
    )
    opts = _opts(staging, **OFF_TAGS)

    first = models.import_model(_item(), opts)
    assert {n: r["state"] for n, r in _by_version(first).items()} == {
        1: IMPORTED,
        3: IMPORTED,
        4: IMPORTED,
    }
    # nothing on the target says which versions are ours: no number marker...
    assert all(SOURCE_VERSION_TAG not in v.tags for v in registry.live.values())
    # ...and the second attempt has no manifest rows either; the target drifted meanwhile
    registry.live[(NAME, 1)].description = "edited on the target"
    registry.live[(NAME, 3)].tags["k"] = "stale"
    registry.models[NAME].aliases.clear()

    second = models.import_model(_item(), opts)

    rows = _by_version(second)
    assert {n: (r["state"], r["error"], r["target_version"]) for n, r in rows.items()} == {
        1: (IMPORTED, None, 1),
        3: (IMPORTED, None, 3),
        4: (IMPORTED, None, 4),
    }
    # every version created once, by the first attempt (2 only to keep the gap)
    assert registry.log == [
        ("create", 1),
        ("create", 2),
        ("delete", 2),
        ("create", 3),
        ("create", 4),
    ]
    assert sorted(n for _, n in registry.live) == [1, 3, 4]
    # recognised as ours, so brought up to date
    assert registry.live[(NAME, 1)].description == "version 1"
    assert registry.live[(NAME, 3)].tags == {"k": "3"}  # and still no marker
    assert registry.live[(NAME, 4)].tags == {"k": "4"}
    assert rows[4]["target_source"] == f"models:/{TARGET_MID}"
    assert rows[4]["target_model_id"] == TARGET_MID
    assert registry.models[NAME].aliases == {"prod": "3", "first": "1"}

    third = models.import_model(_item(), opts)  # and again: still nothing to create
    assert all(r["state"] == IMPORTED for r in third["_versions"])
    assert len(registry.log) == 5


def test_import_version_without_marker_or_row_is_ours_by_its_source(
    staging: LocalStaging, registry: FakeRegistry
) -> None:
    registry.create_registered_model(NAME)
    existing = registry.create_model_version(
        NAME, source=f"runs:/{TARGET_RUN}/model", run_id=TARGET_RUN, tags={"k": "old"}
    )
    registry.log.clear()
    known = {"name": NAME, "version": 1, "state": "exported"}  # no target_version

    row = models._import_version(
        registry, _opts(staging, **OFF_TAGS), NAME, _vdoc(1), existing, REFS, known
    )

    assert row["state"] == IMPORTED
    assert row["target_version"] == 1
    assert row["target_source"] == f"runs:/{TARGET_RUN}/model"
    assert row["target_run_id"] == TARGET_RUN
    assert registry.log == []  # brought up to date, not made again
    assert existing.tags == {"k": "1"}
    assert existing.description == "version 1"


def test_import_model_without_source_tags_foreign_version_still_fails(
    staging: LocalStaging, registry: FakeRegistry
) -> None:
    _put(staging, _model_doc(aliases={}, versions=[_vdoc(1), _vdoc(2)]))
    registry.create_registered_model(NAME)
    registry.add(NAME, {"owner": "someone else"})  # source s3://x: not what we would write

    result = models.import_model(_item(), _opts(staging, **OFF_TAGS))

    rows = _by_version(result)
    assert rows[1]["state"] == FAILED
    assert "did not create" in rows[1]["error"]
    foreign = registry.live[(NAME, 1)]
    assert (foreign.source, foreign.tags, foreign.description) == (
        "s3://x",
        {"owner": "someone else"},
        None,
    )  # left alone
    assert rows[2]["state"] == IMPORTED
    assert rows[2]["target_version"] == 2


def test_import_version_foreign_source_without_marker_fails(
    staging: LocalStaging, registry: FakeRegistry
) -> None:
    registry.create_registered_model(NAME)
    # the source a run of *another* target run would have: not ours
    existing = registry.create_model_version(NAME, source=f"runs:/{OTHER_RUN}/model")
    known = {"name": NAME, "version": 1}

    with pytest.raises(PermanentError, match="did not create") as e:
        models._import_version(
            registry, _opts(staging, **OFF_TAGS), NAME, _vdoc(1), existing, REFS, known
        )
    assert e.value.obj == f"model version {NAME!r} 1"
    assert existing.tags == {}


# ---- a version staged as one file ---------------------------------------------------------------

FILE_SOURCE = "s3://bucket/elsewhere/model.txt"
FILES = [{"path": "model.txt", "size": 3}]


def _staged_vdoc(n: int, file: str | None) -> dict[str, Any]:
    """A version whose run was not migrated: its files were staged from its own source."""
    if file:
        return _vdoc(n, source=FILE_SOURCE, artifacts=FILES, file=file)
    files = [{"path": "MLmodel", "size": 10}, {"path": "model.pkl", "size": 5}]
    return _vdoc(n, source="s3://bucket/elsewhere/model", artifacts=files, file=None)


def test_target_source_of_a_single_staged_file_is_a_path_in_the_holder(
    staging: LocalStaging, registry: FakeRegistry
) -> None:
    opts = _opts(staging)
    vdoc = _staged_vdoc(1, "model.txt")

    source, run_id, model_id = models._target_source(registry, opts, NAME, vdoc, REFS, "obj")

    [holder] = registry.logged.values()
    assert source == f"{holder.artifact_location}/model.txt"
    assert source == f"mlflow-artifacts:/0/models/{holder.model_id}/artifacts/model.txt"
    assert not source.startswith("models:/")
    assert model_id == holder.model_id
    assert run_id == TARGET_RUN  # the version's run, migrated
    assert holder.tags[models.HOLDER_TAG] == f"{NAME}/1"
    assert holder.status == "READY"
    assert registry.uploads == [(holder.artifact_location, FILES)]
    # found again next time, and the same source results
    again = models._target_source(registry, opts, NAME, vdoc, REFS, "obj")
    assert again == (source, run_id, model_id)
    assert len(registry.logged) == 1


def test_target_source_of_a_staged_folder_is_the_holders_models_uri(
    staging: LocalStaging, registry: FakeRegistry
) -> None:
    vdoc = _staged_vdoc(1, None)

    source, _, model_id = models._target_source(registry, _opts(staging), NAME, vdoc, REFS, "obj")

    [holder] = registry.logged.values()
    assert source == f"models:/{holder.model_id}"
    assert model_id == holder.model_id


def test_import_model_single_staged_file_without_source_tags_twice(
    staging: LocalStaging, registry: FakeRegistry
) -> None:
    _put(staging, _model_doc(aliases={}, versions=[_staged_vdoc(1, "model.txt")]))
    opts = _opts(staging, **OFF_TAGS)

    models.import_model(_item(), opts)
    result = models.import_model(_item(), opts)  # the manifest row lost

    [holder] = registry.logged.values()
    mv = registry.live[(NAME, 1)]
    assert mv.source == f"{holder.artifact_location}/model.txt"
    assert mv.model_id == holder.model_id
    assert registry.log == [("create", 1)]
    row = _by_version(result)[1]
    assert row["state"] == IMPORTED
    assert row["target_source"] == mv.source
    assert row["target_model_id"] == holder.model_id  # read from the artifact path, too


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("models:/m-abc", "m-abc"),
        ("models:/m-abc/sub", "m-abc"),
        ("mlflow-artifacts:/1/models/m-abc/artifacts/model.txt", "m-abc"),
        ("mlflow-artifacts:/1/models/m-abc/artifacts", "m-abc"),
        (f"s3://b/p/0/models/{TARGET_MID}/artifacts/a/b.pkl", TARGET_MID),
        (f"runs:/{TARGET_RUN}/model", None),
        (f"mlflow-artifacts:/1/{TARGET_RUN}/artifacts/model", None),
        ("models:/churn/1", None),
        ("s3://x", None),
        ("", None),
    ],
)
def test_logged_model_of(source: str, expected: str | None) -> None:
    assert model_sources.logged_model_of(source) == expected
