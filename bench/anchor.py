"""The anchor: mlflow-export-import (`databricks-mlflow-export-import` from PyPI).

It is installed once into a virtual environment of its own under a cache folder (it pulls its
own `mlflow-skinny`, pandas and the Databricks SDK; none of that goes near the project's venv),
then run as its users run it:

    MLFLOW_TRACKING_URI=<source> export-all --output-dir DIR --use-threads True
    MLFLOW_TRACKING_URI=<target> import-all --input-dir DIR --use-threads True

Its thread pools have `os.cpu_count()` workers (`utils.get_threads`); both steps are measured
and added up (wall time) or maxed (peak RSS).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from measure import Measurement, combine, run_measured

from migrator import services

PACKAGE = "databricks-mlflow-export-import"


def ensure_venv() -> Path:
    """The anchor's venv (made on first use, then kept); returns its bin folder."""
    return services.venv("exim-venv", (PACKAGE,))


def versions(bin_dir: Path) -> dict[str, str]:
    code = (
        "import json, importlib.metadata as m\n"
        "out = {}\n"
        "for d in ('databricks-mlflow-export-import', 'mlflow-skinny', 'mlflow', 'pandas'):\n"
        "    try: out[d] = m.version(d)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    res = subprocess.run(
        [str(bin_dir / "python"), "-c", code], capture_output=True, text=True, check=True
    )
    versions: dict[str, str] = json.loads(res.stdout)
    return versions


def run_anchor(bin_dir: Path, source: str, target: str, workdir: Path) -> Measurement:
    out_dir = workdir / "exim-export"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    log = workdir / "anchor.log"
    env = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
    export = run_measured(
        [str(bin_dir / "export-all"), "--output-dir", str(out_dir), "--use-threads", "True"],
        log,
        {**env, "MLFLOW_TRACKING_URI": source},
    )
    parts = [export]
    if export.returncode == 0:
        parts.append(
            run_measured(
                [str(bin_dir / "import-all"), "--input-dir", str(out_dir), "--use-threads", "True"],
                log,
                {**env, "MLFLOW_TRACKING_URI": target},
            )
        )
    m = combine("anchor", parts)
    m.extra["export_wall_s"] = export.wall_s
    m.extra["import_wall_s"] = parts[1].wall_s if len(parts) > 1 else None
    shutil.rmtree(out_dir, ignore_errors=True)
    return m
