"""`jobs/migrate.py`, the `ray job submit` entry point: `migrate` unless a command is named."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location(
    "jobs_migrate", Path(__file__).resolve().parents[2] / "jobs" / "migrate.py"
)
assert SPEC is not None and SPEC.loader is not None
jobs_migrate = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(jobs_migrate)


@pytest.mark.parametrize(
    ("argv", "address", "expected"),
    [
        (["--source", "s", "--target", "t"], None, ["migrate", "--source", "s", "--target", "t"]),
        (["verify", "--source", "s"], None, ["verify", "--source", "s"]),
        (["--source", "s"], "http://h:8265", ["migrate", "--source", "s", "--ray-address", "auto"]),
        (["migrate", "--ray-address", "none"], "x", ["migrate", "--ray-address", "none"]),
        (["demo"], "x", ["demo"]),
        (["--help"], None, ["--help"]),
    ],
)
def test_job_arguments(argv: list[str], address: str | None, expected: list[str]) -> None:
    assert jobs_migrate.job_argv(argv, address) == expected

