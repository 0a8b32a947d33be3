"""The benchmark: this migrator against mlflow-export-import and the servers' floors.

    .venv/bin/python bench/run.py [--skip-anchor] [--skip-flags]      # both standard workloads
    .venv/bin/python bench/run.py --runs N [--experiments E] [--backend auto|sqlite]  # one
    .venv/bin/python bench/run.py --memory [--sizes 1000,100000]

Without --runs/--experiments/--backend it measures both standard workloads, one after the
other: 200 runs over 10 experiments on SQLite servers, then 1,000 runs over 20 experiments on
PostgreSQL servers (127.0.0.1:5432; SQLite where it does not answer, and the report says so).
For each: moto S3 (staging, and every server's proxied artifacts under
s3://bench-artifacts/<server>), a source `mlflow server` seeded deterministically, and a fresh
target server per tool; then, one after the other on this machine: the read floor, the write
floor, this migrator with default settings (then its no-op re-run on the same target), this
migrator with --source/--target-artifacts-destination, and mlflow-export-import; with the
HTTP requests each server received during each row (its access log). Every server, database
and process it starts is stopped by PID when it ends.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anchor
import report
from measure import MB, Measurement, run_measured
from seed_bench import Workload, client, seed_models, write_runs
from seed_sql import describe, seed_bare
from server_requests import Window

from migrator import services

BENCH = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
FLOORS = str(BENCH / "floors.py")
BUCKET = "bench-staging"
ARTIFACTS_BUCKET = "bench-artifacts"
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
#: `make bench` without arguments: (backend, runs, experiments).
STANDARD = (("sqlite", 200, 10), (services.POSTGRES, 1000, 20))
#: The --memory criterion: driver peak RSS grows by at most this many bytes per run.
SLOPE_LIMIT = 50


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


def last_line(log: str) -> str:
    """The last non-empty line of a log (why a row failed), shortened."""
    try:
        lines = [x for x in Path(log).read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:200] if lines else ""


def result(
    m: Measurement, n: int, target: str = "", window: Window | None = None
) -> dict[str, Any]:
    """A measurement as a result row; with `target`, what landed there (runs must equal n);
    with `window`, the requests each server received while it ran."""
    target_runs = count_runs(target) if target else None
    ok = m.returncode == 0 and (target_runs is None or target_runs == n)
    row = {
        **m.as_dict(),
        "runs_per_s": round(n / m.wall_s, 3) if m.wall_s else None,
        "target_runs": target_runs,
        "target_model_versions": count_model_versions(target) if target else None,
        "ok": ok,
    }
    if window is not None:
        row["requests"] = window.summary(n)
        row["cpu"] = window.cpu_summary(m.wall_s, n)
    if not ok:
        row["error"] = (
            last_line(m.log) if m.returncode else f"{target_runs} runs on the target, not {n}"
        )
    return row


def measured(
    cmd: list[str], log: Path, servers: dict[str, Any], env: dict[str, str] | None = None
) -> tuple[Measurement, Window]:
    """Run a row, counting the requests `servers` (role -> Service) receive meanwhile."""
    with Window(servers) as window:
        m = run_measured(cmd, log, env)
    return m, window


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


def artifacts_at(name: str) -> str:
    return f"s3://{ARTIFACTS_BUCKET}/{name}"


@contextlib.contextmanager
def s3(workdir: Path) -> Iterator[services.Service]:
    """moto S3 with the staging bucket and the servers' artifacts bucket."""
    import boto3

    with services.s3_server(workdir, BUCKET) as svc:
        boto3.client("s3", endpoint_url=svc.url).create_bucket(Bucket=ARTIFACTS_BUCKET)
        yield svc


@contextlib.contextmanager
def server(name: str, kind: str, workdir: Path) -> Iterator[services.Service]:
    """An MLflow server whose proxied artifacts are on S3 under s3://bench-artifacts/<name>."""
    with services.mlflow_server(
        name, kind, workdir, artifacts_destination=artifacts_at(name)
    ) as svc:
        yield svc


