"""`migrator demo`: the whole job end to end on an embedded default.

Starts a source and a target `mlflow server` (SQLite, proxied artifacts), an S3 server
(moto) for staging, and local Ray; seeds the source (runs, registered models with version
gaps, stages and aliases, a logged model made by `mlflow.pyfunc.log_model`, and MLflow 3's
GenAI objects: traces with assessments, prompts, an evaluation dataset, scorers); migrates; runs
the same migration again to show that a re-run does nothing, verifies every object, and
prints the figures.
"""

from __future__ import annotations

import resource
import shutil
import tempfile
import time
from pathlib import Path

from migrator import report
from migrator.config import Options
from migrator.fanout import SharedExecutor, make_executor
from migrator.pipeline import run_command
from migrator.seed import (
    seed_datasets,
    seed_models,
    seed_prompts,
    seed_scorers,
    seed_source,
    seed_traces,
    source_summary,
)
from migrator.services import mlflow_server, s3_server
from migrator.staging import Staging, open_staging

BUCKET = "migrator-staging"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


#: Where the demo leaves its manifests (its servers and S3 store are gone when it ends).
OUTPUT = Path("demo-output")


def keep_manifests(staging: Staging, dest: Path) -> Path:
    """Copy the staging store's manifests (not the journal or the lease) to a local folder
    that outlives the demo; returns it."""
    dest.mkdir(parents=True, exist_ok=True)
    for key in staging.list_keys("manifests"):
        name = key.rsplit("/", 1)[-1]
        if key.count("/") == 1 and name.endswith(".parquet"):
            staging.download_file(key, str(dest / name))
    return dest


def run_demo(n_runs: int = 40, keep: bool = False) -> int:
    """Seed, migrate, migrate again, verify. The working folder (the servers' databases, logs
    and artifacts) goes when the demo succeeds, and stays, said, when it does not."""
    workdir = Path(tempfile.mkdtemp(prefix="migrator-demo-"))
    print(f"demo: working folder {workdir}")
    code = 1
    try:
        code = _demo(workdir, n_runs, keep)
    finally:
        finish(workdir, code)
    return code


def finish(workdir: Path, code: int) -> None:
    """Remove the working folder after a demo that succeeded; keep it for one that did not."""
    if code == 0:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"demo: the servers' logs and databases stay in {workdir}")


def _demo(workdir: Path, n_runs: int, keep: bool) -> int:
    with (
        s3_server(workdir, BUCKET) as s3,
        mlflow_server("source", "sqlite", workdir) as src,
        mlflow_server("target", "sqlite", workdir) as tgt,
    ):
        print(f"demo: source {src.url}  target {tgt.url}  S3 {s3.url}")
        t0 = time.monotonic()
        seeded = seed_source(src.url, n_runs)
        seed_models(src.url, seeded)
        traces = seed_traces(src.url)  # MLflow 3 GenAI objects, in `genai/agent`
        seed_prompts(src.url, traces)
        seed_datasets(src.url, traces)
        seed_scorers(src.url, traces)
        print(f"demo: seeded source in {time.monotonic() - t0:.1f} s: {source_summary(src.url)}")
        opts = Options(
            source=src.url, target=tgt.url, staging=f"s3://{BUCKET}/demo", include_deleted=True
        )
        # A local Ray, started at once (in the background) and shared by the three commands:
        # the demo shows the cluster path, which a migration this small would not take.
        shared = SharedExecutor(make_executor(opts, local_ray_now=True))
        try:
            t0 = time.monotonic()
            first = run_command("migrate", opts, lambda _: shared)
            wall = time.monotonic() - t0
            print(first.render())
            t0 = time.monotonic()
            again = run_command("migrate", opts, lambda _: shared)
            rerun = time.monotonic() - t0
            print(again.render())
            checked = run_command("verify", opts, lambda _: shared)
            print(checked.render())
        finally:
            shared.shutdown()
        n = sum(first.runs.values())
        print(
            f"demo: {n} runs migrated in {wall:.1f} s "
            f"({n / wall:.1f} runs/s; {first.elapsed:.1f} s in the pipeline); "
            f"no-op re-run {rerun:.1f} s; driver peak RSS {_peak_rss_mb():.0f} MB"
        )
        print(f"demo: target now holds {source_summary(tgt.url)}")
        kept = keep_manifests(open_staging(opts.staging), OUTPUT / "manifests")
        page = report.write(opts.staging, str(OUTPUT / "report.html"))
        print(f"demo: the migration report page: {page.resolve().as_uri()}")
        print(
            f"demo: the manifests stay in {kept}/ (experiments, runs, logged_models, models, "
            "model_versions, prompts, traces, evaluation_datasets, scorers, verify .parquet); "
            "open one with:\n"
            f"  python -c \"import pandas as pd; print(pd.read_parquet('{kept}/runs.parquet'))\""
        )
        if keep:
            print("demo: servers stay up until Ctrl-C")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        return 0 if first.ok and again.ok and checked.ok else 1
