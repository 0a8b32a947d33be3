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
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import tempfile
import threading
import weakref
from types import TracebackType

PREFIX = "migrator-"
OWNER_LOCK = "owner.lock"
_swept = threading.Lock()
_sweep_done = False


def sweep(parent: str | None = None) -> int:
    """Remove the folders of processes that ended without removing them: a `migrator-*` folder
    whose `owner.lock` nobody holds. Returns how many were removed."""
    removed = 0
    for folder in glob.glob(os.path.join(parent or tempfile.gettempdir(), PREFIX + "*")):
        try:
            fd = os.open(os.path.join(folder, OWNER_LOCK), os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: its process lives
            os.close(fd)
            continue
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)
        removed += 1
    return removed


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
        taking = os.path.join(self.name, OWNER_LOCK + ".new")
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
