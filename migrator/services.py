"""Real local parts for the demo and the tests: MLflow servers, an S3 server, databases.

Everything binds to 127.0.0.1 on a free port, runs in its own process group, and is stopped by
the PID we started (never by name). Databases are created fresh and dropped afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SERVER_ENV = {
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free port on 127.0.0.1, never one this process handed out before: a client's pooled
    keep-alive connection to a stopped server on that port must not reach a new server (or
    the old server's last worker, still finishing) by mistake."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


@dataclass
class Service:
    """A process we started, its URL, and its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path
    backend: str = ""
    artifacts_dir: Path | None = None
    """For an MLflow server: where its proxied artifacts live (<exp>/<run>/artifacts/…)."""
    artifacts_destination: str = ""
    """For an MLflow server: its `--artifacts-destination` (that folder, or an S3 URI)."""

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the process group we started, leader and any worker left behind (a server's
        worker can outlive its leader while it finishes open connections). The leader is
        reaped only after the group is gone, so the group id cannot meanwhile name another."""
        if self.proc.returncode is not None:  # reaped before: the group id is no longer ours
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while not self._exited() and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def _exited(self) -> bool:
        """Whether the leader exited, without reaping it."""
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
        return os.waitid(os.P_PID, self.proc.pid, flags) is not None

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _start(
    name: str,
    cmd: list[str],
    url: str,
    health: str,
    workdir: Path,
    env: dict[str, str] | None = None,
    timeout: float = 180.0,
) -> Service:
    import requests

    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    svc = Service(name, proc, url, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if svc._exited():
            svc.stop()  # any worker it left, then reap it
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{svc.log_tail()}")
        try:
            if requests.get(url + health, timeout=2).status_code < 500:
                return svc
        except requests.RequestException:
            pass
        time.sleep(0.3)
    svc.stop()
    raise RuntimeError(f"{name} did not become ready in {timeout:.0f} s:\n{svc.log_tail()}")


def start_s3(workdir: Path) -> Service:
    """moto's S3 server (objects in memory)."""
    port = free_port()
    return _start(
        "s3",
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        f"http://127.0.0.1:{port}",
        "/moto-api/",
        workdir,
        timeout=60,
    )


def start_mlflow(
    name: str,
    backend_uri: str,
    workdir: Path,
    extra_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    python: str = sys.executable,
    artifacts_destination: str = "",
) -> Service:
    """`mlflow server` with proxied artifacts in a folder of its own, one worker, no job runner
    (`extra_args`, `env`: e.g. `--app-name basic-auth` and its settings; `python`: the
    interpreter of another MLflow, e.g. an MLflow 2 venv's from `venv`;
    `artifacts_destination`: another store for the proxied artifacts, e.g. `s3://bucket/src`
    on the moto server, whose address and keys are then in `env`)."""
    port = free_port()
    artifacts = workdir / f"{name}-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    cmd = [
        python,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        artifacts_destination or str(artifacts),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        *extra_args,
    ]
    # As if its venv were active: older MLflow starts `gunicorn` by name, from PATH.
    path = os.pathsep.join([os.path.dirname(python), os.environ.get("PATH", "")])
    svc = _start(
        name,
        cmd,
        f"http://127.0.0.1:{port}",
        "/health",
        workdir,
        {**SERVER_ENV, "PATH": path, **(env or {})},
    )
    svc.artifacts_dir = artifacts
    svc.artifacts_destination = artifacts_destination or str(artifacts)
    return svc


# ---- other Python packages, each in a venv of its own ---------------------------------------

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "mlflow-migrator")


def venv(name: str, requirements: tuple[str, ...], cache: Path = CACHE) -> Path:
    """A virtual environment with these requirements (another MLflow, mlflow-export-import),
    made on first use and kept under `cache` for later sessions; returns its bin folder.

    A venv whose recorded requirements differ, or whose install did not finish, is made anew.

    Raises:
        RuntimeError: pip failed (its log is named).
    """
    home = cache / name
    marker = home / ".installed"
    spec = "\n".join(requirements)
    if marker.exists() and marker.read_text() == spec:
        return home / "bin"
    if home.exists():
        shutil.rmtree(home)
    cache.mkdir(parents=True, exist_ok=True)
    log_path = cache / f"{name}-install.log"
    log.info("installing %s into %s (once; log %s)", " ".join(requirements), home, log_path)
    subprocess.run([sys.executable, "-m", "venv", str(home)], check=True)
    with open(log_path, "wb") as out:
        done = subprocess.run(
            [str(home / "bin" / "python"), "-m", "pip", "install", "-q", *requirements],
            stdout=out,
            stderr=out,
        )
    if done.returncode:
        raise RuntimeError(f"pip install {' '.join(requirements)} failed; see {log_path}")
    marker.write_text(spec)
    return home / "bin"


# ---- databases ------------------------------------------------------------------------------

POSTGRES = "postgresql"
MYSQL = "mysql"
SQLITE = "sqlite"


def database_available(kind: str) -> bool:
    try:
        with contextlib.closing(_admin_connection(kind)):
            return True
    except Exception:
        return False


def _admin_connection(kind: str):  # type: ignore[no-untyped-def]
    if kind == POSTGRES:
        import psycopg2

        conn = psycopg2.connect(
            host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=3
        )
        conn.autocommit = True
        return conn
    import pymysql

    return pymysql.connect(
        host="127.0.0.1", port=3306, user="root", password="", connect_timeout=3, autocommit=True
    )


