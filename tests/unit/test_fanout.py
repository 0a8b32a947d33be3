"""The fan-out (migrator.fanout) through the inline executor: no Ray."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from migrator import credentials, fanout
from migrator.config import Options
from migrator.errors import PermanentError, StagingError, TransientError
from migrator.fanout import InlineExecutor, Job, Stage, describe, failed_row, run_one


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    calls: list[float] = []
    monkeypatch.setattr(fanout.time, "sleep", calls.append)
    return calls


def _rows(*ids: str) -> list[dict]:
    return [{"source_run_id": i, "source_experiment_id": "1"} for i in ids]


def _ok(state: str):
    def fn(row: dict, opts: Options) -> dict:
        return {**row, "state": state}
    return fn


def test_failing_row_becomes_failed_others_succeed() -> None:
    def export(row: dict, opts: Options) -> dict:
        if row["source_run_id"] == "bad":
            raise ValueError("boom on bad")
        return {**row, "state": "exported"}

    stage = Stage("export", export)
    done: list[tuple[str, list[dict]]] = []

    def on_done(job: Job, rows: list[dict]) -> list[Job]:
        done.append((job.stage.name, rows))
        return []

    InlineExecutor().run([Job(stage, _rows("a", "bad", "c"))], Options(), on_done)
    assert len(done) == 1
    _, rows = done[0]
    by_id = {r["source_run_id"]: r for r in rows}
    assert [r["source_run_id"] for r in rows] == ["a", "bad", "c"]
    assert by_id["a"]["state"] == by_id["c"]["state"] == "exported"
    assert "error" not in by_id["a"]
    bad = by_id["bad"]
    assert bad["state"] == "failed"
    assert bad["failed_stage"] == "export"
    assert bad["error"] == "ValueError: boom on bad"
    assert bad["source_experiment_id"] == "1"  # the row's own fields are kept
    assert isinstance(bad["updated_at"], int) and bad["updated_at"] > 1_600_000_000_000


def test_migrator_error_description_uses_message_and_type() -> None:
    e = StagingError("missing staging object 'runs/x/run.json'", obj="run x", stage="import")
    assert describe(e) == "StagingError: missing staging object 'runs/x/run.json'"
    assert describe(KeyError("k")) == "KeyError: 'k'"
    row = failed_row({"source_run_id": "x"}, "import", e)
    assert row["error"] == "StagingError: missing staging object 'runs/x/run.json'"
    assert failed_row({"source_run_id": "x"}, "tag", "task lost")["error"] == "task lost"


def test_transient_error_retried_and_succeeds_on_second_attempt(sleeps: list[float]) -> None:
    attempts = {"n": 0}

    def flaky(row: dict, opts: Options) -> dict:
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise TransientError("connection reset")
        return {**row, "state": "imported"}

    out = run_one(Stage("import", flaky), _rows("a")[0], Options(max_attempts=3))
    assert out["state"] == "imported"
    assert attempts["n"] == 2
    assert len(sleeps) == 1 and sleeps[0] > 0


def test_a_retry_is_logged_in_one_line_and_a_last_failure_keeps_the_whole_error(
    sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    """A target's SQL race comes with its statement and parameters on further lines."""
    sql = "UNIQUE constraint failed: datasets.name\n[SQL: INSERT INTO datasets ...]\n[parameters: (...)]"

    def racing(row: dict, opts: Options) -> dict:
        raise TransientError(sql, obj="run a", stage="import")

    with caplog.at_level("WARNING", logger="migrator.fanout"):
        out = run_one(Stage("import", racing), _rows("a")[0], Options(max_attempts=2))
    [retry] = [r.getMessage() for r in caplog.records]
    assert retry == "import run a: UNIQUE constraint failed: datasets.name […] (attempt 1 of 2, retrying)"
    assert out["state"] == "failed" and "[SQL: INSERT INTO datasets" in out["error"]


