"""The fan-out: the only module that imports Ray.

A stage is a plain function `(row, options) -> row`. Work goes out in jobs (a stage and a small
batch of rows). Executors keep a bounded number of jobs in flight, hand back results in
completion order, and accept follow-up jobs as results arrive; `--concurrency` caps the jobs
in flight. `RayExecutor` runs them on threaded actors of the cluster (and in this process's
threads until a local Ray is worth starting); `InlineExecutor` runs the same jobs in threads
of this process, for tests and for `--ray-address none`.

This is the one place that catches broadly: whatever a stage raises for one row becomes a
`failed` row naming the object, the stage and the error; the other rows go on.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from migrator import credentials
from migrator.config import Options
from migrator.errors import ConfigError, MigratorError, TransientError
from migrator.manifest import FAILED, Row, now_ms

log = logging.getLogger(__name__)

StageFn = Callable[[Row, Options], Row]
V = TypeVar("V")


@dataclass(frozen=True)
class Stage:
    """A named stage function, with an optional `prepare` that reads what a whole job needs
    in a few calls (the per-row function falls back to reading on its own).

    A task's row is its manifest row plus the `inputs` the driver added for the trip (the
    target ids it links to, what it waits for): `run_one` takes them off the row it returns,
    so only manifest columns come back (the manifest refuses any other key)."""

    name: str
    fn: StageFn
    prepare: Callable[[list[Row], Options], None] | None = None
    inputs: tuple[str, ...] = ()


class ReadAhead(Generic[V]):
    """What a job's `Stage.prepare` read for its rows, for those rows alone.

    A job runs in one thread from its `prepare` to its last row (inline or on an actor), and
    `run_job` empties every read-ahead of that thread when the job ends: an entry no row took
    (a row that failed before its read) cannot outlive its job, nor be served to a later job
    as stale, whatever a stage does."""

    _thread = threading.local()

    def __init__(self, name: str) -> None:
        self.name = name

    def job(self) -> dict[str, V]:
        """This thread's entries for the job it runs (the rows take theirs with `pop`)."""
        stores: dict[str, dict[str, Any]] = self._thread.__dict__.setdefault("stores", {})
        return stores.setdefault(self.name, {})

    @classmethod
    def end_job(cls) -> None:
        cls._thread.__dict__.pop("stores", None)


@dataclass(frozen=True)
class Job:
    stage: Stage
    rows: list[Row]


OnDone = Callable[[Job, list[Row]], Iterable[Job]]
#: Objects one stage sends before a local Ray is started (see `RayExecutor`);
#: `MIGRATOR_LOCAL_RAY_FROM` sets another (0: at once, as a cluster would be).
LOCAL_RAY_FROM = int(os.environ.get("MIGRATOR_LOCAL_RAY_FROM", "200"))
#: CPUs this machine needs before a local Ray is started at all: on fewer, Ray's processes
#: take as much CPU as its workers save (measured even on two cores, 1,000 runs in 143 s
#: either way) and cost the driver ~70 MB more; `MIGRATOR_LOCAL_RAY_MIN_CPUS` sets another.
LOCAL_RAY_MIN_CPUS = int(os.environ.get("MIGRATOR_LOCAL_RAY_MIN_CPUS", "4"))


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, where the system tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Flush:
    """The type of `FLUSH`."""


#: In `batched`'s input: the input is about to wait (the next hundred experiments are not
#: made yet; `pipeline`), so the rows held back for the tail go out now, in the tail's
#: shrinking jobs, instead of waiting with it while workers run dry.
FLUSH = Flush()


def jobs_of(stage: Stage, rows: Iterable[Row], size: int, workers: int = 1) -> Iterator[Job]:
    """Rows into jobs of at most `size` rows each, lazily (rows may come from a paged search),
    shaped for `workers` jobs at a time (see `batched`)."""
    return batched(((stage, row) for row in rows), size, workers)


