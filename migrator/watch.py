"""Stop a command whose server went away for good, rather than fail every object in turn."""

from __future__ import annotations

import time
from collections.abc import Iterable

from migrator import mlflow_io
from migrator.errors import Interrupted
from migrator.manifest import FAILED, Row


class ServerWatch:
    """Ends the command when a server goes away for good, instead of failing every object in
    turn: after an object fails on a transient error (its retries spent), each server is asked
    whether it still answers (at most every `every_s`)."""

    def __init__(self, servers: dict[str, str], grace_s: float, every_s: float = 10.0) -> None:
        self.servers = {role: uri for role, uri in servers.items() if uri}
        self.grace_s = grace_s
        self.every_s = every_s
        self._last = 0.0

    def check(self, rows: Iterable[Row]) -> None:
        """Raises:
        Interrupted: a row failed transiently and a server no longer answers."""
        transient = any(
            r.get("state") == FAILED and str(r.get("error") or "").startswith("TransientError")
            for r in rows
        )
        if not transient or time.monotonic() - self._last < self.every_s:
            return
        for role, uri in self.servers.items():
            if not mlflow_io.answers(uri, self.grace_s):
                raise Interrupted(
                    f"the {role} server {uri} stopped answering (for {self.grace_s:.0f} s). "
                    "What was done is recorded in "
                    "the manifests (objects it failed are retried): run the same command again "
                    "to resume"
                )
        self._last = time.monotonic()
