"""Copying an artifact tree: source → staging (with size and SHA-256) and staging → target.

Runs, logged models and staged model versions all move their files this way. Each end is a
store from `artifact_store`: the server's proxy as before, or, with
`--source-artifacts-destination` / `--target-artifacts-destination` (and for artifact URIs that
are `s3://` already), the store behind it, reached without the server. Between two S3 stores on
one endpoint a file is copied by S3 itself (`artifact_store.copy_object`); otherwise it passes
through a local file. The export keeps the local copy of each file it streamed (`keep/<i>/<name>`),
so an import in the same task need not read the staging store back; a file copied server-side
has no local copy, and its import copies it from staging the same way.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable
from typing import Any

from migrator.artifact_store import (
    S3Object,
    Side,
    copy_object,
    object_size,
    open_store,
    read_sha256,
    server_side,
    staging_object,
)
from migrator.errors import PermanentError
from migrator.staging import Staging, file_sha256, safe_key
from migrator.workdirs import Workdir

#: Puts the artifact at index i of a document's file list, path p, into a local file.
Fetch = Callable[[int, str, str], None]


def stage_artifacts(
    side: Side,
    artifact_uri: str,
    staging: Staging,
    key_of: Callable[[str], str],
    keep: str,
    only: str | None = None,
) -> list[dict[str, Any]]:
    """Copy every file under `artifact_uri` (or just the file `only` there) to `key_of(path)`
    in staging.

    Returns:
        path, size and SHA-256 of each file, in listing order; the local copies of the files
        that went through the migrator stay in `keep`.
    """
    store = open_store(side, artifact_uri)
    if only is None:
        listing = store.files()
    else:
        size = store.size_of(only)
        listing = [] if size is None else [(only, size)]
    files = []
    for i, (path, listed_size) in enumerate(listing):
        key = key_of(path)
        src, dst = store.s3_object(path), staging_object(staging, key)
        if src is not None and dst is not None and server_side(src, dst):
            sha = _copy(src, dst, listed_size)
            if sha is not None:
                files.append({"path": path, "size": listed_size, "sha256": sha})
                continue
        local = kept_path(keep, i, path)
        os.makedirs(os.path.dirname(local), exist_ok=True)
        store.download(path, local)
        files.append({"path": path, "size": os.path.getsize(local), "sha256": file_sha256(local)})
        staging.upload_file(local, key)
    return files


def kept_path(keep: str, i: int, path: str) -> str:
    """Where an export keeps its local copy of file `i` (`path`): `keep/<i>/<name>`, named as
    the file it becomes, so an import uploads it from there as it is."""
    return os.path.join(keep, str(i), posixpath.basename(path) or "file")


def _copy(src: S3Object, dst: S3Object, size: int) -> str | None:
    """A server-side copy and the SHA-256 of what landed: S3's, or read once through the
    migrator when S3 gave none. None when the store cannot copy (the caller streams)."""
    try:
        sha = copy_object(src, dst, size)
    except NotImplementedError:
        return None
    return sha if sha is not None else read_sha256(dst)


class Origin:
    """Where an import takes each file of a document from: the local copy an export in this
    task kept (`keep/<i>/<name>`, where it made one), else the staging store, which a target in
    S3 on the same endpoint copies from by itself (`s3_object`). Callable as a `Fetch`."""

    def __init__(
        self, staging: Staging, key_of: Callable[[str], str], keep: str | None = None
    ) -> None:
        self.staging = staging
        self.key_of = key_of
        self.keep = keep

    def __call__(self, i: int, path: str, local: str) -> None:
        """Read file `i` back from staging (`upload_artifacts` takes a kept copy as it is)."""
        self.staging.download_file(self.key_of(path), local)

    def kept(self, i: int, path: str) -> str | None:
        """The export's local copy of the file, where it made one."""
        if not self.keep:
            return None
        kept = kept_path(self.keep, i, path)
        return kept if os.path.isfile(kept) else None

    def s3_object(self, i: int, path: str) -> S3Object | None:
        """The staged object in S3, unless a local copy is at hand (or staging is a folder)."""
        if self.kept(i, path):
            return None
        return staging_object(self.staging, self.key_of(path))


def from_staging(staging: Staging, key_of: Callable[[str], str]) -> Origin:
    """Artifacts read back from the staging store (a separate `import`)."""
    return Origin(staging, key_of)


def from_keep(keep: str, staging: Staging, key_of: Callable[[str], str]) -> Origin:
    """Artifacts taken from the local copies an export in the same task kept, and from
    staging for those it copied there server-side."""
    return Origin(staging, key_of, keep)


def upload_artifacts(
    side: Side,
    artifact_uri: str,
    files: list[dict[str, Any]],
    fetch: Fetch,
    obj: str,
    stage: str = "import",
) -> None:
    """Write each listed file under `artifact_uri` on the target, checking it first: its size
    (a file through the migrator), or the SHA-256 S3 computed of the copy (a server-side copy;
    its size when the copy went in parts).

    Raises:
        StagingError: an unsafe path. PermanentError: a file whose size or hash is not the
            source's.
    """
    if not files:
        return
    store = open_store(side, artifact_uri)
    located = getattr(fetch, "s3_object", None)
    kept = getattr(fetch, "kept", None)
    tmp: Workdir | None = None  # made for the first file that has no local copy at hand
    try:
        for i, f in enumerate(files):
            path = f["path"]
            safe_key(path)  # validated again: this path names the file we write below
            src = located(i, path) if located is not None else None
            dst = store.s3_object(path)
            if src is not None and dst is not None and server_side(src, dst):
                if _copy_checked(src, dst, f, obj, stage):
                    continue
            local = kept(i, path) if kept is not None else None
            fetched = local is None
            if local is None:
                tmp = tmp or Workdir("import")
                local = os.path.join(tmp.name, posixpath.basename(path))
                fetch(i, path, local)
            size = os.path.getsize(local)
            if f.get("size") is not None and size != f["size"]:
                raise PermanentError(
                    f"artifact {path!r} is {size} bytes in staging, {f['size']} on the source",
                    obj=obj,
                    stage=stage,
                )
            store.upload(local, path)
            if fetched:
                os.remove(local)
    finally:
        if tmp:
            tmp.cleanup()


def _copy_checked(src: S3Object, dst: S3Object, f: dict[str, Any], obj: str, stage: str) -> bool:
    """Copy a staged file to the target inside S3; False when the store cannot (stream it).

    Raises:
        PermanentError: the staged object is missing, or what landed is not the source's
            (its SHA-256 where S3 computed one, else its size).
    """
    size = f.get("size")
    if size is None:
        size = object_size(src)
        if size is None:
            raise PermanentError(
                f"artifact {f['path']!r} is missing in staging", obj=obj, stage=stage
            )
    try:
        sha = copy_object(src, dst, size)
    except NotImplementedError:
        return False
    if sha is not None:
        if f.get("sha256") and sha != f["sha256"]:
            raise PermanentError(
                f"artifact {f['path']!r}: the SHA-256 S3 computed of the copy on the target is "
                "not the one recorded at export",
                obj=obj,
                stage=stage,
            )
        return True
    landed = object_size(dst)
    if landed != size:
        raise PermanentError(
            f"artifact {f['path']!r} is {landed} bytes on the target, {size} on the source",
            obj=obj,
            stage=stage,
        )
    return True
