"""The floors: what a server pair allows at best, measured as separate processes.

    python bench/floors.py write --target URI --runs N --experiments E [--threads 8]
    python bench/floors.py read  --source URI [--threads 8]

write: the benchmark's workload written straight to a fresh target by an ideal parallel writer
(per run: create_run with its tags, one log_batch with every metric point and param, the three
artifacts through the artifact repository, set_terminated); nothing is read from the source.
read: every run of the source read by an ideal parallel reader (a paged search, then per run:
get_run, get_metric_history per key, every artifact downloaded).
Each prints one JSON line with what it did.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from seed_bench import Workload, client, write_runs


def read_all(uri: str, threads: int) -> dict[str, Any]:
    from mlflow.entities import ViewType

    from migrator.mlflow_io import artifact_repo, iter_artifact_files

    c = client(uri)
    exp_ids = [e.experiment_id for e in c.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    runs: list[str] = []
    token = None
    while True:
        page = c.search_runs(exp_ids, max_results=1000, page_token=token)
        runs += [r.info.run_id for r in page]
        token = page.token
        if not token:
            break

    def one(run_id: str) -> tuple[int, int]:
        cl = client(uri)
        run = cl.get_run(run_id)
        points = sum(len(cl.get_metric_history(run_id, k)) for k in run.data.metrics)
        size = 0
        repo = artifact_repo(uri, run.info.artifact_uri)
        with tempfile.TemporaryDirectory(prefix="bench-read-") as tmp:
            local = os.path.join(tmp, "f")
            for info in iter_artifact_files(repo):
                repo._download_file(info.path, local)
                size += os.path.getsize(local)
                os.remove(local)
        return points, size

    with ThreadPoolExecutor(max_workers=threads) as pool:
        done = list(pool.map(one, runs))
    return {
        "runs": len(runs),
        "metric_points": sum(p for p, _ in done),
        "artifact_bytes": sum(s for _, s in done),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="floors")
    p.add_argument("mode", choices=("write", "read"))
    p.add_argument("--source", default="")
    p.add_argument("--target", default="")
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--experiments", type=int, default=20)
    p.add_argument("--threads", type=int, default=8)
    args = p.parse_args(argv)
    t0 = time.monotonic()
    if args.mode == "write":
        ids = write_runs(args.target, Workload(args.runs, args.experiments), args.threads)
        out: dict[str, Any] = {"runs": len(ids)}
    else:
        out = read_all(args.source, args.threads)
    out["inner_wall_s"] = round(time.monotonic() - t0, 3)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
