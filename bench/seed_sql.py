"""Bare runs written straight into a source server's database, for the memory benchmark.

Seeding through the client costs ~13 s per 1,000 runs (one `create_run` each); 100,000 runs
would take half an hour before anything is measured. Here the rows go into the server's
database in bulk (PostgreSQL: `COPY … FROM STDIN`; SQLite: `executemany`) while it runs: the
SQL store reads every run from the database on each request, so the server sees them at once
(`search_runs` counts them; the benchmark checks).

The rows are those `create_run` + `log_param` + `set_terminated` write (MLflow 3.17's schema,
`mlflow/store/tracking/dbmodels/models.py`): a `runs` row (run_uuid, name, source_type
`UNKNOWN`, user_id, status `FINISHED`, start and end time, lifecycle_stage `active`,
artifact_uri `<experiment's artifact_location>/<run_uuid>/artifacts`, experiment_id), its tags
(`mlflow.runName`, `mlflow.user`, `mlflow.source.name`, `mlflow.source.type`, and `team`,
`dataset`, `priority`) and 3 params. No metrics, no artifacts. The experiments are made through
the client first (so their artifact location is the server's own), runs dealt round-robin.
Run `i` is a function of (seed, i), its id included: seeding `0..n` then `n..m` is the same as
seeding `0..m`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import random
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from typing import Any
from urllib.parse import urlparse

from seed_bench import BASE_TIME_MS, USERS, Workload, client, create_experiments

CHUNK = 10_000
RUN_COLUMNS = (
    "run_uuid",
    "name",
    "source_type",
    "source_name",
    "entry_point_name",
    "user_id",
    "status",
    "start_time",
    "end_time",
    "source_version",
    "lifecycle_stage",
    "artifact_uri",
    "experiment_id",
)
TAGS_PER_RUN = 7
PARAMS_PER_RUN = 3


def describe() -> str:
    return (
        f"bare: FINISHED, {TAGS_PER_RUN} tags (mlflow.runName/user/source.name/source.type, "
        f"team, dataset, priority), {PARAMS_PER_RUN} params, no metrics, no artifacts; "
        "written into the source database with SQL"
    )


def run_id(w: Workload, i: int) -> str:
    return hashlib.md5(f"{w.seed}:bare:{i}".encode()).hexdigest()


def bare_rows(
    w: Workload, i: int, exp_ids: dict[int, str], locations: dict[int, str]
) -> tuple[tuple[Any, ...], list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """Run `i`: its runs row, its tags and its params (key, value, run_uuid)."""
    rng = random.Random(f"{w.seed}:bare:{i}")
    rid = run_id(w, i)
    j = w.experiment_of(i)
    name = f"run-{i:06d}"
    user = rng.choice(USERS)
    start = BASE_TIME_MS + i * 1000
    run = (
        rid,
        name,
        "UNKNOWN",
        "",
        "",
        user,
        "FINISHED",
        start,
        start + rng.randint(1_000, 600_000),
        "",
        "active",
        f"{locations[j].rstrip('/')}/{rid}/artifacts",
        int(exp_ids[j]),
    )
    tags = [
        ("mlflow.runName", name, rid),
        ("mlflow.user", user, rid),
        ("mlflow.source.name", "train.py", rid),
        ("mlflow.source.type", "LOCAL", rid),
        ("team", rng.choice(["vision", "nlp", "forecasting", "ranking"]), rid),
        ("dataset", rng.choice(["imagenet-1k", "wiki-2024", "sales-v3", "clicks-q2"]), rid),
        ("priority", rng.choice(["low", "normal", "high"]), rid),
    ]
    params = [
        ("learning_rate", f"{10 ** rng.uniform(-5, -1):.6g}", rid),
        ("batch_size", str(rng.choice([16, 32, 64, 128, 256])), rid),
        ("optimizer", rng.choice(["adam", "sgd", "adamw", "rmsprop"]), rid),
    ]
    return run, tags, params


def _chunks(
    w: Workload, start: int, stop: int, exp_ids: dict[int, str], locations: dict[int, str]
) -> Iterator[tuple[list[tuple[Any, ...]], list[tuple[str, str, str]], list[tuple[str, str, str]]]]:
    for lo in range(start, stop, CHUNK):
        runs, tags, params = [], [], []
        for i in range(lo, min(stop, lo + CHUNK)):
            r, t, p = bare_rows(w, i, exp_ids, locations)
            runs.append(r)
            tags += t
            params += p
        yield runs, tags, params


def seed_bare(uri: str, backend: str, w: Workload, start: int, stop: int) -> None:
    """Runs `start`..`stop-1` of the bare workload into the database behind server `uri`
    (`backend`: its SQLAlchemy URI)."""
    exp_ids = create_experiments(uri, w)
    c = client(uri)
    locations = {j: c.get_experiment(e).artifact_location for j, e in exp_ids.items()}
    chunks = _chunks(w, start, stop, exp_ids, locations)
    if backend.startswith("sqlite"):
        _sqlite(backend.split(":///", 1)[1], chunks)
    elif backend.startswith("postgresql"):
        _postgres(backend, chunks)
    else:
        raise ValueError(f"no bulk seeding for {backend}")


def _sqlite(path: str, chunks: Iterator[Any]) -> None:
    cols = ", ".join(RUN_COLUMNS)
    marks = ", ".join("?" for _ in RUN_COLUMNS)
    with closing(sqlite3.connect(path, timeout=60)) as db:
        for runs, tags, params in chunks:
            with db:
                db.executemany(f"INSERT INTO runs ({cols}) VALUES ({marks})", runs)
                db.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?)", tags)
                db.executemany("INSERT INTO params (key, value, run_uuid) VALUES (?, ?, ?)", params)


def _csv(rows: list[tuple[Any, ...]]) -> io.StringIO:
    """CSV for COPY: strings quoted (an unquoted empty field would be NULL), numbers not."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC).writerows(rows)
    buf.seek(0)
    return buf


def _postgres(uri: str, chunks: Iterator[Any]) -> None:
    import psycopg2

    u = urlparse(uri)
    conn = psycopg2.connect(
        host=u.hostname,
        port=u.port or 5432,
        user=u.username,
        password=u.password,
        dbname=u.path.lstrip("/"),
    )
    with closing(conn):
        for runs, tags, params in chunks:
            with conn, conn.cursor() as cur:
                cur.copy_expert(
                    f"COPY runs ({', '.join(RUN_COLUMNS)}) FROM STDIN WITH (FORMAT csv)",
                    _csv(runs),
                )
                cur.copy_expert(
                    "COPY tags (key, value, run_uuid) FROM STDIN WITH (FORMAT csv)", _csv(tags)
                )
                cur.copy_expert(
                    "COPY params (key, value, run_uuid) FROM STDIN WITH (FORMAT csv)", _csv(params)
                )
