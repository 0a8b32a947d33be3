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
from types import SimpleNamespace
from typing import Any

import pytest

from migrator import progress
from migrator.progress import GroupTotal, Progress

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
    thread = quiet.count_ahead("runs", lambda: quiet.total("runs", 2, final=True))
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

    def count() -> None:
        counted.set()
        p.total("runs", 5, final=True)

    thread = p.count_ahead("runs", count)
    assert not counted.wait(0.3)  # the workers have the source to themselves at the start
    p.advance("runs", [{"state": "imported"}])
    thread.join(5)
    assert counted.is_set() and "runs 1/5" in p.line()


def test_a_group_left_out_takes_its_count_out_of_the_total() -> None:
    """An experiment that fails to move keeps its runs on the source: the total drops them,
    counted already or not, so the bar of such a command ends full."""
    p = Progress("log", io.StringIO())
    total = GroupTotal(p, "runs")
    total.add("1", 3)
    total.add("2", 4, say=True)
    assert "runs 0/7" in p.line() and not p.kinds["runs"].counted
    total.leave_out(["2", "3"])  # "3" not counted yet: its runs will not count either
    total.add("3", 5)
    total.add("2")
    total.final()
    assert p.kinds["runs"].counted and p.kinds["runs"].total == 3
    total.leave_out(["1"])  # after the count ended: said at once
    assert p.kinds["runs"].total == 0


def _run_driver(tmp_path: Any, progress_: Progress) -> Any:
    from migrator.config import Options
    from migrator.run_driver import RunDriver
    from migrator.staging import LocalStaging

    m = SimpleNamespace(opts=Options(), staging=LocalStaging(str(tmp_path)), progress=progress_)
    return RunDriver(m)  # type: ignore[arg-type]


def test_the_runs_of_an_experiment_that_fails_to_move_leave_the_total(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the driver does it: the runs are counted, then a hundred experiments is made and
    one of them failed (its runs will not move): the bar's total drops them."""
    from migrator import run_driver

    p = Progress("log", io.StringIO())
    runs = _run_driver(tmp_path / "a", p)
    found = [SimpleNamespace(info=SimpleNamespace(experiment_id=e)) for e in "1122212"]
    monkeypatch.setattr(run_driver.scope, "source_runs", lambda opts, ids: iter(found))
    p.advance("runs", [{"state": "imported"}])  # the count starts once a run is done
    runs.count_ahead(["1", "2"], from_source=True)
    deadline = time.monotonic() + 5
    while not p.kinds["runs"].counted and time.monotonic() < deadline:
        time.sleep(0.01)
    assert p.kinds["runs"].total == 7
    runs.leave_out([{"source_experiment_id": "1", "state": "imported"},
                    {"source_experiment_id": "2", "state": "failed"}])
    assert p.kinds["runs"].total == 3
    runs.rows.close()

    # `import`: counted from the manifest, at once
    staged = Progress("log", io.StringIO())
    runs = _run_driver(tmp_path / "b", staged)
    runs.table.append([{"source_run_id": f"r{i}", "source_experiment_id": e, "state": "exported"}
                       for i, e in enumerate("1233")])
    runs.count_ahead(["1", "3"], from_source=False)
    assert staged.kinds["runs"].total == 3 and staged.kinds["runs"].counted
    runs.leave_out([{"source_experiment_id": "3", "state": "failed"}])
    assert staged.kinds["runs"].total == 1
    runs.rows.close()
