"""Run a command as a child process; record its wall time and peak memory.

Two memory figures, both sampled every 0.2 s with psutil and /proc:
- driver: the peak RSS of the process we started, from its own high-water mark (`VmHWM` in
  /proc/<pid>/status, which the kernel keeps, so a spike between samples still counts; only
  growth in the last 0.2 s before exit can be missed);
- tree: the peak of the summed RSS of that process and all its descendants (Ray's raylet, GCS
  and workers for the migrator).
`wait4`'s `ru_maxrss` is not used: after fork + exec it still carries the parent's size.

Every descendant seen while sampling is remembered; any still alive when the command ends is
stopped by its PID (never by name), and the count is reported.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

MB = 1024 * 1024


@dataclass
class Measurement:
    cmd: list[str]
    wall_s: float
    returncode: int
    driver_peak_rss_mb: float
    tree_peak_rss_mb: float
    log: str
    leftover_processes: int = 0
    driver_peak_rss_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Sampler(threading.Thread):
    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.interval = interval
        self.stop_event = threading.Event()
        self.peak_tree = 0
        self.peak_root = 0
        self.seen: dict[int, float] = {}  # pid -> create_time, to tell a reused PID apart

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.interval)

    def sample(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        total = 0
        for p in procs:
            try:
                rss = p.memory_info().rss
                if p.pid not in self.seen and p.pid != self.root.pid:
                    self.seen[p.pid] = p.create_time()
            except psutil.Error:
                continue
            total += rss
            if p.pid == self.root.pid:
                self.peak_root = max(self.peak_root, rss, _hwm(p.pid))
        self.peak_tree = max(self.peak_tree, total)


def _hwm(pid: int) -> int:
    """The kernel's RSS high-water mark of a process, in bytes (0 where /proc has none)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _stop_leftovers(seen: dict[int, float]) -> int:
    """Stop descendants that outlived the command: by PID, only if it is still the same process."""
    alive = []
    for pid, created in seen.items():
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, still = psutil.wait_procs(alive, timeout=10)
    for p in still:
        with contextlib.suppress(psutil.Error):
            p.kill()
    return len(alive)


def run_measured(
    cmd: list[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    timeout: float = 6 * 3600,
    interval: float = 0.2,
) -> Measurement:
    """Run `cmd` (output to `log_path`) and measure it; never raises on a non-zero exit."""
    full_env = {**os.environ, **(env or {})}
    with open(log_path, "ab") as out:
        out.write(f"$ {' '.join(cmd)}\n".encode())
        out.flush()
        t0 = time.monotonic()
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
        )
    sampler = _Sampler(proc.pid, interval)
    sampler.start()
    timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
    timer.start()
    try:
        proc.wait()
    except BaseException:  # the benchmark itself is stopped: so is the row's process group
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        timer.cancel()
    wall = time.monotonic() - t0
    sampler.stop_event.set()
    sampler.join()
    leftovers = _stop_leftovers(sampler.seen)
    driver_peak = sampler.peak_root
    return Measurement(
        cmd=cmd,
        wall_s=round(wall, 3),
        returncode=proc.returncode,
        driver_peak_rss_mb=round(driver_peak / MB, 1),
        tree_peak_rss_mb=round(max(sampler.peak_tree, driver_peak) / MB, 1),
        log=str(log_path),
        leftover_processes=leftovers,
        driver_peak_rss_bytes=driver_peak,
    )


def combine(name: str, parts: list[Measurement]) -> Measurement:
    """Steps run one after the other (export, then import): times add, peaks are the max."""
    return Measurement(
        cmd=[" && ".join(" ".join(p.cmd) for p in parts)],
        wall_s=round(sum(p.wall_s for p in parts), 3),
        returncode=next((p.returncode for p in parts if p.returncode), 0),
        driver_peak_rss_mb=max(p.driver_peak_rss_mb for p in parts),
        tree_peak_rss_mb=max(p.tree_peak_rss_mb for p in parts),
        log=parts[0].log,
        leftover_processes=sum(p.leftover_processes for p in parts),
        driver_peak_rss_bytes=max(p.driver_peak_rss_bytes for p in parts),
        extra={f"{name}_steps": [p.as_dict() for p in parts]},
    )
