"""Copying an artifact tree: source → staging (with size and SHA-256) and staging → target.

Runs, logged models and staged model versions all move their files this way. The export keeps
a local copy of each file (`keep/<index>`), so an import in the same task need not read the
staging store back.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from migrator.errors import PermanentError
from migrator.mlflow_io import artifact_repo, iter_artifact_files
from migrator.staging import Staging, file_sha256, safe_key

#: Puts the artifact at index i of a document's file list, path p, into a local file.
Fetch = Callable[[int, str, str], None]


def stage_artifacts(
    tracking_uri: str,
    artifact_uri: str,
    staging: Staging,
    key_of: Callable[[str], str],
    keep: str,
    only: str | None = None,
) -> list[dict[str, Any]]:
    """Copy every file under `artifact_uri` (or just the file `only` there) to `key_of(path)`
    in staging.

    Returns:
        path, size and SHA-256 of each file, in listing order; the local copies stay in `keep`.
    """
    repo = artifact_repo(tracking_uri, artifact_uri)
    infos = (
        iter_artifact_files(repo)
        if only is None
        else (f for f in repo.list_artifacts() if f.path == only and not f.is_dir)
    )
    files = []
    for i, info in enumerate(infos):
        key = key_of(info.path)
        local = os.path.join(keep, str(i))
        repo._download_file(info.path, local)
        size = os.path.getsize(local)
        files.append({"path": info.path, "size": size, "sha256": file_sha256(local)})
        staging.upload_file(local, key)
    return files


def from_staging(staging: Staging, key_of: Callable[[str], str]) -> Fetch:
    """Artifacts read back from the staging store (a separate `import`)."""

    def fetch(_i: int, path: str, local: str) -> None:
        staging.download_file(key_of(path), local)

    return fetch


def from_keep(keep: str) -> Fetch:
    """Artifacts taken from the local copies an export in the same task kept."""

    def fetch(i: int, _path: str, local: str) -> None:
        shutil.copyfile(os.path.join(keep, str(i)), local)

    return fetch


def upload_artifacts(
    tracking_uri: str,
    artifact_uri: str,
    files: list[dict[str, Any]],
    fetch: Fetch,
    obj: str,
    stage: str = "import",
) -> None:
    """Write each listed file under `artifact_uri` on the target, checking its size first.

    Raises:
        StagingError: an unsafe path. PermanentError: a file whose size is not the source's.
    """
    if not files:
        return
    repo = artifact_repo(tracking_uri, artifact_uri)
    with tempfile.TemporaryDirectory(prefix="migrator-import-") as tmp:
        for i, f in enumerate(files):
            path = f["path"]
            safe_key(path)  # validated again: this path names the file we write below
            local = os.path.join(tmp, posixpath.basename(path))
            fetch(i, path, local)
            size = os.path.getsize(local)
            if f.get("size") is not None and size != f["size"]:
                raise PermanentError(
                    f"artifact {path!r} is {size} bytes in staging, {f['size']} on the source",
                    obj=obj,
                    stage=stage,
                )
            repo.log_artifact(local, posixpath.dirname(path) or None)
            os.remove(local)
