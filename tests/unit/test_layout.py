"""Staged documents and metrics (migrator.layout)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pytest

from migrator.errors import StagingError
from migrator.layout import (
    EXPERIMENT_FORMAT,
    FORMAT_VERSION,
    RUN_FORMAT,
    artifact_key,
    dump_doc,
    experiment_key,
    load_doc,
    metrics_from_parquet,
    metrics_to_parquet,
    run_key,
    validate_run_doc,
)


def _run_doc(run_id: str = "abc123", **over: object) -> dict:
    doc = {
        "info": {"run_id": run_id, "experiment_id": "1"},
        "params": {"lr": "0.1"},
        "tags": {"mlflow.user": "u", "team": "ml"},
        "artifacts": [{"path": "model/MLmodel", "size": 10}, {"path": "a b/é.txt"}],
    }
    doc.update(over)
    return doc


# ---- load_doc / dump_doc ---------------------------------------------------------------


def test_dump_load_round_trip() -> None:
    body = _run_doc()
    data = dump_doc(RUN_FORMAT, body)
    doc = load_doc(data, RUN_FORMAT, "run abc123")
    assert doc["format"] == RUN_FORMAT
    assert doc["version"] == FORMAT_VERSION
    assert {k: doc[k] for k in body} == body


@pytest.mark.parametrize("data", [b"", b"{not json", b"\xff\xfe\x00garbage", b"<xml/>"])
def test_load_doc_refuses_non_json(data: bytes) -> None:
    with pytest.raises(StagingError, match="not JSON") as ei:
        load_doc(data, RUN_FORMAT, "run r1")
    assert ei.value.obj == "run r1"


@pytest.mark.parametrize(
    "doc",
    [
        {"format": EXPERIMENT_FORMAT, "version": 1},
        {"version": 1},
        {"format": "something/else", "version": 1},
        [RUN_FORMAT, 1],
        "mlflow-migrator/run",
        None,
    ],
)
def test_load_doc_refuses_wrong_format(doc: object) -> None:
    with pytest.raises(StagingError, match="not a mlflow-migrator/run document"):
        load_doc(json.dumps(doc).encode(), RUN_FORMAT, "x")


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 99, "1", None, 1.0])
def test_load_doc_refuses_newer_or_bad_version(version: object) -> None:
    data = json.dumps({"format": RUN_FORMAT, "version": version}).encode()
    with pytest.raises(StagingError, match="unsupported"):
        load_doc(data, RUN_FORMAT, "x")


def test_load_doc_accepts_current_version() -> None:
    data = json.dumps({"format": RUN_FORMAT, "version": FORMAT_VERSION, "x": 1}).encode()
    assert load_doc(data, RUN_FORMAT, "x")["x"] == 1


# ---- validate_run_doc ------------------------------------------------------------------


def test_validate_run_doc_accepts_good_doc() -> None:
    validate_run_doc(_run_doc(), "abc123")  # does not raise


def test_validate_run_doc_refuses_wrong_run_id() -> None:
    with pytest.raises(StagingError, match="does not describe this run"):
        validate_run_doc(_run_doc("other"), "abc123")
    with pytest.raises(StagingError):
        validate_run_doc(_run_doc(info=None), "abc123")


@pytest.mark.parametrize(
    "path", ["../../etc/passwd", "/abs/file", "a/../../b", "a#b", "a\\..\\b", "a//b", ""]
)
def test_validate_run_doc_refuses_unsafe_artifact_paths(path: str) -> None:
    doc = _run_doc(artifacts=[{"path": "ok.txt"}, {"path": path}])
    with pytest.raises(StagingError, match="artifact path refused"):
        validate_run_doc(doc, "abc123")


@pytest.mark.parametrize(
    "over",
    [
        {"params": {"lr": 0.1}},
        {"params": ["lr"]},
        {"tags": None},
        {"tags": {"a": None}},
        {"artifacts": {"path": "x"}},
        {"artifacts": [{"size": 3}]},
        {"artifacts": ["x.txt"]},
    ],
)
def test_validate_run_doc_refuses_malformed_fields(over: dict) -> None:
    with pytest.raises(StagingError):
        validate_run_doc(_run_doc(**over), "abc123")


# ---- keys ------------------------------------------------------------------------------


def test_keys() -> None:
    assert experiment_key("12") == "experiments/12/experiment.json"
    assert run_key("abc_1-2", "run.json") == "runs/abc_1-2/run.json"
    assert artifact_key("r1", "model/MLmodel") == "runs/r1/artifacts/model/MLmodel"


@pytest.mark.parametrize("bad", ["..", "a/b", "", "x" * 65, "a b", "a.b"])
def test_ids_are_checked(bad: str) -> None:
    with pytest.raises(StagingError):
        experiment_key(bad)
    with pytest.raises(StagingError):
        run_key(bad, "run.json")


@pytest.mark.parametrize("path", ["../run.json", "/x", "a/../../b"])
def test_artifact_key_refuses_traversal(path: str) -> None:
    with pytest.raises(StagingError):
        artifact_key("r1", path)


# ---- metrics ---------------------------------------------------------------------------


def test_metrics_round_trip_preserves_nan_inf_and_order() -> None:
    points = [
        {"key": "loss", "step": 0, "timestamp": 1670836055960, "value": 1.5},
        {"key": "loss", "step": 1, "timestamp": 1670836055961, "value": float("nan")},
        {"key": "loss", "step": 2, "timestamp": 1670836055962, "value": float("inf")},
        {"key": "acc", "step": -1, "timestamp": 0, "value": float("-inf")},
        {"key": "acc", "step": 2**40, "timestamp": 2**41, "value": -0.0},
    ]
    table = metrics_from_parquet(metrics_to_parquet(points), "run r1")
    assert table.column_names == ["key", "step", "timestamp", "value"]
    assert table.schema.field("step").type == pa.int64()
    assert table.schema.field("value").type == pa.float64()
    rows = table.to_pylist()
    assert len(rows) == len(points)
    for got, want in zip(rows, points, strict=True):
        assert got["key"] == want["key"]
        assert got["step"] == want["step"]
        assert got["timestamp"] == want["timestamp"]
        if math.isnan(want["value"]):
            assert math.isnan(got["value"])
        else:
            assert got["value"] == want["value"]
    assert table.column("value").null_count == 0  # NaN stays NaN, not null


def test_metrics_empty_round_trip() -> None:
    assert metrics_from_parquet(metrics_to_parquet([]), "r").num_rows == 0


def test_metrics_from_corrupt_bytes_is_staging_error() -> None:
    with pytest.raises(StagingError, match="corrupt metrics.parquet"):
        metrics_from_parquet(b"not parquet at all", "run r1")
    good = metrics_to_parquet([{"key": "k", "step": 0, "timestamp": 0, "value": 1.0}])
    with pytest.raises(StagingError):
        metrics_from_parquet(good[: len(good) // 2], "run r1")


# ---- registered models and logged models -----------------------------------------------


@pytest.mark.parametrize(
    ("name", "folder"),
    [
        ("churn", "models/churn"),
        ("Churn_Model-v2.1~x", "models/Churn_Model-v2.1%7Ex"),
        ("a/b", "models/a%2Fb"),
        ("a%b", "models/a%25b"),
        ("a%2Fb", "models/a%252Fb"),
        ("a b", "models/a b"),
        ("Wine Quality (prod), v2: +ok?", "models/Wine Quality (prod), v2: +ok?"),
        (".", "models/%2E"),
        ("..", "models/%2E%2E"),
        ("...", "models/..."),
        ("../x", "models/..%2Fx"),
        ("é 模型", "models/é 模型"),
        ("a#b\\c", "models/a%23b%5Cc"),
        ("tab\there\n", "models/tab%09here%0A"),
    ],
)
def test_model_folder(name: str, folder: str) -> None:
    from migrator.layout import model_folder, model_key

    assert model_folder(name) == folder
    assert model_key(name) == f"{folder}/model.json"


@pytest.mark.parametrize(
    "name",
    [
        ".",
        "..",
        "../..",
        "./.",
        "/",
        "//",
        "a/",
        "/a",
        "a/../..",
        "..\\..",
        "#",
        "a\x00b",
        " ",
        "%",
    ],
)
def test_model_folder_is_one_safe_segment(name: str) -> None:
    from migrator.layout import model_folder, version_artifact_key
    from migrator.staging import safe_key

    folder = model_folder(name)
    segments = folder.split("/")
    assert segments[0] == "models"
    assert len(segments) == 2
    assert segments[1] not in ("", ".", "..")
    assert safe_key(folder) == folder  # storage accepts it as is
    key = version_artifact_key(name, 2, "model/MLmodel")
    assert key == f"{folder}/versions/2/artifacts/model/MLmodel"
    assert not {".", "..", ""} & set(key.split("/"))


def test_model_folder_names_map_to_distinct_folders() -> None:
    from migrator.layout import model_folder

    names = ["a/b", "a%2Fb", "a%252Fb", ".", "%2E", "..", "%2E%2E", "a b", "a+b", "a%20b", "A/B",
             "a\tb", "a%09b", "~", "%7E"]
    assert len({model_folder(n) for n in names}) == len(names)


@pytest.mark.parametrize("bad", ["", None, 3])
def test_model_folder_refuses_no_name(bad: object) -> None:
    from migrator.layout import model_folder, model_key

    with pytest.raises(StagingError, match="invalid model name"):
        model_folder(bad)  # type: ignore[arg-type]
    with pytest.raises(StagingError):
        model_key(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "path", ["../model.json", "../../x", "/etc/passwd", "a/../../b", "a//b", "", "a#b"]
)
def test_version_artifact_key_refuses_traversal(path: str) -> None:
    from migrator.layout import version_artifact_key

    with pytest.raises(StagingError):
        version_artifact_key("churn", 1, path)


def test_version_artifact_key_number_is_an_int() -> None:
    from migrator.layout import version_artifact_key

    assert (
        version_artifact_key("a/b", "3", "m/x.pkl") == "models/a%2Fb/versions/3/artifacts/m/x.pkl"
    )  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        version_artifact_key("a", "../1", "x")  # type: ignore[arg-type]


def test_logged_model_keys() -> None:
    from migrator.layout import logged_model_artifact_key, logged_model_key

    mid = "m-0123456789abcdef0123456789abcdef"
    assert logged_model_key(mid, "logged_model.json") == f"logged_models/{mid}/logged_model.json"
    assert logged_model_artifact_key(mid, "a/MLmodel") == f"logged_models/{mid}/artifacts/a/MLmodel"
    for bad in ("..", "m-1/..", "", "m.1", "x" * 65):
        with pytest.raises(StagingError, match="invalid logged model id"):
            logged_model_key(bad, "logged_model.json")
    with pytest.raises(StagingError):
        logged_model_artifact_key(mid, "../../runs/r1/run.json")


def test_validate_files() -> None:
    from migrator.layout import validate_files

    files = [{"path": "a/b.txt", "size": 1}, {"path": "é x"}]
    assert validate_files(files, "obj") is files
    assert validate_files([], "obj") == []
    for bad in (None, {"path": "x"}, "x", [None], [{"path": 1}], [{"size": 1}]):
        with pytest.raises(StagingError) as e:
            validate_files(bad, "model version 'm' 1")
        assert e.value.obj == "model version 'm' 1"
    with pytest.raises(StagingError, match="artifact path refused"):
        validate_files([{"path": "ok"}, {"path": "a/../../b"}], "obj")


# ---- long model names --------------------------------------------------------------------


def _quoted(name: str) -> str:
    """A name quoted for its folder, by hand: `/ % ~ # \\` and unprintable characters only."""
    return "".join(
        "".join(f"%{b:02X}" for b in c.encode()) if c in "/%~#\\" or not c.isprintable() else c
        for c in name
    )


def _long_name_cases() -> list[str]:
    return [
        "x" * 256,
        "x" * 201,
        "é" * 101,  # 101 characters, 202 bytes
        "a/" * 80,  # every `/` quoted as %2F
        "%" * 70,  # every `%` quoted as %25
        "日本語モデル" * 40,
        "m" * 183 + "~" + "0" * 16 + "tail",
    ]


@pytest.mark.parametrize("name", _long_name_cases())
def test_model_folder_of_a_long_name_is_a_prefix_and_a_digest(name: str) -> None:
    import hashlib
    import re

    from migrator.layout import MAX_SEGMENT, model_folder, model_key
    from migrator.staging import safe_key

    assert MAX_SEGMENT == 200
    assert len(_quoted(name).encode()) > MAX_SEGMENT
    folder = model_folder(name)
    segments = folder.split("/")
    assert segments[0] == "models"
    assert len(segments) == 2  # one path segment
    segment = segments[1]
    assert len(segment.encode()) <= MAX_SEGMENT  # bytes on disk
    prefix, tilde, digest = segment.rpartition("~")
    assert tilde == "~"
    assert re.fullmatch(r"[0-9a-f]{16}", digest)
    assert digest == hashlib.sha256(name.encode()).hexdigest()[:16]
    assert _quoted(name).startswith(prefix)  # a prefix of the quoted name
    # only a cut `%`-escape (2 bytes) or a cut character (3 bytes at most) is dropped
    assert len(prefix.encode()) >= MAX_SEGMENT - 17 - 3
    assert safe_key(folder) == folder
    assert model_folder(name) == folder  # the same every time
    assert model_key(name) == f"{folder}/model.json"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("x" * 255 + "a", "x" * 255 + "b"),
        ("é" * 100, "é" * 99 + "e"),  # differs only after the kept prefix
        ("a" * 300, "a" * 301),
        ("x" * 201, "x" * 202),
    ],
)
def test_model_folder_long_names_differing_at_the_end_are_distinct(a: str, b: str) -> None:
    from migrator.layout import model_folder

    fa, fb = model_folder(a), model_folder(b)
    assert fa != fb
    assert fa.rpartition("~")[0] == fb.rpartition("~")[0]  # the same prefix: the digest decides


@pytest.mark.parametrize(
    "name", ["x" * 200, "é" * 100, "%" * 66, "a~" * 50, "churn", "m" * 175 + "~" + "0" * 16]
)
def test_model_folder_of_a_name_up_to_the_limit_is_just_quoted(name: str) -> None:
    from migrator.layout import MAX_SEGMENT, model_folder

    quoted = _quoted(name)
    assert len(quoted.encode()) <= MAX_SEGMENT
    assert model_folder(name) == f"models/{quoted}"


def test_a_name_that_looks_shortened_cannot_take_a_long_names_folder() -> None:
    """Only a shortened name's folder holds a `~`: a name that spells out another name's
    shortened folder is quoted apart."""
    import hashlib

    from migrator.layout import model_folder

    long = "x" * 256
    lookalike = "x" * 183 + "~" + hashlib.sha256(long.encode()).hexdigest()[:16]
    assert model_folder(long) != model_folder(lookalike)


def test_a_shortened_name_never_ends_in_half_an_escape() -> None:
    import re

    from migrator.layout import model_folder

    for name in ("é" * 100, "日本語" * 100, "%" * 300):
        prefix = model_folder(name).removeprefix("models/").rpartition("~")[0]
        assert not re.search(r"%[0-9A-F]?$", prefix), prefix


@pytest.mark.parametrize("name", ["é" * 100, "x" * 256, "a/" * 200, "日本語" * 100])
def test_long_model_name_can_be_staged(tmp_path: Path, name: str) -> None:
    from migrator.layout import MODEL_FORMAT, model_key, version_artifact_key
    from migrator.staging import LocalStaging

    staging = LocalStaging(str(tmp_path))
    key = model_key(name)
    staging.write_bytes(key, dump_doc(MODEL_FORMAT, {"fields": {"name": name}}))  # no OSError
    assert load_doc(staging.read_bytes(key), MODEL_FORMAT, "m")["fields"]["name"] == name
    assert staging.exists(key)
    art = version_artifact_key(name, 3, "model/MLmodel")
    staging.write_bytes(art, b"flavors: {}")
    assert staging.read_bytes(art) == b"flavors: {}"
    assert sorted(staging.list_keys(key.rpartition("/")[0])) == sorted([key, art])
