"""kill -9 anywhere: a driver killed at each named crash point, and a Ray worker killed
mid-task, leave a migration that one more `migrate` completes, with every object once.

The driver cases run the CLI as a subprocess with `MIGRATOR_CRASH_AT=name:N` (the driver
SIGKILLs itself at the N-th pass through a named point, see `migrator.faults.crash_point`),
then resume in this process. They leave out the experiment "hard/limits" (a 64 MB artifact and
a 10,500-point history) to stay fast; the registered models only point at runs of the
experiments kept.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil
import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from migrator import workdirs
from migrator.config import Options
from migrator.fanout import Executor, Job, OnDone, make_executor
from migrator.faults import CRASH_ENV
from migrator.manifest import IMPORTED, TAGGED, Row, models_table, runs_table
from migrator.pipeline import run_command
from migrator.staging import LocalStaging
from migrator.summary import Summary

from .conftest import Background, Source
from .test_resume import source_tag_counts

RUN_STAGES = ("export", "import", "migrate")


def experiments_kept(source: Source) -> tuple[str, ...]:
    """Every seeded experiment (with "Default"): all but "hard/limits"."""
    names = tuple(sorted(source.seeded.experiment_ids))
    assert "hard/limits" not in names and "Default" in names
    return names


def source_run_ids(source: Source, names: Iterable[str]) -> set[str]:
    c = MlflowClient(source.url)
    ids = [source.seeded.experiment_ids[n] for n in names]
    return {r.info.run_id for r in c.search_runs(ids, run_view_type=ViewType.ALL,
                                                 max_results=10000)}


def check_target(source: Source, target_url: str, names: tuple[str, ...],
                 opts: Options) -> None:
    """Every source run in scope once on the target, every model version at its number,
    the logged models once each, and `verify` finds everything matching."""
    src, tgt = MlflowClient(source.url), MlflowClient(target_url)
    counts = source_tag_counts(tgt)
    expected = source_run_ids(source, names)
    missing, extra = expected - set(counts), set(counts) - expected
    assert not missing and not extra, f"missing on target: {missing}; unexpected: {extra}"
    twice = {k: n for k, n in counts.items() if n != 1}
    assert not twice, f"source runs on the target more than once: {twice}"

    def numbers(c: MlflowClient, name: str) -> list[int]:
        return sorted(int(v.version) for v in c.search_model_versions(f"name='{name}'"))

    for name, versions in source.seeded.models["versions"].items():
        assert numbers(src, name) == versions
        assert numbers(tgt, name) == versions, name
    src_exps = [source.seeded.experiment_ids[n] for n in names]
    tgt_exps = [e.experiment_id for e in tgt.search_experiments(view_type=ViewType.ALL)]
    n_src = len(src.search_logged_models(experiment_ids=src_exps))
    assert n_src >= 1
    assert len(tgt.search_logged_models(experiment_ids=tgt_exps)) == n_src

    verified = run_command("verify", opts, make_executor).verify
    assert verified is not None
    assert verified.ok, verified.render()


def left_to_do(staging: Path, source: Source, names: tuple[str, ...]) -> str:
    """What the manifests of a killed driver say is not finished (empty: nothing)."""
    st = LocalStaging(str(staging))
    runs = runs_table(st).load()
    models = models_table(st).load()
    untagged = len(source_run_ids(source, names)) - sum(
        r["state"] == TAGGED for r in runs.values())
    unimported = len(source.seeded.models["names"]) - sum(
        r["state"] == IMPORTED for r in models.values())
    return f"{untagged} runs not tagged, {unimported} models not imported" if (
        untagged or unimported) else ""


def tmpdir_of(log_path: Path) -> Path:
    """The temporary folder of a crashed driver: its own, to see what the kill left there."""
    tmp = log_path.parent / "tmp"
    tmp.mkdir(exist_ok=True)
    return tmp


def crashed(command: str, point: str, source: Source, target_url: str, staging: Path,
            names: tuple[str, ...], log_path: Path) -> str:
    """Run `migrator <command>` until the driver kills itself at `point`; returns its log."""
    cmd = [sys.executable, "-m", "migrator", command]
    if command in ("migrate", "export"):
        cmd += ["--source", source.url]
    if command in ("migrate", "import"):
        cmd += ["--target", target_url]
    cmd += ["--staging", str(staging), "--experiments", ",".join(names), "--include-deleted",
            "--batch-size", "1", "--concurrency", "2", "--ray-address", "none"]
    env = {**os.environ, CRASH_ENV: point, "TMPDIR": str(tmpdir_of(log_path))}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:  # still running: ours to stop
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    text = log_path.read_text(errors="replace")
    assert proc.returncode == -signal.SIGKILL, (
        f"{command} with {CRASH_ENV}={point} ended with {proc.returncode}, not SIGKILL "
        f"(the crash point was not reached):\n{text[-3000:]}")
    assert f"crash point {point} reached" in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    return text


@pytest.mark.parametrize(
    ("command", "point"),
    [
        pytest.param("migrate", "runs-found:5", id="enumeration"),
        pytest.param("export", "run-done:3", id="mid-export"),
        pytest.param("import", "run-done:3", id="mid-import"),
        pytest.param("migrate", "before-tags:1", id="between-import-and-tags"),
        pytest.param("migrate", "model-done:1", id="during-models"),
    ],
)
def test_driver_killed_at_a_crash_point_resumes_exactly_once(
    command: str, point: str, source: Source, target_server: Any, tmp_path: Path
) -> None:
    target = target_server()
    staging = tmp_path / "staging"
    names = experiments_kept(source)
    opts = Options(source=source.url, target=target.url, staging=str(staging),
                   experiments=names, include_deleted=True, batch_size=1, concurrency=2,
                   ray_address="none")
    if command == "import":  # an `export` that finished, into the same staging
        exported = run_command("export", opts, make_executor)
        assert exported.ok, exported.render()
    crashed(command, point, source, target.url, staging, names, tmp_path / "crashed.log")
    left = left_to_do(staging, source, names)
    assert left, "the driver was killed with nothing left to do"
    # what the kill left in the temporary folder (its ledgers at least) is the next process's
    # to sweep: every folder the migrator makes holds its owner's lock until it is empty (a
    # kill in the microseconds between making a folder and locking it leaves it empty)
    tmp = tmpdir_of(tmp_path / "crashed.log")
    folders = sorted(p.name for p in tmp.glob("migrator-*"))
    assert any(f.startswith("migrator-ledger-runs-") for f in folders), folders
    assert workdirs.sweep(str(tmp)) >= 10, folders  # every manifest's ledger
    unswept = {p.name: sorted(f.name for f in p.iterdir()) for p in tmp.glob("migrator-*")}
    assert all(files in ([], [workdirs.TAKING_LOCK]) for files in unswept.values()), unswept

    summary = run_command("migrate", opts, make_executor)
    print(f"left by the kill: {left}\nresumed:\n{summary.render()}")
    assert summary.ok, summary.render()
    check_target(source, target.url, names, opts)


class Watched:
    """An executor that counts the run results the driver records (for the test to time
    its kill), then hands them on."""

    def __init__(self, inner: Executor) -> None:
        self.inner = inner
        self.results = 0
        self.first = threading.Event()

    def run(self, jobs: Iterable[Job], opts: Options, on_done: OnDone) -> Any:
        def seen(job: Job, rows: list[Row]) -> Iterable[Job]:
            if job.stage.name in RUN_STAGES:
                self.results += len(rows)
                self.first.set()
            return on_done(job, rows)

        return self.inner.run(jobs, opts, seen)

    def close(self) -> None:
        self.inner.close()


def stage_workers() -> list[psutil.Process]:
    """This session's StageWorker actor processes: Ray names them `ray::StageWorker` (and
    `ray::StageWorker.run` while a task runs); they descend from the raylet this process
    started (the `ray_local` fixture), so another session's Ray is never touched."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "StageWorker" in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def test_a_ray_worker_killed_mid_task_does_not_break_the_job(
    source: Source, target_server: Any, ray_local: None, tmp_path: Path
) -> None:
    target = target_server()
    names = experiments_kept(source)
    opts = Options(source=source.url, target=target.url, staging=str(tmp_path / "staging"),
                   experiments=names, include_deleted=True, batch_size=1, concurrency=2)
    watched: list[Watched] = []

    def factory(o: Options) -> Executor:
        w = Watched(make_executor(o))
        watched.append(w)
        return w

    background = Background(lambda: run_command("migrate", opts, factory))
    thread = background.thread
    deadline = time.monotonic() + 300
    while not watched and time.monotonic() < deadline:
        time.sleep(0.05)
    assert watched, "the migration did not start"
    w = watched[0]
    assert w.first.wait(max(1.0, deadline - time.monotonic())), "no run result came back"
    killed: psutil.Process | None = None
    while killed is None and thread.is_alive() and time.monotonic() < deadline:
        workers = stage_workers()
        busy = [p for p in workers if "StageWorker.run" in " ".join(p.cmdline())]
        if busy:
            killed = busy[0]
        else:
            time.sleep(0.05)
    assert killed is not None, f"no busy StageWorker found; workers: {stage_workers()}"
    results_at_kill = w.results
    killed.send_signal(signal.SIGKILL)
    killed.wait(30)
    summary: Summary = background.join(600)
    n_runs = len(source_run_ids(source, names))
    assert results_at_kill < n_runs, "the kill came after the last run"
    assert w.results > results_at_kill, "nothing came back after the kill"
    print(f"killed StageWorker {killed.pid} after {results_at_kill} run results\n"
          f"{summary.render()}")
    if not summary.ok:  # only rows Ray gave up on may fail, and a second migrate completes them
        errors = [str(r.get("error")) for r in summary.failed]
        assert all(e.startswith("task lost") for e in errors), summary.render()
        again = run_command("migrate", opts, make_executor)
        assert again.ok, again.render()
    check_target(source, target.url, names, opts)
