"""Entry point for `ray job submit -- python jobs/migrate.py --source … --target … --staging …`.

Takes the CLI's arguments; as its name says, it means `migrate` when the first argument is an
option (`jobs/migrate.py verify --source …` runs another command). Inside a Ray job the
driver joins the job's cluster (`ray.init()` finds it through RAY_ADDRESS, which Ray sets for
the job's driver).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from migrator.cli import main  # noqa: E402


def job_argv(argv: list[str], ray_address: str | None) -> list[str]:
    """The CLI's arguments for this job: `migrate` unless a command is named, and the job's
    cluster unless `--ray-address` says otherwise."""
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv = ["migrate", *argv]
    if ray_address and "--ray-address" not in argv and argv[:1] != ["demo"]:
        argv = [*argv, "--ray-address", "auto"]
    return argv


if __name__ == "__main__":
    sys.exit(main(job_argv(sys.argv[1:], os.environ.get("RAY_ADDRESS"))))