def test_transient_error_gives_up_after_max_attempts(sleeps: list[float]) -> None:
    attempts = {"n": 0}

    def always(row: dict, opts: Options) -> dict:
        attempts["n"] += 1
        raise TransientError("503 from server")

    out = run_one(Stage("import", always), _rows("a")[0], Options(max_attempts=4))
    assert attempts["n"] == 4
    assert len(sleeps) == 3  # no sleep after the last attempt
    assert sleeps == sorted(sleeps) and all(0 < s <= 30 for s in sleeps)
    assert out["state"] == "failed"
    assert out["failed_stage"] == "import"
    assert out["error"] == "TransientError: 503 from server"


def test_max_attempts_one_means_no_retry(sleeps: list[float]) -> None:
    attempts = {"n": 0}

    def always(row: dict, opts: Options) -> dict:
        attempts["n"] += 1
        raise TransientError("x")

    assert run_one(Stage("s", always), {}, Options(max_attempts=1))["state"] == "failed"
    assert attempts["n"] == 1 and sleeps == []


@pytest.mark.parametrize("exc", [PermanentError("refused"), StagingError("corrupt"),
                                 RuntimeError("bug"), KeyError("k")])
def test_non_transient_errors_are_not_retried(sleeps: list[float], exc: Exception) -> None:
    attempts = {"n": 0}

    def fails(row: dict, opts: Options) -> dict:
        attempts["n"] += 1
        raise exc

    out = run_one(Stage("tag", fails), {"source_run_id": "a"}, Options(max_attempts=5))
    assert attempts["n"] == 1
    assert sleeps == []
    assert out["state"] == "failed" and out["failed_stage"] == "tag"
    assert out["error"].startswith(type(exc).__name__ + ": ")


def test_follow_up_jobs_from_on_done_are_run() -> None:
    export = Stage("export", _ok("exported"))
    imp = Stage("import", _ok("imported"))
    seen: list[tuple[str, list[str], list[str]]] = []

    def on_done(job: Job, rows: list[dict]) -> list[Job]:
        seen.append((job.stage.name, [r["source_run_id"] for r in rows],
                     [r["state"] for r in rows]))
        if job.stage is export:
            return [Job(imp, rows)]
        return []

    jobs = [Job(export, _rows("a", "b")), Job(export, _rows("c"))]
    InlineExecutor().run(iter(jobs), Options(), on_done)
    assert sorted(seen) == sorted([
        ("export", ["a", "b"], ["exported", "exported"]),
        ("import", ["a", "b"], ["imported", "imported"]),
        ("export", ["c"], ["exported"]),
        ("import", ["c"], ["imported"]),
    ])

    # a follow-up goes before the next fresh job (pipelined, no barrier)
    done: list[str] = []
    jobs = [Job(export, _rows(x)) for x in "xyz"]
    InlineExecutor().run(
        iter(jobs), Options(concurrency=1),
        lambda j, r: done.append(f"{j.stage.name}:{r[0]['source_run_id']}")
        or ([Job(imp, r)] if j.stage is export else []),
    )
    assert done.index("import:x") < done.index("export:z")


def test_chained_follow_ups_and_empty_job_list() -> None:
    stages = [Stage(n, _ok(n)) for n in ("s1", "s2", "s3")]
    order: list[str] = []

    def on_done(job: Job, rows: list[dict]) -> list[Job]:
        order.append(job.stage.name)
        i = stages.index(job.stage)
        return [Job(stages[i + 1], rows)] if i + 1 < len(stages) else []

    InlineExecutor().run([Job(stages[0], _rows("a"))], Options(), on_done)
    assert order == ["s1", "s2", "s3"]

    called: list[Job] = []
    InlineExecutor().run([], Options(), lambda j, r: called.append(j) or [])
    assert called == []