def create_database(kind: str, prefix: str = "migrator", template: str | None = None) -> str:
    """Create a fresh database (PostgreSQL: a copy of `template` when given); returns its
    SQLAlchemy URI for `mlflow server`."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with contextlib.closing(_admin_connection(kind)) as conn:
        cur = conn.cursor()
        cur.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
    if kind == POSTGRES:
        return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    return f"mysql+pymysql://root@127.0.0.1:3306/{name}"


def drop_database(uri: str) -> None:
    kind = POSTGRES if uri.startswith("postgresql") else MYSQL
    name = uri.rsplit("/", 1)[1]
    with contextlib.closing(_admin_connection(kind)) as conn:
        cur = conn.cursor()
        if kind == POSTGRES:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        else:
            cur.execute(f"DROP DATABASE IF EXISTS {name}")


def backend_uri(kind: str, workdir: Path, name: str, python: str = sys.executable) -> str:
    """A fresh backend of the kind asked for, or SQLite when that database does not answer;
    holding MLflow's empty tables already where `python` runs this process's MLflow (see
    `_schema_template`). An SQLite file that exists is left as it is."""
    ours = python == sys.executable
    if kind in (POSTGRES, MYSQL) and database_available(kind):
        template = _schema_template(kind) if ours and kind == POSTGRES else None
        try:
            return create_database(kind, template=template)
        except Exception:
            if template is None:
                raise
            log.warning("could not copy the schema template %s; a fresh database", template)
            return create_database(kind)
    path = workdir / (name + ".db")
    template = _schema_template(SQLITE) if ours and not path.exists() else None
    if template is not None:
        shutil.copyfile(template, path)
    return f"sqlite:///{path}"


_TEMPLATES: dict[str, str | None] = {}
_TEMPLATES_LOCK = threading.Lock()


def _schema_template(kind: str) -> str | None:
    """MLflow's empty tables at the head of this process's MLflow schema, made once per process
    and removed at its exit: a PostgreSQL database to copy (`CREATE DATABASE … TEMPLATE`), or
    an SQLite file to copy; None when it cannot be made (then servers start on empty databases).

    Why: a server started on an empty database first runs every one of MLflow's schema
    migrations (~1 s of a 5–6 s start on the development machine), and the integration tests
    start about 45 servers. A server started on the copy finds its tables at head and skips
    them, as a production server does when it restarts. Only the tables are copied: each
    server still makes its default experiment, with its own artifact root."""
    with _TEMPLATES_LOCK:
        if kind not in _TEMPLATES:
            _TEMPLATES[kind] = _make_schema_template(kind)
        return _TEMPLATES[kind]


def _make_schema_template(kind: str) -> str | None:
    import atexit

    import sqlalchemy

    try:
        from mlflow.store.db.utils import _initialize_tables  # MLflow's own, not a public API

        if kind == POSTGRES:
            uri = create_database(POSTGRES, prefix="migrator_schema")
            made, remove = uri.rsplit("/", 1)[1], lambda: drop_database(uri)
        else:
            folder = tempfile.mkdtemp(prefix="migrator-schema-")
            made = os.path.join(folder, "mlflow.db")
            uri, remove = f"sqlite:///{made}", lambda: shutil.rmtree(folder, ignore_errors=True)
        atexit.register(remove)
        engine = sqlalchemy.create_engine(uri)
        quiet = logging.getLogger("mlflow.store.db.utils")
        level = quiet.level
        quiet.setLevel(logging.WARNING)  # its INFO lines name no server
        try:
            _initialize_tables(engine)
        finally:
            quiet.setLevel(level)
            engine.dispose()  # PostgreSQL copies a template only while nobody is connected
    except Exception as e:
        log.warning("no schema template for %s (%s): servers start on empty databases", kind, e)
        return None
    return made


@contextlib.contextmanager
def mlflow_server(
    name: str,
    kind: str,
    workdir: Path,
    extra_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    python: str = sys.executable,
    artifacts_destination: str = "",
) -> Iterator[Service]:
    """A fresh MLflow server on a fresh database; both gone afterwards (the database too when
    the server does not start)."""
    uri = backend_uri(kind, workdir, name, python)
    try:
        svc = start_mlflow(name, uri, workdir, extra_args, env, python, artifacts_destination)
        svc.backend = uri
        try:
            yield svc
        finally:
            svc.stop()
    finally:
        if not uri.startswith("sqlite"):
            with contextlib.suppress(Exception):
                drop_database(uri)


@contextlib.contextmanager
def s3_server(workdir: Path, bucket: str = "migrator-staging") -> Iterator[Service]:
    """moto's S3 server with one bucket; sets AWS_* so boto3 and Ray workers find it."""
    import boto3

    svc = start_s3(workdir)
    env = {
        "AWS_ENDPOINT_URL": svc.url,
        "MLFLOW_S3_ENDPOINT_URL": svc.url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        boto3.client("s3", endpoint_url=svc.url).create_bucket(Bucket=bucket)
        yield svc
    finally:
        svc.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def basic_auth_server(
    name: str, kind: str, workdir: Path, admin_password: str, users: dict[str, str]
) -> Iterator[Service]:
    """An MLflow server with its basic-auth app (its own ini and auth database), every user
    in `users` (name → password, at least 12 characters) allowed to do anything."""
    import requests

    ini = workdir / f"{name}-auth.ini"
    ini.write_text(
        "[mlflow]\n"
        "default_permission = MANAGE\n"
        f"database_uri = sqlite:///{workdir / (name + '-auth.db')}\n"
        "admin_username = admin\n"
        f"admin_password = {admin_password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex,
    }
    with mlflow_server(name, kind, workdir, ("--app-name", "basic-auth"), env) as svc:
        for user, password in users.items():
            resp = requests.post(
                svc.url + "/api/2.0/mlflow/users/create",
                json={"username": user, "password": password},
                auth=("admin", admin_password),
                timeout=30,
            )
            resp.raise_for_status()
        yield svc
