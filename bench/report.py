"""The benchmark's table, ratios and JSON document."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

ROWS = (
    ("migrator", "migrator migrate (default settings)"),
    ("anchor", "mlflow-export-import export-all + import-all (threads)"),
    ("write_floor", "write floor (ideal parallel writer -> fresh target)"),
    ("read_floor", "read floor (ideal parallel reader <- source)"),
    ("migrator_rerun", "migrator migrate again (no-op re-run)"),
)


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def our_versions() -> dict[str, str]:
    out = {}
    for d in ("mlflow-migrator", "mlflow", "ray", "moto", "boto3", "psycopg2-binary"):
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            pass
    try:
        out["git"] = subprocess.run(
            ["git", "-C", str(Path(__file__).parent), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    def wall(name: str) -> float | None:
        r = results.get(name)
        return r["wall_s"] if r and r.get("ok") else None

    ours = wall("migrator")
    return {
        "ours_over_anchor_wall": _ratio(ours, wall("anchor")),
        "anchor_over_ours_wall": _ratio(wall("anchor"), ours),
        "ours_over_write_floor_wall": _ratio(ours, wall("write_floor")),
        "ours_over_read_floor_wall": _ratio(ours, wall("read_floor")),
        "rerun_over_first_wall": _ratio(wall("migrator_rerun"), ours),
    }


def render(doc: dict[str, Any]) -> str:
    n = doc["workload"]["runs"]
    lines = [
        f"benchmark: {n} runs over {doc['workload']['experiments']} experiments, "
        f"{doc['backend']} servers, {doc['machine']['nproc']} cores, "
        f"{doc['machine']['ram_gb']} GB; seeded in {doc['seed']['wall_s']:.1f} s "
        f"(+{doc['seed']['model_versions']} model versions)",
        "",
        f"  {'tool':56} {'wall s':>9} {'runs/s':>8} {'driver MB':>10} {'tree MB':>8} "
        f"{'target runs':>12} {'versions':>9}  ok",
    ]
    for key, label in ROWS:
        r = doc["results"].get(key)
        if r is None:
            lines.append(f"  {label:56} {'skipped':>9}")
            continue
        runs, versions = r.get("target_runs"), r.get("target_model_versions")
        lines.append(
            f"  {label:56} {r['wall_s']:9.2f} {r['runs_per_s']:8.2f} "
            f"{r['driver_peak_rss_mb']:10.0f} {r['tree_peak_rss_mb']:8.0f} "
            f"{'' if runs is None else runs:>12} {'' if versions is None else versions:>9}  "
            f"{'yes' if r['ok'] else 'NO'}"
        )
    lines.append("")
    labels = {
        "ours_over_anchor_wall": "ours / anchor (wall time; < 1 is faster)",
        "ours_over_write_floor_wall": "ours / write floor (wall time)",
        "ours_over_read_floor_wall": "ours / read floor (wall time)",
        "rerun_over_first_wall": "re-run / first run (wall time)",
    }
    for k, label in labels.items():
        v = doc["ratios"].get(k)
        lines.append(f"  {label:44} {'n/a' if v is None else f'{v:.3f}'}")
    return "\n".join(lines)


def write_json(doc: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")


def header(kind: str) -> dict[str, Any]:
    return {
        "benchmark": kind,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "versions": our_versions(),
    }