def test_jobs_are_consumed_lazily_within_a_bounded_window() -> None:
    produced: list[int] = []
    stage = Stage("s", _ok("x"))

    def gen():
        for i in range(10):
            produced.append(i)
            yield Job(stage, _rows(str(i)))

    ahead: list[int] = []  # jobs taken from the generator but not finished, at each completion
    InlineExecutor().run(
        gen(), Options(concurrency=1), lambda j, r: ahead.append(len(produced) - len(ahead)) or []
    )
    assert len(ahead) == 10
    assert max(ahead) <= 2  # window = 2 x concurrency: the source is never drained ahead


def test_make_executor_none_is_inline_without_ray() -> None:
    ex = fanout.make_executor(Options(ray_address="none"))
    assert isinstance(ex, InlineExecutor)
    ex.close()


def test_inline_path_never_imports_ray() -> None:
    # In a fresh interpreter: the whole pipeline with the inline executor, and no Ray.
    code = (
        "import sys, migrator.pipeline, migrator.plan, migrator.cli\n"
        "from migrator.config import Options\n"
        "from migrator.fanout import make_executor\n"
        "make_executor(Options(ray_address='none'))\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_only_the_fanout_module_imports_ray() -> None:
    package = Path(fanout.__file__).parent
    importers = sorted(
        p.relative_to(package).as_posix()
        for p in package.rglob("*.py")
        if re.search(r"^\s*(import ray|from ray)", p.read_text(), re.MULTILINE)
    )
    assert importers == ["fanout.py"]


def test_forwarded_env_leaves_secrets_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray's runtime_env shows in the dashboard: settings go there, secrets never."""
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "t0ken")
    monkeypatch.setenv("MIGRATOR_TARGET_TRACKING_PASSWORD", "pw")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cret")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://s3")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")
    monkeypatch.setenv("BOTO_CONFIG", "/x")
    monkeypatch.setenv("UNRELATED_VAR", "no")
    env = fanout.forwarded_env()
    assert env["AWS_ENDPOINT_URL"] == "http://s3"
    assert env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5"
    assert env["BOTO_CONFIG"] == "/x"
    assert "UNRELATED_VAR" not in env
    for secret in ("MLFLOW_TRACKING_TOKEN", "MIGRATOR_TARGET_TRACKING_PASSWORD",
                   "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"):
        assert secret not in env
    secrets = credentials.secret_env()
    assert secrets["AWS_SECRET_ACCESS_KEY"] == "s3cret"
    assert secrets["MIGRATOR_TARGET_TRACKING_PASSWORD"] == "pw"
    assert "AWS_ENDPOINT_URL" not in secrets


@pytest.mark.parametrize(
    ("cpus", "concurrency", "threads"),
    [(64, 8, [1] * 8), (2, 8, [4, 4]), (3, 8, [3, 3, 2]), (1, 1, [1]), (4, 0, [1])],
)
def test_concurrency_caps_jobs_across_the_cluster(
    cpus: int, concurrency: int, threads: list[int]
) -> None:
    """`--concurrency` is the number of jobs running at once, on a cluster of any size."""
    assert fanout.actor_threads(cpus, concurrency) == threads


def _counting_stage() -> tuple[Stage, list[int]]:
    import threading
    import time as clock

    lock = threading.Lock()
    running = [0]
    peak: list[int] = [0]

    def fn(row: dict, opts: Options) -> dict:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        clock.sleep(0.01)
        with lock:
            running[0] -= 1
        return {**row, "state": "exported"}

    return Stage("export", fn), peak


