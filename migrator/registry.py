"""Registered models and prompts: one registry, two kinds.

MLflow keeps a prompt as a registered model tagged `mlflow.prompt.is_prompt` and each prompt
version as a model version (its template, type, `model_config` and `response_format` in
tags, its commit message as the description). So prompts move through the very stages that
move models — versions at the source's numbers with gaps, tags, descriptions, aliases,
resume by the source-number tag — told apart by a `RegistryKind`: where they are searched,
how the target is written (`mlflow_io.PromptRegistry`), where they are staged, what their
manifests and verify rows are called. Neither kind ever lists the other's objects, so no
prompt moves twice and none is left behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from migrator import mlflow_io

#: The prompt tag listing the experiments a prompt is linked to: `",0,1,2,"`.
EXPERIMENT_LINKS_TAG = "_mlflow_experiment_ids"


@dataclass(frozen=True)
class RegistryKind:
    """Which of the registry's two kinds a stage or driver works on."""

    name: str
    """`model` or `prompt`."""
    label: str
    """How an object is named in messages: `registered model`, `prompt`."""
    version_label: str
    folder: str
    """Its staging folder (`models/<quoted name>/model.json`)."""
    models_table: str
    """The manifest of its objects, and of its versions."""
    versions_table: str
    object_type: str
    """`object_type` of its verify rows, and of its versions'."""
    version_object_type: str
    prompts: bool

    def client(self, uri: str) -> Any:
        """What writes and reads it: MLflow's client, or its prompt registry."""
        return mlflow_io.prompt_registry(uri) if self.prompts else mlflow_io.client(uri)

    def search(self, uri: str, filter_string: str = "") -> Iterator[Any]:
        """Every object of this kind on a server (matching `filter_string`), paged."""
        if self.prompts:
            return mlflow_io.iter_prompts(uri, filter_string)
        return mlflow_io.iter_registered_models(uri, filter_string)

    def versions(self, uri: str, name: str) -> list[Any]:
        """Every (not deleted) version of one object, lowest number first."""
        return mlflow_io.versions_of_model(self.client(uri), name)


MODELS = RegistryKind(
    name="model",
    label="registered model",
    version_label="model version",
    folder="models",
    models_table="models",
    versions_table="model_versions",
    object_type="registered_model",
    version_object_type="model_version",
    prompts=False,
)
PROMPTS = RegistryKind(
    name="prompt",
    label="prompt",
    version_label="prompt version",
    folder="prompts",
    models_table="prompt_registry",
    versions_table="prompts",
    object_type="prompt",
    version_object_type="prompt_version",
    prompts=True,
)


def remap_experiment_links(tags: dict[str, str], experiments: dict[str, str]) -> dict[str, str]:
    """A prompt's experiment links pointing at the migrated experiments (those not migrated
    are left out)."""
    value = tags.get(EXPERIMENT_LINKS_TAG)
    if value is None:
        return tags
    ids = [experiments[i] for i in value.strip(",").split(",") if i in experiments]
    if not ids:
        return {k: v for k, v in tags.items() if k != EXPERIMENT_LINKS_TAG}
    return {**tags, EXPERIMENT_LINKS_TAG: f",{','.join(ids)},"}
