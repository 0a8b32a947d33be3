"""Import registered models and their versions, with the source's version numbers.

(Export is `export_models`; what a version's source points at is `model_sources`.)

The numbers: MLflow's SQL registry numbers a new version max(every version ever
made, deleted ones included) + 1, so creating a version either lands on the source's number or
on a lower one the source left unused (its version was deleted). A version that lands low is
deleted at once and the create repeated, which reproduces the source's gap. Every version is
created with its source number as a tag, so a version an interrupted attempt left at a wrong
number is recognised and deleted; a version at its right number is simply brought up to date.

Each version's `source` is rewritten to the migrated objects: `models:/<target logged model>`,
`runs:/<target run>/…`, or the target run's / logged model's artifact location. A version whose
files were staged is registered from a logged model made to hold them (tagged
`mlflow_exim.model_version`).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from typing import Any

from migrator.artifact_store import target_side
from migrator.artifacts import from_staging, upload_artifacts
from migrator.config import Options
from migrator.errors import MigratorError, PermanentError, StagingError
from migrator.fanout import failed_row
from migrator.layout import (
    MODEL_FORMAT,
    load_doc,
    model_key,
    validate_files,
    validate_string_map,
    version_artifact_key,
)
from migrator.lineage import (
    FIELD_PREFIX,
    MAX_MODEL_REGISTRY_TAG_VALUE_LENGTH,
    MODEL_VERSION_FIELDS,
    PREFIX,
    REGISTERED_MODEL_FIELDS,
    SOURCE_VERSION_TAG,
    fit,
    object_source_tags,
)
from migrator.manifest import IMPORTED, Row, now_ms
from migrator.mlflow_io import (
    find_logged_model_by_tag,
    or_none,
    translate_errors,
    versions_of_model,
)
from migrator.once import Lineage, create_once
from migrator.registry import MODELS, RegistryKind, remap_experiment_links
from migrator.stages.logged_models import logged_model_lineage
from migrator.stages.model_sources import logged_model_of, rewrite_source, source_ref
from migrator.staging import Staging, open_staging
from migrator.states import WAITS_FOR

#: On a logged model made to hold a staged version's files: `<model name>/<version>`.
HOLDER_TAG = f"{PREFIX}.model_version"
DEFAULT_EXPERIMENT_ID = "0"
_VERSION_NUMBER = re.compile(r"[1-9][0-9]*")
PROMPT_CONTENT_PREFIX = "mlflow.prompt."
_NOT_LOGGED_MODEL_NAME = re.compile(r"[/:.%\"']")


# ---- import -----------------------------------------------------------------------------------


def _optional_str(value: Any) -> bool:
    return value is None or isinstance(value, str)


def read_model_doc(staging: Staging, name: str, kind: RegistryKind = MODELS) -> dict[str, Any]:
    """The staged model.json, checked before anything is written to the target.

    Raises:
        StagingError: naming the model: corrupt, another model's, or a malformed entry.
    """
    what = f"{kind.label} {name!r}"
    doc = load_doc(staging.read_bytes(model_key(name, kind.folder)), MODEL_FORMAT, what)
    fields = doc.get("fields")
    if not isinstance(fields, dict) or fields.get("name") != name:
        raise StagingError("model.json does not describe this model", obj=what)
    if not isinstance(doc.get("description"), str):
        raise StagingError("field 'description' is not a string", obj=what)
    validate_string_map(doc.get("tags"), "tags", what)
    aliases = validate_string_map(doc.get("aliases"), "aliases", what)
    if not all(_VERSION_NUMBER.fullmatch(n) for n in aliases.values()):
        raise StagingError("an alias does not name a version number", obj=what)
    versions = doc.get("versions")
    if not isinstance(versions, list):
        raise StagingError("field 'versions' is not a list", obj=what)
    seen: set[int] = set()
    for v in versions:
        f = v.get("fields") if isinstance(v, dict) else None
        if not isinstance(f, dict) or type(f.get("version")) is not int or f["version"] < 1:
            raise StagingError("a version entry lacks its number", obj=what)
        n = f["version"]
        if n in seen:
            raise StagingError(f"version {n} is listed twice", obj=what)
        seen.add(n)
        checks = {
            "source": isinstance(f.get("source"), str),
            "run_id": _optional_str(f.get("run_id")),
            "description": isinstance(v.get("description"), str),
            "experiment_id": _optional_str(v.get("experiment_id")),
            "file": _optional_str(v.get("file")),
            "run_link": _optional_str(f.get("run_link")),
            "current_stage": _optional_str(f.get("current_stage")),
        }
        if bad := [k for k, ok in checks.items() if not ok]:
            raise StagingError(f"version {n}: malformed field(s) {bad}", obj=what)
        validate_string_map(v.get("tags"), "tags", f"{what} version {n}")
        validate_files(v.get("artifacts"), f"{what} version {n}")
    return doc


def model_tags(
    doc: dict[str, Any], opts: Options, experiments: dict[str, str] | None = None
) -> dict[str, str]:
    """The target model's (or prompt's) tags: the source's, its experiment links remapped
    (`experiments`: source → target ids), and its source tags."""
    tags = remap_experiment_links(dict(doc["tags"]), experiments or {})
    if opts.import_source_tags:
        tags.update(object_source_tags(doc["fields"], REGISTERED_MODEL_FIELDS, doc["tags"]))
    return fit(tags, MAX_MODEL_REGISTRY_TAG_VALUE_LENGTH)


def version_tags(vdoc: dict[str, Any], opts: Options) -> dict[str, str]:
    tags = dict(vdoc["tags"])
    if opts.import_source_tags:
        # A prompt's content lives in `mlflow.prompt.*` tags: copied as it is, not again.
        system = {k: v for k, v in tags.items() if not k.startswith(PROMPT_CONTENT_PREFIX)}
        tags.update(object_source_tags(vdoc["fields"], MODEL_VERSION_FIELDS, system))
    return fit(tags, MAX_MODEL_REGISTRY_TAG_VALUE_LENGTH)


def _registered_model(
    c: Any, doc: dict[str, Any], opts: Options, kind: RegistryKind, experiments: dict[str, str]
) -> Any:
    """The target model by name: created, or found (an earlier attempt's, or the target's own)
    and brought up to date."""
    name = doc["fields"]["name"]
    tags = model_tags(doc, opts, experiments)
    spec = Lineage(
        kind=kind.label,
        obj=f"{kind.label} {name!r}",
        find=lambda: [rm for rm in [or_none(c.get_registered_model, name)] if rm is not None],
        create=lambda: c.create_registered_model(
            name, tags=tags, description=doc["description"] or None
        ),
        order=lambda rm: rm.name,
        target_id=lambda rm: str(rm.name),
    )
    rm = create_once(spec, look_first=False)
    if (rm.description or "") != doc["description"]:
        c.update_registered_model(name, description=doc["description"])
    for k, v in tags.items():
        if rm.tags.get(k) != v:
            c.set_registered_model_tag(name, k, v)
    return rm


def _holder_name(source: str) -> str:
    base = source.rstrip("/").rsplit("/", 1)[-1] or "model"
    return _NOT_LOGGED_MODEL_NAME.sub("_", base)[:200] or "model"


def _holder(
    c: Any, opts: Options, name: str, vdoc: dict[str, Any], refs: Row, obj: str, create: bool = True
) -> Any | None:
    """A logged model on the target holding a staged version's files: found by its tag, or
    (with `create`) made and filled."""
    from mlflow.entities import LoggedModelStatus

    n = vdoc["fields"]["version"]
    exp = refs["experiments"].get(vdoc.get("experiment_id") or "") or DEFAULT_EXPERIMENT_ID
    marker = f"{name}/{n}"
    if not create:
        return find_logged_model_by_tag(opts.target, exp, HOLDER_TAG, marker)
    tags = {HOLDER_TAG: marker}
    if opts.import_source_tags:
        tags[FIELD_PREFIX + "source"] = vdoc["fields"]["source"]

    def make() -> Any:
        holder_name = _holder_name(vdoc["fields"]["source"])
        return c.create_logged_model(exp, name=holder_name, tags=fit(tags))

    lm = create_once(
        logged_model_lineage(opts, exp, HOLDER_TAG, marker, make, obj), look_first=True
    )
    staging = open_staging(opts.staging)
    fetch = from_staging(staging, lambda path: version_artifact_key(name, n, path))
    upload_artifacts(target_side(opts), lm.artifact_location, vdoc["artifacts"], fetch, obj)
    if str(getattr(lm.status, "name", lm.status)) != "READY":
        c.finalize_logged_model(lm.model_id, LoggedModelStatus.READY)
    return lm


def _target_source(
    c: Any, opts: Options, name: str, vdoc: dict[str, Any], refs: Row, obj: str, create: bool = True
) -> tuple[str, str | None, str | None] | None:
    """The version's `(source, run_id, model_id)` on the target: rewritten to the migrated run
    or logged model, or to a logged model holding its staged files (found, or with `create`
    made). None when there is no such holder and `create` is off.

    Raises:
        PermanentError: what the version points at was not migrated, and nothing was staged.
    """
    f = vdoc["fields"]
    rewritten = rewrite_source(f["source"], f.get("run_id"), refs, artifact_roots(c))
    if rewritten is not None:
        return rewritten
    if not vdoc["artifacts"]:
        kind, ref, _ = source_ref(f["source"], f.get("run_id"))
        raise PermanentError(
            f"its source {f['source']!r} points at {kind} {ref or '?'}, which was not migrated, "
            "and no files of the version were staged",
            obj=obj,
            stage="import",
        )
    holder = _holder(c, opts, name, vdoc, refs, obj, create)
    if holder is None:
        return None
    run = refs["runs"].get(f.get("run_id") or "")
    return holder_source(holder, vdoc.get("file")), run, holder.model_id


def artifact_roots(c: Any) -> Callable[[str, str], str]:
    """`(kind, target id) -> artifact URI` of a target run or logged model, for
    `rewrite_source`."""

    def artifact_root(kind: str, target_id: str) -> str:
        if kind == "run":
            return str(c.get_run(target_id).info.artifact_uri)
        return str(c.get_logged_model(target_id).artifact_location)

    return artifact_root


def holder_source(holder: Any, file: str | None) -> str:
    """A staged version's source on the target: its holder logged model, or, when the source
    named one file, that file's path within the holder (`models:/` takes no path)."""
    return f"{holder.artifact_location}/{file}" if file else f"models:/{holder.model_id}"