@pytest.mark.parametrize("make", [InlineExecutor, lambda o: fanout.RayExecutor(o)])
def test_no_more_jobs_run_at_once_than_concurrency(  # type: ignore[no-untyped-def]
    make, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Ray another test left running in this process is not this executor's to join.
    monkeypatch.setattr(fanout, "_ray_running", lambda: False)
    opts = Options(concurrency=3, ray_address="" if make is not InlineExecutor else "none")
    executor = make(opts) if make is not InlineExecutor else InlineExecutor()
    stage, peak = _counting_stage()
    jobs = [Job(stage, _rows(str(i))) for i in range(40)]
    done: list[dict] = []
    try:
        executor.run(jobs, opts, lambda job, rows: done.extend(rows) or [])
    finally:
        executor.close()
    assert len(done) == 40 and peak[0] == 3


def test_a_small_local_migration_never_starts_ray() -> None:
    """Below `LOCAL_RAY_FROM` objects, a local run stays in this process's threads."""
    code = (
        "import sys\n"
        "from migrator import fanout\n"
        "from migrator.config import Options\n"
        "opts = Options(concurrency=2)\n"
        "ex = fanout.RayExecutor(opts)\n"
        "stage = fanout.Stage('export', lambda r, o: {**r, 'state': 'exported'})\n"
        "rows = [{'source_run_id': str(i)} for i in range(fanout.LOCAL_RAY_FROM)]\n"
        "out = []\n"
        "ex.run(fanout.jobs_of(stage, rows, 8), opts, lambda j, r: out.extend(r) or [])\n"
        "ex.close()\n"
        "assert len(out) == fanout.LOCAL_RAY_FROM, len(out)\n"
        "print('ray' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_a_small_machine_never_starts_a_local_ray() -> None:
    """Past `LOCAL_RAY_FROM` objects, a machine with fewer than `LOCAL_RAY_MIN_CPUS` CPUs
    still moves everything in this process's threads (Ray is not even imported)."""
    code = (
        "import sys\n"
        "from migrator import fanout\n"
        "from migrator.config import Options\n"
        "assert fanout.usable_cpus() < fanout.LOCAL_RAY_MIN_CPUS\n"
        "opts = Options(concurrency=2)\n"
        "ex = fanout.RayExecutor(opts)\n"
        "stage = fanout.Stage('export', lambda r, o: {**r, 'state': 'exported'})\n"
        "rows = [{'source_run_id': str(i)} for i in range(50)]\n"
        "out = []\n"
        "ex.run(fanout.jobs_of(stage, rows, 8), opts, lambda j, r: out.extend(r) or [])\n"
        "ex.close()\n"
        "assert len(out) == 50, len(out)\n"
        "print('ray' in sys.modules)\n"
    )
    env = {**os.environ, "MIGRATOR_LOCAL_RAY_FROM": "0", "MIGRATOR_LOCAL_RAY_MIN_CPUS": "100000"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def _sizes(n: int, size: int, workers: int) -> list[int]:
    stage = Stage("s", _ok("x"))
    jobs = list(fanout.jobs_of(stage, _rows(*map(str, range(n))), size, workers))
    assert [r["source_run_id"] for j in jobs for r in j.rows] == [str(i) for i in range(n)]
    return [len(j.rows) for j in jobs]


def test_one_worker_gets_plain_jobs_of_the_batch_size() -> None:
    assert _sizes(20, 8, 1) == [8, 8, 4]


def test_jobs_ramp_up_at_the_start_and_shrink_at_the_end() -> None:
    sizes = _sizes(200, 8, 8)
    assert sizes[:8] == [1, 2, 3, 4, 5, 6, 7, 8]  # staggered: the first jobs end one by one
    assert max(sizes) == 8
    middle = sizes[8 : sizes.index(8, 8) + 1]
    assert set(middle) == {8}
    tail = sizes[-12:]
    assert tail == sorted(tail, reverse=True) and tail[-1] == 1  # the last jobs are short
    # the rows held back for the tail are at most (workers - 1) full jobs
    assert sum(s for s in sizes if s < 8) - sum(range(1, 8)) < 8 * 8


def test_a_small_input_is_spread_over_the_workers() -> None:
    sizes = _sizes(10, 8, 8)
    assert max(sizes) <= 2 and len(sizes) >= 8


def test_rows_of_two_stages_never_share_a_job() -> None:
    a, b = Stage("a", _ok("x")), Stage("b", _ok("y"))
    items = [(a if i % 3 else b, {"source_run_id": str(i)}) for i in range(60)]
    jobs = list(fanout.batched(items, 4, 4))
    assert all(len({id(j.stage)} | {id(j.stage)}) == 1 for j in jobs)
    got_a = [r["source_run_id"] for j in jobs if j.stage is a for r in j.rows]
    got_b = [r["source_run_id"] for j in jobs if j.stage is b for r in j.rows]
    assert got_a == [str(i) for i in range(60) if i % 3]
    assert got_b == [str(i) for i in range(60) if not i % 3]
    assert max(len(j.rows) for j in jobs) <= 4


def test_no_more_rows_are_read_ahead_than_the_workers_hold() -> None:
    read: list[int] = []
    stage = Stage("s", _ok("x"))

    def rows():
        for i in range(1000):
            read.append(i)
            yield {"source_run_id": str(i)}

    first = next(fanout.jobs_of(stage, rows(), 8, 8))
    assert len(first.rows) == 1 and len(read) == 8 * 7 + 1


def test_a_flush_sends_the_rows_held_back_before_the_input_waits() -> None:
    """`FLUSH` (the next hundred experiments are not made yet): every row held back for the
    tail goes out before `batched` reads on, in the tail's shrinking jobs."""
    stage = Stage("s", _ok("x"))
    read_past_flush = False

    def items():
        nonlocal read_past_flush
        for i in range(60):
            yield stage, {"source_run_id": str(i)}
        yield fanout.FLUSH
        read_past_flush = True
        for i in range(60, 100):
            yield stage, {"source_run_id": str(i)}

    jobs = [(read_past_flush, job) for job in fanout.batched(items(), 8, 8)]
    before = [r["source_run_id"] for past, j in jobs if not past for r in j.rows]
    assert before == [str(i) for i in range(60)]
    assert [r["source_run_id"] for _, j in jobs for r in j.rows] == [str(i) for i in range(100)]
    assert max(len(j.rows) for _, j in jobs) <= 8


def test_run_each_keeps_the_order_given_and_runs_side_by_side() -> None:
    import threading
    import time as _time

    inside = 0
    most = 0
    lock = threading.Lock()

    def slow_first(row: dict, opts: Options) -> dict:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        _time.sleep(0.2 if row["source_run_id"] == "0" else 0.05)
        with lock:
            inside -= 1
        return {**row, "state": "imported"}

    stage = Stage("s", slow_first)
    out = fanout.run_each([(stage, r) for r in _rows(*map(str, range(6)))], Options(concurrency=3))
    assert [r["source_run_id"] for r in out] == [str(i) for i in range(6)]
    assert most == 3  # --concurrency at a time, no more


def test_what_a_job_read_ahead_ends_with_the_job() -> None:
    """An entry `prepare` read for a row that never took it (the row failed first) is gone
    when the job ends: a later job on the same thread reads for itself, never stale."""
    ahead: fanout.ReadAhead[str] = fanout.ReadAhead("test")
    failing = {"b"}
    served: dict[str, str | None] = {}

    def prepare(rows: list[dict], opts: Options) -> None:
        ahead.job().update({r["source_run_id"]: f"read for {r['source_run_id']}" for r in rows})

    def export(row: dict, opts: Options) -> dict:
        if row["source_run_id"] in failing:
            raise ValueError("fails before its read")
        served[row["source_run_id"]] = ahead.job().pop(row["source_run_id"], None)
        return {**row, "state": "exported"}

    rows = fanout.run_job(Job(Stage("export", export, prepare), _rows("a", "b")), Options())
    assert [r["state"] for r in rows] == ["exported", "failed"]
    assert served == {"a": "read for a"}
    assert ahead.job() == {}  # b's entry did not outlive its job
    failing.clear()
    fanout.run_job(Job(Stage("export", export), _rows("b")), Options())
    assert served["b"] is None