@contextlib.contextmanager
def target(
    name: str, kind: str, workdir: Path, store: services.Service
) -> Iterator[services.Service]:
    """A row's fresh target server; its artifacts are deleted once the row is measured, so
    every row finds the artifacts bucket as the first did (the source's files only): moto lists
    a prefix by scanning the whole bucket, so a row after others would pay for their files in
    every listing."""
    with server(name, kind, workdir) as svc:
        yield svc
    drop_artifacts(store, name)


def drop_artifacts(store: services.Service, name: str) -> None:
    """Delete every object of s3://bench-artifacts/<name>/."""
    import boto3

    s3c = boto3.client("s3", endpoint_url=store.url)
    for page in s3c.get_paginator("list_objects_v2").paginate(
        Bucket=ARTIFACTS_BUCKET, Prefix=f"{name}/"
    ):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3c.delete_objects(Bucket=ARTIFACTS_BUCKET, Delete={"Objects": keys})


def workload(
    args: argparse.Namespace,
    w: Workload,
    kind: str,
    workdir: Path,
    anchor_bin: Path | None,
) -> dict[str, Any]:
    """Every row of one workload, each tool on a fresh target."""
    workdir.mkdir(parents=True, exist_ok=True)
    wl: dict[str, Any] = {"workload": w.as_dict(), "workdir": str(workdir)}
    results: dict[str, dict[str, Any]] = {}
    py = str(BIN / "python")
    with s3(workdir) as store, server("source", kind, workdir) as src:
        wl["backend"] = backend_kind(src.backend)
        wl["artifacts"] = {"source": src.artifacts_destination}
        progress(f"source {src.url} ({wl['backend']}); seeding {w.runs} runs")
        t0 = time.monotonic()
        ids = write_runs(src.url, w, args.threads)
        versions = seed_models(src.url, w, ids)
        wl["seed"] = {
            "wall_s": round(time.monotonic() - t0, 2),
            "runs": len(ids),
            "model_versions": versions,
            "source_runs": count_runs(src.url),
        }
        progress(f"seeded in {wl['seed']['wall_s']} s; read floor")
        m, win = measured(
            [py, FLOORS, "read", "--source", src.url, "--threads", str(args.threads)],
            workdir / "read-floor.log",
            {"source": src, "s3": store},
        )
        results["read_floor"] = result(m, w.runs, window=win)
        with target("target-floor", kind, workdir, store) as tgt:
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
            m, win = measured(cmd, workdir / "write-floor.log", {"target": tgt, "s3": store})
            results["write_floor"] = result(m, w.runs, tgt.url, win)
        with target("target-migrator", kind, workdir, store) as tgt:
            sides = {"source": src, "target": tgt, "s3": store}
            progress("migrator migrate")
            cmd = migrate_cmd(src.url, tgt.url, f"s3://{BUCKET}/bench")
            m, win = measured(cmd, workdir / "migrator.log", sides, RAY_ENV)
            results["migrator"] = result(m, w.runs, tgt.url, win)
            progress("migrator migrate again (no-op)")
            m, win = measured(cmd, workdir / "migrator-rerun.log", sides, RAY_ENV)
            results["migrator_rerun"] = result(m, w.runs, tgt.url, win)
        if not args.skip_flags:
            with target("target-flags", kind, workdir, store) as tgt:
                progress("migrator migrate --source/--target-artifacts-destination")
                cmd = migrate_cmd(
                    src.url,
                    tgt.url,
                    f"s3://{BUCKET}/bench-flags",
                    "--source-artifacts-destination",
                    src.artifacts_destination,
                    "--target-artifacts-destination",
                    tgt.artifacts_destination,
                )
                sides = {"source": src, "target": tgt, "s3": store}
                m, win = measured(cmd, workdir / "migrator-flags.log", sides, RAY_ENV)
                results["migrator_flags"] = result(m, w.runs, tgt.url, win)
        if anchor_bin is not None:
            with target("target-anchor", kind, workdir, store) as tgt:
                progress("mlflow-export-import export-all + import-all")
                with Window({"source": src, "target": tgt, "s3": store}) as win:
                    m = anchor.run_anchor(anchor_bin, src.url, tgt.url, workdir)
                results["anchor"] = result(m, w.runs, tgt.url, win)
    wl["results"] = results
    wl["ratios"] = report.ratios(results)
    wl["goals"] = report.goals(wl["ratios"])
    return wl