def version_lineage(c: Any, name: str, n: int, args: dict[str, Any], obj: str) -> Lineage:
    """How the target version of source version `n` is found (its source-number tag, at any
    number), made (one create) and discarded (deleted: numbers are never reused)."""

    def find() -> list[Any]:
        marked = str(n)
        return [v for v in versions_of_model(c, name) if v.tags.get(SOURCE_VERSION_TAG) == marked]

    return Lineage(
        kind="version",
        obj=obj,
        find=find,
        create=lambda: c.create_model_version(name, await_creation_for=0, **args),
        order=lambda v: (int(v.version) != n, int(v.version)),
        target_id=lambda v: str(v.version),
        discard=lambda v, _kept: or_none(c.delete_model_version, name, str(v.version)),
    )


def _check_not_waiting(vdoc: dict[str, Any], refs: Row, obj: str) -> None:
    """Raises:
    PermanentError: the run or logged model the version points at is part of this migration
        but has not moved yet (it failed); the next run registers the version."""
    f = vdoc["fields"]
    _, ref, _ = source_ref(f["source"], f.get("run_id"))
    waiting = [x for x in (f.get("run_id"), ref) if x and x in (refs.get("pending") or ())]
    if waiting:
        raise PermanentError(
            f"{WAITS_FOR} {waiting[0]}, which this migration has not moved yet (it failed): "
            "the next run registers the version",
            obj=obj,
            stage="import",
        )


