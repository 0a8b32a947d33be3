"""The fan-out: the only module that imports Ray.

A stage is a plain function `(row, options) -> row`. Work goes out in jobs (a stage and a small
batch of rows). Executors keep a bounded number of jobs in flight, hand back results in
completion order, and accept follow-up jobs as results arrive, so one stage can feed the next
(export → import) without a barrier. `InlineExecutor` runs the same jobs in this process, for
tests and for `--ray-address none`.

This is the one place that catches broadly: whatever a stage raises for one row becomes a
`failed` row naming the object, the stage and the error; the other rows go on.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from migrator.config import Options
from migrator.errors import MigratorError, TransientError
from migrator.manifest import FAILED, Row, now_ms

log = logging.getLogger(__name__)

StageFn = Callable[[Row, Options], Row]


@dataclass(frozen=True)
class Stage:
    """A named stage function, with an optional `prepare` that reads what a whole job needs
    in a few calls (the per-row function falls back to reading on its own)."""

    name: str
    fn: StageFn
    prepare: Callable[[list[Row], Options], None] | None = None


@dataclass(frozen=True)
class Job:
    stage: Stage
    rows: list[Row]


OnDone = Callable[[Job, list[Row]], Iterable[Job]]


def jobs_of(stage: Stage, rows: Iterable[Row], size: int) -> Iterator[Job]:
    """Rows into jobs of at most `size` rows each, lazily (rows may come from a paged search)."""
    batch: list[Row] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield Job(stage, batch)
            batch = []
    if batch:
        yield Job(stage, batch)


def describe(e: BaseException) -> str:
    if isinstance(e, MigratorError):
        return f"{type(e).__name__}: {e.message}"
    return f"{type(e).__name__}: {e}"


def failed_row(row: Row, stage: str, error: BaseException | str) -> Row:
    """The row marked failed; the stage is the one the error names (a task that does several
    stages), else the task's."""
    msg = error if isinstance(error, str) else describe(error)
    if isinstance(error, MigratorError) and error.stage:
        stage = error.stage
    return {**row, "state": FAILED, "error": msg, "failed_stage": stage, "updated_at": now_ms()}


def run_one(stage: Stage, row: Row, opts: Options) -> Row:
    """Run a stage on one row; never raises. Transient errors are retried with backoff."""
    attempts = max(1, opts.max_attempts)
    for attempt in range(1, attempts + 1):
        try:
            return stage.fn(row, opts)
        except TransientError as e:
            if attempt == attempts:
                return failed_row(row, stage.name, e)
            log.warning("%s (attempt %d of %d, retrying)", e, attempt, attempts)
            time.sleep(min(2**attempt, 30))
        except Exception as e:  # the one broad catch: the object fails, the migration goes on
            log.warning("%s %s failed: %s", stage.name, row.get("source_run_id", ""), describe(e))
            return failed_row(row, stage.name, e)
    raise AssertionError("unreachable")


def run_job(job: Job, opts: Options, threads: int = 1) -> list[Row]:
    """Run a job's rows, `threads` at a time: the stages wait on servers, not on the CPU, so
    one worker process serves several rows at once (and imports MLflow once, not per row)."""
    if job.stage.prepare is not None:
        try:
            job.stage.prepare(job.rows, opts)
        except Exception as e:  # only an optimisation: each row then reads for itself
            log.debug("prepare of %s failed: %s", job.stage.name, describe(e))
    if threads <= 1 or len(job.rows) <= 1:
        return [run_one(job.stage, row, opts) for row in job.rows]
    with ThreadPoolExecutor(min(threads, len(job.rows)), thread_name_prefix="stage") as pool:
        return list(pool.map(lambda row: run_one(job.stage, row, opts), job.rows))


class Executor(Protocol):
    def run(self, jobs: Iterable[Job], opts: Options, on_done: OnDone) -> None: ...
    def close(self) -> None: ...


