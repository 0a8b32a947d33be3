"""Temporary folders that a killed process does not leave behind.

The migrator keeps its working files in temporary folders: the driver its ledgers (~100 MB at
100,000 runs) and manifest files, a task the files of the run or model it is moving (a model:
gigabytes), a verification the target's files it hashes. A process killed with `kill -9`, or
on a node that was lost, cannot remove them, and a migration that is resumed again and again
would fill the disk.

So every such folder (`migrator-<kind>-<random>/`) holds `owner.lock`, which its process keeps
locked (`flock`) for as long as it uses the folder, and the first folder a process makes
removes every `migrator-*` folder whose lock nobody holds (`sweep`). The kernel drops a dead
process's locks, whatever its PID namespace, so a living process's folders are never touched;
a folder without the file (an older version's, another program's) is left alone. The lock is
taken under another name and then renamed, so a sweep never finds `owner.lock` unheld.

A process killed in the instant between making its folder and renaming its lock into place
leaves a folder that is empty, or holds only the lock under its other name (`owner.lock.new`),
unheld. A living process's folder looks the same during that instant, so such a folder is
removed only once it is older than `UNBORN_AFTER_S`.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import tempfile
import threading
import time
import weakref
from types import TracebackType

PREFIX = "migrator-"
OWNER_LOCK = "owner.lock"
#: The name the lock is taken under, before it is renamed to `OWNER_LOCK`.
TAKING_LOCK = OWNER_LOCK + ".new"
#: Age (seconds since its last change) after which a folder killed before its lock was in place
#: is removed: a living process renames its lock in microseconds.
UNBORN_AFTER_S = 60.0
_swept = threading.Lock()
_sweep_done = False


def sweep(parent: str | None = None) -> int:
    """Remove the folders of processes that ended without removing them: a `migrator-*` folder
    whose `owner.lock` nobody holds, or one its process never finished making (`_unborn`).
    Returns how many were removed."""
    removed = 0
    for folder in glob.glob(os.path.join(parent or tempfile.gettempdir(), PREFIX + "*")):
        fd = _take(os.path.join(folder, OWNER_LOCK))
        if fd is None and not _unborn(folder):
            continue  # held (its process lives), or not ours to judge
        shutil.rmtree(folder, ignore_errors=True)
        if fd is not None:
            os.close(fd)
        removed += 1
    return removed


def _take(lock: str) -> int | None:
    """The lock file `lock`, opened and locked by this process; None when it is missing or
    another process holds it."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _unborn(folder: str) -> bool:
    """A folder whose process was killed before its lock was in place: no `owner.lock`, nothing
    in it but an unheld `owner.lock.new`, and unchanged for `UNBORN_AFTER_S`."""
    try:
        if time.time() - os.stat(folder).st_mtime < UNBORN_AFTER_S:
            return False
        entries = os.listdir(folder)
    except OSError:
        return False
    if not entries:
        return True
    if entries != [TAKING_LOCK]:
        return False
    fd = _take(os.path.join(folder, TAKING_LOCK))  # held: its process lives, slow to rename
    if fd is None:
        return False
    os.close(fd)
    return True


def _sweep_once() -> None:
    global _sweep_done
    with _swept:
        if not _sweep_done:
            _sweep_done = True
            sweep()


def _remove(folder: str, lock_fd: int) -> None:
    """Remove a folder, its lock last, then let go of the lock. The lock goes last so that a
    kill part way leaves a folder the next sweep still recognises (`rmtree` alone may remove
    the lock first and the files after)."""
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name == OWNER_LOCK:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
    except OSError:
        pass  # gone already
    shutil.rmtree(folder, ignore_errors=True)  # the lock, and the folder
    os.close(lock_fd)


class Workdir:
    """A new temporary folder `migrator-<kind>-<random>/`, held by this process until
    `cleanup` removes it (also as a context manager), or until the object is collected or the
    process exits, as with `tempfile.TemporaryDirectory`, whose place it takes."""

    def __init__(self, kind: str) -> None:
        _sweep_once()
        self.name = tempfile.mkdtemp(prefix=f"{PREFIX}{kind}-")
        taking = os.path.join(self.name, TAKING_LOCK)
        fd = os.open(taking, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(taking, os.path.join(self.name, OWNER_LOCK))
        self._finalizer = weakref.finalize(self, _remove, self.name, fd)

    def cleanup(self) -> None:
        """Remove the folder (`_remove`); a second call does nothing."""
        self._finalizer()

    def __enter__(self) -> str:
        return self.name

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
