"""How far a long command is, while it runs: per kind of object, done / total, failures, rate,
bytes moved and the time left.

`--progress auto` (default) draws a live display (rich) when stderr is a terminal, and writes a
plain log line every few seconds when it is not (Ray job logs, CI, a pipe); `bar` and `log`
force either; `none` says nothing until the summary. The total of runs is counted ahead, by a
paged search of the source in a thread of its own, while the work goes on: until it is known,
the display shows what is done and no time left.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

from migrator.manifest import FAILED, SKIPPED, Row

log = logging.getLogger(__name__)

MODES = ("auto", "bar", "log", "none")
LOG_EVERY_S = 5.0
#: The counting ahead of a kind starts once its first object is done, or after this long: at
#: the start every worker reads from the source at once, and a count competing with them
#: only delays the first runs (it searches the source a second time).
COUNT_AFTER_S = 30.0


@dataclass
class Kind:
    """One kind of object's progress."""

    label: str
    done: int = 0
    failed: int = 0
    nbytes: int = 0
    total: int | None = None
    counted: bool = False
    """The total is final (the counting ahead ended)."""
    started: float = field(default_factory=time.monotonic)

    def rate(self, now: float) -> float:
        return self.done / max(now - self.started, 1e-6)

    def eta_s(self, now: float) -> float | None:
        if not self.counted or self.total is None or not self.done:
            return None
        return max(self.total - self.done, 0) / max(self.rate(now), 1e-9)

    def line(self, now: float) -> str:
        of = f"/{self.total}" if self.total is not None else ""
        parts = [f"{self.label} {self.done}{of}"]
        if self.failed:
            parts.append(f"{self.failed} failed")
        parts.append(f"{self.rate(now):.1f}/s")
        if self.nbytes:
            parts.append(human_size(self.nbytes))
        eta = self.eta_s(now)
        if eta is not None:
            parts.append(f"ETA {_duration(eta)}")
        return ", ".join(parts)


def human_size(n: float) -> str:
    """Bytes as people read them (decimal units)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """The progress of one command; `advance` from the driver's thread as results arrive."""

    def __init__(self, mode: str = "auto", stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if _is_terminal(self.stream) else "log"
        self.mode = mode
        self.kinds: dict[str, Kind] = {}
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._last_log = time.monotonic()
        self._bar: Any = None
        self._tasks: dict[str, Any] = {}
        self._moving: dict[str, threading.Event] = {}

    def __enter__(self) -> Progress:
        if self.mode == "bar":
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import (
                Progress as Bar,
            )

            self._bar = Bar(
                TextColumn("{task.description:<14}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[extra]}"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=False,
                refresh_per_second=4,
            )
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._refresh_bar()
            self._bar.stop()
            self._bar = None

    # ---- what the driver says ------------------------------------------------------------

    def total(self, label: str, n: int, final: bool) -> None:
        """The objects of a kind counted so far (`final`: all of them)."""
        with self._lock:
            kind = self._kind(label)
            kind.total, kind.counted = n, final
        self._show()

    def advance(self, label: str, rows: Iterable[Row] = (), unchanged: int = 0) -> None:
        """Objects of a kind done (their result rows: failed ones counted as such, bytes
        summed), and `unchanged` ones found with nothing to do."""
        with self._lock:
            kind = self._kind(label)
            kind.done += unchanged
            for r in rows:
                kind.done += 1
                if r.get("state") == FAILED:
                    kind.failed += 1
                elif r.get("state") != SKIPPED:
                    kind.nbytes += int(r.get("artifact_bytes") or 0)
            moving = self._moving.setdefault(label, threading.Event())
        moving.set()
        self._show()

    def count_ahead(self, label: str, count: Callable[[], None]) -> threading.Thread:
        """Count a kind's total in a thread: `count` says its totals through `total`, the last
        one final. The thread starts at once and counts once the kind's first object is done
        (or after `COUNT_AFTER_S`)."""
        with self._lock:
            moving = self._moving.setdefault(label, threading.Event())

        def run() -> None:
            moving.wait(COUNT_AFTER_S)
            try:
                count()
            except Exception as e:  # only the display loses its total
                log.debug("counting %s ahead failed: %s", label, e)

        thread = threading.Thread(target=run, name=f"count-{label}", daemon=True)
        if self.mode != "none":
            thread.start()
        return thread

    # ---- showing it -------------------------------------------------------------------------

    def _kind(self, label: str) -> Kind:
        """A kind's progress; its rate counts from the command's start (a kind whose first
        object comes late has not been idle since)."""
        if label not in self.kinds:
            self.kinds[label] = Kind(label, started=self.started)
        return self.kinds[label]

    def _show(self) -> None:
        if self.mode == "bar":
            self._refresh_bar()
        elif self.mode == "log":
            now = time.monotonic()
            if now - self._last_log >= LOG_EVERY_S:
                self._last_log = now
                log.info("progress: %s", self.line())

    def line(self) -> str:
        now = time.monotonic()
        with self._lock:
            return "; ".join(k.line(now) for k in self.kinds.values()) or "starting"

    def _refresh_bar(self) -> None:
        if self._bar is None:
            return
        now = time.monotonic()
        with self._lock:
            for label, kind in self.kinds.items():
                extra = f"{kind.rate(now):.1f}/s"
                if kind.failed:
                    extra += f" [red]{kind.failed} failed[/red]"
                if kind.nbytes:
                    extra += f" {human_size(kind.nbytes)}"
                total = kind.total if kind.counted else None
                if label not in self._tasks:
                    self._tasks[label] = self._bar.add_task(label, total=total, extra=extra)
                self._bar.update(self._tasks[label], completed=kind.done, total=total, extra=extra)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class GroupTotal:
    """A kind's total counted by group (runs by experiment), said to `progress` as it grows.
    A group left out (an experiment that failed to move: its runs stay where they are) takes
    what it counted out of the total, and is not counted further, so the bar of such a command
    still ends full; the summary names the failure."""

    def __init__(self, progress: Progress, label: str) -> None:
        self._progress, self._label = progress, label
        self._lock = threading.Lock()
        self._by_group: Counter[str] = Counter()
        self._left_out: set[str] = set()
        self._n = 0
        self._final = False

    def add(self, group: str, n: int = 1, say: bool = False) -> None:
        """`n` more objects of `group`; `say`: show the total so far."""
        with self._lock:
            if group not in self._left_out:
                self._by_group[group] += n
                self._n += n
            if say:
                self._say()

    def final(self) -> None:
        """Every group is counted."""
        with self._lock:
            self._final = True
            self._say()

    def leave_out(self, groups: Iterable[str]) -> None:
        with self._lock:
            for g in groups:
                self._left_out.add(g)
                self._n -= self._by_group.pop(g, 0)
            if self._final:
                self._say()

    def _say(self) -> None:  # under the lock, so that an older total never follows a newer
        self._progress.total(self._label, self._n, final=self._final)
