"""Entry point for `ray job submit -- python jobs/migrate.py migrate --source … --target …`.

Takes exactly the CLI's arguments. Inside a Ray job the driver joins the job's cluster
(`ray.init()` finds it through RAY_ADDRESS, which Ray sets for the job's driver).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from migrator.cli import main  # noqa: E402

if __name__ == "__main__":
    argv = sys.argv[1:]
    if os.environ.get("RAY_ADDRESS") and "--ray-address" not in argv and argv[:1] != ["demo"]:
        argv += ["--ray-address", "auto"]
    sys.exit(main(argv))