class InlineExecutor:
    """Runs every job in this process, one after another, its rows in `concurrency` threads
    (tests, small migrations, machines without Ray)."""

    def run(self, jobs: Iterable[Job], opts: Options, on_done: OnDone) -> None:
        queue: deque[Job] = deque()
        fresh = iter(jobs)
        while True:
            job = queue.popleft() if queue else next(fresh, None)
            if job is None:
                return
            queue.extend(on_done(job, run_job(job, opts, opts.concurrency)))

    def close(self) -> None:
        pass


_FORWARDED_ENV = ("MLFLOW_", "AWS_", "BOTO_")


def forwarded_env() -> dict[str, str]:
    """Settings the workers need (S3 endpoint and credentials, MLflow client settings)."""
    return {k: v for k, v in os.environ.items() if k.startswith(_FORWARDED_ENV)}


class RayExecutor:
    """Runs jobs as Ray tasks: at most `2 × concurrency` in flight, results by `ray.wait`."""

    def __init__(self, opts: Options) -> None:
        self._opts = opts
        self._ray: Any = None
        self._started = False

    def _connect(self) -> Any:
        """Join or start Ray on first use, so a run with nothing to do never pays for it."""
        if self._ray is not None:
            return self._ray
        import ray

        opts = self._opts
        if not ray.is_initialized():
            env = {"env_vars": forwarded_env()}
            if opts.ray_address:
                ray.init(address=opts.ray_address, runtime_env=env, configure_logging=False)
            else:
                os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
                os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
                ray.init(
                    include_dashboard=False,
                    _node_ip_address="127.0.0.1",
                    runtime_env=env,
                    configure_logging=False,
                )
            self._started = True
        # One task per CPU (one worker process each), each running its rows in threads, so
        # that `concurrency` rows are in flight across the cluster.
        self._slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._threads = max(1, math.ceil(opts.concurrency / self._slots))
        self._remote = ray.remote(max_retries=3)(run_job)
        self._ray = ray
        return ray

    def run(self, jobs: Iterable[Job], opts: Options, on_done: OnDone) -> None:
        queue: deque[Job] = deque()
        jobs_iter = iter(jobs)
        first = next(jobs_iter, None)
        if first is None:
            return
        ray = self._connect()
        window = 2 * self._slots  # a second job waits on each worker, so none goes idle
        opts_ref = ray.put(opts)
        queue.append(first)
        fresh: Iterator[Job] | None = jobs_iter
        in_flight: dict[Any, Job] = {}
        while True:
            while len(in_flight) < window:
                job = queue.popleft() if queue else (next(fresh, None) if fresh else None)
                if job is None:
                    fresh = None
                    break
                ref = self._remote.remote(job, opts_ref, self._threads)
                in_flight[ref] = job
            if not in_flight:
                if queue:
                    continue
                return
            done, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in done:
                job = in_flight.pop(ref)
                try:
                    rows = ray.get(ref)
                except Exception as e:  # the task itself died (worker lost, after Ray's retries)
                    rows = [
                        failed_row(r, job.stage.name, f"task lost: {describe(e)}") for r in job.rows
                    ]
                queue.extend(on_done(job, rows))

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False
        self._ray = None


class SharedExecutor:
    """One executor for several commands in one process (the demo): Ray starts once, and
    `close` is left to the owner's `shutdown`."""

    def __init__(self, inner: Executor) -> None:
        self.inner = inner

    def run(self, jobs: Iterable[Job], opts: Options, on_done: OnDone) -> None:
        self.inner.run(jobs, opts, on_done)

    def close(self) -> None:
        pass

    def shutdown(self) -> None:
        self.inner.close()


def make_executor(opts: Options) -> Executor:
    """Ray by default (local, or the cluster at --ray-address); inline when asked for `none`."""
    if opts.ray_address == "none":
        return InlineExecutor()
    return RayExecutor(opts)
