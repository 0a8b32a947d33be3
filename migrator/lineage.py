"""Source tags: how every original system attribute is kept on the target as a tag.

The rules (DESIGN.md, and the predecessor's governance page):

- runs: `mlflow_exim.run_info.<field>` for every RunInfo field;
- experiments, registered models, model versions: `mlflow_exim.field.<field>`;
- system tags: `mlflow.<rest>` becomes `mlflow_exim.mlflow_tag.<rest>` (only the leading
  `mlflow.` is replaced);
- times are epoch milliseconds as decimal strings, exactly as the source stored them;
- a key or value longer than the target's limit is cut to it (the manifest keeps the full value).

Pure functions only: no MLflow import, so the rules are testable in isolation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PREFIX = "mlflow_exim"
RUN_INFO_PREFIX = f"{PREFIX}.run_info."
FIELD_PREFIX = f"{PREFIX}.field."
MLFLOW_TAG_PREFIX = f"{PREFIX}.mlflow_tag."
SYSTEM_TAG_PREFIX = "mlflow."

#: The tag that identifies a migrated run on the target; set when the run is created, so a
#: re-run finds it even when the driver died before recording it.
SOURCE_RUN_ID_TAG = f"{RUN_INFO_PREFIX}run_id"
PARENT_RUN_ID_TAG = "mlflow.parentRunId"
#: Set on a discarded duplicate (`migrator.once`), naming the target object kept instead.
DUPLICATE_OF_TAG = f"{PREFIX}.duplicate_of"

#: RunInfo fields, in MLflow's order (the deprecated alias run_uuid is left out).
RUN_INFO_FIELDS = (
    "run_id",
    "experiment_id",
    "user_id",
    "status",
    "start_time",
    "end_time",
    "lifecycle_stage",
    "artifact_uri",
    "run_name",
)
EXPERIMENT_FIELDS = (
    "experiment_id",
    "name",
    "artifact_location",
    "lifecycle_stage",
    "creation_time",
    "last_update_time",
)
#: Registered model fields (its description, tags and aliases are user attributes, copied as is).
REGISTERED_MODEL_FIELDS = ("name", "creation_timestamp", "last_updated_timestamp")
MODEL_VERSION_FIELDS = (
    "name",
    "version",
    "creation_timestamp",
    "last_updated_timestamp",
    "user_id",
    "current_stage",
    "source",
    "run_id",
    "run_link",
    "status",
    "status_message",
    "model_id",
)
LOGGED_MODEL_FIELDS = (
    "model_id",
    "experiment_id",
    "name",
    "artifact_location",
    "creation_timestamp",
    "last_updated_timestamp",
    "model_type",
    "source_run_id",
    "status",
    "status_message",
)
#: TraceInfo's system fields (its tags, metadata and previews are copied as they are).
TRACE_FIELDS = ("trace_id", "experiment_id", "request_time", "execution_duration", "state")
#: Names the source trace on a migrated trace, whether its id was kept or not.
TRACE_ID_TAG = f"{FIELD_PREFIX}trace_id"
#: An evaluation dataset's system fields (its name and tags are copied as they are).
DATASET_FIELDS = (
    "dataset_id",
    "name",
    "digest",
    "created_time",
    "last_update_time",
    "created_by",
    "last_updated_by",
    "schema",
    "profile",
)
#: Names the source dataset on a migrated one, from its creation (dataset names repeat).
DATASET_ID_TAG = f"{FIELD_PREFIX}dataset_id"
#: The tags that identify a migrated logged model and model version on the target (set at
#: creation, so an interrupted attempt's object is found again, never made twice).
SOURCE_MODEL_ID_TAG = f"{FIELD_PREFIX}model_id"
SOURCE_VERSION_TAG = f"{FIELD_PREFIX}version"

# MLflow's limits (mlflow/utils/validation.py).
MAX_KEY_LENGTH = 250
MAX_RUN_TAG_VALUE_LENGTH = 8000
MAX_EXPERIMENT_TAG_VALUE_LENGTH = 20000
#: Before MLflow 3.16 (5,000 characters); see `capabilities.experiment_tag_value_limit`.
MAX_EXPERIMENT_TAG_VALUE_LENGTH_BEFORE_3_16 = 5000
MAX_MODEL_REGISTRY_TAG_VALUE_LENGTH = 100_000
MAX_PARAM_VALUE_LENGTH = 6000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000


def fit(tags: Mapping[str, str], max_value: int = MAX_RUN_TAG_VALUE_LENGTH) -> dict[str, str]:
    """Cut keys and values to MLflow's limits; the manifest keeps the full values."""
    return {k[:MAX_KEY_LENGTH]: v[:max_value] for k, v in tags.items()}


def system_tag_copies(tags: Mapping[str, str]) -> dict[str, str]:
    """`mlflow.<rest>` -> `mlflow_exim.mlflow_tag.<rest>` for every system tag."""
    return {
        MLFLOW_TAG_PREFIX + k[len(SYSTEM_TAG_PREFIX) :]: v
        for k, v in tags.items()
        if k.startswith(SYSTEM_TAG_PREFIX)
    }


def _as_tag_value(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def run_source_tags(info: Mapping[str, Any], tags: Mapping[str, str]) -> dict[str, str]:
    """Every source tag of a run (not yet cut to limits).

    Args:
        info: the source RunInfo fields (times in epoch ms); a field that is None on the
            source (end_time of a run still running) gets no tag.
        tags: all the source run's tags.
    """
    out = {
        RUN_INFO_PREFIX + f: _as_tag_value(info[f])
        for f in RUN_INFO_FIELDS
        if info.get(f) is not None
    }
    out.update(system_tag_copies(tags))
    return out


def field_source_tags(
    fields: Mapping[str, Any], names: tuple[str, ...], *, skip_empty: bool = False
) -> dict[str, str]:
    """`mlflow_exim.field.<name>` for each named field that is set on the source (with
    `skip_empty`, an empty string counts as unset: the registry reports unset fields as "")."""
    return {
        FIELD_PREFIX + f: _as_tag_value(fields[f])
        for f in names
        if fields.get(f) is not None and not (skip_empty and fields[f] == "")
    }


def object_source_tags(
    fields: Mapping[str, Any], names: tuple[str, ...], tags: Mapping[str, str]
) -> dict[str, str]:
    """Every source tag of a registered model, model version or logged model: its system
    fields, and copies of its `mlflow.*` tags (not yet cut to limits)."""
    out = field_source_tags(fields, names, skip_empty=True)
    out.update(system_tag_copies(tags))
    return out


def experiment_source_tags(fields: Mapping[str, Any], tags: Mapping[str, str]) -> dict[str, str]:
    """Every source tag of an experiment (not yet cut to limits)."""
    out = field_source_tags(fields, EXPERIMENT_FIELDS)
    out.update(system_tag_copies(tags))
    return out


def is_source_tag(key: str) -> bool:
    return key.startswith(PREFIX + ".")
