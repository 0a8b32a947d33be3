"""A fault-injecting HTTP reverse proxy, for testing the migrator against unreliable servers.

Put it in front of an MLflow server or an S3 endpoint (loopback only) and point the clients at
it. Each request draws, from a seeded random stream, one of:

- `ok`: forwarded, the upstream answer passed back;
- `503_before`: answered 503 without forwarding (an overloaded load balancer);
- `503_after`: forwarded, then answered 503 anyway: the write **happened** (a gateway timeout);
- `drop`: forwarded, then the connection closed without an answer (a worker killed mid-reply);
- `429`: answered 429 with `Retry-After: 1` without forwarding (rate limiting).

`/health` is always forwarded untouched. The proxy is bounded: it injects at most `max_faults`
faults, then forwards everything; `counts` says what it did. `down()` / `up()` make it refuse
connections for a while (a server that goes away and comes back).
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import random
import re
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

log = logging.getLogger(__name__)

KINDS = ("503_before", "503_after", "drop", "429")
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
}


@dataclass
class FaultPlan:
    """What share of requests gets each fault, and how many faults at most."""

    rates: dict[str, float] = field(
        default_factory=lambda: {"503_before": 0.03, "503_after": 0.03, "drop": 0.02, "429": 0.02}
    )
    overrides: dict[str, dict[str, float]] = field(default_factory=dict)
    """Other rates for requests whose path a key (a regular expression, e.g. `"/create$"`)
    matches: the first match."""
    max_faults: int = 1_000
    seed: int = 1
    skip_paths: tuple[str, ...] = ("/health",)

    def rates_for(self, path: str) -> dict[str, float]:
        return next((r for pat, r in self.overrides.items() if re.search(pat, path)), self.rates)


class FaultProxy:
    """A reverse proxy on 127.0.0.1 in front of `upstream` (`http://host:port`)."""

    def __init__(self, upstream: str, plan: FaultPlan | None = None) -> None:
        parsed = urlparse(upstream)
        if parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the fault proxy only fronts loopback servers, not {upstream}")
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.plan = plan or FaultPlan()
        self.counts: Counter[str] = Counter()
        #: Faults by kind and request (`"503_after POST /api/2.0/mlflow/runs/create"`).
        self.hits: Counter[str] = Counter()
        self._random = random.Random(self.plan.seed)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._open: set[socket.socket] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def faults(self) -> int:
        return sum(self.counts[k] for k in KINDS)

    def draw(self, method: str, path: str) -> str:
        """The fate of one request (thread-safe; seeded)."""
        if any(path.startswith(p) for p in self.plan.skip_paths):
            return "ok"
        rates = self.plan.rates_for(path)
        with self._lock:
            x = self._random.random()
            fate = "ok"
            if self.faults < self.plan.max_faults:
                edge = 0.0
                for kind in KINDS:
                    edge += rates.get(kind, 0.0)
                    if x < edge:
                        fate = kind
                        self.hits[f"{kind} {method} {path}"] += 1
                        break
            self.counts[fate] += 1
            return fate

    def start(self, port: int = 0) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with proxy._lock:
                    proxy._open.add(self.connection)

            def finish(self) -> None:
                with proxy._lock:
                    proxy._open.discard(self.connection)
                with contextlib.suppress(OSError):
                    super().finish()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _answer(
                self, status: int, body: bytes, headers: list[tuple[str, str]], length: str = ""
            ) -> None:
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", length or str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes, str]:
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=120)
                try:
                    headers = {
                        k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP
                    }
                    if body or self.command in ("POST", "PUT", "PATCH"):
                        headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    kept = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
                    head_length = (
                        resp.getheader("Content-Length", "") if self.command == "HEAD" else ""
                    )
                    return resp.status, kept, data, head_length
                finally:
                    conn.close()

            def _handle(self) -> None:
                body = self._body()
                fate = proxy.draw(self.command, urlparse(self.path).path)
                if fate == "503_before":
                    self._answer(503, b"injected: service unavailable", [])
                    return
                if fate == "429":
                    self._answer(429, b"injected: too many requests", [("Retry-After", "1")])
                    return
                try:
                    status, headers, data, head_length = self._forward(body)
                except OSError:
                    self._answer(502, b"upstream unreachable", [])
                    return
                if fate == "503_after":
                    self._answer(503, b"injected: service unavailable (after the write)", [])
                elif fate == "drop":
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                else:
                    self._answer(status, data, headers, head_length)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle  # noqa: N815

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def down(self) -> None:
        """Go away as a crashed server does: open connections are cut (requests in flight
        get no answer) and new ones refused until `up()` (same port)."""
        self.stop()
        with self._lock:
            cut, self._open = list(self._open), set()
        for conn in cut:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def up(self) -> None:
        """Listen again on the same port."""
        self.start(self.port)


@contextlib.contextmanager
def fault_proxy(upstream: str, plan: FaultPlan | None = None) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream, plan).start()
    try:
        yield proxy
    finally:
        proxy.stop()


# ---- crash points: kill -9 of the driver at a named place, for the resume tests ----------------

CRASH_ENV = "MIGRATOR_CRASH_AT"
_crash_hits: Counter[str] = Counter()


def crash_point(name: str) -> None:
    """Kill this process with SIGKILL at the N-th pass through `name` when the environment
    says `MIGRATOR_CRASH_AT=name:N` (a test's stand-in for `kill -9` at an exact place; no
    cleanup runs, as with a real one). Costs one dictionary lookup otherwise."""
    import os
    import signal

    wanted = os.environ.get(CRASH_ENV)
    if not wanted or not wanted.startswith(name + ":"):
        return
    _crash_hits[name] += 1
    if _crash_hits[name] >= int(wanted.rsplit(":", 1)[1]):
        log.warning("crash point %s reached: killing the driver", wanted)
        os.kill(os.getpid(), signal.SIGKILL)
