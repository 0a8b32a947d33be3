"""The progress display (migrator.progress): a live display on a terminal (through a real
pseudo-terminal), plain log lines through a pipe."""

from __future__ import annotations

import io
import logging
import os
import pty
import re
import subprocess
import sys
import threading
import time

import pytest

from migrator import progress
from migrator.progress import Progress

CHILD = """
import sys, time
from migrator.progress import Progress
with Progress("auto") as p:
    assert p.mode == "bar", p.mode
    p.total("runs", 10, final=True)
    for i in range(10):
        p.advance("runs", [{"state": "failed" if i == 3 else "imported", "artifact_bytes": 2500}])
        time.sleep(0.05)
    p.advance("traces", unchanged=4)
"""


def test_a_live_display_on_a_terminal() -> None:
    leader, follower = pty.openpty()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=follower, stdout=follower, stderr=follower,
        close_fds=True,
    )
    os.close(follower)
    out = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    child.wait(30)
    os.close(leader)
    text = out.decode(errors="replace")
    assert child.returncode == 0, text
    assert "\x1b[" in text  # drawn with terminal control sequences, redrawn in place
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    assert re.search(r"runs\s.*10/10", plain), plain
    assert "1 failed" in plain and "22.5 KB" in plain  # 9 runs × 2,500 bytes
    assert "traces" in plain


def test_log_lines_through_a_pipe(monkeypatch: pytest.MonkeyPatch,
                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    stream = io.StringIO()  # not a terminal
    with caplog.at_level(logging.INFO, logger="migrator.progress"), Progress("auto", stream) as p:
        assert p.mode == "log"
        p.total("runs", 4, final=True)
        p.advance("runs", [{"state": "imported", "artifact_bytes": 1_500_000}])
        p.advance("runs", [{"state": "failed"}])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress:")]
    assert lines, caplog.text
    last = lines[-1]
    assert re.match(r"progress: runs 2/4, 1 failed, [0-9.]+/s, 1\.5 MB, ETA \d+m\d\ds$", last), last
    assert stream.getvalue() == ""  # no display drawn into a pipe


def test_no_total_yet_no_eta_and_none_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    p = Progress("log", io.StringIO())
    p.advance("runs", unchanged=3)
    assert "ETA" not in p.line() and p.line().startswith("runs 3, ")
    p.total("runs", 9, final=False)  # still counting: a total, no time left yet
    assert "runs 3/9" in p.line() and "ETA" not in p.line()
    quiet = Progress("none", io.StringIO())
    thread = quiet.count_ahead("runs", lambda: iter([1, 2]))
    assert not thread.is_alive() and quiet.kinds == {}


def test_a_late_kind_has_a_sane_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([100.0, 110.0, 110.0, 110.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    p = Progress("none", io.StringIO())  # started at 100
    p.advance("evaluation datasets", [{"state": "imported"}])  # first object at 110
    assert "0.1/s" in p.line()  # 1 in 10 s, not 1 in 0 s


def test_the_count_ahead_waits_for_the_first_object_done() -> None:
    p = Progress("log", io.StringIO())
    counted = threading.Event()

    def count():
        counted.set()
        yield 5

    thread = p.count_ahead("runs", count)
    assert not counted.wait(0.3)  # the workers have the source to themselves at the start
    p.advance("runs", [{"state": "imported"}])
    thread.join(5)
    assert counted.is_set() and "runs 1/5" in p.line()
