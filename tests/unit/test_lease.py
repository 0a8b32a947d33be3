"""One driver per staging store: the lease, on a local staging folder."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from migrator.errors import ConfigError, Interrupted
from migrator.lease import LEASE_KEY, Lease
from migrator.staging import LocalStaging


@pytest.fixture
def staging(tmp_path: Path) -> LocalStaging:
    return LocalStaging(str(tmp_path))


def _doc(staging: LocalStaging) -> dict[str, object]:
    return json.loads(staging.read_bytes(LEASE_KEY))


def test_a_second_driver_is_refused_naming_the_holder(staging: LocalStaging) -> None:
    first = Lease(staging, "migrate")
    first.acquire()
    try:
        with pytest.raises(ConfigError, match=r"in use by another driver \(migrate on .*pid"):
            Lease(staging, "import").acquire()
        assert _doc(staging)["token"] == first.holder["token"]
    finally:
        first.release()
    assert not staging.exists(LEASE_KEY)
    second = Lease(staging, "import")
    second.acquire()  # free again once released
    second.release()


def test_an_expired_lease_is_taken_over(staging: LocalStaging) -> None:
    stale = {"host": "elsewhere", "pid": 1, "token": "old", "command": "migrate",
             "heartbeat_at": int(time.time() * 1000) - 120_000, "ttl_s": 60}
    staging.write_bytes(LEASE_KEY, json.dumps(stale).encode())
    lease = Lease(staging, "migrate")
    lease.acquire()
    assert _doc(staging)["token"] == lease.holder["token"]
    lease.release()


def test_a_fresh_lease_of_a_process_that_is_gone_is_taken_over_at_once(
    staging: LocalStaging,
) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    import socket

    dead = {"host": socket.gethostname(), "pid": int(gone.stdout), "token": "killed",
            "command": "migrate", "heartbeat_at": int(time.time() * 1000), "ttl_s": 60}
    staging.write_bytes(LEASE_KEY, json.dumps(dead).encode())
    lease = Lease(staging, "migrate")
    lease.acquire()
    assert _doc(staging)["token"] == lease.holder["token"]
    lease.release()


def test_an_unreadable_lease_counts_as_expired(staging: LocalStaging) -> None:
    staging.write_bytes(LEASE_KEY, b"\x00 not json")
    lease = Lease(staging, "export")
    lease.acquire()
    lease.release()


def test_the_heartbeat_keeps_it_fresh_and_a_takeover_is_noticed(staging: LocalStaging) -> None:
    lease = Lease(staging, "migrate", ttl_s=0.4)
    lease.acquire()
    try:
        first = _doc(staging)["heartbeat_at"]
        time.sleep(0.35)
        assert _doc(staging)["heartbeat_at"] > first  # type: ignore[operator]
        lease.check()  # still ours
        thief = {"host": "other", "pid": 2, "token": "thief", "command": "migrate",
                 "heartbeat_at": int(time.time() * 1000), "ttl_s": 60}
        staging.write_bytes(LEASE_KEY, json.dumps(thief).encode())
        deadline = time.monotonic() + 3
        while not lease.lost_to and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(Interrupted, match="another driver"):
            lease.check()
    finally:
        lease.release()
    assert _doc(staging)["token"] == "thief"  # release leaves another's lease alone


def test_put_if_is_a_compare_and_set(staging: LocalStaging) -> None:
    etag = staging.put_if("k", b"one", None)
    assert etag is not None
    assert staging.put_if("k", b"two", None) is None  # exists
    assert staging.put_if("k", b"two", "wrong") is None
    assert staging.put_if("k", b"two", etag) is not None
    assert staging.read_bytes("k") == b"two"
