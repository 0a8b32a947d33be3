"""One driver per staging store: a lease object with its holder and a heartbeat.

Two drivers on one staging URI would fold each other's journal into the manifests at the same
time, and one's compaction could drop rows the other had just written. So every command that
writes the manifests (`migrate`, `export`, `import`, `verify`) first takes
`manifests/_lease.json` with a conditional write (S3 `If-None-Match` / `If-Match`, a lock file
on a local folder), keeps it fresh with a heartbeat every `ttl / 4`, and removes it at the end.

A second driver is refused with a message naming the holder. A lease whose heartbeat is older
than its TTL (a killed driver's) is taken over, with a conditional write so that of two
drivers taking over at once only one wins; one whose holder is a process of this machine that
no longer exists is taken over at once (a `kill -9` followed by a resume need not wait).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from migrator.errors import ConfigError, Interrupted
from migrator.staging import Staging

log = logging.getLogger(__name__)

LEASE_KEY = "manifests/_lease.json"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _process_gone(holder: dict[str, Any]) -> bool:
    """The holder is a process of this machine that no longer runs."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Lease:
    """The lease of one driver on one staging store (`acquire`, then `release`)."""

    def __init__(self, staging: Staging, command: str, ttl_s: float = 60.0) -> None:
        self.staging = staging
        self.ttl_s = ttl_s
        self.holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "token": uuid.uuid4().hex,
            "command": command,
            "started_at": _now_ms(),
        }
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost_to: str = ""

    def _body(self) -> bytes:
        return json.dumps({**self.holder, "heartbeat_at": _now_ms(), "ttl_s": self.ttl_s}).encode()

    def _current(self) -> tuple[dict[str, Any], str] | None:
        got = self.staging.read_versioned(LEASE_KEY)
        if got is None:
            return None
        data, etag = got
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
        except ValueError:
            doc = {}  # unreadable: as good as expired
        return doc, etag

    def _ours(self, doc: dict[str, Any]) -> bool:
        return doc.get("token") == self.holder["token"]

    def acquire(self) -> None:
        """Take the lease, or fail naming its holder.

        Raises:
            ConfigError: another driver holds a live lease on this staging store.
        """
        for _ in range(5):
            current = self._current()
            if current is None:
                etag = self.staging.put_if(LEASE_KEY, self._body(), None)
            else:
                doc, old = current
                if not self._ours(doc):
                    age_s = (_now_ms() - int(doc.get("heartbeat_at") or 0)) / 1000
                    if age_s < float(doc.get("ttl_s") or self.ttl_s) and not _process_gone(doc):
                        raise ConfigError(
                            f"staging {self.staging.uri} is in use by another driver "
                            f"({doc.get('command')} on {doc.get('host')}, pid {doc.get('pid')}, "
                            f"last heartbeat {age_s:.0f} s ago): one driver per staging store. "
                            "If that driver is gone, its lease expires "
                            f"{max(0.0, float(doc.get('ttl_s') or self.ttl_s) - age_s):.0f} s "
                            "after its last heartbeat"
                        )
                    log.warning(
                        "taking over the lease of a driver that is gone (%s on %s, pid %s, "
                        "last heartbeat %.0f s ago)",
                        doc.get("command"),
                        doc.get("host"),
                        doc.get("pid"),
                        age_s,
                    )
                etag = self.staging.put_if(LEASE_KEY, self._body(), old)
            if etag is None:  # lost a race, or our own write answered ambiguously: look again
                mine = self._current()
                if mine is not None and self._ours(mine[0]):
                    etag = mine[1]
            if etag is not None:
                self._etag = etag
                self._thread = threading.Thread(
                    target=self._beat, name="lease-heartbeat", daemon=True
                )
                self._thread.start()
                return
        raise ConfigError(f"could not take the lease of staging {self.staging.uri}")

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                etag = self.staging.put_if(LEASE_KEY, self._body(), self._etag)
                if etag is None:
                    current = self._current()
                    if current is None or not self._ours(current[0]):
                        holder = current[0] if current else {}
                        self.lost_to = f"{holder.get('host')} pid {holder.get('pid')}"
                        log.error("lost the staging lease to %s", self.lost_to)
                        return
                    etag = current[1]
                self._etag = etag
            except Exception as e:  # a missed heartbeat is retried at the next one
                log.warning("lease heartbeat failed: %s", e)

    def check(self) -> None:
        """Raises:
        Interrupted: another driver took the lease (this one stalled past its TTL)."""
        if self.lost_to:
            raise Interrupted(
                f"another driver ({self.lost_to}) took over staging {self.staging.uri} while "
                "this one stalled; stopping so that the two do not mix their manifests"
            )

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        try:
            current = self._current()
            if current is not None and self._ours(current[0]):
                self.staging.delete(LEASE_KEY)
        except Exception as e:  # it expires by itself
            log.warning("could not remove the staging lease: %s", e)
