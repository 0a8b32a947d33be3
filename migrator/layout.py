"""The staging layout and the run/experiment documents stored in it (versioned JSON).

```
experiments/<source_experiment_id>/experiment.json
runs/<source_run_id>/run.json            written last: its presence means the export is complete
runs/<source_run_id>/metrics.parquet     key, step, timestamp, value (every point)
runs/<source_run_id>/artifacts/<path>    bytes as on the source
models/<name>/model.json                 registered model with its versions
models/<name>/versions/<n>/artifacts/<path>   a version whose run was not migrated
prompts/<name>/model.json                a prompt with its versions (a registered model beneath)
logged_models/<model_id>/logged_model.json          MLflow 3 logged model (params, metrics…)
logged_models/<model_id>/artifacts/<path>
traces/<trace_id>/trace.json             a trace: info, every span, assessments (`Trace.to_dict`)
evaluation_datasets/<dataset_id>/dataset.json   an evaluation dataset with every record
scorers/<experiment_id>/<name>/scorer.json   a registered scorer, every version
```
A model's folder is its name as it is, but for the few characters percent-quoted into one path
segment (`/`, `%`, `~`, `#`, backslash and unprintable ones), so any name maps to one folder and
none can climb out of `models/`.
Everything read back is validated here, so the import stage works only on well-formed input.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from migrator.errors import StagingError
from migrator.staging import safe_key

RUN_FORMAT = "mlflow-migrator/run"
EXPERIMENT_FORMAT = "mlflow-migrator/experiment"
MODEL_FORMAT = "mlflow-migrator/registered-model"
LOGGED_MODEL_FORMAT = "mlflow-migrator/logged-model"
TRACE_FORMAT = "mlflow-migrator/trace"
DATASET_FORMAT = "mlflow-migrator/evaluation-dataset"
SCORER_FORMAT = "mlflow-migrator/scorer"
FORMAT_VERSION = 1

#: Longest folder name made from a model name (file systems allow 255 bytes).
MAX_SEGMENT = 200
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

METRICS_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("step", pa.int64()),
        ("timestamp", pa.int64()),
        ("value", pa.float64()),
    ]
)


def _checked_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise StagingError(f"invalid {what} {value!r}")
    return value


def experiment_key(experiment_id: str) -> str:
    return f"experiments/{_checked_id(experiment_id, 'experiment id')}/experiment.json"


def run_key(run_id: str, name: str) -> str:
    return f"runs/{_checked_id(run_id, 'run id')}/{name}"


def artifact_key(run_id: str, path: str) -> str:
    """Where an artifact lives in staging; `path` is checked (no `..`, absolute, `#`)."""
    return run_key(run_id, "artifacts/" + safe_key(path))


def model_folder(name: str, folder: str = "models") -> str:
    """`models/<name>` (prompts: `prompts/<name>`) with the name quoted into one safe path
    segment."""
    if not isinstance(name, str) or not name:
        raise StagingError(f"invalid model name {name!r}")
    quoted = "".join(_quote_char(c) for c in name)
    if quoted in (".", ".."):
        quoted = quoted.replace(".", "%2E")
    if len(quoted.encode()) > MAX_SEGMENT:  # a file system's limit: keep a prefix, add a digest
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        prefix = quoted.encode()[: MAX_SEGMENT - 17].decode(errors="ignore")  # whole characters
        prefix = re.sub(r"%[0-9A-F]?$", "", prefix)  # and no half an escape
        quoted = f"{prefix}~{digest}"
    return f"{folder}/{quoted}"


#: What a model name's folder does not hold as it is: the path separator, the escape itself,
#: the mark of a shortened name, and what storage or URLs treat specially (`safe_key`).
_QUOTED_CHARS = frozenset("/%~#\\")


def _quote_char(c: str) -> str:
    """A character of a model name as its folder holds it: itself (spaces and any script too:
    the layout's `models/<name>/`), or percent-quoted as UTF-8 where it must be."""
    if c in _QUOTED_CHARS or not c.isprintable():
        return "".join(f"%{b:02X}" for b in c.encode())
    return c


def model_key(name: str, folder: str = "models") -> str:
    return f"{model_folder(name, folder)}/model.json"


def version_artifact_key(name: str, version: int, path: str) -> str:
    return f"{model_folder(name)}/versions/{int(version)}/artifacts/{safe_key(path)}"


def logged_model_key(model_id: str, name: str) -> str:
    return f"logged_models/{_checked_id(model_id, 'logged model id')}/{name}"


def logged_model_artifact_key(model_id: str, path: str) -> str:
    return logged_model_key(model_id, "artifacts/" + safe_key(path))


def trace_key(trace_id: str) -> str:
    return f"traces/{_checked_id(trace_id, 'trace id')}/trace.json"


def scorer_key(experiment_id: str, name: str) -> str:
    folder = model_folder(name, f"scorers/{_checked_id(experiment_id, 'experiment id')}")
    return f"{folder}/scorer.json"


def dataset_key(dataset_id: str) -> str:
    return f"evaluation_datasets/{_checked_id(dataset_id, 'dataset id')}/dataset.json"


def validate_files(files: Any, what: str) -> list[dict[str, Any]]:
    """A staged document's artifact list: each entry a dict with a safe `path`.

    Raises:
        StagingError: not a list, a malformed entry, or an unsafe path.
    """
    if not isinstance(files, list):
        raise StagingError("artifact list is not a list", obj=what)
    for a in files:
        if not isinstance(a, dict) or not isinstance(a.get("path"), str):
            raise StagingError("malformed artifact entry", obj=what)
        try:
            safe_key(a["path"])
        except StagingError as e:
            raise StagingError(f"artifact path refused: {e.message}", obj=what) from None
    return files


def validate_string_map(value: Any, field: str, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise StagingError(f"field {field!r} is not a string map", obj=what)
    return value


STAGING_FORMAT = "mlflow-migrator/staging"
STAGING_FORMAT_KEY = "manifests/_format.json"


def check_staging_format(staging: Any, *, write: bool) -> None:
    """Refuse a staging store written by a newer mlflow-migrator (its layout or manifests may
    mean something this one does not know); with `write`, mark a new store with ours.

    Raises:
        ConfigError: naming the store's format version and the newest this one reads.
    """
    from migrator.errors import ConfigError

    if not staging.exists(STAGING_FORMAT_KEY):
        if write:
            staging.write_bytes(STAGING_FORMAT_KEY, dump_doc(STAGING_FORMAT, {}))
        return
    try:
        doc = json.loads(staging.read_bytes(STAGING_FORMAT_KEY))
        version = doc["version"] if doc.get("format") == STAGING_FORMAT else None
    except (ValueError, TypeError, KeyError, AttributeError):
        version = None
    if type(version) is not int or version < 1:
        raise ConfigError(
            f"{STAGING_FORMAT_KEY} is not readable: not a staging store of "
            "mlflow-migrator, or damaged",
            obj=staging.uri,
        )
    if version > FORMAT_VERSION:
        raise ConfigError(
            f"written by a newer mlflow-migrator (staging format version {version}; this one "
            f"reads up to {FORMAT_VERSION}): upgrade mlflow-migrator to use it",
            obj=staging.uri,
        )


def dump_doc(kind: str, body: dict[str, Any]) -> bytes:
    return json.dumps({"format": kind, "version": FORMAT_VERSION, **body}, indent=1).encode()


def load_doc(data: bytes, kind: str, what: str) -> dict[str, Any]:
    """Parse and check a staged document.

    Raises:
        StagingError: not JSON, another format, or a newer version than this migrator reads.
    """
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise StagingError(f"corrupt staging file (not JSON: {e})", obj=what) from None
    if not isinstance(doc, dict) or doc.get("format") != kind:
        raise StagingError(f"not a {kind} document", obj=what)
    version = doc.get("version")
    if type(version) is not int or not 1 <= version <= FORMAT_VERSION:
        raise StagingError(f"unsupported {kind} version {doc.get('version')!r}", obj=what)
    return doc


def validate_run_doc(doc: dict[str, Any], run_id: str) -> None:
    """Check the parts of a run document the importer relies on, before anything is written.

    Raises:
        StagingError: a field is missing or of the wrong type, or an artifact path is unsafe.
    """
    what = f"run {run_id}"
    info = doc.get("info")
    if not isinstance(info, dict) or info.get("run_id") != run_id:
        raise StagingError("run.json does not describe this run", obj=what)
    for field in ("params", "tags"):
        validate_string_map(doc.get(field), field, what)
    validate_files(doc.get("artifacts"), what)


def metrics_table(points: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(points, schema=METRICS_SCHEMA)


def metrics_to_parquet(points: list[dict[str, Any]]) -> bytes:
    table = metrics_table(points)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def metrics_from_parquet(data: bytes, what: str) -> pa.Table:
    try:
        table = pq.read_table(io.BytesIO(data))
        return table.select(METRICS_SCHEMA.names).cast(METRICS_SCHEMA)
    except (pa.ArrowInvalid, OSError, KeyError) as e:
        raise StagingError(f"corrupt metrics.parquet: {e}", obj=what) from None
