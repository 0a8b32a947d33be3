"""Temporary folders a killed process leaves behind are removed by the next one (`workdirs`)."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from migrator.workdirs import OWNER_LOCK, TAKING_LOCK, UNBORN_AFTER_S, Workdir, sweep


def test_a_workdir_holds_its_lock_and_goes_with_cleanup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # TMPDIR read again
    with Workdir("export") as name:
        folder = Path(name)
        assert folder.parent == tmp_path and folder.name.startswith("migrator-export-")
        assert sorted(p.name for p in folder.iterdir()) == [OWNER_LOCK]
        assert sweep(str(tmp_path)) == 0  # held by this process
    assert not folder.exists()
    dropped = Path(Workdir("export").name)  # never cleaned up: goes with the object
    assert not dropped.exists()


def test_cleanup_removes_the_lock_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process killed while it removes a folder must not have removed the lock first: the
    folder would be left with its files and nothing to tell the sweep it is an orphan."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    w = Workdir("export")
    folder = Path(w.name)
    for i in range(3):
        (folder / str(i)).mkdir()
        (folder / str(i) / "model.bin").write_bytes(b"x" * 100)
    (folder / "run.json").write_text("{}")
    unlinked: list[str] = []
    unlink = os.unlink

    def recorded(path: str, *args: object, **kwargs: object) -> None:
        unlinked.append(os.path.basename(path))
        unlink(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "unlink", recorded)
    w.cleanup()
    assert not folder.exists()
    assert sorted(unlinked) == sorted(["model.bin"] * 3 + ["run.json", OWNER_LOCK])
    assert unlinked[-1] == OWNER_LOCK


def test_a_killed_processs_folders_are_swept_and_a_living_ones_kept(tmp_path: Path) -> None:
    """A driver or task killed with SIGKILL leaves its folders (ledgers: ~100 MB for 100,000
    runs; a task's: the files of the run or model it was moving): the next sweep removes them,
    and never the folders of a process still alive, nor folders without the lock file."""
    code = (
        "import sys, time\n"
        "from migrator.ledger import Ledger\n"
        "from migrator.workdirs import Workdir\n"
        "ledgers = [Ledger(n, 'k') for n in ('runs', 'traces')]\n"
        "task = Workdir('export')\n"
        "open(task.name + '/model.bin', 'wb').write(b'x' * 1000)\n"
        "print(*(led._folder for led in ledgers), task.name, flush=True)\n"
        "time.sleep(120)\n"
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}

    def process() -> tuple[subprocess.Popen[str], list[Path]]:
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout is not None
        return proc, [Path(f) for f in proc.stdout.readline().split()]

    killed, killed_folders = process()
    alive, alive_folders = process()
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(30)
        older = tmp_path / "migrator-ledger-runs-before"  # an older version's: no lock file
        older.mkdir()
        assert len(killed_folders) == 3
        assert all(f.parent == tmp_path and f.is_dir() for f in killed_folders + alive_folders)
        assert sweep(str(tmp_path)) == 3
        assert not any(f.exists() for f in killed_folders)
        assert all(f.is_dir() for f in alive_folders) and older.is_dir()
        assert sweep(str(tmp_path)) == 0
    finally:
        alive.kill()
        alive.wait(30)
    assert sweep(str(tmp_path)) == 3  # gone with its process


def test_a_folder_killed_before_its_lock_was_in_place_is_swept_once_old(tmp_path: Path) -> None:
    """A kill between making the folder and renaming the lock into place leaves an empty
    folder, or one holding only the lock under its other name: swept once older than a living
    process could be at that step, and never a folder with anything else in it."""
    old = time.time() - UNBORN_AFTER_S - 5
    empty = tmp_path / "migrator-export-empty"
    taking = tmp_path / "migrator-export-taking"
    fresh = tmp_path / "migrator-export-fresh"  # a living process, microseconds in
    other = tmp_path / "migrator-export-other"  # someone else's files: not ours to judge
    held = tmp_path / "migrator-export-held"  # its lock is held: its process lives
    for f in (empty, taking, fresh, other, held):
        f.mkdir()
    (taking / TAKING_LOCK).write_bytes(b"")
    (other / "notes.txt").write_text("x")
    (held / TAKING_LOCK).write_bytes(b"")
    fd = os.open(held / TAKING_LOCK, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        for f in (empty, taking, other, held):
            os.utime(f, (old, old))
        assert sweep(str(tmp_path)) == 2
        assert not empty.exists() and not taking.exists()
        assert fresh.is_dir() and other.is_dir() and held.is_dir()
    finally:
        os.close(fd)
