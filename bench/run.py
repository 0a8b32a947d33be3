"""The benchmark: this migrator against mlflow-export-import and the servers' floors.

    .venv/bin/python bench/run.py [--runs 1000] [--experiments 20] [--skip-anchor]
                                  [--backend auto|sqlite] [--out bench/results.json]
    .venv/bin/python bench/run.py --memory [--sizes 1000,100000] [--out bench/memory.json]

Starts its own source `mlflow server` (PostgreSQL on 127.0.0.1:5432 when it answers, SQLite
otherwise), moto S3 for staging, and a fresh target server for each tool; seeds the source
deterministically; then measures, one after the other on this machine: the read floor, this
migrator (then its no-op re-run on the same target), mlflow-export-import, and the write floor.
Every server, database and process it starts is stopped by PID when it ends.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anchor
import report
from measure import Measurement, run_measured
from seed_bench import Workload, client, seed_models, seed_tiny, write_runs

from migrator import services

BENCH = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
FLOORS = str(BENCH / "floors.py")
BUCKET = "bench-staging"
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def count_runs(uri: str) -> int:
    from mlflow.entities import ViewType

    c = client(uri)
    exp_ids = [e.experiment_id for e in c.search_experiments(view_type=ViewType.ALL)]
    n, token = 0, None
    while True:
        page = c.search_runs(
            exp_ids, run_view_type=ViewType.ALL, max_results=1000, page_token=token
        )
        n += len(page)
        token = page.token
        if not token:
            return n


def count_model_versions(uri: str) -> int:
    return len(client(uri).search_model_versions(max_results=10000))


def result(m: Measurement, n: int, target: str = "") -> dict[str, Any]:
    """A measurement as a result row; with `target`, what landed there (runs must equal n)."""
    target_runs = count_runs(target) if target else None
    return {
        **m.as_dict(),
        "runs_per_s": round(n / m.wall_s, 3) if m.wall_s else None,
        "target_runs": target_runs,
        "target_model_versions": count_model_versions(target) if target else None,
        "ok": m.returncode == 0 and (target_runs is None or target_runs == n),
    }


def migrate_cmd(src: str, tgt: str, staging: str, *extra: str) -> list[str]:
    return [
        str(BIN / "migrator"),
        "migrate",
        "--source",
        src,
        "--target",
        tgt,
        "--staging",
        staging,
        *extra,
    ]


def backend_kind(uri: str) -> str:
    return "postgresql" if uri.startswith("postgresql") else "sqlite"


def progress(msg: str) -> None:
    print(f"bench: {msg}", flush=True)


def full(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    w = Workload(runs=args.runs, experiments=args.experiments)
    doc = report.header("full")
    doc["workload"] = w.as_dict()
    bin_dir = None
    if not args.skip_anchor:
        bin_dir = anchor.ensure_venv()
        doc["versions"]["anchor"] = anchor.versions(bin_dir)
    kind = args.backend
    results: dict[str, dict[str, Any]] = {}
    py = str(BIN / "python")
    with (
        services.s3_server(workdir, BUCKET),
        services.mlflow_server("source", kind, workdir) as src,
    ):
        doc["backend"] = backend_kind(src.backend)
        progress(f"source {src.url} ({doc['backend']}); seeding {w.runs} runs")
        t0 = time.monotonic()
        ids = write_runs(src.url, w, args.threads)
        versions = seed_models(src.url, w, ids)
        doc["seed"] = {
            "wall_s": round(time.monotonic() - t0, 2),
            "runs": len(ids),
            "model_versions": versions,
            "source_runs": count_runs(src.url),
        }
        progress(f"seeded in {doc['seed']['wall_s']} s; read floor")
        m = run_measured(
            [py, FLOORS, "read", "--source", src.url, "--threads", str(args.threads)],
            workdir / "read-floor.log",
        )
        results["read_floor"] = result(m, w.runs)
        with services.mlflow_server("target-migrator", kind, workdir) as tgt:
            progress("migrator migrate")
            cmd = migrate_cmd(src.url, tgt.url, f"s3://{BUCKET}/bench")
            m = run_measured(cmd, workdir / "migrator.log", RAY_ENV)
            results["migrator"] = result(m, w.runs, tgt.url)
            progress("migrator migrate again (no-op)")
            m = run_measured(cmd, workdir / "migrator-rerun.log", RAY_ENV)
            results["migrator_rerun"] = result(m, w.runs, tgt.url)
        if bin_dir is not None:
            with services.mlflow_server("target-anchor", kind, workdir) as tgt:
                progress("mlflow-export-import export-all + import-all")
                m = anchor.run_anchor(bin_dir, src.url, tgt.url, workdir)
                results["anchor"] = result(m, w.runs, tgt.url)
        with services.mlflow_server("target-floor", kind, workdir) as tgt:
            progress("write floor")
            cmd = [
                py,
                FLOORS,
                "write",
                "--target",
                tgt.url,
                "--runs",
                str(w.runs),
                "--experiments",
                str(w.experiments),
                "--threads",
                str(args.threads),
            ]
            m = run_measured(cmd, workdir / "write-floor.log")
            results["write_floor"] = result(m, w.runs, tgt.url)
    doc["results"] = results
    doc["ratios"] = report.ratios(results)
    return doc


def planned_runs(log: str) -> int | None:
    found = re.findall(r"total: \d+ experiments, (\d+) runs", Path(log).read_text(errors="replace"))
    return int(found[-1]) if found else None


def memory(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    w = Workload(runs=sizes[-1], experiments=args.experiments)
    doc = report.header("memory")
    doc["workload"] = {
        "sizes": sizes,
        "experiments": w.experiments,
        "run": "bare: one create_run with 5 tags, status RUNNING",
    }
    points = []
    with (
        services.s3_server(workdir, BUCKET),
        services.mlflow_server("source", args.backend, workdir) as src,
        services.mlflow_server("target", args.backend, workdir) as tgt,
    ):
        doc["backend"] = backend_kind(src.backend)
        seeded = 0
        for n in sizes:
            progress(f"seeding runs {seeded}..{n - 1} ({doc['backend']})")
            t0 = time.monotonic()
            seed_tiny(src.url, w, seeded, n, args.threads)
            seed_s = time.monotonic() - t0
            seeded = n
            progress(f"migrator migrate --dry-run at {n} runs")
            cmd = migrate_cmd(src.url, tgt.url, f"s3://{BUCKET}/memory", "--dry-run")
            m = run_measured(cmd, workdir / f"dry-run-{n}.log", RAY_ENV)
            planned = planned_runs(m.log)
            points.append(
                {
                    "runs": n,
                    "seed_wall_s": round(seed_s, 2),
                    "planned_runs": planned,
                    **m.as_dict(),
                    "ok": m.returncode == 0 and planned == n,
                }
            )
    first, last = points[0]["driver_peak_rss_mb"], points[-1]["driver_peak_rss_mb"]
    ratio = round(last / first, 3) if first else None
    doc["memory"] = {
        "points": points,
        "ratio_largest_over_smallest": ratio,
        "limit": 2.0,
        "pass": ratio is not None and ratio <= 2.0 and all(p["ok"] for p in points),
    }
    return doc


def render_memory(doc: dict[str, Any]) -> str:
    mem = doc["memory"]
    lines = [
        f"memory: migrator migrate --dry-run, {doc['backend']} servers, "
        f"{doc['machine']['nproc']} cores, {doc['machine']['ram_gb']} GB",
        "",
        f"  {'runs':>8} {'seed s':>9} {'dry-run s':>10} {'driver MB':>10} {'tree MB':>8} "
        f"{'planned':>8}  ok",
    ]
    for p in mem["points"]:
        lines.append(
            f"  {p['runs']:8d} {p['seed_wall_s']:9.1f} {p['wall_s']:10.2f} "
            f"{p['driver_peak_rss_mb']:10.0f} {p['tree_peak_rss_mb']:8.0f} "
            f"{p['planned_runs'] if p['planned_runs'] is not None else '?':>8}  "
            f"{'yes' if p['ok'] else 'NO'}"
        )
    lines.append("")
    lines.append(
        f"  driver peak RSS, largest / smallest: {mem['ratio_largest_over_smallest']} "
        f"(limit {mem['limit']}): {'PASS' if mem['pass'] else 'FAIL'}"
    )
    return "\n".join(lines)


def cleanup(workdir: Path) -> None:
    """Keep the logs; drop the servers' artifacts and SQLite files."""
    for p in workdir.iterdir():
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.suffix == ".db":
            p.unlink()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=1000, help="runs to seed (default 1000)")
    p.add_argument("--experiments", type=int, default=20, help="experiments (default 20)")
    p.add_argument("--threads", type=int, default=8, help="seeder and floor threads (default 8)")
    p.add_argument("--skip-anchor", action="store_true", help="do not run mlflow-export-import")
    p.add_argument(
        "--backend",
        choices=("auto", "sqlite"),
        default="auto",
        help="auto: PostgreSQL where it answers on 127.0.0.1:5432, else SQLite",
    )
    p.add_argument("--memory", action="store_true", help="driver peak RSS of a dry run at --sizes")
    p.add_argument("--sizes", default="1000,100000", help="run counts for --memory")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON output (default bench/results.json, or bench/memory.json)",
    )
    args = p.parse_args(argv)
    args.backend = services.POSTGRES if args.backend == "auto" else "sqlite"
    out = args.out or BENCH / ("memory.json" if args.memory else "results.json")
    workdir = Path(tempfile.mkdtemp(prefix="mlflow-migrator-bench-"))
    progress(f"working folder {workdir} (logs stay there)")
    try:
        doc = memory(args, workdir) if args.memory else full(args, workdir)
    finally:
        cleanup(workdir)
    doc["workdir"] = str(workdir)
    print()
    print(render_memory(doc) if args.memory else report.render(doc))
    report.write_json(doc, out)
    print(f"\nbench: wrote {out}")
    if args.memory:
        return 0 if doc["memory"]["pass"] else 1
    return 0 if all(r["ok"] for r in doc["results"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
