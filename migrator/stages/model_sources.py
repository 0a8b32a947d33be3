"""What a model version's `source` points at, and what it becomes on the target.

A version's files belong to a logged model (`models:/m-<id>`, or a path under
`…/models/m-<id>/artifacts`), to a run (`runs:/<id>/…`, or a path under the run's
`…/<run_id>/artifacts`), or to neither. The first two are rewritten to the migrated objects;
for the last, the version's files travel on their own (see `export_models`).
"""

from __future__ import annotations

import re
from typing import Any

from migrator.layout import logged_model_key, run_key
from migrator.manifest import Row
from migrator.staging import Staging

_MODEL_SOURCE = re.compile(r"^models:/(m-[0-9a-f]+)(/.*)?$")
_MODEL_PATH = re.compile(r"/models/(m-[0-9a-f]+)/artifacts(/.*)?$")


#: Sources that name no files: a prompt version's (`register_prompt`, `create_prompt_version`).
#: They are kept as they are; nothing is staged for them.
KEPT_SOURCES = frozenset({"dummy-source", "prompt-template"})


def source_ref(source: str, run_id: str | None) -> tuple[str, str, str]:
    """What a version's files are part of: `("model", model_id, rest)` for a logged model,
    `("run", run_id, rest)` for a run's artifacts (`rest` is the path below it, with its
    leading `/`), or `("other", "", "")` for anything else (files that are staged)."""
    if m := _MODEL_SOURCE.match(source):
        return "model", m.group(1), m.group(2) or ""
    if source.startswith("runs:/"):
        rid, _, path = source[len("runs:/") :].partition("/")
        return "run", rid, f"/{path}" if path else ""
    if run_id and (i := source.find(f"/{run_id}/artifacts")) >= 0:
        rest = source[i + len(f"/{run_id}/artifacts") :]
        if rest == "" or rest.startswith("/"):
            return "run", run_id, rest
    if m := _MODEL_PATH.search(source):
        return "model", m.group(1), m.group(2) or ""
    return "other", "", ""


def rewrite_source(
    source: str, run_id: str | None, refs: Row, artifact_root: Any
) -> tuple[str, str | None, str | None] | None:
    """The target's `(source, run_id, model_id)` for a version, or None when what it points at
    was not migrated.

    Args:
        refs: `runs` (source → target run id) and `models` (source → target logged model id).
        artifact_root: `(kind, target_id) -> artifact URI` of a target run or logged model.
    """
    if source in KEPT_SOURCES:
        return source, None, None
    kind, ref, rest = source_ref(source, run_id)
    target_run = refs["runs"].get(run_id or "")
    if kind == "model" and (target := refs["models"].get(ref)):
        if source.startswith("models:/"):
            return f"models:/{target}{rest}", target_run, target
        return artifact_root("model", target) + rest, target_run, target
    if kind == "run" and (target := refs["runs"].get(ref)):
        if source.startswith("runs:/"):
            return f"runs:/{target}{rest}", target, None
        return artifact_root("run", target) + rest, target, None
    return None


def staged_elsewhere(staging: Staging, source: str, run_id: str | None) -> bool:
    """Whether the version's files travel with a run or logged model of this migration (or
    it has none to travel: a prompt's)."""
    if source in KEPT_SOURCES:
        return True
    kind, ref, _ = source_ref(source, run_id)
    if kind == "run":
        return staging.exists(run_key(ref, "run.json"))
    if kind == "model":
        return staging.exists(logged_model_key(ref, "logged_model.json"))
    return False


# ---- export -----------------------------------------------------------------------------------


def model_id_of(source: str) -> str | None:
    """The logged model a `models:/m-…` source names."""
    m = _MODEL_SOURCE.match(source)
    return m.group(1) if m else None


def logged_model_of(source: str) -> str | None:
    """The logged model whose files a (target) version source names, if any."""
    kind, ref, _ = source_ref(source, None)
    return ref if kind == "model" else None
