"""How many HTTP requests each MLflow server received during one measured row.

`mlflow server` (MLflow 3) runs uvicorn with MLflow's own log config, whose access logger
writes one line per request to the server's stdout, which `migrator.services` sends to the
server's log file (flushed per line):

    2026/12/02 13:13:37 INFO:     127.0.0.1:54321 - "POST /api/2.0/mlflow/runs/create HTTP/1.1" 200

uvicorn writes that line when it starts the response, before the client can read it, so once
a row's process has exited every request it made is in the file. A row's requests are the
access lines between the file's size before the row and after it (`Window`): the benchmark's
own requests (counting what landed on the target) come after the window closes, and the
server's health checks before it opens. Paths are grouped by endpoint: the query string is
dropped, a proxied artifact's path becomes `…/mlflow-artifacts/artifacts/*` (an upload or a
download; without `/*`, a listing), a presigned-URL request `…/mlflow-artifacts/presigned/*`
(the client then reads S3 itself), ids become `{id}`.

moto's S3 server logs its requests in the same quoted form (werkzeug), so the role `s3`
counts the requests to S3 (staging and the servers' artifact stores), grouped by bucket.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

#: One access line. werkzeug (moto) colours the request of every answer but a 200 with ANSI
#: escapes (ESC[35m ESC[1m before the method, ESC[0m after the protocol): allowed around it.
ACCESS = re.compile(
    rb'"(?:\x1b\[[0-9;]*m)*(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) (\S+) HTTP/[0-9.]+'
    rb'(?:\x1b\[[0-9;]*m)*" (\d{3})'
)
ARTIFACTS_API = "/api/2.0/mlflow-artifacts/"
_ID = re.compile(r"/(?:[0-9a-f]{32}|[0-9a-f-]{36}|tr-[0-9a-f]{32}|m-[0-9a-f]{32}|\d+)(?=/|$)")
TOP = 12


def endpoint(method: str, path: str) -> str:
    """An MLflow server's request as `METHOD /path`, grouped as the module says."""
    path = path.split("?", 1)[0]
    if path.startswith(ARTIFACTS_API):
        kind, _, rest = path[len(ARTIFACTS_API) :].partition("/")
        path = ARTIFACTS_API + kind + ("/*" if rest else "")
    else:
        path = _ID.sub("/{id}", path)
    return f"{method} {path}"


def s3_endpoint(method: str, path: str) -> str:
    """An S3 request (moto's log, same line format) as `METHOD /bucket[/*][?query keys]`."""
    path, _, query = path.partition("?")
    bucket, _, key = path.lstrip("/").partition("/")
    keys = sorted({q.split("=", 1)[0] for q in query.split("&") if q})
    return f"{method} /{bucket}{'/*' if key else ''}{'?' + ','.join(keys) if keys else ''}"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def settle(paths: list[Path], quiet: float = 0.3, limit: float = 5.0) -> None:
    """Wait until none of the files has grown for `quiet` seconds (at most `limit`)."""
    deadline = time.monotonic() + limit
    sizes = [_size(p) for p in paths]
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = [_size(p) for p in paths]
        if now == sizes:
            return
        sizes = now


def read_requests(
    path: Path, start: int, stop: int, s3: bool = False
) -> tuple[Counter[str], Counter[str]]:
    """Requests by endpoint and by status class (2xx, 4xx, …) between two offsets of a log."""
    group = s3_endpoint if s3 else endpoint
    by_endpoint: Counter[str] = Counter()
    by_status: Counter[str] = Counter()
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(max(0, stop - start))
    for m in ACCESS.finditer(data):
        by_endpoint[group(m.group(1).decode(), m.group(2).decode(errors="replace"))] += 1
        by_status[m.group(3).decode()[0] + "xx"] += 1
    return by_endpoint, by_status


class Window:
    """The requests some servers receive from `open()` to `close()`.

    `servers` maps a role (`source`, `target`, `s3`) to a `migrator.services.Service`."""

    def __init__(self, servers: dict[str, Any]) -> None:
        self.logs = {role: Path(svc.log_path) for role, svc in servers.items()}
        self.pids = {role: svc.proc.pid for role, svc in servers.items()}
        self.start: dict[str, int] = {}
        self.cpu_start: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def __enter__(self) -> Window:
        settle(list(self.logs.values()), quiet=0.2, limit=2.0)
        self.start = {role: _size(p) for role, p in self.logs.items()}
        self.cpu_start = self._cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._cpu()
        self.cpu = {k: round(end[k] - self.cpu_start.get(k, 0.0), 2) for k in end}
        settle(list(self.logs.values()))
        self.stop = {role: _size(p) for role, p in self.logs.items()}

    def _cpu(self) -> dict[str, float]:
        """CPU seconds so far: each server's process tree (its workers too), and the whole
        machine (`/proc/stat`: every core's busy time), to tell where a row's CPU went."""
        out = {role: _tree_cpu(pid) for role, pid in self.pids.items()}
        out["machine"] = _machine_busy()
        return out

    def cpu_summary(self, wall_s: float, runs: int) -> dict[str, Any]:
        """CPU seconds per server and for the rest (the tool, Ray, the databases), per run,
        and how busy the machine's cores were."""
        if not self.cpu:
            return {}
        servers = {role: v for role, v in self.cpu.items() if role != "machine"}
        rest = max(0.0, self.cpu["machine"] - sum(servers.values()))
        cores = os.cpu_count() or 1
        return {
            "seconds": {**servers, "rest": round(rest, 2), "machine": self.cpu["machine"]},
            "ms_per_run": {
                k: round(1000 * v / runs, 1) for k, v in {**servers, "rest": rest}.items()
            }
            if runs
            else {},
            "busy": round(self.cpu["machine"] / (wall_s * cores), 3) if wall_s else None,
        }

    def summary(self, runs: int) -> dict[str, dict[str, Any]]:
        """Per role: total, per run, by status class, and the top endpoints (count, per run)."""
        out: dict[str, dict[str, Any]] = {}
        for role, path in self.logs.items():
            by_endpoint, by_status = read_requests(
                path, self.start[role], self.stop[role], s3=role == "s3"
            )
            total = sum(by_endpoint.values())
            out[role] = {
                "total": total,
                "per_run": round(total / runs, 2) if runs else None,
                "by_status": dict(sorted(by_status.items())),
                "top_endpoints": [
                    {"endpoint": e, "count": c, "per_run": round(c / runs, 3) if runs else None}
                    for e, c in by_endpoint.most_common(TOP)
                ],
                "endpoints": len(by_endpoint),
            }
        return out


def _tree_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def _machine_busy() -> float:
    """Busy CPU seconds of all cores since boot (`/proc/stat`, everything but idle and
    iowait)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(x) for x in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")