def _create_at(c: Any, name: str, n: int, args: dict[str, Any], obj: str) -> Any:
    """Create the version so that it gets number `n`: a lower number is a version the source
    deleted, so it is deleted again and the create repeated. An ambiguous create is looked
    up by its source-number tag (`once.create_once`), wherever it landed."""
    spec = version_lineage(c, name, n, args, obj)
    while True:
        mv = create_once(spec, look_first=False)
        got = int(mv.version)
        if got == n:
            return mv
        or_none(c.delete_model_version, name, str(got))  # a re-sent delete finds it gone
        if got > n:
            raise PermanentError(
                f"the target model already used version numbers up to {got - 1}, so version "
                f"{n} cannot keep its number",
                obj=obj,
                stage="import",
            )


def _import_version(
    c: Any,
    opts: Options,
    name: str,
    vdoc: dict[str, Any],
    existing: Any,
    refs: Row,
    known: Row,
    kind: RegistryKind = MODELS,
) -> Row:
    f = vdoc["fields"]
    n = f["version"]
    obj = f"{kind.version_label} {name!r} {n}"
    tags = version_tags(vdoc, opts)  # with source tags on, the marker is among them
    with translate_errors(obj, "import"):
        if existing is not None:
            ours = existing.tags.get(SOURCE_VERSION_TAG) == str(n) or known.get("target_version")
            if not ours:  # without source tags, an earlier attempt's version has no marker
                expected = _target_source(c, opts, name, vdoc, refs, obj, create=False)
                ours = expected is not None and existing.source == expected[0]
            if not ours:
                raise PermanentError(
                    f"the target {kind.label} already has a version {n} that this migration did "
                    "not create",
                    obj=obj,
                    stage="import",
                )
            mv = existing
        else:
            _check_not_waiting(vdoc, refs, obj)
            target = _target_source(c, opts, name, vdoc, refs, obj)
            assert target is not None  # with `create`, a holder is always found or made
            source, run_id, model_id = target
            args = {
                "source": source,
                "run_id": run_id,
                "tags": {**tags, SOURCE_VERSION_TAG: str(n)},  # found again by it if cut short
                "run_link": f.get("run_link") or None,
                "description": vdoc["description"] or None,
                "model_id": model_id,
            }
            mv = _create_at(c, name, n, args, obj)
        if (mv.description or "") != vdoc["description"]:
            c.update_model_version(name, str(n), description=vdoc["description"])
        for k, v in tags.items():
            if mv.tags.get(k) != v:
                c.set_model_version_tag(name, str(n), k, v)
        if not opts.import_source_tags:
            c.delete_model_version_tag(name, str(n), SOURCE_VERSION_TAG)
        stage = f.get("current_stage") or "None"
        if stage != (mv.current_stage or "None"):
            with warnings.catch_warnings():  # stages are deprecated, and still the source's
                warnings.simplefilter("ignore", FutureWarning)
                c.transition_model_version_stage(
                    name, str(n), stage, archive_existing_versions=False
                )
    return {
        **known,
        "target_name": name,
        "target_version": int(mv.version),
        "target_source": mv.source,
        "target_run_id": mv.run_id or None,
        "target_model_id": logged_model_of(mv.source or ""),
        "state": IMPORTED,
        "error": None,
        "failed_stage": None,
        "updated_at": now_ms(),
    }