def batched(
    items: Iterable[tuple[Stage, Row] | Flush], size: int, workers: int = 1
) -> Iterator[Job]:
    """(stage, row) pairs into jobs of one stage each, at most `size` rows, lazily.

    Shaped so that `workers` jobs at a time keep every worker busy from the first second to the
    last (a job runs its rows one after the other, so a job of `size` rows is long):
    - **A ramp at the start**: the first `workers` jobs grow from ~size/workers rows to `size`.
      The first results come back after one short job, not a full one; and the jobs, which
      start with a read for the whole job (`Stage.prepare`: a search and the metric histories
      of all its runs, hard on a source server's one process), do not all start, and so do
      not all end and read again, at the same moment: equal jobs started together move in
      lockstep, the source busy while the target waits, and then the other way round.
    - **A tail at the end** (guided self-scheduling): `size * (workers - 1)` rows are held
      back, and once the input ends they go out in jobs of `ceil(rows left / workers)`, which
      shrink towards one row, so the workers finish together instead of one by one while
      the last long jobs run. A small input is spread over the workers the same way. `FLUSH`
      in the input sends them the same way before the input waits.
    The hold-back is the only read-ahead (rows come from a paged search: no request waits
    on it). With `workers=1` both are off: plain jobs of `size`.
    """
    size = max(1, size)
    workers = max(1, workers)
    held = size * (workers - 1)
    pending: dict[str, tuple[Stage, list[Row]]] = {}
    sent = 0

    def cap(rows_left: int | None = None) -> int:
        n = size if sent >= workers else -(-size * (sent + 1) // workers)
        return n if rows_left is None else min(n, -(-rows_left // workers))

    def tail() -> Iterator[Job]:
        nonlocal sent
        for stage, rows in pending.values():
            while rows:
                n = cap(len(rows))
                yield Job(stage, rows[:n])
                del rows[:n]
                sent += 1

    for item in items:
        if isinstance(item, Flush):
            yield from tail()
            continue
        stage, row = item
        rows = pending.setdefault(stage.name, (stage, []))[1]
        rows.append(row)
        if len(rows) > held + cap() - 1:
            n = cap()
            yield Job(stage, rows[:n])
            del rows[:n]
            sent += 1
    yield from tail()


def describe(e: BaseException) -> str:
    """An error as one line for a manifest row or the summary, without credentials."""
    if isinstance(e, MigratorError):
        return credentials.redact(f"{type(e).__name__}: {e.message}")
    return credentials.redact(f"{type(e).__name__}: {e}")


def first_line(e: BaseException) -> str:
    """The error's first line, marked `[…]` when more followed."""
    line, _, rest = str(e).partition("\n")
    return f"{line} […]" if rest.strip() else line


def failed_row(row: Row, stage: str, error: BaseException | str) -> Row:
    """The row marked failed; the stage is the one the error names (a task that does several
    stages), else the task's."""
    msg = credentials.redact(error) if isinstance(error, str) else describe(error)
    if isinstance(error, MigratorError) and error.stage:
        stage = error.stage
    return {**row, "state": FAILED, "error": msg, "failed_stage": stage, "updated_at": now_ms()}


def run_one(stage: Stage, row: Row, opts: Options) -> Row:
    """Run a stage on one row; never raises. Transient errors are retried with backoff. The
    row that comes back has the stage's `inputs` taken off."""
    return without_inputs(stage, _run_one(stage, row, opts))


def without_inputs(stage: Stage, row: Row) -> Row:
    """The row without what the driver added for the stage's trip (`Stage.inputs`)."""
    for k in stage.inputs:
        row.pop(k, None)
    return row


def _run_one(stage: Stage, row: Row, opts: Options) -> Row:
    attempts = max(1, opts.max_attempts)
    for attempt in range(1, attempts + 1):
        try:
            return stage.fn(row, opts)
        except TransientError as e:
            if attempt == attempts:
                return failed_row(row, stage.name, e)
            # One line (a server's SQL error runs to several); the whole of it at debug, and
            # in the row if the last attempt fails too.
            log.warning("%s (attempt %d of %d, retrying)", first_line(e), attempt, attempts)
            log.debug("the whole error: %s", e)
            time.sleep(min(2**attempt, 30))
        except Exception as e:  # the one broad catch: the object fails, the migration goes on
            what = row.get("source_run_id") or row.get("source_model_id") or row.get("name", "")
            log.warning("%s %s failed: %s", stage.name, what, describe(e))
            return failed_row(row, stage.name, e)
    raise AssertionError("unreachable")


def run_each(
    work: Sequence[tuple[Stage, Row]], opts: Options, stopped: threading.Event | None = None
) -> list[Row]:
    """Run a few rows now, each with its own stage, `--concurrency` at a time in threads of
    this process; the results in the order given. For the driver's own small kinds (the
    experiments, which every run waits for): no job, no Ray, none of them waits for another.

    Once `stopped` is set (whoever wanted the rows has stopped: an error, an interrupt), the
    rows not yet started come back as they were, not run: the pool's threads, which the
    interpreter waits for at exit, end with the rows already running."""

    def one(w: tuple[Stage, Row]) -> Row:
        if stopped is not None and stopped.is_set():
            return w[1]
        return run_one(w[0], w[1], opts)

    if len(work) <= 1:
        return [one(w) for w in work]
    with ThreadPoolExecutor(min(len(work), max(1, opts.concurrency))) as pool:
        return list(pool.map(one, work))


def run_job(job: Job, opts: Options) -> list[Row]:
    """Run a job: its `prepare` (if any), then each row in turn; what `prepare` read ends with
    the job (`ReadAhead`). Never raises."""
    credentials.bind(opts.source, opts.target)
    try:
        if job.stage.prepare is not None:
            try:
                job.stage.prepare(job.rows, opts)
            except Exception as e:  # only an optimisation: each row then reads for itself
                log.debug("prepare of %s failed: %s", job.stage.name, describe(e))
        return [run_one(job.stage, row, opts) for row in job.rows]
    finally:
        ReadAhead.end_job()


class Executor(Protocol):
    def run(self, jobs: Iterable[Job], opts: Options, on_done: OnDone) -> None: ...
    def close(self) -> None: ...


def _drive(
    jobs: Iterable[Job],
    on_done: OnDone,
    window: int,
    submit: Callable[[Job], Any],
    wait_one: Callable[[list[Any]], list[Any]],
    result: Callable[[Any], list[Row]],
) -> None:
    """Keep `window` jobs in flight; hand back results in completion order; follow-up jobs
    from `on_done` go before fresh ones, so the window stays bounded and nothing waits."""
    queue: deque[Job] = deque()
    fresh: Iterator[Job] | None = iter(jobs)
    in_flight: dict[Any, Job] = {}
    while True:
        while len(in_flight) < window:
            job = queue.popleft() if queue else (next(fresh, None) if fresh else None)
            if job is None:
                fresh = None
                break
            in_flight[submit(job)] = job
        if not in_flight:
            if queue:
                continue
            return
        for handle in wait_one(list(in_flight)):
            job = in_flight.pop(handle)
            try:
                rows = result(handle)
            except Exception as e:  # the worker itself was lost (after Ray's own retries)
                rows = [
                    without_inputs(
                        job.stage, failed_row(r, job.stage.name, f"task lost: {describe(e)}")
                    )
                    for r in job.rows
                ]
            queue.extend(on_done(job, rows))


class InlineExecutor:
    """Runs jobs in this process, `concurrency` at a time in threads (the stages wait on
    servers, not on the CPU): tests, small migrations, machines without Ray."""

    def run(self, jobs: Iterable[Job], opts: Options, on_done: OnDone) -> None:
        threads = max(1, opts.concurrency)
        with ThreadPoolExecutor(threads, thread_name_prefix="stage") as pool:
            try:
                _drive(
                    jobs,
                    on_done,
                    2 * threads,
                    submit=lambda job: pool.submit(run_job, job, opts),
                    wait_one=lambda fs: list(wait(fs, return_when=FIRST_COMPLETED).done),
                    result=lambda f: f.result(),
                )
            except BaseException:  # the command stops: start nothing more (running jobs end)
                pool.shutdown(wait=False, cancel_futures=True)
                raise

    def close(self) -> None:
        pass


_FORWARDED_ENV = ("MLFLOW_", "AWS_", "BOTO_", "MIGRATOR_")


def forwarded_env() -> dict[str, str]:
    """Settings the workers need (S3 endpoint, MLflow client settings), for Ray's
    `runtime_env`: never a secret (the dashboard shows it); those go by `secret_env`."""
    return {
        k: v
        for k, v in os.environ.items()
        if k.startswith(_FORWARDED_ENV) and not credentials.is_secret(k)
    }


class StageWorker:
    """A Ray actor per CPU: one process (MLflow imported once, HTTP sessions kept) running
    `max_concurrency` jobs at once in threads, each job fed as soon as a thread frees up.
    It takes the driver's secrets (S3 keys, tokens) as its constructor argument, not from
    `runtime_env`."""

    def __init__(self, secrets: dict[str, str] | None = None) -> None:
        credentials.apply(secrets or {})

    def run(self, job: Job, opts: Options) -> list[Row]:
        return run_job(job, opts)


class RayExecutor:
    """Runs jobs on a pool of threaded Ray actors, with at most `concurrency` jobs in flight
    across the whole cluster, whatever its size (one actor per CPU up to `concurrency`, the
    jobs shared out among their threads).

    When Ray comes in (one rule, `LOCAL_RAY_FROM`):
    - Ray already running in this process (a Ray job's driver), or `--ray-address` given: it
      is joined at once, in the background, while the driver enumerates; jobs wait for it.
    - Otherwise work starts at once in this process's threads (as `InlineExecutor`), and a
      local Ray is started in the background only once one stage has sent more than
      `LOCAL_RAY_FROM` objects, on a machine of at least `LOCAL_RAY_MIN_CPUS` CPUs; it takes
      the new jobs as soon as it is up (8-10 s on two cores), the threads finish theirs. A
      small migration, or one on a small machine, never pays for Ray.

    An actor that dies is restarted and its calls retried by Ray (every stage is safe to run
    twice); a call lost for good marks its rows failed.
    """

    def __init__(self, opts: Options, local_ray_now: bool = False) -> None:
        """`local_ray_now`: start the local Ray at once, whatever the rule (the demo, which
        shows the cluster path on a small machine)."""
        self._opts = opts
        self._ray: Any = None
        self._started = False
        self._actors: list[Any] = []
        self._threads: list[int] = []
        self._pool = ThreadPoolExecutor(max(1, opts.concurrency), thread_name_prefix="stage")
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._starter: threading.Thread | None = None
        self._local = not opts.ray_address and not _ray_running()
        self._big_machine = usable_cpus() >= LOCAL_RAY_MIN_CPUS
        if not self._local or local_ray_now:
            self._start()

    def _start(self) -> None:
        """Join or start Ray in a thread of its own. The thread lives until `close`: Ray's
        processes die with the thread that started them (their parent-death signal)."""
        if self._starter is not None:
            return

        def start() -> None:
            try:
                self._connect()
            except BaseException as e:  # said by `_use_ray`, in the driver's thread
                self._error = e
            finally:
                self._ready.set()
            self._stop.wait()

        self._starter = threading.Thread(target=start, name="ray-start", daemon=True)
        self._starter.start()

    def _connect(self) -> None:
        import ray

        # Started from a thread on purpose (the driver's own SIGTERM handling stays): Ray's
        # note that it set no SIGTERM handler says nothing to the user.
        logging.getLogger("ray._private.worker").addFilter(_NO_SIGTERM_NOTE)
        opts = self._opts
        if not opts.ray_address:  # the local Ray is ours: its token is its own business
            logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
                _NO_TOKEN_NOTE
            )
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
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._threads = actor_threads(cpus, opts.concurrency)
        # Secrets inline in the actor's creation spec (small): not in runtime_env, which the
        # dashboard shows, and not in the object store, from which a restarted actor could
        # not be rebuilt once the ref went out of scope.
        secrets = credentials.secret_env()
        self._actors = [
            ray.remote(StageWorker)
            .options(num_cpus=1, max_concurrency=n, max_restarts=3, max_task_retries=3)
            .remote(secrets)
            for n in self._threads
        ]
        self._ray = ray

    def _use_ray(self, wait: bool) -> bool:
        """Whether Ray takes the next job (waiting for it when it must)."""
        if self._starter is None:
            return False
        if wait:
            self._ready.wait()
        if not self._ready.is_set():
            return False
        if self._error is not None:
            if not self._local:
                error, self._error = self._error, None
                raise ConfigError(f"cannot use the Ray cluster: {describe(error)}") from error
            log.warning("local Ray did not start (%s): going on in threads", describe(self._error))
            self._error = None
            self._local = False  # not tried again; `_ray` stays None: threads from now on
            return False
        return self._ray is not None

    def run(self, jobs: Iterable[Job], opts: Options, on_done: OnDone) -> None:
        load = [0] * len(self._actors)
        owner: dict[Any, int] = {}
        opts_ref: list[Any] = []
        sent = 0

        def submit(job: Job) -> Any:
            nonlocal sent
            sent += len(job.rows)
            if self._local and sent > LOCAL_RAY_FROM and self._big_machine:
                self._start()
            if not self._use_ray(wait=not self._local):
                return self._pool.submit(run_job, job, opts)
            if len(load) != len(self._actors):
                load[:] = [0] * len(self._actors)
            if not opts_ref:
                opts_ref.append(self._ray.put(opts))
            # The actor with the most free threads.
            i = max(range(len(self._actors)), key=lambda a: self._threads[a] - load[a])
            future = self._actors[i].run.remote(job, opts_ref[0]).future()
            load[i] += 1
            owner[future] = i
            return future

        def wait_one(futures: list[Any]) -> list[Any]:
            done = list(wait(futures, return_when=FIRST_COMPLETED).done)
            for f in done:
                if f in owner:
                    load[owner.pop(f)] -= 1
            return done

        try:
            _drive(jobs, on_done, max(1, opts.concurrency), submit, wait_one, _result)
        except BaseException:  # the command stops: start nothing more (running jobs end)
            for f in owner:
                f.cancel()
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._starter is not None:
            self._ready.wait()
        if self._ray is not None:
            for actor in self._actors:
                self._ray.kill(actor)
        self._actors = []
        if self._started:
            self._ray.shutdown()
            self._started = False
        self._ray = None
        self._stop.set()


class _DropNote(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


_NO_SIGTERM_NOTE = _DropNote("SIGTERM handler is not set")
_NO_TOKEN_NOTE = _DropNote("Token authentication is enabled for this Ray cluster")


def _result(future: Any) -> list[Row]:
    rows: list[Row] = future.result()
    return rows


def _ray_running() -> bool:
    """Ray already initialised in this process (a test, or the driver of a Ray job that
    called `ray.init`)."""
    import sys

    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def actor_threads(cpus: int, concurrency: int) -> list[int]:
    """Threads of each actor: one actor per CPU up to `concurrency`, and `concurrency`
    threads in all, so a large cluster runs no more jobs at once than asked."""
    concurrency = max(1, concurrency)
    actors = max(1, min(cpus, concurrency))
    return [concurrency // actors + (1 if i < concurrency % actors else 0) for i in range(actors)]


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


def make_executor(opts: Options, local_ray_now: bool = False) -> Executor:
    """Ray by default (local, or the cluster at --ray-address); inline when asked for `none`."""
    if opts.ray_address == "none":
        return InlineExecutor()
    return RayExecutor(opts, local_ray_now)