def full(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    doc = report.header("full")
    anchor_bin = None
    if not args.skip_anchor:
        anchor_bin = anchor.ensure_venv()
        doc["versions"]["anchor"] = anchor.versions(anchor_bin)
    if args.runs or args.experiments or args.backend:
        kind = services.POSTGRES if args.backend in (None, "auto") else "sqlite"
        plan = [(kind, args.runs or 1000, args.experiments or 20)]
    else:
        plan = list(STANDARD)
    doc["workloads"] = []
    for kind, runs, experiments in plan:
        w = Workload(runs=runs, experiments=experiments)
        sub = workdir / f"{kind}-{runs}"
        progress(f"workload: {runs} runs over {experiments} experiments, {kind} servers")
        doc["workloads"].append(workload(args, w, kind, sub, anchor_bin))
    return doc


def memory(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """At each size: seed bare runs up to it (SQL), then a real migrate onto a fresh target
    (a new staging prefix), then the same command again (a no-op resume on a populated
    manifest); the driver's peak RSS of both, and its growth per run between the sizes."""
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    w = Workload(runs=sizes[-1], experiments=args.experiments or 20)
    kind = "sqlite" if args.backend == "sqlite" else services.POSTGRES
    doc = report.header("memory")
    doc["workload"] = {"sizes": sizes, "experiments": w.experiments, "run": describe()}
    points = []
    with s3(workdir) as store, server("source", kind, workdir) as src:
        doc["backend"] = backend_kind(src.backend)
        seeded = 0
        for n in sizes:
            progress(f"seeding runs {seeded}..{n - 1} with SQL ({doc['backend']})")
            t0 = time.monotonic()
            seed_bare(src.url, src.backend, w, seeded, n)
            seeded = n
            visible = count_runs(src.url)
            seed_s = time.monotonic() - t0
            if visible != n:
                raise RuntimeError(f"the source shows {visible} runs after seeding {n}")
            point: dict[str, Any] = {"runs": n, "seed_wall_s": round(seed_s, 2)}
            with server(f"target-{n}", kind, workdir) as tgt:
                sides = {"source": src, "target": tgt, "s3": store}
                cmd = migrate_cmd(src.url, tgt.url, f"s3://{BUCKET}/memory-{n}")
                for step, label in (("migrate", "migrator migrate"), ("rerun", "re-run")):
                    progress(f"{label} at {n} runs")
                    m, win = measured(cmd, workdir / f"{step}-{n}.log", sides, RAY_ENV)
                    point[step] = result(m, n, tgt.url, win)
            points.append(point)
    doc["memory"] = {"points": points, **slopes(points)}
    return doc


def slopes(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Driver peak RSS growth, bytes per run, from the smallest size to the largest."""
    first, last = points[0], points[-1]
    dn = last["runs"] - first["runs"]
    out: dict[str, Any] = {"limit_bytes_per_run": SLOPE_LIMIT}
    for step in ("migrate", "rerun"):
        a, b = first[step]["driver_peak_rss_bytes"], last[step]["driver_peak_rss_bytes"]
        out[f"{step}_bytes_per_run"] = round((b - a) / dn, 1) if dn else None
    ok = all(p[s]["ok"] for p in points for s in ("migrate", "rerun"))
    out["pass"] = (
        ok
        and dn > 0
        and all(out[f"{s}_bytes_per_run"] <= SLOPE_LIMIT for s in ("migrate", "rerun"))
    )
    return out


def render_memory(doc: dict[str, Any]) -> str:
    mem = doc["memory"]
    lines = [
        f"memory: migrator migrate (real) and its no-op re-run, {doc['backend']} servers "
        f"(artifacts on S3), {doc['machine']['nproc']} cores, {doc['machine']['ram_gb']} GB",
        f"  runs: {doc['workload']['run']}",
        "",
        f"  {'runs':>8} {'seed s':>8}  {'step':8} {'wall s':>9} {'driver MB':>10} "
        f"{'tree MB':>8} {'target runs':>12} {'req/run src':>12} {'req/run tgt':>12}  ok",
    ]
    for p in mem["points"]:
        for step in ("migrate", "rerun"):
            r = p[step]
            head = (
                f"{p['runs']:8d} {p['seed_wall_s']:8.1f}" if step == "migrate" else f"{'':8} {'':8}"
            )
            lines.append(
                f"  {head}  {step:8} {r['wall_s']:9.2f} "
                f"{r['driver_peak_rss_bytes'] / MB:10.1f} {r['tree_peak_rss_mb']:8.0f} "
                f"{r['target_runs']:>12} {report._per_run(r, 'source'):>12} "
                f"{report._per_run(r, 'target'):>12}  {'yes' if r['ok'] else 'NO'}"
            )
            if not r["ok"] and r.get("error"):
                lines.append(f"  {'':18}{r['error']}")
    lo, hi = mem["points"][0]["runs"], mem["points"][-1]["runs"]

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1f}"

    lines += [
        "",
        f"  driver peak RSS growth, {lo} -> {hi} runs: migrate {fmt(mem['migrate_bytes_per_run'])} "
        f"B/run, re-run {fmt(mem['rerun_bytes_per_run'])} B/run "
        f"(limit {mem['limit_bytes_per_run']} B/run): {'PASS' if mem['pass'] else 'FAIL'}",
    ]
    return "\n".join(lines)


def cleanup(workdir: Path) -> None:
    """Keep the logs; drop the servers' local artifact folders, exports and SQLite files."""
    for p in sorted(workdir.rglob("*"), reverse=True):
        if p.is_dir() and (p.name.endswith("-artifacts") or p.name == "exim-export"):
            shutil.rmtree(p, ignore_errors=True)
        elif p.is_file() and p.suffix in (".db", ".db-journal", ".db-wal", ".db-shm"):
            p.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--runs",
        type=int,
        default=None,
        help="one workload of this many runs (default: both standard workloads)",
    )
    p.add_argument("--experiments", type=int, default=None, help="experiments (default 20)")
    p.add_argument(
        "--backend",
        choices=("auto", "sqlite"),
        default=None,
        help="one workload on these servers; auto: PostgreSQL where it answers on "
        "127.0.0.1:5432, else SQLite",
    )
    p.add_argument("--threads", type=int, default=8, help="seeder and floor threads (default 8)")
    p.add_argument("--skip-anchor", action="store_true", help="do not run mlflow-export-import")
    p.add_argument(
        "--skip-flags",
        action="store_true",
        help="leave out the --source/--target-artifacts-destination row",
    )
    p.add_argument(
        "--memory",
        action="store_true",
        help="driver peak RSS of a real migrate and its no-op re-run at --sizes",
    )
    p.add_argument("--sizes", default="1000,100000", help="run counts for --memory")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON output (default bench/results.json, or bench/memory.json)",
    )
    args = p.parse_args(argv)
    # A TERM (a kill, `timeout`) unwinds like Ctrl-C: every server and row started is stopped
    # by PID, and its PostgreSQL database dropped, on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.memory and len({s for s in args.sizes.split(",") if s.strip()}) < 2:
        p.error("--sizes needs two run counts or more")
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
    rows = [r for wl in doc["workloads"] for r in wl["results"].values()]
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