def _exists(c: Any, name: str, n: int) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        c.get_model_version(name, str(n))
        return True
    except MlflowException:
        return False


def import_model(item: Row, opts: Options, kind: RegistryKind = MODELS) -> Row:
    """Create (or bring up to date) one registered model (or prompt) on the target, its
    versions at their source numbers, and its aliases.

    Args:
        item: the model's manifest row; `_versions` (its version rows, by export), `refs`
            (`runs`, `models`, `experiments`: source → target ids the versions point at).
    Returns:
        The model row in state `imported` (or failed), its version rows under `_versions`.
    """
    name = item["name"]
    obj = f"{kind.label} {name!r}"
    staging = open_staging(opts.staging)
    doc = read_model_doc(staging, name, kind)
    rows = {int(r["version"]): r for r in item.get("_versions") or []}
    refs = item["refs"]
    c = kind.client(opts.target)
    out_versions: list[Row] = []
    with translate_errors(obj, "import"):
        _registered_model(c, doc, opts, kind, refs.get("experiments") or {})
        existing = {int(v.version): v for v in kind.versions(opts.target, name)}
        for n, v in list(existing.items()):
            marker = v.tags.get(SOURCE_VERSION_TAG)
            if marker is not None and marker != str(n):  # left at a wrong number by a kill
                or_none(c.delete_model_version, name, str(n))
                del existing[n]
    blocked = ""
    for vdoc in sorted(doc["versions"], key=lambda v: v["fields"]["version"]):
        n = vdoc["fields"]["version"]
        known = rows.get(n) or {"name": name, "version": n}
        if known.get("state") == IMPORTED and known.get("target_version") == n and n in existing:
            out_versions.append(known)
            continue
        if blocked:
            out_versions.append(failed_row(known, "import", blocked))
            continue
        try:
            out_versions.append(
                _import_version(c, opts, name, vdoc, existing.get(n), refs, known, kind)
            )
        except MigratorError as e:
            out_versions.append(failed_row(known, "import", e))
            if not _exists(c, name, n):
                blocked = f"not created: version {n} failed first, and numbers must stay equal"
    done = {r["version"] for r in out_versions if r["state"] == IMPORTED}
    with translate_errors(obj, "import"):
        have = c.get_registered_model(name).aliases or {}
        for alias, n in doc["aliases"].items():
            if int(n) in done and str(have.get(alias)) != n:
                c.set_registered_model_alias(name, alias, n)
    row = {k: v for k, v in item.items() if k not in ("refs", "_versions")}
    return {
        **row,
        "target_name": name,
        "state": IMPORTED,
        "error": None,
        "failed_stage": None,
        "updated_at": now_ms(),
        "_versions": out_versions,
    }
