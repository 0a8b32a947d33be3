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
    ("migrator_flags", "migrator migrate --source/target-artifacts-destination"),
    ("anchor", "mlflow-export-import export-all + import-all (threads)"),
    ("write_floor", "write floor (ideal parallel writer -> fresh target)"),
    ("read_floor", "read floor (ideal parallel reader <- source)"),
    ("migrator_rerun", "migrator migrate again (no-op re-run)"),
)
RATIOS = (
    ("ours_over_write_floor_wall", "ours / write floor (wall time)"),
    ("flags_over_anchor_wall", "ours with flags / anchor (wall time)"),
    ("ours_over_anchor_wall", "ours / anchor (wall time; < 1 is faster)"),
    ("flags_over_write_floor_wall", "ours with flags / write floor (wall time)"),
    ("ours_over_read_floor_wall", "ours / read floor (wall time)"),
    ("rerun_over_first_wall", "re-run / first run (wall time)"),
)
#: The issue's goals: ours (default settings) within 1.25 x the write floor; ours with the
#: artifacts-destination flags at most a third of the anchor's wall time.
GOALS = {"ours_over_write_floor_wall": 1.25, "flags_over_anchor_wall": round(1 / 3, 3)}
#: What the write floor asks of its target per run: create_run, log_batch, 3 artifact PUTs,
#: set_terminated.
WRITE_FLOOR_REQUESTS_PER_RUN = 6


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

    ours, flags = wall("migrator"), wall("migrator_flags")
    return {
        "ours_over_write_floor_wall": _ratio(ours, wall("write_floor")),
        "flags_over_anchor_wall": _ratio(flags, wall("anchor")),
        "ours_over_anchor_wall": _ratio(ours, wall("anchor")),
        "anchor_over_ours_wall": _ratio(wall("anchor"), ours),
        "flags_over_write_floor_wall": _ratio(flags, wall("write_floor")),
        "ours_over_read_floor_wall": _ratio(ours, wall("read_floor")),
        "rerun_over_first_wall": _ratio(wall("migrator_rerun"), ours),
    }


def goals(r: dict[str, float | None]) -> dict[str, dict[str, Any]]:
    out = {}
    for k, limit in GOALS.items():
        v = r.get(k)
        out[k] = {"value": v, "limit": limit, "met": v is not None and v <= limit}
    return out


def _per_run(r: dict[str, Any], role: str) -> str:
    v = (r.get("requests") or {}).get(role, {}).get("per_run")
    return "-" if v is None else f"{v:.2f}"


def render_workload(wl: dict[str, Any], machine: dict[str, Any]) -> str:
    n = wl["workload"]["runs"]
    lines = [
        f"benchmark: {n} runs over {wl['workload']['experiments']} experiments, "
        f"{wl['backend']} servers (artifacts on S3), {machine['nproc']} cores, "
        f"{machine['ram_gb']} GB; seeded in {wl['seed']['wall_s']:.1f} s "
        f"(+{wl['seed']['model_versions']} model versions)",
        "",
        f"  {'tool':56} {'wall s':>9} {'runs/s':>8} {'driver MB':>10} {'tree MB':>8} "
        f"{'target runs':>12} {'versions':>9}  ok",
    ]
    errors = []
    for key, label in ROWS:
        r = wl["results"].get(key)
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
        if not r["ok"] and r.get("error"):
            errors.append(f"  {key}: {r['error']}")
    if errors:
        lines += ["", "  failed rows (last line of the log):", *errors]
    lines += [
        "",
        f"  requests per run each server received "
        f"(write floor: {WRITE_FLOOR_REQUESTS_PER_RUN} per run on its target)",
    ]
    for key, label in ROWS:
        r = wl["results"].get(key)
        if r is None or not r.get("requests"):
            continue
        lines.append(
            f"  {label:56} requests per run: source {_per_run(r, 'source')}, "
            f"target {_per_run(r, 'target')}  (S3: {_per_run(r, 's3')})"
        )
    lines += [
        "",
        "  CPU per run (ms; rest: the tool, Ray, the databases) and how busy the cores were",
    ]
    for key, label in ROWS:
        cpu = (wl["results"].get(key) or {}).get("cpu") or {}
        if not cpu.get("ms_per_run"):
            continue
        parts = ", ".join(f"{k} {v:g}" for k, v in cpu["ms_per_run"].items())
        lines.append(f"  {label:56} {parts}; cores busy {100 * (cpu.get('busy') or 0):.0f}%")
    lines.append("")
    met = wl.get("goals", {})
    for k, label in RATIOS:
        v = wl["ratios"].get(k)
        text = "n/a" if v is None else f"{v:.3f}"
        if k in met:
            g = met[k]
            verdict = "not measured" if v is None else "met" if g["met"] else "NOT MET"
            text += f"   goal <= {g['limit']:.3g}: {verdict}"
        lines.append(f"  {label:44} {text}")
    return "\n".join(lines)


def render(doc: dict[str, Any]) -> str:
    return "\n\n".join(render_workload(wl, doc["machine"]) for wl in doc["workloads"])


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
